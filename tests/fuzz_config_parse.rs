//! Fuzz target `config_parse`: arbitrary and mutated TOML for every parsed file: the CLI
//! config-file layer (`src/config.rs`, on the real `agent` and `collector` arguments), the
//! collector's thresholds file, the agent tokens file and the simulated workload.
//!
//! Property: nothing panics (including clap's checks when the file's values become
//! defaults, and the simulated source built from a workload that parsed); a refusal is a
//! typed error whose message names the file (and, for a key the layer refuses, the key).
//!
//! Inputs: every file of `fuzz/corpus/config_parse` through every parser, then
//! `FLOPMETER_FUZZ_CASES` (default 400) byte-level mutations of them and as many generated
//! TOML documents built from the real option names and hostile values.

#[allow(dead_code, unreachable_pub)]
#[path = "../src/config.rs"]
mod config;

use crate::fuzz_support;

use std::path::Path;
use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand};
use flopmeter_agent::gpu::GpuSource;
use flopmeter_agent::simulated::{SimulatedSource, Workload};
use flopmeter_collector::config::{CollectorArgs, parse_agent_tokens, parse_thresholds};
use fuzz_support::{corpus, mutate, mutation, no_panic};
use proptest::prelude::*;

const TARGET: &str = "config_parse";

#[derive(Debug, Parser)]
#[command(name = "flopmeter")]
struct Cli {
    #[command(subcommand)]
    command: Sub,
}

#[derive(Debug, Subcommand)]
enum Sub {
    Agent(flopmeter_agent::AgentArgs),
    Collector(CollectorArgs),
}

fn cli(text: &str) -> Result<(), String> {
    let path = Path::new("/etc/flopmeter/fuzz.toml");
    match config::apply_str(Cli::command(), path, text) {
        Err(e) => {
            let msg = e.to_string();
            if !msg.contains("/etc/flopmeter/fuzz.toml") {
                return Err(format!("config error does not name the file: {msg}"));
            }
            if let config::ConfigFileError::UnknownKey { key, .. }
            | config::ConfigFileError::BadValue { key, .. } = &e
                && !msg.contains(key.as_str())
            {
                return Err(format!("config error does not name the key {key:?}: {msg}"));
            }
        }
        Ok(cmd) => {
            // The file's values are now defaults: clap validates them like typed values.
            for sub in ["agent", "collector"] {
                let _ = cmd.clone().try_get_matches_from(["flopmeter", sub]);
            }
        }
    }
    Ok(())
}

fn thresholds(text: &str) -> Result<(), String> {
    match parse_thresholds(Path::new("/etc/flopmeter/thresholds.toml"), text) {
        Err(e) if !e.to_string().contains("/etc/flopmeter/thresholds.toml") => {
            Err(format!("thresholds error does not name the file: {e}"))
        }
        _ => Ok(()),
    }
}

fn tokens(text: &str) -> Result<(), String> {
    match parse_agent_tokens(Path::new("/etc/flopmeter/tokens.toml"), text) {
        Err(e) if !e.to_string().contains("/etc/flopmeter/tokens.toml") => {
            Err(format!("tokens error does not name the file: {e}"))
        }
        Ok(t) if t.values().any(String::is_empty) => Err("an empty token was accepted".into()),
        _ => Ok(()),
    }
}

fn workload(text: &str) -> Result<(), String> {
    match Workload::from_toml(text) {
        Err(e) if e.to_string().trim().is_empty() => Err("empty workload error".into()),
        Err(_) => Ok(()),
        Ok(w) => {
            let mut src = SimulatedSource::new(w)
                .map_err(|e| format!("a workload that parsed is refused by the source: {e}"))?;
            for s in [0, 10, 20] {
                let _ = src.read(Duration::from_secs(s));
            }
            Ok(())
        }
    }
}

fn all(text: &str) -> Result<(), TestCaseError> {
    for (name, f) in [
        ("cli", cli as fn(&str) -> Result<(), String>),
        ("thresholds", thresholds),
        ("tokens", tokens),
        ("workload", workload),
    ] {
        no_panic(text.as_bytes(), || f(text))?
            .map_err(|e| TestCaseError::fail(format!("{name}: {e} (input {text:?})")))?;
    }
    Ok(())
}

