//! `flopmeter model set|show`: the model registry (lineage, role, declared plan).

use std::io::Write;

use flopmeter_collector::admin::convert::{entry_from_pb, entry_to_pb, parse_u128};
use flopmeter_collector::ledger::{ModelEntry, Role};
use flopmeter_collector::report::date_time;
use flopmeter_core::format::{flop, flop_near};
use flopmeter_core::threshold::default_levels;
use flopmeter_proto::v1 as pb;
use serde::Serialize;

use super::client::{ClientArgs, runtime, status_error};
use super::{InvalidInput, UsageError};

/// Options of `flopmeter model`.
#[derive(Debug, clap::Args, Serialize)]
pub struct ModelArgs {
    #[command(subcommand)]
    pub action: ModelAction,
}

/// `flopmeter model` subcommands.
#[derive(Debug, clap::Subcommand, Serialize)]
pub enum ModelAction {
    /// Create or update a model's registry entry; flags not given keep their value.
    Set(ModelSetArgs),
    /// Show a model's registry entry.
    Show(ModelShowArgs),
}

/// Options of `flopmeter model set`.
#[derive(Debug, clap::Args, Serialize)]
#[serde(rename_all = "kebab-case")]
#[command(after_help = "\
Examples:
  flopmeter model set acme-7b --role provider --planned-params 7e9 --planned-tokens 2e12
  flopmeter model set acme-ft --role modifier --base frontier-x --base-systemic-risk
  flopmeter model set acme-7b-chat --base llama-3-70b --base-flop 3.8e24 \\
      --base-flop-source \"model card\" --role modifier --planned-flop 2e25 --planned-end 2027-03-01")]
pub struct ModelSetArgs {
    /// The model, as runs report it (FLOPMETER_MODEL / flopmeter.io/model).
    #[arg(env = "FLOPMETER_MODEL", value_name = "MODEL")]
    pub model: String,

    /// Who makes the change, for the audit log. Required with the collector's shared admin
    /// token; with a named admin token (the collector's --admin-tokens) the token names you.
    #[arg(long, env = "FLOPMETER_BY", value_name = "NAME", default_value = "")]
    pub by: String,

    /// Base model this one modifies or was initialised from.
    #[arg(long, env = "FLOPMETER_BASE_MODEL", value_name = "MODEL")]
    pub base: Option<String>,

    /// Compute embodied in the base model, FLOP (e.g. 3.8e24).
    #[arg(long, env = "FLOPMETER_BASE_FLOP", value_name = "FLOP")]
    pub base_flop: Option<String>,

    /// Where --base-flop comes from (model card, provider statement, estimate...).
    #[arg(long, env = "FLOPMETER_BASE_FLOP_SOURCE", value_name = "TEXT")]
    pub base_flop_source: Option<String>,

    /// Declare whether the base model is a systemic-risk model, when its compute is unknown:
    /// the modifier threshold then falls back to a third of 10^25 (systemic-risk base) or of
    /// 10^23 (`--base-systemic-risk=false`). Undeclared, the lower 10^23/3 applies.
    #[arg(
        long,
        env = "FLOPMETER_BASE_SYSTEMIC_RISK",
        value_name = "BOOL",
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub base_systemic_risk: Option<bool>,

    /// provider (trains the model) or modifier (modifies a base model).
    #[arg(long, env = "FLOPMETER_ROLE", value_name = "ROLE")]
    pub role: Option<Role>,

    /// Declared plan: total training FLOP (e.g. 2e25).
    #[arg(long, env = "FLOPMETER_PLANNED_FLOP", value_name = "FLOP")]
    pub planned_flop: Option<String>,

    /// Declared plan: parameters N (the plan is then 6·N·D).
    #[arg(long, env = "FLOPMETER_PLANNED_PARAMS", value_name = "N")]
    pub planned_params: Option<String>,

    /// Declared plan: training tokens D.
    #[arg(long, env = "FLOPMETER_PLANNED_TOKENS", value_name = "D")]
    pub planned_tokens: Option<String>,

    /// Planned end of training: a date (2027-03-01, UTC midnight) or an RFC 3339 time.
    #[arg(long, env = "FLOPMETER_PLANNED_END", value_name = "DATE")]
    pub planned_end: Option<String>,

    #[command(flatten)]
    #[serde(flatten)]
    pub client: ClientArgs,
}

/// Options of `flopmeter model show`.
#[derive(Debug, clap::Args, Serialize)]
pub struct ModelShowArgs {
    /// The model.
    #[arg(env = "FLOPMETER_MODEL", value_name = "MODEL")]
    pub model: String,

    #[command(flatten)]
    #[serde(flatten)]
    pub client: ClientArgs,
}

/// Parses `--planned-end` by the one rule of [`flopmeter_core::utc::parse_utc`] (a date,
/// UTC midnight; an RFC 3339 time; Unix ms), the rule a job's `planned_end` label follows.
pub fn parse_date(s: &str) -> Result<i64, InvalidInput> {
    flopmeter_core::utc::parse_utc(s).map_err(|e| InvalidInput::flag("planned-end", e))
}

fn number(field: &'static str, v: &Option<String>) -> anyhow::Result<Option<u128>> {
    let flag = field.replace('_', "-");
    match v.as_deref().map(|s| parse_u128(field, s)) {
        None => Ok(None),
        Some(Ok(Some(n))) => Ok(Some(n)),
        Some(Ok(None)) => Err(UsageError(format!("--{flag} must not be empty")).into()),
        Some(Err(e)) => Err(InvalidInput::flag(flag, e.source).into()),
    }
}

