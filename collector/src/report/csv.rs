//! The report for spreadsheets: one CSV row per figure, exact integers.

use std::fmt::Write as _;

use flopmeter_core::units::FlopTotal;

use super::*;

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// A float cell: the shortest exact decimal, and `0` for a negative zero (an empty `f64` sum
/// is `-0.0`, which a spreadsheet shows as "-0").
fn csv_number(v: f64) -> String {
    if v == 0.0 {
        "0".to_string()
    } else {
        format!("{v}")
    }
}

/// The FLOP cells of a row: low, central, high; `None` leaves a cell empty.
type FlopCells = [Option<u128>; 3];

fn cells(f: FlopTotal) -> FlopCells {
    [Some(f.low), Some(f.central), Some(f.high)]
}

/// One row per figure: `section,name,counts,flop_low,flop_central,flop_high,gpu_days,
/// energy_mwh,first_event,last_event,records`. A `method` row has only a central figure (the
/// method mix is kept for the central estimate), so its low and high cells are empty.
pub fn render_csv(r: &Report) -> String {
    let mut o = String::from(
        "section,name,counts,flop_low,flop_central,flop_high,gpu_days,energy_mwh,first_event,\
         last_event,records\n",
    );
    let mut row = |section: &str,
                   name: &str,
                   counts: &str,
                   f: FlopCells,
                   gpu_days: Option<f64>,
                   mwh: Option<f64>,
                   first: Option<i64>,
                   last: Option<i64>,
                   records: Option<u64>| {
        let opt = |v: Option<String>| v.unwrap_or_default();
        let _ = writeln!(
            o,
            "{},{},{},{},{},{},{},{},{},{},{}",
            section,
            csv_field(name),
            counts,
            opt(f[0].map(|v| v.to_string())),
            opt(f[1].map(|v| v.to_string())),
            opt(f[2].map(|v| v.to_string())),
            opt(gpu_days.map(csv_number)),
            opt(mwh.map(csv_number)),
            iso(first),
            iso(last),
            opt(records.map(|n| n.to_string())),
        );
    };
    let c = &r.computation;
    let t = &r.training_time;
    row(
        "total",
        &r.model,
        "yes",
        cells(c.counted),
        Some(
            r.hardware
                .iter()
                .map(|h| h.gpu_days)
                .fold(0.0, |a, d| a + d),
        ),
        Some(r.energy.counted_mwh),
        t.first_event_unix_ms,
        t.last_event_unix_ms,
        None,
    );
    row(
        "excluded",
        &r.model,
        "no",
        cells(c.excluded),
        None,
        Some(r.energy.excluded_mwh),
        None,
        None,
        None,
    );
    for m in &c.method_mix {
        row(
            "method",
            &m.method,
            "yes",
            [None, Some(m.central_flop), None],
            None,
            None,
            None,
            None,
            None,
        );
    }
    for h in &r.hardware {
        row(
            "hardware",
            &h.gpu_type,
            "yes",
            cells(h.flop),
            Some(h.gpu_days),
            None,
            None,
            None,
            None,
        );
    }
    for c in &r.clusters {
        row(
            "cluster",
            &c.name,
            "yes",
            cells(c.counted),
            Some(c.gpu_days),
            Some(c.energy_mwh),
            None,
            None,
            Some(c.records),
        );
    }
    for s in &r.stages {
        row(
            "stage",
            &s.stage,
            if s.counts { "yes" } else { "no" },
            cells(s.flop),
            Some(s.gpu_days),
            Some(s.energy_mwh),
            None,
            None,
            Some(s.records),
        );
    }
    for run in &r.runs {
        let mut all = run.counted;
        all.add_total(run.excluded);
        let counts = match (run.counted.central > 0, run.excluded.central > 0) {
            (true, true) => "partly",
            (true, false) => "yes",
            (false, true) => "no",
            (false, false) => "yes",
        };
        row(
            "run",
            &run.run,
            counts,
            cells(all),
            Some(run.gpu_days),
            Some(run.energy_mwh),
            run.first_event_unix_ms,
            run.last_event_unix_ms,
            Some(run.records),
        );
        for c in &run.by_cluster {
            row(
                "run-cluster",
                &format!("{} on {}", run.run, c.name),
                "yes",
                cells(c.counted),
                Some(c.gpu_days),
                Some(c.energy_mwh),
                None,
                None,
                Some(c.records),
            );
        }
    }
    for x in &r.unestimated.reasons {
        row(
            "unestimated",
            &x.reason,
            "unknown",
            [None, None, None],
            Some(x.gpu_hours / 24.0),
            Some(x.energy_mwh),
            None,
            None,
            Some(x.records),
        );
    }
    let u = &r.unattributed;
    row(
        "unattributed",
        "same nodes and period",
        "no",
        cells(u.flop),
        Some(u.gpu_days.values().fold(0.0, |a, d| a + d)),
        Some(u.energy_mwh),
        u.first_day.map(|d| d * DAY_MS),
        u.last_day.map(|d| (d + 1) * DAY_MS - 1),
        Some(u.records),
    );
    for x in &u.unestimated.reasons {
        row(
            "unattributed-unestimated",
            &x.reason,
            "unknown",
            [None, None, None],
            Some(x.gpu_hours / 24.0),
            Some(x.energy_mwh),
            None,
            None,
            Some(x.records),
        );
    }
    for s in &u.sources {
        let c = &s.counts;
        row(
            "unattributed-source",
            &s.description,
            "no",
            cells(c.flop),
            Some(c.size() as f64 / DAY_MS as f64),
            Some(mwh(c.energy_mj)),
            None,
            None,
            Some(c.records),
        );
    }
    o
}

fn iso(ms: Option<i64>) -> String {
    ms.map_or(String::new(), flopmeter_core::utc::format_utc)
}
