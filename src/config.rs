//! The configuration file layer: CLI > environment > config file > built-in default.
//!
//! Every flag of every subcommand is a clap argument with a `FLOPMETER_*` environment
//! variable. The config file adds one more layer beneath those two without a second
//! definition of the options: its values become the arguments' *defaults*, so clap's own
//! precedence (command line, then environment, then default) gives the documented order, and
//! its own parsers validate file values exactly like typed ones.
//!
//! The file is TOML with one table per subcommand, keyed by long flag names:
//!
//! ```toml
//! [agent]
//! collector = "http://collector.flopmeter:7443"
//! spool-dir = "/var/lib/flopmeter/spool"
//!
//! [collector]
//! data-dir = "/var/lib/flopmeter/ledger"
//! ```
//!
//! It is named by `--config FILE` or `FLOPMETER_CONFIG`. A key that names no flag is an error
//! that lists the valid keys: a typo in a config file must not silently fall back to a
//! default.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::{ArgMatches, Command, CommandFactory, FromArgMatches};

/// Environment variable naming the config file.
pub const CONFIG_ENV: &str = "FLOPMETER_CONFIG";

/// Why the config file could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("config file {path} is not valid TOML: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// A top-level key is not a subcommand table.
    #[error(
        "config file {path}: [{table}] is not a subcommand with options; expected one of: {known}"
    )]
    UnknownTable {
        /// The file.
        path: PathBuf,
        /// The offending table.
        table: String,
        /// Valid tables.
        known: String,
    },
    /// A key names no flag of its subcommand.
    #[error("config file {path}: [{table}] has no option {key:?}; valid options: {known}")]
    UnknownKey {
        /// The file.
        path: PathBuf,
        /// The table.
        table: String,
        /// The offending key.
        key: String,
        /// Valid keys.
        known: String,
    },
    /// A value the file gave is refused by its option's parser (a wrong type, out of range).
    #[error("config file {path}: [{table}] {key}: {message}")]
    Value {
        /// The file.
        path: PathBuf,
        /// The table.
        table: String,
        /// The key, as written in the file.
        key: String,
        /// What the option's parser said.
        message: String,
    },
    /// A value has a type no flag can take (a table, a datetime).
    #[error(
        "config file {path}: [{table}] {key} must be a string, number, boolean or array of those"
    )]
    BadValue {
        /// The file.
        path: PathBuf,
        /// The table.
        table: String,
        /// The key.
        key: String,
    },
}

/// Parses the command line of `T`, with the config file (if any) as the defaults layer.
/// On a clap error (including `--help`), clap prints and exits as usual.
pub fn parse<T: CommandFactory + FromArgMatches>() -> Result<T, ConfigFileError> {
    let args: Vec<OsString> = std::env::args_os().collect();
    let path = config_path(&args).or_else(|| std::env::var_os(CONFIG_ENV).map(PathBuf::from));
    let mut cmd = T::command();
    if let Some(path) = &path {
        cmd = apply_file(cmd, path)?;
        let set = file_settings(&cmd, path, &args);
        let _ = FILE_SETTINGS.set(set);
    }
    let matches: ArgMatches = match cmd.try_get_matches_from(&args) {
        Ok(m) => m,
        Err(e) => {
            return Err(from_file_error(&e).unwrap_or_else(|| {
                if e.use_stderr() {
                    let text = e.render().to_string();
                    let first = text.lines().next().unwrap_or_default();
                    json_error_if_asked(first.trim_start_matches("error: "), e.exit_code());
                }
                e.exit()
            }));
        }
    };
    Ok(T::from_arg_matches(&matches).unwrap_or_else(|e| {
        json_error_if_asked(&e.to_string(), e.exit_code());
        e.exit()
    }))
}

/// For an error before the command is known (the command line did not parse): when the
/// arguments ask for `--json`, writes the error as a JSON document on stdout, so a script
/// still reads a document.
pub fn json_error_if_asked(message: &str, exit_code: i32) {
    if std::env::args_os().any(|a| a == "--json") {
        let doc = serde_json::json!({
            "error": message.trim(), "caused_by": [], "exit_code": exit_code,
        });
        println!("{doc:#}");
    }
}

/// Options whose value came from the config file (neither the command line nor the
/// environment set them), so an error about one can name the file and key.
#[derive(Debug)]
pub struct FileSettings {
    /// The file.
    pub path: PathBuf,
    /// (table, key as written, long flag) per option the file set.
    pub keys: Vec<(String, String, String)>,
}

static FILE_SETTINGS: std::sync::OnceLock<FileSettings> = std::sync::OnceLock::new();

/// What the config file set in this process, if one was read.
pub fn file_settings_in_use() -> Option<&'static FileSettings> {
    FILE_SETTINGS.get()
}

