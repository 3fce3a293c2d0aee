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

/// Each reading of `probe --json` names its GPU once: `index` and `uuid` are not repeated
/// beside the reading's own fields (duplicate keys are invalid for strict JSON readers).
#[test]
fn probe_json_names_each_gpu_once_per_reading() {
    let fake = FakeNvml::from_file(scenario("dgx-h100.toml")).unwrap();
    fake.set_time(10.0).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_flopmeter"))
        .args(["probe", "--json", "--seconds", "1", "--nvml-lib"])
        .arg(fake.lib_path())
        .env_remove("FLOPMETER_NVML_LIB")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8(o.stdout).unwrap();
    // 8 GPUs: once in the inventory and once in the one second of readings; `index` also
    // once per GPU in the totals.
    assert_eq!(text.matches("\"uuid\":").count(), 16, "{text}");
    assert_eq!(text.matches("\"index\":").count(), 24, "{text}");
}

/// A fatal error under `--json` is a JSON document on stdout, not silence.
#[test]
fn probe_json_without_a_driver_prints_a_json_error() {
    let o = Command::new(env!("CARGO_BIN_EXE_flopmeter"))
        .args([
            "probe",
            "--json",
            "--nvml-lib",
            "/nonexistent/libnvidia-ml.so.1",
        ])
        .env_remove("FLOPMETER_NVML_LIB")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {:?}", o.stdout));
    assert!(
        doc["error"]
            .as_str()
            .unwrap()
            .contains("no NVIDIA driver found"),
        "{doc}"
    );
    assert_eq!(doc["exit_code"], 1);
    // A command line that does not parse, with --json, is a JSON document too.
    let o = Command::new(env!("CARGO_BIN_EXE_flopmeter"))
        .args(["probe", "--json", "--seconds", "many"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        doc["error"].as_str().unwrap().contains("--seconds"),
        "{doc}"
    );
}

/// A node none of whose GPUs could be estimated says so, instead of a node total of zero
/// that reads like an idle node.
#[test]
fn probe_on_a_node_without_any_estimate_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("unknown.toml");
    let shipped = std::fs::read_to_string(scenario("a100-node.toml")).unwrap();
    // The same node with a GPU no catalogue entry matches (by PCI id or name).
    let unknown = shipped
        .replace("NVIDIA A100-SXM4-80GB", "Mystery Accelerator X1")
        .replace("pci_device_id = 0x20B2", "pci_device_id = 0x7777")
        .replace("count = 8", "count = 2");
    std::fs::write(&path, unknown).unwrap();
    let fake = FakeNvml::from_file(&path).unwrap();
    fake.set_time(10.0).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_flopmeter"))
        .args(["probe", "--seconds", "1", "--nvml-lib"])
        .arg(fake.lib_path())
        .env_remove("FLOPMETER_NVML_LIB")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8(o.stdout).unwrap();
    assert!(text.contains("NOT IN CATALOGUE"), "{text}");
    assert!(
        text.contains("  node   no estimate: none of the 2 GPU(s) could be estimated"),
        "{text}"
    );
    assert!(text.contains("  GPU 0  no estimate\n"), "{text}");
    assert!(
        !text.contains("0.0e0") && !text.contains("0 [0 – 0]"),
        "{text}"
    );
}
