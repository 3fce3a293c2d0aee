//! `flopmeter certs dev`: a development CA and the certificates of a local deployment, and
//! the flags that use them. Generation is `flopmeter_tls::dev`; this module writes the files.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use flopmeter_core::agent_id::AgentId;
use flopmeter_tls::dev::{DevCa, LeafSpec};
use serde::Serialize;

use super::UsageError;

/// Options of `flopmeter certs`.
#[derive(Debug, clap::Args, Serialize)]
pub struct CertsArgs {
    #[command(subcommand)]
    pub action: CertsAction,
}

/// `flopmeter certs` subcommands.
#[derive(Debug, clap::Subcommand, Serialize)]
pub enum CertsAction {
    /// Write a development CA, a collector certificate, one client certificate per agent
    /// and one for the CLI, for local use and tests. Production certificates come from
    /// your cluster's issuer (cert-manager: docs/tls.md).
    Dev(DevArgs),
}

/// Options of `flopmeter certs dev`.
#[derive(Debug, clap::Args, Serialize)]
#[serde(rename_all = "kebab-case")]
#[command(after_help = "\
Files written to --out (keys are mode 0600):
  ca.pem, ca-key.pem                    the development CA: collectors trust it for agents
                                        (--tls-client-ca), agents and the CLI for the
                                        collector (--tls-ca). ca-key.pem signs everything
                                        here: keep it private, or delete it
  collector.pem, collector-key.pem      the collector's certificate (--tls-cert, --tls-key),
                                        valid for localhost, 127.0.0.1, ::1 and each
                                        --collector-name
  agent-<ID>.pem, agent-<ID>-key.pem    one per --agent: a client certificate whose CN and
                                        DNS name are the agent id. With mutual TLS the
                                        collector accepts an agent only under that id, so run
                                        the agent with --agent-id <ID>
  admin.pem, admin-key.pem              a client certificate for the CLI (CN
                                        flopmeter-admin); admin writes still need the admin
                                        token

Existing files are never overwritten unless --force. The command prints the collector, agent
and CLI flags that use the files.

Examples:
  flopmeter certs dev --out ./certs --agent node-a --agent node-b
  flopmeter certs dev --out ./certs --collector-name collector.flopmeter.svc --days 30 --force")]
pub struct DevArgs {
    /// Directory to write into (created if missing).
    #[arg(long, env = "FLOPMETER_CERTS_OUT", value_name = "DIR")]
    pub out: PathBuf,

    /// Another name (DNS name or IP address) the collector is reached by. Repeatable.
    #[arg(long, value_name = "NAME")]
    pub collector_name: Vec<String>,

    /// An agent id to make a client certificate for (the agent's --agent-id: a DNS name of
    /// at most 64 characters). Repeatable.
    #[arg(long = "agent", value_name = "ID")]
    pub agents: Vec<AgentId>,

    /// Days the certificates are valid.
    #[arg(long, value_name = "N", default_value_t = 365)]
    pub days: u32,

    /// Overwrite existing files.
    #[arg(long)]
    pub force: bool,
}

/// Runs `flopmeter certs`.
pub fn run(args: &CertsArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    match &args.action {
        CertsAction::Dev(a) => dev(a, out),
    }
}

/// One file to write.
struct File {
    name: String,
    text: String,
    secret: bool,
}