impl FileSettings {
    /// The table and key of a file-set option whose flag `message` names (`--peak-tolerance`),
    /// for an error found after parsing (a range check in the subcommand).
    pub fn key_named_in(&self, message: &str) -> Option<(&str, &str)> {
        self.keys.iter().find_map(|(table, key, long)| {
            let flag = format!("--{long}");
            message
                .match_indices(&flag)
                .any(|(i, _)| {
                    !message[i + flag.len()..]
                        .starts_with(|c: char| c.is_ascii_alphanumeric() || c == '-')
                })
                .then_some((table.as_str(), key.as_str()))
        })
    }
}

fn file_settings(cmd: &Command, path: &Path, args: &[OsString]) -> FileSettings {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let table: toml::Table = text.parse().unwrap_or_default();
    let mut keys = Vec::new();
    for (name, value) in &table {
        let (Some(sub), Some(t)) = (cmd.find_subcommand(name), value.as_table()) else {
            continue;
        };
        for key in t.keys() {
            let long = key.replace('_', "-");
            let Some(arg) = sub.get_arguments().find(|a| a.get_long() == Some(&long)) else {
                continue;
            };
            let on_cli = args.iter().any(|a| {
                let a = a.to_string_lossy();
                a == format!("--{long}") || a.starts_with(&format!("--{long}="))
            });
            let in_env = arg.get_env().is_some_and(|v| std::env::var_os(v).is_some());
            if !on_cli && !in_env {
                keys.push((name.clone(), key.clone(), long));
            }
        }
    }
    FileSettings {
        path: path.to_path_buf(),
        keys,
    }
}

/// A clap error about a value the config file supplied, as an error naming file and key.
fn from_file_error(e: &clap::Error) -> Option<ConfigFileError> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if !matches!(
        e.kind(),
        ErrorKind::InvalidValue | ErrorKind::ValueValidation
    ) {
        return None;
    }
    let settings = FILE_SETTINGS.get()?;
    let Some(ContextValue::String(arg)) = e.get(ContextKind::InvalidArg) else {
        return None;
    };
    let (table, key, _) = settings.keys.iter().find(|(_, _, long)| {
        arg == &format!("--{long}") || arg.starts_with(&format!("--{long} "))
    })?;
    let text = e.to_string();
    let first = text.lines().next().unwrap_or_default();
    Some(ConfigFileError::Value {
        path: settings.path.clone(),
        table: table.clone(),
        key: key.clone(),
        message: first.trim_start_matches("error: ").to_string(),
    })
}

/// Finds `--config FILE` or `--config=FILE` before clap runs (clap needs the defaults first).
fn config_path(args: &[OsString]) -> Option<PathBuf> {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let s = a.to_string_lossy();
        if s == "--" {
            break;
        }
        if s == "--config" {
            return it.next().map(PathBuf::from);
        }
        if let Some(rest) = s.strip_prefix("--config=") {
            return Some(PathBuf::from(rest));
        }
    }
    None
}

/// Reads the file and installs its values as defaults of the matching arguments.
pub fn apply_file(cmd: Command, path: &Path) -> Result<Command, ConfigFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    apply_str(cmd, path, &text)
}

/// [`apply_file`] on text already read.
pub fn apply_str(mut cmd: Command, path: &Path, text: &str) -> Result<Command, ConfigFileError> {
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| ConfigFileError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    let subcommands: Vec<String> = cmd
        .get_subcommands()
        .filter(|s| s.get_arguments().any(|a| a.get_long().is_some()))
        .map(|s| s.get_name().to_string())
        .collect();
    for (name, value) in table {
        let Some(sub_table) = value.as_table().filter(|_| subcommands.contains(&name)) else {
            return Err(ConfigFileError::UnknownTable {
                path: path.to_path_buf(),
                table: name,
                known: subcommands.join(", "),
            });
        };
        let sub = cmd.find_subcommand(&name).expect("listed above");
        let known: Vec<String> = sub
            .get_arguments()
            .filter_map(|a| a.get_long())
            .filter(|l| !matches!(*l, "help" | "version" | "config"))
            .map(str::to_string)
            .collect();
        let mut settings: Vec<(String, Vec<String>)> = Vec::new();
        for (key, v) in sub_table {
            let long = key.replace('_', "-");
            let Some(arg) = sub
                .get_arguments()
                .find(|a| a.get_long() == Some(long.as_str()))
            else {
                return Err(ConfigFileError::UnknownKey {
                    path: path.to_path_buf(),
                    table: name.clone(),
                    key: key.clone(),
                    known: known.join(", "),
                });
            };
            let values = scalar_strings(v).ok_or_else(|| ConfigFileError::BadValue {
                path: path.to_path_buf(),
                table: name.clone(),
                key: key.clone(),
            })?;
            settings.push((arg.get_id().to_string(), values));
        }
        // A value from the file satisfies "required": clap does not count defaults toward
        // required arguments or groups, so those requirements are lifted for what the file set.
        let set_ids: Vec<String> = settings.iter().map(|(id, _)| id.clone()).collect();
        let groups: Vec<String> = sub
            .get_groups()
            .filter(|g| {
                g.get_args()
                    .any(|a| set_ids.iter().any(|s| s == a.as_str()))
            })
            .map(|g| g.get_id().to_string())
            .collect();
        cmd = cmd.mut_subcommand(&name, |mut sc| {
            for (id, values) in settings {
                sc = sc.mut_arg(id, |a| a.default_values(values).required(false));
            }
            for g in groups {
                sc = sc.mut_group(g, |g| g.required(false));
            }
            sc
        });
    }
    Ok(cmd)
}