#[test]
fn config_parse_corpus_replays() {
    let c = corpus(TARGET);
    assert!(c.len() >= 10, "the corpus is missing");
    for (name, bytes) in &c {
        let text = String::from_utf8_lossy(bytes);
        if let Err(e) = all(&text) {
            panic!("corpus entry {name}: {e}");
        }
    }
    // The valid entries stay valid (a parser that refused everything would pass above).
    let ok = |name: &str| {
        String::from_utf8(std::fs::read(fuzz_support::corpus_dir(TARGET).join(name)).unwrap())
            .unwrap()
    };
    assert!(config::apply_str(Cli::command(), Path::new("x"), &ok("cli_valid.toml")).is_ok());
    assert!(parse_thresholds(Path::new("x"), &ok("thresholds_valid.toml")).is_ok());
    assert!(parse_agent_tokens(Path::new("x"), &ok("tokens_valid.toml")).is_ok());
    assert!(Workload::from_toml(&ok("workload_valid.toml")).is_ok());
}

fn corpus_cached() -> &'static [(String, Vec<u8>)] {
    static C: std::sync::OnceLock<Vec<(String, Vec<u8>)>> = std::sync::OnceLock::new();
    C.get_or_init(|| corpus(TARGET))
}

/// Option names of the real subcommands, so generated documents reach clap's checks.
fn keys() -> Vec<String> {
    let cmd = Cli::command();
    let mut out: Vec<String> = cmd
        .get_subcommands()
        .flat_map(|s| {
            s.get_arguments()
                .filter_map(|a| a.get_long())
                .map(str::to_string)
        })
        .collect();
    out.extend(
        [
            "gpu",
            "count",
            "tensor_util",
            "gpu_util",
            "sm_clock_mhz",
            "power_watts",
            "decision_bound",
            "level",
            "enabled",
            "fraction_of_base",
            "obligation",
            "agent-1",
            "pid",
            "sm_share",
            "from_seconds",
            "until_seconds",
            "gpus",
        ]
        .map(String::from),
    );
    out
}

fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("\"\"".to_string()),
        Just("0".to_string()),
        Just("-1".to_string()),
        Just("9223372036854775807".to_string()),
        Just("-9223372036854775808".to_string()),
        Just("1e308".to_string()),
        Just("nan".to_string()),
        Just("-inf".to_string()),
        Just("true".to_string()),
        Just("[]".to_string()),
        Just("[1, \"a\", true]".to_string()),
        Just("[[1]]".to_string()),
        Just("{ a = 1 }".to_string()),
        Just("1979-05-27T07:32:00Z".to_string()),
        Just("\"h100-sxm\"".to_string()),
        Just("\"1e25\"".to_string()),
        Just("\"30s\"".to_string()),
        Just("\"0.0.0.0:0\"".to_string()),
        Just("\"\\u0000\\u001b[2J\"".to_string()),
        any::<i64>().prop_map(|i| i.to_string()),
        any::<f64>().prop_map(|f| format!("{f:?}")),
        any::<String>().prop_map(|s| format!("{s:?}")),
    ]
}

fn document() -> impl Strategy<Value = String> {
    let keys = keys();
    let table = prop_oneof![
        Just(String::new()),
        Just("[agent]\n".to_string()),
        Just("[collector]\n".to_string()),
        Just("[thresholds.eu-systemic-risk]\n".to_string()),
        Just("[thresholds.new-one]\n".to_string()),
        Just("[[process]]\n".to_string()),
        Just("[nope]\n".to_string()),
    ];
    prop::collection::vec(
        (
            table,
            prop::collection::vec((prop::sample::select(keys), value()), 0..6),
        ),
        1..4,
    )
    .prop_map(|tables| {
        let mut out = String::new();
        for (header, kvs) in tables {
            out.push_str(&header);
            for (k, v) in kvs {
                out.push_str(&format!("{k} = {v}\n"));
            }
        }
        out
    })
}

proptest! {
    #![proptest_config(fuzz_support::config(400))]

    #[test]
    fn config_parse_mutated_corpus(
        seed in any::<prop::sample::Index>(),
        muts in prop::collection::vec(mutation(), 1..6),
    ) {
        let c = corpus_cached();
        let bytes = mutate(&c[seed.index(c.len())].1, &muts, c);
        all(&String::from_utf8_lossy(&bytes))?;
    }

    #[test]
    fn config_parse_generated_documents(doc in document()) {
        all(&doc)?;
    }
}
