//! `flopmeter probe` as an operator runs it: the real binary, the real nvml-wrapper dlopen
//! path, the fake libnvidia-ml with a shipped scenario.

use std::process::Command;

use fake_nvml::harness::FakeNvml;

fn scenario(name: &str) -> String {
    format!("{}/tests/scenarios/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn probe_json_lists_eight_h100_with_gpm_estimates() {
    let fake = FakeNvml::from_file(scenario("dgx-h100.toml")).unwrap();
    // A frozen scenario clock makes every reading the same steady moment of the run.
    fake.set_time(10.0).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_flopmeter"))
        .args(["probe", "--json", "--seconds", "1", "--nvml-lib"])
        .arg(fake.lib_path())
        .env_remove("FLOPMETER_NVML_LIB")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let gpus = doc["gpus"].as_array().unwrap();
    assert_eq!(gpus.len(), 8, "{doc}");
    for g in gpus {
        assert_eq!(g["catalogue"]["id"], "h100-sxm", "{g}");
    }
    let text = doc.to_string();
    assert!(text.contains("gpm-tensor"), "{text}");
}

#[test]
fn probe_without_a_driver_says_so() {
    let o = Command::new(env!("CARGO_BIN_EXE_flopmeter"))
        .args(["probe", "--nvml-lib", "/nonexistent/libnvidia-ml.so.1"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("no NVIDIA driver found"), "{err}");
}