/// Overlays the given flags on an existing entry.
pub fn merged(args: &ModelSetArgs, existing: Option<ModelEntry>) -> anyhow::Result<ModelEntry> {
    let mut e = existing.unwrap_or_else(|| ModelEntry {
        model: args.model.clone(),
        ..ModelEntry::default()
    });
    if let Some(b) = &args.base {
        e.declared.base_model = Some(b.clone()).filter(|b| !b.is_empty());
    }
    if args.base_flop.is_some() {
        e.base_flop = number("base_flop", &args.base_flop)?;
    }
    if let Some(s) = &args.base_flop_source {
        e.base_flop_source = Some(s.clone()).filter(|s| !s.is_empty());
    }
    if args.base_systemic_risk.is_some() {
        e.base_systemic_risk = args.base_systemic_risk;
    }
    if args.role.is_some() {
        e.role = args.role;
    }
    let d = &mut e.declared;
    if args.planned_flop.is_some() {
        d.planned_flop = number("planned_flop", &args.planned_flop)?;
    }
    if args.planned_params.is_some() {
        d.params = number("planned_params", &args.planned_params)?;
    }
    if args.planned_tokens.is_some() {
        d.tokens = number("planned_tokens", &args.planned_tokens)?;
    }
    if let Some(t) = &args.planned_end {
        d.planned_end_unix_ms = Some(parse_date(t)?);
    }
    Ok(e)
}

async fn existing(
    c: &mut pb::admin_client::AdminClient<tonic::transport::Channel>,
    client: &ClientArgs,
    model: &str,
) -> anyhow::Result<Option<ModelEntry>> {
    match c
        .get_model(client.request(pb::GetModelRequest {
            model: model.to_string(),
        })?)
        .await
    {
        Ok(r) => Ok(r
            .into_inner()
            .summary
            .and_then(|s| s.entry)
            .map(|e| entry_from_pb(&e))
            .transpose()?),
        Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
        Err(s) => Err(status_error(s)),
    }
}

/// Runs `flopmeter model ...`.
pub fn run(args: &ModelArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    match &args.action {
        ModelAction::Set(a) => {
            // Check the flags before touching the network.
            merged(a, None)?;
            let saved = runtime()?.block_on(async {
                let mut c = a.client.connect().await?;
                let entry = merged(a, existing(&mut c, &a.client, &a.model).await?)?;
                let r = c
                    .set_model(a.client.request(pb::SetModelRequest {
                        entry: Some(entry_to_pb(&entry)),
                        by: a.by.clone(),
                    })?)
                    .await
                    .map_err(status_error)?;
                let e = r
                    .into_inner()
                    .entry
                    .ok_or_else(|| anyhow::anyhow!("the collector returned no entry"))?;
                anyhow::Ok(entry_from_pb(&e)?)
            })?;
            write!(out, "saved ")?;
            print_entry(&saved, out)
        }
        ModelAction::Show(a) => {
            let e = runtime()?.block_on(async {
                let mut c = a.client.connect().await?;
                existing(&mut c, &a.client, &a.model).await
            })?;
            match e {
                Some(e) => print_entry(&e, out),
                None => Err(UsageError(format!("model {:?} is not registered", a.model)).into()),
            }
        }
    }
}

fn print_entry(e: &ModelEntry, out: &mut dyn Write) -> anyhow::Result<()> {
    let levels = default_levels();
    let n = |v: Option<u128>| v.map_or("-".to_string(), |v| flop_near(v, &levels));
    writeln!(out, "model {}", e.model)?;
    writeln!(
        out,
        "  role:          {}",
        e.role.map_or("-".into(), |r| r.to_string())
    )?;
    writeln!(
        out,
        "  base model:    {}",
        e.declared.base_model.as_deref().unwrap_or("-")
    )?;
    writeln!(
        out,
        "  base compute:  {} FLOP (source: {})",
        n(e.base_flop),
        e.base_flop_source.as_deref().unwrap_or("-")
    )?;
    writeln!(
        out,
        "  base status:   {}",
        match e.base_systemic_risk {
            Some(true) => "systemic-risk model (declared)",
            Some(false) => "not a systemic-risk model (declared)",
            None => "not declared",
        }
    )?;
    let plan = e.plan();
    let nd = || {
        format!(
            "6 x {} params x {} tokens",
            plan.params.map_or("-".into(), flop),
            plan.tokens.map_or("-".into(), flop)
        )
    };
    writeln!(
        out,
        "  plan:          {} FLOP{}",
        n(plan.total()),
        match (plan.planned_flop, plan.six_n_d()) {
            (None, Some(_)) => format!(" ({})", nd()),
            (Some(f), Some(_)) => format!(" (the larger of {} and {})", flop(f), nd()),
            _ => String::new(),
        }
    )?;
    writeln!(
        out,
        "  planned end:   {}",
        date_time(e.declared.planned_end_unix_ms)
    )?;
    writeln!(
        out,
        "  updated:       {}{}",
        date_time(Some(e.updated_unix_ms)),
        e.updated_by
            .as_deref()
            .map(|by| format!(" by {by}"))
            .unwrap_or_default()
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(parse_date("2027-03-01").unwrap(), 1_803_859_200_000);
        assert_eq!(
            parse_date("2027-03-01T00:00:00Z").unwrap(),
            1_803_859_200_000
        );
        assert!(parse_date("March").is_err());
        // A time of day is kept, not cut to its date (jiff's date parser would).
        assert_eq!(
            parse_date("2027-03-01T12:00:00Z").unwrap(),
            1_803_859_200_000 + 12 * 3_600_000
        );
        let e = parse_date("1803859200").unwrap_err();
        assert!(e.to_string().starts_with("--planned-end: "), "{e}");
        assert!(std::error::Error::source(&e).is_some());
    }
}
