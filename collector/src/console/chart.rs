//! The cumulative-FLOP chart of one model, drawn on the server as SVG: the counted band
//! shaded, the central line, threshold levels, the projection dashed and the declared plan.
//!
//! [`Chart::build`] samples the engine's own evidence (the hourly event-time buckets the
//! clock is dated from) and projection, so the chart shows what the engine decided on;
//! [`svg`] only draws. Colours come from the stylesheet (light, dark and print).

use flopmeter_core::evidence::ModelEvidence;
use flopmeter_core::format::flop;
use flopmeter_core::projection::Projection;
use flopmeter_core::stage::StagePolicy;
use flopmeter_core::units::Bound;
use flopmeter_core::utc::format_utc;
use maud::{Markup, html};

/// Samples along the measured span.
const SAMPLES: i64 = 96;
/// Samples along the projection.
const PROJECTION_SAMPLES: i64 = 24;
/// A level is drawn when it is within this factor of the largest figure on the chart;
/// further up it would flatten everything else, further down it would sit on the axis; it is
/// listed under the chart instead.
const LEVEL_REACH: u128 = 3;
const LEVEL_FLOOR: u128 = 50;

/// One sample of a cumulative band.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Point {
    /// Event time, Unix ms.
    pub t: i64,
    /// Low bound.
    pub low: u128,
    /// Central.
    pub central: u128,
    /// High bound.
    pub high: u128,
}

/// What the chart shows, in data coordinates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chart {
    /// Start of the time axis.
    pub t0: i64,
    /// End of the time axis.
    pub t1: i64,
    /// Top of the FLOP axis.
    pub y_max: u128,
    /// Counted cumulative FLOP over event time.
    pub measured: Vec<Point>,
    /// The extrapolation from the latest event, when runs are extrapolated.
    pub projection: Vec<Point>,
    /// Levels drawn (label, FLOP).
    pub levels: Vec<(String, u128)>,
    /// Levels too far above or below the figures to draw (label, FLOP).
    pub off_chart: Vec<(String, u128)>,
    /// The declared plan, FLOP.
    pub plan: Option<u128>,
    /// The engine's now, when inside the time axis.
    pub now_ms: Option<i64>,
}

fn point(t: i64, f: impl Fn(Bound) -> u128) -> Point {
    Point {
        t,
        low: f(Bound::Low),
        central: f(Bound::Central),
        high: f(Bound::High),
    }
}

impl Chart {
    /// Samples `evidence` (counted stages under `policy`) and `projection`; `levels` are the
    /// applicable thresholds' levels. `None` when there is nothing to draw.
    pub fn build(
        evidence: &ModelEvidence,
        policy: &StagePolicy,
        projection: Option<&Projection>,
        levels: Vec<(String, u128)>,
        now_ms: i64,
    ) -> Option<Chart> {
        let spans: Vec<(i64, i64)> = evidence
            .counted_runs(policy)
            .filter_map(|r| r.event_span())
            .collect();
        let first = spans.iter().map(|s| s.0).min();
        let last = spans.iter().map(|s| s.1).max();
        let plan = projection.and_then(|p| p.declared).map(|d| d.central);
        let (first, last) = match (first, last) {
            (Some(a), Some(b)) => (a, b.max(a + 1)),
            _ if plan.is_some() => (now_ms, now_ms + 1),
            _ => return None,
        };
        let measured: Vec<Point> = (0..=SAMPLES)
            .map(|i| {
                let t = first + (last - first) * i / SAMPLES;
                point(t, |b| evidence.done_by(policy, t, b))
            })
            .collect();
        let to = projection
            .into_iter()
            .flat_map(|p| p.runs.iter())
            .filter_map(|r| r.extrapolate_to_ms)
            .max()
            .filter(|&to| to > last);
        let projection_points: Vec<Point> = match (projection, to) {
            (Some(p), Some(to)) => (0..=PROJECTION_SAMPLES)
                .map(|i| {
                    let t = last + (to - last) * i / PROJECTION_SAMPLES;
                    point(t, |b| p.extrapolated_at(t, b))
                })
                .collect(),
            _ => Vec::new(),
        };
        let data_max = measured
            .iter()
            .chain(&projection_points)
            .map(|p| p.high)
            .chain(plan)
            .max()
            .unwrap_or(0);
        let (mut drawn, mut off_chart): (Vec<_>, Vec<_>) =
            levels.into_iter().partition(|(_, l)| {
                data_max > 0
                    && *l <= data_max.saturating_mul(LEVEL_REACH)
                    && *l >= data_max / LEVEL_FLOOR
            });
        if data_max == 0 && !off_chart.is_empty() {
            // Nothing measured yet: show the lowest level so the axis means something.
            off_chart.sort_by_key(|(_, l)| *l);
            drawn.push(off_chart.remove(0));
        }
        let y_max = drawn
            .iter()
            .map(|(_, l)| *l)
            .chain([data_max])
            .max()
            .unwrap_or(1)
            .max(1);
        let y_max = y_max + y_max / 20;
        let t1 = to
            .unwrap_or(last)
            .max(now_ms.min(last + (last - first) / 4));
        Some(Chart {
            t0: first,
            t1: t1.max(first + 1),
            y_max,
            measured,
            projection: projection_points,
            levels: drawn,
            off_chart,
            plan,
            now_ms: (first..=t1).contains(&now_ms).then_some(now_ms),
        })
    }
}

