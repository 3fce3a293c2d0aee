//! The `flopmeter` binary as users run it: text and JSON output, and the errors bad input gets.

use std::process::{Command, Output};

fn flopmeter(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_flopmeter"))
        .args(args)
        // Keep the developer's own FLOPMETER_* settings out of the test.
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .output()
        .expect("flopmeter runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

const ACCEPTANCE: &[&str] = &[
    "estimate",
    "--gpu",
    "h100-sxm",
    "--count",
    "1024",
    "--days",
    "90",
    "--tensor-util",
    "0.4",
];

/// The acceptance example: central = 989e12 × 0.4 × 1024 × 90 × 86400 within 1%,
/// 10^25 not crossed, 10^23 crossed on day 3.
#[test]
fn estimate_json_acceptance_example() {
    let mut args = ACCEPTANCE.to_vec();
    args.push("--json");
    let o = flopmeter(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let central = v["flop"]["central"].as_f64().unwrap();
    let expect = 989e12 * 0.4 * 1024.0 * 90.0 * 86_400.0;
    assert!(
        (central / expect - 1.0).abs() < 0.01,
        "{central} vs {expect}"
    );
    assert!(v["flop"]["low"].as_f64().unwrap() <= central);
    assert!(v["flop"]["high"].as_f64().unwrap() >= central);
    assert_eq!(v["method"], "gpm-tensor");
    let t = |name: &str| {
        v["thresholds"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == name)
            .unwrap_or_else(|| panic!("{name} missing"))
            .clone()
    };
    assert_eq!(t("eu-systemic-risk")["crossed"], false);
    assert!(t("eu-systemic-risk")["crossing_day"].is_null());
    assert_eq!(t("eu-gpai-indicative")["crossed"], true);
    assert_eq!(t("eu-gpai-indicative")["crossing_day"], 3);
    assert_eq!(t("eu-gpai-indicative")["flop"].as_f64().unwrap(), 1e23);
    assert_eq!(t("us-ca-sb53")["crossed"], false);
}

#[test]
fn estimate_text_names_the_method_and_thresholds() {
    let o = flopmeter(ACCEPTANCE);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("gpm-tensor"), "{out}");
    assert!(out.contains("3.2e24 central"), "{out}");
    assert!(out.contains("eu-gpai-indicative"), "{out}");
    assert!(out.contains("crossed on day 3"), "{out}");
    assert!(out.contains("eu-systemic-risk"), "{out}");
    assert!(out.contains("Pass --precision"), "{out}");
}

/// A run declared above 10^25 says the clock can start before it begins; 6·N·D is shown.
#[test]
fn estimate_above_systemic_risk_with_architecture_check() {
    let o = flopmeter(&[
        "estimate",
        "--gpu",
        "0x2330",
        "--count",
        "16384",
        "--days",
        "60",
        "--mfu",
        "0.4",
        "--precision",
        "bf16",
        "--params",
        "405e9",
        "--tokens",
        "15.6e12",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("(declared)"), "{out}");
    assert!(out.contains("6·N·D      3.8e25"), "{out}");
    assert!(out.contains("Art. 52(1)"), "{out}");
}

#[test]
fn unknown_gpu_lists_close_matches() {
    let o = flopmeter(&[
        "estimate", "--gpu", "h100", "--count", "8", "--days", "1", "--mfu", "0.4",
    ]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(err.contains("unknown GPU \"h100\""), "{err}");
    assert!(
        err.contains("h100-sxm") && err.contains("h100-pcie"),
        "{err}"
    );
    assert!(err.contains("flopmeter gpus"), "{err}");
}

#[test]
fn utilisation_outside_unit_interval_is_refused() {
    for bad in ["1.5", "-0.1", "0"] {
        let o = flopmeter(&[
            "estimate",
            "--gpu",
            "a100-sxm",
            "--count",
            "8",
            "--days",
            "1",
            "--tensor-util",
            bad,
        ]);
        assert_eq!(o.status.code(), Some(2), "{bad}");
        assert!(stderr(&o).contains("within 0..1"), "{bad}: {}", stderr(&o));
    }
}

#[test]
fn negative_or_zero_count_is_refused() {
    for bad in ["-3", "0"] {
        let o = flopmeter(&[
            "estimate", "--gpu", "a100-sxm", "--count", bad, "--days", "1", "--mfu", "0.4",
        ]);
        assert_eq!(o.status.code(), Some(2), "{bad}");
        assert!(
            stderr(&o).contains("--count must be a positive number"),
            "{}",
            stderr(&o)
        );
    }
}

#[test]
fn precision_the_gpu_lacks_is_refused() {
    let o = flopmeter(&[
        "estimate",
        "--gpu",
        "a100-sxm",
        "--count",
        "8",
        "--days",
        "1",
        "--mfu",
        "0.4",
        "--precision",
        "fp8",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("a100-sxm has no dense fp8 peak"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn missing_duration_and_conflicts_are_usage_errors() {
    let o = flopmeter(&[
        "estimate", "--gpu", "a100-sxm", "--count", "8", "--mfu", "0.4",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--days"), "{}", stderr(&o));
    let o = flopmeter(&[
        "estimate",
        "--gpu",
        "a100-sxm",
        "--count",
        "8",
        "--days",
        "1",
        "--mfu",
        "0.4",
        "--tensor-util",
        "0.4",
    ]);
    assert_eq!(o.status.code(), Some(2));
    let o = flopmeter(&[
        "estimate", "--gpu", "a100-sxm", "--count", "8", "--days", "1", "--mfu", "0.4", "--params",
        "7e9",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--tokens"), "{}", stderr(&o));
}

#[test]
fn flags_read_from_env() {
    let o = Command::new(env!("CARGO_BIN_EXE_flopmeter"))
        .args(["estimate", "--json"])
        .env_clear()
        .env("FLOPMETER_GPU", "h100-sxm")
        .env("FLOPMETER_COUNT", "1024")
        .env("FLOPMETER_DAYS", "90")
        .env("FLOPMETER_TENSOR_UTIL", "0.4")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["gpu"]["count"], 1024);
}

#[test]
fn gpus_lists_the_catalogue() {
    let o = flopmeter(&["gpus"]);
    assert!(o.status.success());
    let out = stdout(&o);
    for id in ["h100-sxm", "h20", "gb200", "v100-pcie"] {
        assert!(out.contains(id), "{id} missing from\n{out}");
    }
    let o = flopmeter(&["gpus", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let h100 = v
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == "h100-sxm")
        .unwrap();
    assert_eq!(h100["peaks"]["bf16"], 989.0);
    // Hex, as `probe` and NVIDIA's tools write PCI device ids.
    assert_eq!(h100["pci_device_ids"][0], "0x2330");
}

/// An error's "caused by" lines never repeat what was already said, and `--json` commands
/// print their fatal error as JSON on stdout.
#[test]
fn errors_say_each_cause_once_and_in_json_under_json() {
    // Nothing listens on port 1: tonic's error chain says "tcp connect error" twice.
    let o = flopmeter(&["models", "--collector", "http://127.0.0.1:1"]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.contains("cannot reach the collector"), "{err}");
    let lines: Vec<&str> = err.lines().collect();
    let mut seen = std::collections::BTreeSet::new();
    for l in &lines {
        assert!(seen.insert(*l), "{l:?} repeated in\n{err}");
    }
    assert!(stdout(&o).is_empty());

    let o = flopmeter(&["models", "--json", "--collector", "http://127.0.0.1:1"]);
    assert_eq!(o.status.code(), Some(1));
    let doc: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert!(
        doc["error"]
            .as_str()
            .unwrap()
            .contains("cannot reach the collector"),
        "{doc}"
    );
    assert_eq!(doc["exit_code"], 1);
    let causes: Vec<&str> = doc["caused_by"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(
        causes.iter().filter(|c| **c == "tcp connect error").count(),
        1,
        "{doc}"
    );
}

#[test]
fn help_teaches() {
    let o = flopmeter(&["estimate", "--help"]);
    let out = stdout(&o);
    assert!(out.contains("Examples:"), "{out}");
    assert!(out.contains("FLOPMETER_GPU"), "{out}");
}

/// CLI > env > config file > default, on a real process.
#[test]
fn config_file_supplies_defaults_below_env_and_flags() {
    let dir = std::env::temp_dir().join(format!("flopmeter-cli-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("flopmeter.toml");
    std::fs::write(
        &file,
        "[estimate]\ngpu = \"h100-sxm\"\ncount = 8\ndays = 90\ntensor-util = 0.4\njson = true\n",
    )
    .unwrap();
    let run = |extra_env: &[(&str, &str)], args: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_flopmeter"));
        c.env_clear().env("FLOPMETER_CONFIG", &file).args(args);
        for (k, v) in extra_env {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    let count = |o: &Output| {
        assert!(o.status.success(), "{}", stderr(o));
        serde_json::from_str::<serde_json::Value>(&stdout(o)).unwrap()["gpu"]["count"].as_u64()
    };
    assert_eq!(count(&run(&[], &["estimate"])), Some(8));
    assert_eq!(
        count(&run(&[("FLOPMETER_COUNT", "16")], &["estimate"])),
        Some(16)
    );
    assert_eq!(
        count(&run(
            &[("FLOPMETER_COUNT", "16")],
            &["estimate", "--count", "32"]
        )),
        Some(32)
    );

    std::fs::write(&file, "[estimate]\ngpus = \"h100-sxm\"\n").unwrap();
    let o = run(&[], &["estimate"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("no option \"gpus\""), "{}", stderr(&o));
    std::fs::remove_dir_all(&dir).unwrap();
}
