//! `flopmeter models` and `flopmeter runs --model M`: what the ledger holds, per model and
//! per run, from a running collector.

use std::io::Write;

use flopmeter_collector::admin::convert::{band_from_pb, count_from_pb};
use flopmeter_collector::report::date_time;
use flopmeter_core::format::{band_near, days_of_ms, flop_near, mwh_of_mj};
use flopmeter_core::threshold::default_levels;
use flopmeter_proto::v1 as pb;
use serde::Serialize;

use super::client::{ClientArgs, runtime, status_error};

/// Options of `flopmeter models`.
#[derive(Debug, clap::Args, Serialize)]
#[serde(rename_all = "kebab-case")]
#[command(
    after_help = "Counted FLOP follow the collector's stage policy; excluded compute \
(eval, research, ...) is shown beside it. Example: flopmeter models --collector http://collector:7443"
)]
pub struct ModelsArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub client: ClientArgs,

    /// Only models that ran on this cluster (the collector filters). Their totals still sum
    /// over every cluster; a column gives this cluster's share.
    #[arg(long, env = "FLOPMETER_FILTER_CLUSTER", value_name = "CLUSTER")]
    pub cluster: Option<String>,

    /// Print JSON (exact integers as strings).
    #[arg(long, env = "FLOPMETER_JSON")]
    pub json: bool,
}

/// Options of `flopmeter runs`.
#[derive(Debug, clap::Args, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct RunsArgs {
    /// The model whose runs to list (optional with --cluster: every model's runs there).
    #[arg(
        long,
        env = "FLOPMETER_MODEL",
        value_name = "MODEL",
        required_unless_present = "cluster"
    )]
    pub model: Option<String>,

    /// Only runs on this cluster (the collector filters).
    #[arg(long, env = "FLOPMETER_FILTER_CLUSTER", value_name = "CLUSTER")]
    pub cluster: Option<String>,

    #[command(flatten)]
    #[serde(flatten)]
    pub client: ClientArgs,

    /// Print JSON (exact integers as strings).
    #[arg(long, env = "FLOPMETER_JSON")]
    pub json: bool,
}

fn opt_time(ms: i64) -> Option<i64> {
    (ms != 0).then_some(ms)
}

fn days(ms: &str) -> anyhow::Result<String> {
    Ok(days_of_ms(count_from_pb("gpu_ms", ms)?))
}

fn mwh(mj: &str) -> anyhow::Result<String> {
    Ok(mwh_of_mj(count_from_pb("energy_mj", mj)?))
}

/// Runs `flopmeter models`.
pub fn run_models(args: &ModelsArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let resp = runtime()?.block_on(async {
        let mut c = args.client.connect().await?;
        let r = c
            .list_models(args.client.request(pb::ListModelsRequest {
                cluster: args.cluster.clone().unwrap_or_default(),
            })?)
            .await
            .map_err(status_error)?;
        anyhow::Ok(r.into_inner())
    })?;
    if args.json {
        serde_json::to_writer_pretty(&mut *out, &json_models(&resp.models))?;
        writeln!(out)?;
        return Ok(());
    }
    if resp.models.is_empty() {
        match &args.cluster {
            Some(c) => writeln!(out, "No model in the ledger ran on cluster {c:?}.")?,
            None => writeln!(out, "The ledger holds no models yet.")?,
        }
        return Ok(());
    }
    write_models(out, &resp.models, args.cluster.as_deref())
}

/// The counted central FLOP on `cluster` of a model's or run's per-cluster figures.
fn on_cluster(by_cluster: &[pb::ClusterFigures], cluster: &str) -> anyhow::Result<u128> {
    let mut sum = 0u128;
    for c in by_cluster
        .iter()
        .filter(|c| c.kind == "cluster" && c.cluster == cluster)
    {
        sum = sum.saturating_add(band_from_pb(c.counted.as_ref())?.central);
    }
    Ok(sum)
}

