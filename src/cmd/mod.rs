//! One module per subcommand. Each owns its clap `Args` struct and a `run` function that
//! writes to the given output, so tests can call it without a process.

use std::process::ExitCode;

pub mod agent;
pub mod certs;
pub mod client;
pub mod collector;
pub mod compliance;
pub mod demo;
pub mod estimate;
pub mod gpus;
pub mod ledger;
pub mod loadgen;
pub mod model;
pub mod models;
mod ready;
pub mod report;

/// Logs to stderr, filtered by `FLOPMETER_LOG` (default `info`), as text or JSON lines. Shared
/// by the long-running subcommands (agent, collector) so their logs look alike.
pub fn init_logging(json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_env("FLOPMETER_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// An error the user can fix by changing the command line: exit code 2, like clap's own.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// A typed error the user can fix (a file they named, a value they gave): exit code 2 like
/// [`UsageError`], but its source chain is the error's own, so the causes are still there to
/// print and to downcast.
#[derive(Debug, thiserror::Error)]
pub enum InvalidInput {
    /// The error says it all (it names its file or flag).
    #[error(transparent)]
    Error(Box<dyn std::error::Error + Send + Sync + 'static>),
    /// A flag's value its parser refused: `--flag: why`.
    #[error("--{flag}: {source}")]
    Flag {
        /// The flag, without dashes (and the value, where the error does not repeat it).
        flag: String,
        /// The parser's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
}

/// Opens the PostgreSQL ledger at `url` (`--store`, the collectors' DSN) for an offline
/// tool. Unlike a sled directory it may be read while collectors write it.
pub fn open_store(url: &str) -> anyhow::Result<flopmeter_collector::storage::Stores> {
    let backend = flopmeter_collector::storage::Backend::postgres(url, 2)
        .map_err(|e| InvalidInput::flag("store", e))?;
    Ok(flopmeter_collector::storage::open(&backend)?)
}

impl InvalidInput {
    /// Wraps `e`, which names what to fix.
    pub fn new<E: std::error::Error + Send + Sync + 'static>(e: E) -> InvalidInput {
        InvalidInput::Error(Box::new(e))
    }

    /// Wraps `e`, the refusal of `--flag`'s value.
    pub fn flag<E: std::error::Error + Send + Sync + 'static>(
        flag: impl Into<String>,
        e: E,
    ) -> InvalidInput {
        InvalidInput::Flag {
            flag: flag.into(),
            source: Box::new(e),
        }
    }
}

/// An error's message and the causes worth a line of their own: a cause whose text the
/// lines before it already say (a wrapper that prints its source, a library that repeats
/// itself) is left out.
pub fn error_lines(e: &anyhow::Error) -> (String, Vec<String>) {
    let head = e.to_string();
    let mut said = head.clone();
    let mut causes = Vec::new();
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if text.trim().is_empty() || said.contains(&text) {
            continue;
        }
        said.push('\n');
        said.push_str(&text);
        causes.push(text);
    }
    (head, causes)
}

/// Prints an error with its causes and picks the exit code: 2 for usage errors, 1 otherwise.
/// With `json_out` (the command was asked for `--json`), the error is also written there as
/// `{"error": …, "caused_by": […], "exit_code": …}`, so a script reading stdout gets a
/// document rather than nothing.
pub fn report_error(e: &anyhow::Error, json_out: Option<&mut dyn std::io::Write>) -> ExitCode {
    // A reader that went away (`flopmeter gpus | head`) is not an error worth a message.
    let broken_pipe = e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    });
    if broken_pipe {
        return ExitCode::SUCCESS;
    }
    // Errors quote what the collector or a file said, which may quote a name: escaped too.
    let safe = |t: &str| flopmeter_core::text::escape_for_terminal_keeping(t, &['\n']).into_owned();
    let (head, causes) = error_lines(e);
    eprintln!("error: {}", safe(&head));
    for cause in &causes {
        eprintln!("  caused by: {}", safe(cause));
    }
    let usage =
        e.downcast_ref::<UsageError>().is_some() || e.downcast_ref::<InvalidInput>().is_some();
    if let Some(out) = json_out {
        let doc = serde_json::json!({
            "error": head,
            "caused_by": causes,
            "exit_code": if usage { 2 } else { 1 },
        });
        let _ = writeln!(out, "{doc:#}");
    }
    if usage {
        // A range check after parsing names the flag; say when the file supplied it.
        if let Some(s) = crate::config::file_settings_in_use()
            && let Some((table, key)) = s.key_named_in(&head)
        {
            eprintln!(
                "  set in config file {} as [{table}] {key}",
                s.path.display()
            );
        }
        ExitCode::from(2)
    } else {
        ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A typed input error is a usage error (exit code 2, `exit_code` 2 in JSON) and keeps
    /// its causes: each is printed once, none is folded into a string.
    #[test]
    fn invalid_input_keeps_its_cause_and_exits_2() {
        let parse = flopmeter_core::utc::parse_utc("tomorrow").unwrap_err();
        let e = anyhow::Error::from(InvalidInput::flag("since", parse.clone()));
        assert!(
            e.chain()
                .any(|c| c.downcast_ref::<flopmeter_core::utc::UtcParseError>() == Some(&parse))
        );
        let (head, causes) = error_lines(&e);
        assert!(
            head.starts_with("--since: \"tomorrow\" is not a time"),
            "{head}"
        );
        assert!(
            causes.is_empty(),
            "the cause is in the head already: {causes:?}"
        );
        let mut json = Vec::new();
        let code = report_error(&e, Some(&mut json));
        assert_eq!(code, ExitCode::from(2));
        let doc: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(doc["exit_code"], 2);
        let io = std::io::Error::other("disk on fire");
        let e = anyhow::Error::from(InvalidInput::new(io));
        assert_eq!(report_error(&e, None), ExitCode::from(2));
    }
}
