//! The fake as other people's NVML clients see it: nvidia-ml-py (pynvml) and nvitop, real
//! programs from PyPI (`scripts/install-test-deps`), load a private copy of the fake as
//! `libnvidia-ml.so.1` through `LD_LIBRARY_PATH` and must read what the reference scenarios
//! say: `tests/python/foreign_nvml_client.py` holds the assertions, with expected values
//! from the scenario TOML and NVIDIA's documented conventions, never from our code. A fake
//! that only our agent accepted could agree with our agent and still disagree with NVIDIA's
//! driver.

use std::path::{Path, PathBuf};
use std::process::Command;

use fake_nvml::harness::FakeNvml;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn run_case(case: &str, scenario_text: &str, scenario_path: &Path) {
    let fake = FakeNvml::new(scenario_text).unwrap();
    let out = Command::new("python3")
        .arg(repo().join("tests/python/foreign_nvml_client.py"))
        .arg(case)
        .arg(fake.dir())
        .arg(scenario_path)
        .env("LD_LIBRARY_PATH", fake.dir())
        // nvitop would otherwise look for a terminal and user config.
        .env("HOME", fake.dir())
        .output()
        .expect("python3 runs (scripts/install-test-deps installs nvidia-ml-py and nvitop)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{case}: the foreign client disagrees with the scenario (if pynvml or nvitop is \
         missing, run scripts/install-test-deps):\n{text}"
    );
    assert!(text.contains("checks passed"), "{text}");
    eprintln!("{}", text.trim());
}

#[test]
fn pynvml_and_nvitop_read_the_dgx_scenario() {
    let path = repo().join("tests/scenarios/dgx-h100.toml");
    run_case("dgx", &std::fs::read_to_string(&path).unwrap(), &path);
}

#[test]
fn pynvml_and_nvitop_read_the_mig_scenario() {
    let path = repo().join("tests/scenarios/h100-mig.toml");
    run_case("mig", &std::fs::read_to_string(&path).unwrap(), &path);
}

#[test]
fn pynvml_sees_the_success_answer_to_the_count_query() {
    let path = repo().join("tests/scenarios/dgx-h100.toml");
    let text = format!(
        "process_count_protocol = \"success\"\n{}",
        std::fs::read_to_string(&path).unwrap()
    );
    let dir = tempfile::tempdir().unwrap();
    let variant = dir.path().join("dgx-count-success.toml");
    std::fs::write(&variant, &text).unwrap();
    run_case("count-success", &text, &variant);
}