/// The clusters of a row: their names (or what a row stands for), `-` when none.
fn cluster_names(by_cluster: &[pb::ClusterFigures], clusters: &[String]) -> String {
    let mut names: Vec<&str> = if by_cluster.is_empty() {
        clusters.iter().map(String::as_str).collect()
    } else {
        by_cluster
            .iter()
            .map(|c| match c.kind.as_str() {
                "cluster" => c.cluster.as_str(),
                "no-cluster" => "(none)",
                "other-clusters" => "(other)",
                _ => "(not split)",
            })
            .collect()
    };
    // Names in one order whatever each cluster's share (the rows come largest first), so a
    // table reads the same from one scrape to the next; the bracketed rows sort last.
    names.sort_by_key(|n| (n.starts_with('('), *n));
    if names.is_empty() {
        "-".to_string()
    } else {
        names.join(",")
    }
}

/// The `models` table; with a cluster filter, a column with that cluster's counted share.
fn write_models(
    out: &mut dyn Write,
    models: &[pb::ModelSummary],
    cluster: Option<&str>,
) -> anyhow::Result<()> {
    // Figures that round to a threshold's level get the digits (or the `>`/`<`) that show
    // which side of it they are on.
    let levels = default_levels();
    let on_header = cluster.map(|c| format!("on {c}")).unwrap_or_default();
    writeln!(
        out,
        "{:<24} {:>32} {:>9} {:>5} {:>9} {:>9} {:<9} {:<16} {}last event",
        "model",
        "counted FLOP central [low – high]",
        "excluded",
        "runs",
        "GPU-days",
        "MWh",
        "role",
        "clusters",
        if cluster.is_some() {
            format!("{on_header:>9} ")
        } else {
            String::new()
        }
    )?;
    for m in models {
        let c = band_from_pb(m.counted.as_ref())?;
        let x = band_from_pb(m.excluded.as_ref())?;
        let role = m
            .entry
            .as_ref()
            .map(|e| match e.role() {
                pb::ModelRole::Provider => "provider",
                pb::ModelRole::Modifier => "modifier",
                pb::ModelRole::Unspecified => "-",
            })
            .unwrap_or("-");
        let on = match cluster {
            Some(cl) => format!(
                "{:>width$} ",
                flop_near(on_cluster(&m.by_cluster, cl)?, &levels),
                width = on_header.chars().count().max(9)
            ),
            None => String::new(),
        };
        writeln!(
            out,
            "{:<24} {:>32} {:>9} {:>5} {:>9} {:>9} {:<9} {:<16} {}{}",
            m.model,
            band_near(c, &levels),
            flop_near(x.central, &levels),
            m.runs,
            days(&m.gpu_ms)?,
            mwh(&m.energy_mj)?,
            role,
            cluster_names(&m.by_cluster, &m.clusters),
            on,
            date_time(opt_time(m.last_event_unix_ms))
        )?;
    }
    Ok(())
}

#[derive(Serialize)]
struct JsonBand {
    low: String,
    central: String,
    high: String,
}

fn jb(b: Option<&pb::FlopBand128>) -> JsonBand {
    let b = b.cloned().unwrap_or_default();
    JsonBand {
        low: b.low,
        central: b.central,
        high: b.high,
    }
}

#[derive(Serialize)]
struct JsonCluster<'a> {
    cluster: &'a str,
    kind: &'a str,
    counted: JsonBand,
    excluded: JsonBand,
    gpu_ms: &'a str,
    energy_mj: &'a str,
    records: u64,
    unestimated_gpu_ms: &'a str,
}

fn json_clusters(by_cluster: &[pb::ClusterFigures]) -> Vec<JsonCluster<'_>> {
    by_cluster
        .iter()
        .map(|c| JsonCluster {
            cluster: &c.cluster,
            kind: &c.kind,
            counted: jb(c.counted.as_ref()),
            excluded: jb(c.excluded.as_ref()),
            gpu_ms: &c.gpu_ms,
            energy_mj: &c.energy_mj,
            records: c.records,
            unestimated_gpu_ms: &c.unestimated_gpu_ms,
        })
        .collect()
}

#[derive(Serialize)]
struct JsonModel<'a> {
    model: &'a str,
    counted: JsonBand,
    excluded: JsonBand,
    runs: u32,
    gpu_ms: &'a str,
    energy_mj: &'a str,
    first_event_unix_ms: Option<i64>,
    last_event_unix_ms: Option<i64>,
    records: u64,
    agents: u64,
    nodes: u64,
    clusters: &'a [String],
    by_cluster: Vec<JsonCluster<'a>>,
}

