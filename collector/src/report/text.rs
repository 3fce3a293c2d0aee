//! The report for people: plain text, every figure as `flopmeter_core::format` writes it.

use std::fmt::Write as _;

use flopmeter_core::format::{band_near, flop, flop_near, quantity};
use flopmeter_core::threshold::default_levels;
use flopmeter_core::units::FlopTotal;

use super::*;

/// The report for people.
pub fn render_text(r: &Report) -> String {
    let mut o = String::new();
    let c = &r.computation;
    // A figure that rounds to a threshold's level is written so the comparison shows.
    let levels = default_levels();
    let band = |t: &FlopTotal| band_near(*t, &levels);
    let _ = writeln!(
        o,
        "flopmeter report: model {} (AI Act Annex XI §1.2(d)(e), Model Documentation Form)",
        r.model
    );
    let _ = writeln!(o, "generated {}", date_time(Some(r.generated_unix_ms)));
    if let Some(e) = &r.entry {
        let role = e.role.map_or("-".to_string(), |r| r.to_string());
        let _ = writeln!(o, "role: {role}");
        if let Some(plan) = e.planned_total() {
            let _ = writeln!(
                o,
                "declared plan: {} FLOP, planned end {}",
                flop_near(plan, &levels),
                date_time(e.declared.planned_end_unix_ms)
            );
        }
    }
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "Computation:       {} FLOP (central [low – high])",
        band(&c.counted)
    );
    let _ = writeln!(
        o,
        "  method mix:      {}",
        if c.method_mix_text.is_empty() {
            "-"
        } else {
            &c.method_mix_text
        }
    );
    let _ = writeln!(
        o,
        "  excluded:        {} FLOP by stage policy (not counted, shown for completeness)",
        band(&c.excluded)
    );
    let t = &r.training_time;
    let _ = writeln!(
        o,
        "Training time:     {} wall-clock days ({} to {})",
        quantity(t.wall_clock_days),
        date_time(t.first_event_unix_ms),
        date_time(t.last_event_unix_ms)
    );
    let hw = r
        .hardware
        .iter()
        .map(|h| format!("{} {} GPU-days", quantity(h.gpu_days), h.gpu_type))
        .collect::<Vec<_>>()
        .join(", ");
    let _ = writeln!(
        o,
        "Hardware:          {}",
        if hw.is_empty() { "-".to_string() } else { hw }
    );
    let _ = writeln!(
        o,
        "Energy:            {} MWh (GPU energy measured by NVML; excluded stages {} MWh)",
        quantity(r.energy.counted_mwh),
        quantity(r.energy.excluded_mwh)
    );
    let _ = writeln!(
        o,
        "Not estimated:     {}{}",
        r.unestimated.text,
        if r.unestimated.records == 0 {
            String::new()
        } else {
            format!(
                ", {} MWh; not in the computation above (the FLOP of that hardware time are \
                 unknown)",
                quantity(r.unestimated.energy_mwh)
            )
        }
    );
    if let Some(b) = &r.base_model {
        let _ = writeln!(
            o,
            "Base model:        {} with {} FLOP (source: {}); this model's counted high bound \
             is {} of it",
            b.base_model,
            b.base_flop.map_or("unknown".to_string(), flop),
            b.source.as_deref().unwrap_or("-"),
            b.modification_share_high
                .map_or("-".to_string(), |s| format!("{:.1}%", s * 100.0))
        );
    }
    if !r.clusters.is_empty() {
        let _ = writeln!(o);
        let _ = writeln!(
            o,
            "Per cluster (counted stages; the figures above are their sum over every cluster):"
        );
        let _ = writeln!(
            o,
            "  {:<24} {:>32} {:>6} {:>10} {:>10} {:>10} {:>9}",
            "cluster",
            "FLOP central [low – high]",
            "share",
            "GPU-days",
            "MWh",
            "excluded",
            "records"
        );
        for c in &r.clusters {
            let _ = writeln!(
                o,
                "  {:<24} {:>32} {:>6} {:>10} {:>10} {:>10} {:>9}",
                c.name,
                band(&c.counted),
                percent(c.percent),
                quantity(c.gpu_days),
                quantity(c.energy_mwh),
                flop_near(c.excluded.central, &levels),
                c.records
            );
        }
    }
    let _ = writeln!(o);
    let _ = writeln!(o, "Per stage:");
    let _ = writeln!(
        o,
        "  {:<22} {:<8} {:>32} {:>10} {:>10} {:>9}",
        "stage", "counts", "FLOP central [low – high]", "GPU-days", "MWh", "records"
    );
    for s in &r.stages {
        let _ = writeln!(
            o,
            "  {:<22} {:<8} {:>32} {:>10} {:>10} {:>9}",
            s.stage,
            if s.counts { "yes" } else { "excluded" },
            band(&s.flop),
            quantity(s.gpu_days),
            quantity(s.energy_mwh),
            s.records
        );
    }
    let _ = writeln!(o);
    let _ = writeln!(o, "Per run:");
    let _ = writeln!(
        o,
        "  {:<20} {:<18} {:>32} {:>10} {:>10} {:>6} {:>6} {:<16}  period",
        "run", "stages", "counted FLOP", "excluded", "GPU-days", "agents", "nodes", "clusters"
    );
    for run in &r.runs {
        let _ = writeln!(
            o,
            "  {:<20} {:<18} {:>32} {:>10} {:>10} {:>6} {:>6} {:<16}  {} to {}",
            if run.run.is_empty() {
                "(none)"
            } else {
                &run.run
            },
            run.stages.join(","),
            band(&run.counted),
            flop_near(run.excluded.central, &levels),
            quantity(run.gpu_days),
            run.agents,
            run.nodes,
            run_clusters(run),
            date_time(run.first_event_unix_ms),
            date_time(run.last_event_unix_ms)
        );
        if run.by_cluster.len() > 1 {
            for c in &run.by_cluster {
                let _ = writeln!(
                    o,
                    "  {:<20} on {}: {} FLOP counted, {} GPU-days",
                    "",
                    c.name,
                    band(&c.counted),
                    quantity(c.gpu_days)
                );
            }
        }
        if let (Some(x), Some(ratio)) = (run.six_n_d, run.hardware_to_architecture_ratio) {
            let _ = writeln!(
                o,
                "  {:<20} declared 6·N·D = {} FLOP; measured / declared = {:.2}",
                "",
                flop_near(x, &levels),
                ratio
            );
        }
    }
    let u = &r.unattributed;
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "Unattributed compute on the same hardware in the same period ({} node(s), {} to {}):",
        u.nodes.len(),
        date_of_day(u.first_day),
        date_of_day(u.last_day)
    );
    let gd = u
        .gpu_days
        .iter()
        .map(|(g, d)| format!("{} {g} GPU-days", quantity(*d)))
        .collect::<Vec<_>>()
        .join(", ");
    let _ = writeln!(
        o,
        "  {} FLOP, {}, {} MWh, {} records (no run claimed this work; it may belong to this model)",
        band(&u.flop),
        if gd.is_empty() {
            "0 GPU-days".to_string()
        } else {
            gd
        },
        quantity(u.energy_mwh),
        u.records
    );
    if u.unestimated.records > 0 {
        let _ = writeln!(o, "  and {}", u.unestimated.text);
    }
    if !u.sources.is_empty() {
        let _ = writeln!(o, "  Largest sources (label these jobs):");
        for s in &u.sources {
            let c = &s.counts;
            let _ = writeln!(
                o,
                "    {} on {}: {} FLOP, {} GPU-hours{}",
                s.description,
                s.nodes.join(","),
                flopmeter_core::format::band(c.flop.low, c.flop.central, c.flop.high),
                quantity(hours(c.gpu_ms)),
                if c.unestimated_gpu_ms > 0 {
                    format!(
                        " (+{} not estimated)",
                        quantity(hours(c.unestimated_gpu_ms))
                    )
                } else {
                    String::new()
                }
            );
        }
        if u.other_sources.records > 0 {
            let c = &u.other_sources;
            let _ = writeln!(
                o,
                "    other sources: {} FLOP, {} GPU-hours",
                flop(c.flop.central),
                quantity(hours(c.size()))
            );
        }
    }
    let q = &r.quality;
    let _ = writeln!(
        o,
        "\nRecords: {} ({} approximate: GPU shared between processes; {} on uncatalogued GPUs \
         with an operator-supplied peak)",
        q.records, q.approximate_records, q.unknown_peak_records
    );
    let _ = writeln!(
        o,
        "Stage policy: counted {}; excluded {}; unknown stages {}",
        r.policy.counted_stages.join(", "),
        r.policy.excluded_stages.join(", "),
        if r.policy.unknown_stages_count {
            "count"
        } else {
            "excluded"
        }
    );
    let _ = writeln!(o, "\nMethodology:");
    for m in &r.methodology {
        let _ = writeln!(o, "  - {m}");
    }
    o
}

/// The clusters of a run's row: their names, `-` when none is known.
fn run_clusters(run: &RunRow) -> String {
    let names: Vec<&str> = if run.by_cluster.is_empty() {
        run.clusters.iter().map(String::as_str).collect()
    } else {
        run.by_cluster.iter().map(|c| c.name.as_str()).collect()
    };
    if names.is_empty() {
        "-".to_string()
    } else {
        names.join(",")
    }
}

fn date_of_day(day: Option<i64>) -> String {
    day.map_or("-".to_string(), |d| {
        flopmeter_core::utc::format_date(d.saturating_mul(DAY_MS))
    })
}