const W: f64 = 760.0;
const H: f64 = 300.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 150.0;
const TOP: f64 = 14.0;
const BOTTOM: f64 = 30.0;

struct Frame<'a>(&'a Chart);

impl Frame<'_> {
    fn x(&self, t: i64) -> f64 {
        let c = self.0;
        LEFT + (t - c.t0) as f64 / (c.t1 - c.t0) as f64 * (W - LEFT - RIGHT)
    }

    fn y(&self, v: u128) -> f64 {
        H - BOTTOM - v as f64 / self.0.y_max as f64 * (H - TOP - BOTTOM)
    }

    fn line(&self, pts: &[Point], f: fn(&Point) -> u128) -> String {
        pts.iter()
            .map(|p| format!("{:.1},{:.1}", self.x(p.t), self.y(f(p))))
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn band(&self, pts: &[Point]) -> String {
        let upper = self.line(pts, |p| p.high);
        let rev: Vec<Point> = pts.iter().rev().copied().collect();
        format!("{upper} {}", self.line(&rev, |p| p.low))
    }
}

fn date(ms: i64) -> String {
    flopmeter_core::utc::format_date(ms)
}

/// Draws the chart. `label` names it for assistive technology.
pub fn svg(c: &Chart, label: &str) -> Markup {
    let f = Frame(c);
    let x_ticks: Vec<i64> = (0..=4).map(|i| c.t0 + (c.t1 - c.t0) * i / 4).collect();
    let y_ticks: Vec<u128> = (0..=4).map(|i| c.y_max / 4 * i).collect();
    let bottom = H - BOTTOM;
    let right = W - RIGHT;
    html! {
        svg class="chart" viewBox=(format!("0 0 {W} {H}")) role="img" aria-labelledby="chart-title chart-desc" {
            title id="chart-title" { (label) }
            desc id="chart-desc" {
                "Counted FLOP over event time from " (format_utc(c.t0)) " to " (format_utc(c.t1))
                ": shaded band low to high, solid line central"
                @if !c.projection.is_empty() { ", dashed line the projection" }
                @for (name, level) in &c.levels { ", level " (name) " at " (flop(*level)) " FLOP" }
                @if let Some(p) = c.plan { ", declared plan " (flop(p)) " FLOP" }
                "."
            }
            @for t in &y_ticks {
                line class="grid" x1=(LEFT) x2=(right) y1=(format!("{:.1}", f.y(*t))) y2=(format!("{:.1}", f.y(*t))) {}
                text class="tick" x=(LEFT - 6.0) y=(format!("{:.1}", f.y(*t) + 4.0)) text-anchor="end" { (flop(*t)) }
            }
            @for t in &x_ticks {
                text class="tick" x=(format!("{:.1}", f.x(*t))) y=(bottom + 18.0) text-anchor="middle" { (date(*t)) }
            }
            line class="axis" x1=(LEFT) x2=(right) y1=(bottom) y2=(bottom) {}
            line class="axis" x1=(LEFT) x2=(LEFT) y1=(TOP) y2=(bottom) {}
            @if !c.projection.is_empty() {
                polygon class="proj-band" points=(f.band(&c.projection)) {}
                polyline class="proj" points=(f.line(&c.projection, |p| p.central)) {}
            }
            polygon class="band" points=(f.band(&c.measured)) {}
            polyline class="central" points=(f.line(&c.measured, |p| p.central)) {}
            @if let Some(p) = c.plan {
                line class="plan" x1=(LEFT) x2=(right) y1=(format!("{:.1}", f.y(p))) y2=(format!("{:.1}", f.y(p))) {}
                text class="label" x=(right + 6.0) y=(format!("{:.1}", f.y(p) + 4.0)) { "plan " (flop(p)) }
            }
            @for (i, (name, level)) in c.levels.iter().enumerate() {
                line class="level" x1=(LEFT) x2=(right) y1=(format!("{:.1}", f.y(*level))) y2=(format!("{:.1}", f.y(*level))) {}
                text class="label" x=(right + 6.0) y=(format!("{:.1}", f.y(*level) - 4.0 + 12.0 * i as f64)) { (name) " " (flop(*level)) }
            }
            @if let Some(now) = c.now_ms {
                line class="now" x1=(format!("{:.1}", f.x(now))) x2=(format!("{:.1}", f.x(now))) y1=(TOP) y2=(bottom) {}
                text class="label" x=(format!("{:.1}", f.x(now) + 3.0)) y=(TOP + 8.0) { "now" }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flopmeter_core::evidence::{FlopBucket, ModelRole, RunEvidence};
    use flopmeter_core::stage::Stage;
    use flopmeter_core::units::{FlopTotal, Method};
    use flopmeter_core::utc::MS_PER_HOUR;

    fn evidence(stage: Stage) -> ModelEvidence {
        ModelEvidence {
            model: "m".into(),
            role: ModelRole::Provider,
            plans: vec![],
            runs: vec![RunEvidence {
                run_id: "r".into(),
                stage,
                active: false,
                planned_end_ms: None,
                precision: None,
                buckets: (0..10)
                    .map(|h| FlopBucket {
                        start_ms: h * MS_PER_HOUR,
                        end_ms: (h + 1) * MS_PER_HOUR,
                        flop: FlopTotal {
                            low: 70,
                            central: 100,
                            high: 130,
                        },
                        method: Method::GpmTensor,
                    })
                    .collect(),
            }],
        }
    }

    #[test]
    fn the_band_ends_at_the_counted_totals_and_levels_in_reach_are_drawn() {
        let c = Chart::build(
            &evidence(Stage::Pretrain),
            &StagePolicy::default(),
            None,
            vec![("near".into(), 2_000), ("far".into(), 1_000_000)],
            10 * MS_PER_HOUR,
        )
        .unwrap();
        let last = c.measured.last().unwrap();
        assert_eq!((last.low, last.central, last.high), (700, 1_000, 1_300));
        assert_eq!(c.measured.first().unwrap().central, 0);
        assert!(c.measured.windows(2).all(|w| w[0].high <= w[1].high));
        assert_eq!(c.levels, vec![("near".to_string(), 2_000)]);
        assert_eq!(c.off_chart, vec![("far".to_string(), 1_000_000)]);
        assert!(c.y_max >= 2_000);
        let s = svg(&c, "m").into_string();
        assert!(
            s.contains("class=\"level\"") && s.contains("near 2.0e3"),
            "{s}"
        );
        assert!(!s.contains("far"), "{s}");
    }

    #[test]
    fn excluded_stages_are_not_charted() {
        let c = Chart::build(
            &evidence(Stage::Eval),
            &StagePolicy::default(),
            None,
            vec![],
            0,
        );
        assert!(c.is_none());
    }

    #[test]
    fn svg_coordinates_stay_inside_the_frame() {
        let c = Chart::build(
            &evidence(Stage::Pretrain),
            &StagePolicy::default(),
            None,
            vec![("l".into(), 1_300)],
            5 * MS_PER_HOUR,
        )
        .unwrap();
        let f = Frame(&c);
        for p in &c.measured {
            let (x, y) = (f.x(p.t), f.y(p.high));
            assert!((LEFT..=W - RIGHT).contains(&x), "{x}");
            assert!((TOP..=H - BOTTOM).contains(&y), "{y}");
        }
        assert_eq!(c.now_ms, Some(5 * MS_PER_HOUR));
    }
}