fn json_models(models: &[pb::ModelSummary]) -> Vec<JsonModel<'_>> {
    models
        .iter()
        .map(|m| JsonModel {
            model: &m.model,
            counted: jb(m.counted.as_ref()),
            excluded: jb(m.excluded.as_ref()),
            runs: m.runs,
            gpu_ms: &m.gpu_ms,
            energy_mj: &m.energy_mj,
            first_event_unix_ms: opt_time(m.first_event_unix_ms),
            last_event_unix_ms: opt_time(m.last_event_unix_ms),
            records: m.records,
            agents: m.agents,
            nodes: m.nodes,
            clusters: &m.clusters,
            by_cluster: json_clusters(&m.by_cluster),
        })
        .collect()
}

#[derive(Serialize)]
struct JsonRun<'a> {
    model: &'a str,
    run: &'a str,
    stages: &'a [String],
    counted: JsonBand,
    excluded: JsonBand,
    gpu_ms: &'a str,
    energy_mj: &'a str,
    first_event_unix_ms: Option<i64>,
    last_event_unix_ms: Option<i64>,
    records: u64,
    approximate_records: u64,
    agents: u64,
    nodes: u64,
    clusters: &'a [String],
    by_cluster: Vec<JsonCluster<'a>>,
}

/// Runs `flopmeter runs`.
pub fn run_runs(args: &RunsArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let resp = runtime()?.block_on(async {
        let mut c = args.client.connect().await?;
        let r = c
            .list_runs(args.client.request(pb::ListRunsRequest {
                model: args.model.clone().unwrap_or_default(),
                cluster: args.cluster.clone().unwrap_or_default(),
            })?)
            .await
            .map_err(status_error)?;
        anyhow::Ok(r.into_inner())
    })?;
    if args.json {
        let runs: Vec<JsonRun<'_>> = resp
            .runs
            .iter()
            .map(|r| JsonRun {
                model: &r.model,
                run: &r.run,
                stages: &r.stages,
                counted: jb(r.counted.as_ref()),
                excluded: jb(r.excluded.as_ref()),
                gpu_ms: &r.gpu_ms,
                energy_mj: &r.energy_mj,
                first_event_unix_ms: opt_time(r.first_event_unix_ms),
                last_event_unix_ms: opt_time(r.last_event_unix_ms),
                records: r.records,
                approximate_records: r.approximate_records,
                agents: r.agents,
                nodes: r.nodes,
                clusters: &r.clusters,
                by_cluster: json_clusters(&r.by_cluster),
            })
            .collect();
        serde_json::to_writer_pretty(&mut *out, &runs)?;
        writeln!(out)?;
        return Ok(());
    }
    if resp.runs.is_empty() {
        match (&args.model, &args.cluster) {
            (Some(m), Some(c)) => writeln!(out, "No runs of model {m:?} on cluster {c:?}.")?,
            (Some(m), None) => writeln!(out, "No runs of model {m:?} in the ledger.")?,
            (None, Some(c)) => writeln!(out, "No runs on cluster {c:?} in the ledger.")?,
            (None, None) => writeln!(out, "No runs in the ledger.")?,
        }
        return Ok(());
    }
    let levels = default_levels();
    writeln!(
        out,
        "{:<24} {:<24} {:<18} {:>32} {:>9} {:>9} {:>9} {:>6} {:>5} {:<16}  period",
        "model",
        "run",
        "stages",
        "counted FLOP central [low – high]",
        "excluded",
        "GPU-days",
        "MWh",
        "agents",
        "nodes",
        "clusters"
    )?;
    for r in &resp.runs {
        let c = band_from_pb(r.counted.as_ref())?;
        let x = band_from_pb(r.excluded.as_ref())?;
        writeln!(
            out,
            "{:<24} {:<24} {:<18} {:>32} {:>9} {:>9} {:>9} {:>6} {:>5} {:<16}  {} to {}",
            r.model,
            if r.run.is_empty() { "(none)" } else { &r.run },
            r.stages.join(","),
            band_near(c, &levels),
            flop_near(x.central, &levels),
            days(&r.gpu_ms)?,
            mwh(&r.energy_mj)?,
            r.agents,
            r.nodes,
            cluster_names(&r.by_cluster, &r.clusters),
            date_time(opt_time(r.first_event_unix_ms)),
            date_time(opt_time(r.last_event_unix_ms)),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(name: &str, central: u128, gpu_ms: u128, energy_mj: u128) -> pb::ModelSummary {
        let c = central.to_string();
        pb::ModelSummary {
            model: name.into(),
            counted: Some(pb::FlopBand128 {
                low: c.clone(),
                central: c.clone(),
                high: c,
            }),
            excluded: Some(pb::FlopBand128::default()),
            gpu_ms: gpu_ms.to_string(),
            energy_mj: energy_mj.to_string(),
            ..pb::ModelSummary::default()
        }
    }

    /// Exactly 10^25 (no clock under a strict "greater than") and 10^25 + 1 (a clock) must
    /// not print alike; days and MWh are plain numbers.
    #[test]
    fn the_table_tells_a_crossing_from_the_level() {
        let e25 = 10u128.pow(25);
        let mut out = Vec::new();
        write_models(
            &mut out,
            &[
                model("exactly", e25, 123 * 86_400_000 + 1, 0),
                model("above", e25 + 1, 14 * 86_400_000, 7 * 36 * 10u128.pow(13)),
            ],
            None,
        )
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        let row = |m: &str| text.lines().find(|l| l.starts_with(m)).unwrap().to_string();
        assert!(
            row("exactly").contains("1.0e25 [1.0e25 – 1.0e25]"),
            "{text}"
        );
        assert!(
            row("above").contains(">1.0e25 [>1.0e25 – >1.0e25]"),
            "{text}"
        );
        assert!(row("exactly").contains(" 123 "), "{text}");
        assert!(
            row("above").contains(" 14 ") && row("above").contains(" 700 "),
            "{text}"
        );
        assert!(!text.contains("e0 ") && !text.contains("e2 "), "{text}");
    }

    /// Filtered by cluster, a row keeps the model's total and adds that cluster's share.
    #[test]
    fn a_cluster_filter_shows_the_clusters_share_beside_the_total() {
        let mut m = model("m", 3_000, 0, 0);
        let fig = |name: &str, central: u128| pb::ClusterFigures {
            cluster: name.into(),
            kind: "cluster".into(),
            counted: Some(pb::FlopBand128 {
                low: central.to_string(),
                central: central.to_string(),
                high: central.to_string(),
            }),
            ..pb::ClusterFigures::default()
        };
        m.by_cluster = vec![fig("gpu-a", 2_000), fig("gpu-b", 1_000)];
        let mut out = Vec::new();
        write_models(&mut out, &[m], Some("gpu-b")).unwrap();
        let text = String::from_utf8(out).unwrap();
        let header = text.lines().next().unwrap();
        let row = text.lines().nth(1).unwrap();
        assert!(header.contains("on gpu-b"), "{text}");
        assert!(row.contains("3.0e3 [3.0e3 – 3.0e3]"), "{text}");
        assert!(row.contains("gpu-a,gpu-b"), "{text}");
        assert!(row.contains(" 1.0e3 "), "{text}");
    }

    /// A figure the collector sent garbled is an error naming the field, never a zero row.
    #[test]
    fn a_garbled_figure_is_an_error_not_zero() {
        let mut m = model("m", 5, 0, 0);
        m.counted.as_mut().unwrap().high = "5,0".into();
        let e = write_models(&mut Vec::new(), &[m], None).unwrap_err();
        assert!(e.to_string().starts_with("invalid flop.high: "), "{e}");
        let mut m = model("m", 5, 0, 0);
        m.energy_mj = "lots".into();
        let e = write_models(&mut Vec::new(), &[m], None).unwrap_err();
        assert!(e.to_string().starts_with("invalid energy_mj: "), "{e}");
        // Absent is nothing measured.
        let mut m = model("m", 5, 0, 0);
        m.excluded = None;
        m.gpu_ms.clear();
        write_models(&mut Vec::new(), &[m], None).unwrap();
    }
}
