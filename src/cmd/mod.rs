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
    let usage = e.downcast_ref::<UsageError>().is_some();
    if let Some(out) = json_out {
        let doc = serde_json::json!({
            "error": head,
            "caused_by": causes,
            "exit_code": if usage { 2 } else { 1 },
        });
        let _ = writeln!(out, "{doc:#}");
    }
    if let Some(UsageError(m)) = e.downcast_ref::<UsageError>() {
        // A range check after parsing names the flag; say when the file supplied it.
        if let Some(s) = crate::config::file_settings_in_use()
            && let Some((table, key)) = s.key_named_in(m)
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