fn scalar_strings(v: &toml::Value) -> Option<Vec<String>> {
    match v {
        toml::Value::String(s) => Some(vec![s.clone()]),
        toml::Value::Integer(i) => Some(vec![i.to_string()]),
        toml::Value::Float(f) => Some(vec![f.to_string()]),
        toml::Value::Boolean(b) => Some(vec![b.to_string()]),
        toml::Value::Array(items) => items
            .iter()
            .map(|i| scalar_strings(i).and_then(|mut v| v.pop()))
            .collect(),
        toml::Value::Datetime(_) | toml::Value::Table(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: Sub,
    }

    #[derive(Debug, clap::Subcommand)]
    enum Sub {
        Run {
            #[arg(
                long,
                env = "FLOPMETER_TEST_CONFIG_SPOOL_DIR",
                default_value = "/builtin"
            )]
            spool_dir: String,
            #[arg(long, default_value_t = 10)]
            report_interval: u32,
            #[arg(long)]
            json: bool,
        },
    }

    fn parse(file: &str, argv: &[&str]) -> Result<Cli, String> {
        let cmd =
            apply_str(Cli::command(), Path::new("test.toml"), file).map_err(|e| e.to_string())?;
        let m = cmd.try_get_matches_from(argv).map_err(|e| e.to_string())?;
        Cli::from_arg_matches(&m).map_err(|e| e.to_string())
    }

    #[test]
    fn file_values_sit_between_cli_and_builtin_defaults() {
        let file = "[run]\nspool-dir = \"/from-file\"\nreport_interval = 30\njson = true\n";
        let Sub::Run {
            spool_dir,
            report_interval,
            json,
        } = parse(file, &["x", "run"]).unwrap().cmd;
        assert_eq!(
            (spool_dir.as_str(), report_interval, json),
            ("/from-file", 30, true)
        );
        let Sub::Run {
            spool_dir,
            report_interval,
            ..
        } = parse(
            file,
            &["x", "run", "--spool-dir", "/cli", "--report-interval", "5"],
        )
        .unwrap()
        .cmd;
        assert_eq!((spool_dir.as_str(), report_interval), ("/cli", 5));
        let Sub::Run { spool_dir, .. } = parse("", &["x", "run"]).unwrap().cmd;
        assert_eq!(spool_dir, "/builtin");
    }

    #[test]
    fn file_values_are_validated_like_flags() {
        let err = parse("[run]\nreport-interval = \"soon\"\n", &["x", "run"]).unwrap_err();
        assert!(err.contains("soon"), "{err}");
    }

    #[test]
    fn typos_and_bad_files_are_errors_that_say_what_to_fix() {
        let err = parse("[run]\nspool-dri = \"/x\"\n", &["x", "run"]).unwrap_err();
        assert!(
            err.contains("no option \"spool-dri\"") && err.contains("spool-dir"),
            "{err}"
        );
        let err = parse("[runn]\n", &["x", "run"]).unwrap_err();
        assert!(err.contains("[runn]") && err.contains("run"), "{err}");
        let err = parse("[run\n", &["x", "run"]).unwrap_err();
        assert!(err.contains("not valid TOML"), "{err}");
        let err = parse("[run]\njson = { a = 1 }\n", &["x", "run"]).unwrap_err();
        assert!(err.contains("must be a string"), "{err}");
    }

    #[test]
    fn finds_the_config_flag_before_clap() {
        let a = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(
            config_path(&a(&["x", "--config", "f.toml", "run"])),
            Some("f.toml".into())
        );
        assert_eq!(
            config_path(&a(&["x", "run", "--config=g.toml"])),
            Some("g.toml".into())
        );
        assert_eq!(config_path(&a(&["x", "run", "--", "--config", "h"])), None);
    }
}
