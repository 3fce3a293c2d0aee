//! Bad configuration files and bad values, as users meet them: each refusal names the file
//! and the key (or the flag) and exits 2, the code for input the user can fix. Covers the
//! `--config` layer (not TOML, unknown key, wrong type, a table where a value belongs, out
//! of range, a missing file), the collector's thresholds and agent tokens files, and the
//! simulated workload file.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs `flopmeter args`, with nothing from the environment. A command that keeps running
/// (a collector that accepted its configuration) is killed: its status is then `None`.
fn run(args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_flopmeter"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("FLOPMETER_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Bounded only so that a configuration wrongly accepted cannot hang the suite.
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    child.wait_with_output().unwrap()
}

fn refused(o: &Output, wants: &[&str]) {
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    for w in wants {
        assert!(err.contains(w), "missing {w:?} in: {err}");
    }
    assert!(!err.contains("panicked"), "{err}");
}

fn file(dir: &Path, name: &str, body: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p.display().to_string()
}

const ESTIMATE: &str = "gpu = \"h100-sxm\"\ndays = 90\ntensor-util = 0.4\n";

#[test]
fn config_file_errors_name_the_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    let f = file(d, "not.toml", "[estimate\ngpu = \"h100-sxm\n");
    refused(
        &run(&["estimate", "--config", &f]),
        &[&format!("config file {f} is not valid TOML"), "line 1"],
    );

    let f = file(
        d,
        "unknown.toml",
        &format!("[estimate]\n{ESTIMATE}gpus = 8\n"),
    );
    refused(
        &run(&["estimate", "--config", &f]),
        &[&format!(
            "config file {f}: [estimate] has no option \"gpus\""
        )],
    );

    let f = file(d, "table.toml", "[nope]\nx = 1\n");
    refused(
        &run(&["estimate", "--config", &f]),
        &[&format!("config file {f}: [nope] is not a subcommand")],
    );

    let f = file(
        d,
        "type.toml",
        &format!("[estimate]\n{ESTIMATE}count = \"many\"\n"),
    );
    refused(
        &run(&["estimate", "--config", &f]),
        &[&format!(
            "config file {f}: [estimate] count: invalid value 'many'"
        )],
    );

    let f = file(
        d,
        "value.toml",
        &format!("[estimate]\n{ESTIMATE}count = {{ n = 8 }}\n"),
    );
    refused(
        &run(&["estimate", "--config", &f]),
        &[&format!(
            "config file {f}: [estimate] count must be a string, number"
        )],
    );

    // Through FLOPMETER_CONFIG too, and the command line still wins over the file.
    let f = file(
        d,
        "range.toml",
        &format!("[estimate]\n{ESTIMATE}count = 8\nparams = \"-7e9\"\ntokens = \"1e12\"\n"),
    );
    refused(
        &run(&["estimate", "--config", &f]),
        &[
            &format!("config file {f}: [estimate] params"),
            "is negative",
        ],
    );

    // Out of range, found after parsing: the flag and where it was set.
    let f = file(d, "collector.toml", "[collector]\npeak-tolerance = 0.5\n");
    let data = d.join("ledger");
    refused(
        &run(&[
            "collector",
            "--config",
            &f,
            "--data-dir",
            data.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
        ]),
        &[
            "--peak-tolerance must be at least 1.0, got 0.5",
            &format!("set in config file {f} as [collector] peak-tolerance"),
        ],
    );

    let missing = d.join("missing.toml").display().to_string();
    refused(
        &run(&["estimate", "--config", &missing]),
        &[&format!("cannot read config file {missing}")],
    );
}

fn collector_with(dir: &Path, flag: &str, path: &str) -> Output {
    let data = dir.join("ledger");
    run(&[
        "collector",
        flag,
        path,
        "--data-dir",
        data.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--http-addr",
        "127.0.0.1:0",
    ])
}

#[test]
fn thresholds_and_tokens_file_errors_name_the_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (body, wants) in [
        (
            "[thresholds.Bad_Id]\nlevel = \"1e25\"\n",
            "threshold id \"Bad_Id\" is invalid",
        ),
        (
            "[thresholds.eu-systemic-risk]\nlevel = \"-1e25\"\n",
            "level",
        ),
        (
            "[thresholds.eu-systemic-risk]\nlevel = \"1e24\"\nfraction_of_base = \"1/3\"\n",
            "threshold \"eu-systemic-risk\": give either `level` or `fraction_of_base`",
        ),
        // A wrong type: the parser's message points at the line and the key.
        (
            "[thresholds.x]\nfraction_of_base = 0.3\n",
            "fraction_of_base = 0.3",
        ),
        (
            "[thresholds.typo]\nenabled = false\n",
            "threshold \"typo\" is not a known threshold",
        ),
        ("decision_bound = \"middle\"\n", "decision_bound"),
    ] {
        let f = file(d, "thresholds.toml", body);
        refused(
            &collector_with(d, "--thresholds", &f),
            &[&format!("thresholds file {f}"), wants],
        );
    }
    for (body, wants) in [
        ("agent-1 = \"\"\n", "the token for \"agent-1\" is empty"),
        (
            "agent-1 = \"same\"\nagent-2 = \"same\"\n",
            "\"agent-1\" and \"agent-2\" have the same token",
        ),
        ("agent-1 = \"a\"\nagent-1 = \"b\"\n", "duplicate key"),
        (
            "agent-1 = 42\n",
            "the value for \"agent-1\" is not a string",
        ),
    ] {
        let f = file(d, "tokens.toml", body);
        refused(
            &collector_with(d, "--agent-tokens", &f),
            &[&format!("agent tokens file {f}"), wants],
        );
    }
    let missing = d.join("nope.toml").display().to_string();
    refused(
        &collector_with(d, "--agent-tokens", &missing),
        &[&format!("cannot read agent tokens file {missing}")],
    );
}

#[test]
fn workload_file_errors_name_the_file_and_key() {
    use flopmeter_agent::simulated::Workload;
    let dir = tempfile::tempdir().unwrap();
    for (body, wants) in [
        (
            "gpu = \"h100-sxm\"\ncount = 4294967295\ntensor_util = 0.4\n",
            "count",
        ),
        (
            "gpu = \"h100-sxm\"\ncount = 2\ntensor_util = 1.5\n",
            "tensor_util",
        ),
        (
            "gpu = \"h100-sxm\"\ncount = 2\ntensor_util = 0.5\nextra = 1\n",
            "extra",
        ),
        (
            "gpu = \"h100-sxm\"\ncount = 2\ntensor_util = 0.5\n[[process]]\npid = 1\nsm_share = nan\n",
            "sm_share",
        ),
        (
            "gpu = \"h100-sxm\"\ncount = 2\ntensor_util = 0.5\n[[process]]\npid = 1\ngpus = [2]\n",
            "GPU 2",
        ),
    ] {
        let f = dir.path().join("workload.toml");
        std::fs::write(&f, body).unwrap();
        let e = Workload::load(&f).unwrap_err().to_string();
        assert!(e.contains(&format!("workload file {}", f.display())), "{e}");
        assert!(e.contains(wants), "missing {wants:?} in {e}");
    }
}