fn dev(a: &DevArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    if a.days == 0 {
        return Err(UsageError("--days must be at least 1".into()).into());
    }
    let mut names: Vec<String> = Vec::new();
    for n in &a.collector_name {
        if n.trim().is_empty() {
            return Err(UsageError("--collector-name must not be empty".into()).into());
        }
        names.push(n.trim().to_string());
    }
    let ca = DevCa::generate(a.days)?;
    let collector = ca.issue(&LeafSpec::collector(&names).days(a.days))?;
    let admin = ca.issue(&LeafSpec::admin().days(a.days))?;
    let mut files = vec![
        File {
            name: "ca.pem".into(),
            text: ca.cert_pem.clone(),
            secret: false,
        },
        File {
            name: "ca-key.pem".into(),
            text: ca.key_pem.clone(),
            secret: true,
        },
        File {
            name: "collector.pem".into(),
            text: collector.cert_pem,
            secret: false,
        },
        File {
            name: "collector-key.pem".into(),
            text: collector.key_pem,
            secret: true,
        },
        File {
            name: "admin.pem".into(),
            text: admin.cert_pem,
            secret: false,
        },
        File {
            name: "admin-key.pem".into(),
            text: admin.key_pem,
            secret: true,
        },
    ];
    for id in &a.agents {
        let c = ca.issue(&LeafSpec::agent(id.as_str()).days(a.days))?;
        files.push(File {
            name: format!("agent-{id}.pem"),
            text: c.cert_pem,
            secret: false,
        });
        files.push(File {
            name: format!("agent-{id}-key.pem"),
            text: c.key_pem,
            secret: true,
        });
    }

    std::fs::create_dir_all(&a.out)
        .with_context(|| format!("cannot create {}", a.out.display()))?;
    if !a.force {
        let existing: Vec<String> = files
            .iter()
            .filter(|f| a.out.join(&f.name).exists())
            .map(|f| f.name.clone())
            .collect();
        if !existing.is_empty() {
            return Err(UsageError(format!(
                "{} already holds {}: nothing was written. Use --force to replace them (agents \
                 and collectors using the old CA must then get the new files)",
                a.out.display(),
                existing.join(", ")
            ))
            .into());
        }
    }
    for f in &files {
        write_file(&a.out.join(&f.name), &f.text, f.secret)?;
    }

    let dir = a.out.display();
    let host = names
        .iter()
        .find(|n| n.parse::<std::net::IpAddr>().is_err())
        .map_or("localhost", String::as_str);
    writeln!(
        out,
        "Wrote a development CA and certificates to {dir} (valid {} days; for local use and \
         tests, not production: see docs/tls.md).",
        a.days
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "Collector (TLS on both ports; mutual TLS with --tls-client-ca):"
    )?;
    writeln!(
        out,
        "  flopmeter collector --tls-cert {dir}/collector.pem --tls-key {dir}/collector-key.pem \
         --tls-client-ca {dir}/ca.pem"
    )?;
    for id in &a.agents {
        writeln!(out)?;
        writeln!(out, "Agent {id}:")?;
        writeln!(
            out,
            "  flopmeter agent --collector https://{host}:7443 --tls-ca {dir}/ca.pem \
             --agent-id {id} --tls-cert {dir}/agent-{id}.pem --tls-key {dir}/agent-{id}-key.pem"
        )?;
    }
    if a.agents.is_empty() {
        writeln!(out)?;
        writeln!(
            out,
            "No agent certificates: add --agent ID (repeatable) for agents of a collector with \
             mutual TLS."
        )?;
    }
    writeln!(out)?;
    writeln!(out, "CLI (every client command takes the same flags):")?;
    writeln!(
        out,
        "  flopmeter models --collector https://{host}:7443 --tls-ca {dir}/ca.pem"
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "HTTP API and /metrics: https://{host}:9464 (curl --cacert {dir}/ca.pem ...)"
    )?;
    Ok(())
}

