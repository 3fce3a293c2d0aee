//! What other people typed reaches an operator's terminal escaped (issue 12, item 6).
//!
//! A ledger written before names were checked at the door holds a model whose name carries
//! a terminal escape (ESC [2J clears the screen), a BEL and a right-to-left override, with a
//! plan that starts its notification clock. `flopmeter models`, `runs`, `model show`,
//! `report` and `alerts` must show those characters as `\uXXXX`, never emit them; the JSON
//! output stays valid JSON and decodes to the stored name.

use std::process::Stdio;

use crate::support::{self, eventually, flopmeter};
use flopmeter_collector::ledger::sled_store::SledStore;
use flopmeter_collector::ledger::{CheckedRecord, IncomingBatch, LedgerStore, ModelEntry};
use flopmeter_proto::v1::{IntervalRecord, WorkloadIdentity};

const EVIL: &str = "evil\u{1b}[2J\u{7}\u{202e}ledom";

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn ledger(dir: &std::path::Path) {
    let s = SledStore::open(dir).unwrap();
    s.set_model_entry(&ModelEntry {
        model: EVIL.into(),
        declared: flopmeter_core::declaration::Declaration {
            planned_flop: Some(2 * 10u128.pow(25)),
            ..Default::default()
        },
        updated_unix_ms: now_ms() - 60_000,
        updated_by: Some("old\u{1b}]0;title\u{7}".into()),
        ..ModelEntry::default()
    })
    .unwrap();
    let end = now_ms() - 60_000;
    let record = IntervalRecord {
        seq: 1,
        start_unix_ms: end - 10_000,
        end_unix_ms: end,
        gpu_uuid: "GPU-0".into(),
        gpu_type: "h100-sxm".into(),
        flop_low: 1_000,
        flop_central: 2_000,
        flop_high: 3_000,
        gpu_ms: 10_000,
        identity: Some(WorkloadIdentity {
            model: EVIL.into(),
            run: "run\u{202e}1".into(),
            ..WorkloadIdentity::default()
        }),
        ..IntervalRecord::default()
    };
    s.apply_batch(&IncomingBatch {
        agent_id: "old-agent".into(),
        node: "old-node".into(),
        received_unix_ms: end,
        records: vec![CheckedRecord::new(record, None)],
    })
    .unwrap();
    s.flush().unwrap();
}

fn assert_escaped(what: &str, out: &std::process::Output) {
    assert_escaped_as(what, out, "evil\\u001B[2J\\u0007\\u202Eledom");
}

fn assert_escaped_as(what: &str, out: &std::process::Output, shown: &str) {
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for raw in ['\u{1b}', '\u{7}', '\u{202e}'] {
        assert!(
            !text.contains(raw),
            "{what} printed U+{:04X} raw:\n{text:?}",
            u32::from(raw)
        );
    }
    assert!(
        text.contains(shown),
        "{what} does not show {shown:?}:\n{text}"
    );
}

#[test]
fn names_and_texts_reach_the_terminal_escaped() {
    let dir = tempfile::tempdir().unwrap();
    ledger(dir.path());
    let c = support::collector(dir.path())
        .args(["--min-free-mb", "0"])
        .start();
    // The plan above 10^25 starts a clock and an alert at the engine's first pass.
    eventually("an alert for the model", || {
        c.get("/api/v1/alerts")
            .is_some_and(|a| a.to_string().contains("ledom"))
    });
    let url = c.url();
    let run = |args: &[&str]| {
        let mut a = args.to_vec();
        a.extend(["--collector", &url]);
        flopmeter(&a).stdout(Stdio::piped()).output().unwrap()
    };
    assert_escaped("models", &run(&["models"]));
    assert_escaped_as("runs", &run(&["runs", "--model", EVIL]), "run\\u202E1");
    assert_escaped("model show", &run(&["model", "show", EVIL]));
    assert_escaped("report", &run(&["report", "--model", EVIL]));
    assert_escaped("alerts", &run(&["alerts"]));

    // JSON stays JSON, and decodes to the name as stored.
    let json = run(&["models", "--json"]);
    // serde_json escapes the controls itself (lowercase); the override is ours.
    assert_escaped_as("models --json", &json, "evil\\u001b[2J\\u0007\\u202Eledom");
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert!(
        v.as_array()
            .unwrap()
            .iter()
            .any(|m| m["model"].as_str() == Some(EVIL)),
        "{v}"
    );
}