/// Writes `text` to `path` atomically; keys are created with mode 0600 (never readable by
/// others, not even for an instant).
fn write_file(path: &Path, text: &str, secret: bool) -> anyhow::Result<()> {
    let access = if secret {
        flopmeter_durable::Access::Private
    } else {
        flopmeter_durable::Access::Shared
    };
    flopmeter_durable::write_atomic(path, text.as_bytes(), access)
        .with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(dir: &Path, force: bool) -> CertsArgs {
        CertsArgs {
            action: CertsAction::Dev(DevArgs {
                out: dir.to_path_buf(),
                collector_name: vec!["collector.example".into()],
                agents: vec![AgentId::parse("node-a").unwrap()],
                days: 30,
                force,
            }),
        }
    }

    #[test]
    fn writes_the_set_with_private_keys_and_refuses_to_overwrite() {
        let d = tempfile::tempdir().unwrap();
        let mut out = Vec::new();
        run(&args(d.path(), false), &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("--agent-id node-a"), "{text}");
        assert!(text.contains("https://collector.example:7443"), "{text}");
        for f in [
            "ca.pem",
            "ca-key.pem",
            "collector.pem",
            "collector-key.pem",
            "admin.pem",
            "admin-key.pem",
            "agent-node-a.pem",
            "agent-node-a-key.pem",
        ] {
            assert!(d.path().join(f).exists(), "{f}");
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = |f: &str| {
                std::fs::metadata(d.path().join(f))
                    .unwrap()
                    .permissions()
                    .mode()
                    & 0o777
            };
            assert_eq!(mode("ca-key.pem"), 0o600);
            assert_eq!(mode("agent-node-a-key.pem"), 0o600);
        }
        let before = std::fs::read(d.path().join("ca.pem")).unwrap();
        let e = run(&args(d.path(), false), &mut Vec::new()).unwrap_err();
        assert!(e.to_string().contains("nothing was written"), "{e}");
        assert_eq!(std::fs::read(d.path().join("ca.pem")).unwrap(), before);
        run(&args(d.path(), true), &mut Vec::new()).unwrap();
        assert_ne!(std::fs::read(d.path().join("ca.pem")).unwrap(), before);
    }

    /// Whether each door takes `id` as an agent id: the agent's `--agent-id` (clap, then
    /// the id file), `certs dev --agent`, and ingest's Hello check.
    fn doors(id: &str, dir: &Path) -> (bool, bool, bool) {
        use clap::Parser as _;
        let agent =
            match crate::Cli::try_parse_from(["flopmeter", "agent", &format!("--agent-id={id}")]) {
                Ok(crate::Cli {
                    command: crate::Command::Agent(a),
                    ..
                }) => {
                    let spool = dir.join("spool");
                    let _ = std::fs::remove_dir_all(&spool);
                    std::fs::create_dir_all(&spool).unwrap();
                    flopmeter_agent::agent_id::resolve(&spool, a.agent_id.as_ref(), false).is_ok()
                }
                Ok(_) => unreachable!("parsed as another command"),
                Err(_) => false,
            };
        let certs = crate::Cli::try_parse_from([
            "flopmeter",
            "certs",
            "dev",
            "--out",
            "unused",
            &format!("--agent={id}"),
        ])
        .is_ok();
        let hello = flopmeter_proto::v1::Hello {
            agent_id: id.to_string(),
            ..Default::default()
        };
        let ingest = flopmeter_collector::ingest::validate::check_hello(&hello).is_ok();
        (agent, certs, ingest)
    }

    /// An id the agent takes can be certified, and the collector then lets it in under mutual
    /// TLS: the certificate `certs dev` makes names it, and the Hello check and the identity
    /// check accept it.
    fn certified_and_admitted(id: &str) {
        let agent_id = AgentId::parse(id).unwrap();
        let ca = DevCa::generate(1).unwrap();
        let leaf = ca.issue(&LeafSpec::agent(agent_id.as_str())).unwrap();
        use flopmeter_tls::rustls::pki_types::{CertificateDer, pem::PemObject as _};
        let der = CertificateDer::from_pem_slice(leaf.cert_pem.as_bytes()).unwrap();
        let peer = flopmeter_collector::ingest::auth::peer_identity(Some(&[der])).unwrap();
        assert_eq!(peer.names, vec![id.to_string()], "CN and DNS name");
        assert_eq!(
            flopmeter_collector::ingest::auth::check_identity(true, Some(&peer), &agent_id),
            Ok(())
        );
    }

    #[test]
    fn agent_ids_must_fit_a_certificate() {
        let d = tempfile::tempdir().unwrap();
        for id in ["node a", "node:1", "10.0.0.1", "node.", &"a".repeat(65)] {
            assert_eq!(doors(id, d.path()), (false, false, false), "{id:?}");
        }
        for id in [
            "node-a",
            "node-01.example",
            "ip-10-0-1-23.eu-west-1.compute.internal",
            "9f1c2d3e-4b5a-4c6d-8e7f-0a1b2c3d4e5f",
            "gpu_07",
        ] {
            assert_eq!(doors(id, d.path()), (true, true, true), "{id:?}");
            certified_and_admitted(id);
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// The three doors agree on every id, and an accepted id is a DNS name rustls
        /// accepts (the rule is "a DNS name without a trailing dot, at most 64 bytes"); each
        /// accepted id is certified and admitted.
        #[test]
        fn every_door_takes_the_same_agent_ids(
            chars in proptest::collection::vec(
                proptest::prop_oneof![
                    8 => proptest::char::range('a', 'z'),
                    3 => proptest::char::range('0', '9'),
                    2 => proptest::prop_oneof![
                        proptest::strategy::Just('-'),
                        proptest::strategy::Just('.'),
                        proptest::strategy::Just('_'),
                    ],
                    1 => proptest::prop_oneof![
                        proptest::strategy::Just('A'),
                        proptest::strategy::Just(' '),
                        proptest::strategy::Just(':'),
                        proptest::strategy::Just('é'),
                    ],
                ],
                0..72,
            )
        ) {
            let id: String = chars.into_iter().collect();
            let d = tempfile::tempdir().unwrap();
            let (agent, certs, ingest) = doors(&id, d.path());
            proptest::prop_assert_eq!((agent, certs), (ingest, ingest), "{:?}", id);
            let rustls = flopmeter_tls::rustls::pki_types::DnsName::try_from(id.as_str()).is_ok()
                && !id.ends_with('.')
                && id.len() <= AgentId::MAX_LEN;
            proptest::prop_assert_eq!(ingest, rustls, "{:?}", id);
            if ingest {
                certified_and_admitted(&id);
            }
        }
    }
}
