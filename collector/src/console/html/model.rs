//! The page of one model: standing against each threshold, the cumulative chart, alerts with
//! their full history, and the Annex XI figures with the report to download. The print
//! stylesheet makes this page the paper copy for the file.

use flopmeter_core::clock::ClockState;
use flopmeter_core::format::sig2;
use flopmeter_core::utc::format_utc;
use maud::{Markup, html};

use super::{Frame, Section, band, day, flop, model_href, page, time_left, urgency, when};
use crate::console::chart;
use crate::console::model::{AlertHistory, Crossing, ModelPage};
use crate::report::{Report, date_time};

fn evidence(c: &ClockState) -> Markup {
    let e = &c.start.evidence;
    html! {
        table class="kv" {
            caption { "Evidence recorded at the start (" (when(e.taken_at_ms)) "), never changed" }
            tbody {
                tr { th scope="row" { "Threshold" } td { (e.threshold_id) " v" (e.threshold_version) " · " (e.legal_basis) } }
                tr { th scope="row" { "Level" } td { (flop(e.level.flop)) " FLOP, deciding bound " (e.bound.as_str()) } }
                tr { th scope="row" { "Measured (counted)" } td { (band(e.measured)) } }
                tr { th scope="row" { "Measured crossing" } td { @match e.measured_crossing_ms { Some(t) => (when(t)), None => "—" } } }
                tr { th scope="row" { "Declared" } td { @match e.declared { Some(d) => (band(d)), None => "—" } } }
                tr { th scope="row" { "Committed projection" } td { (band(e.committed)) } }
                tr { th scope="row" { "Projection" } td { (band(e.projected)) } }
                tr { th scope="row" { "Plans in force" } td {
                    @if e.plans.is_empty() { "—" }
                    @for p in &e.plans { (p.plan_id) " (registered " (when(p.registered_at_ms)) ") " }
                } }
                tr { th scope="row" { "Counted runs" } td {
                    @for r in &e.counted_runs { (r.run_id) ": " (band(r.measured)) br; }
                } }
                tr { th scope="row" { "Excluded runs" } td {
                    @if e.excluded_runs.is_empty() { "—" }
                    @for r in &e.excluded_runs { (r.run_id) " (" (r.stage.as_str()) "): " (band(r.measured)) br; }
                } }
            }
        }
    }
}

fn alert(a: &AlertHistory, now: i64) -> Markup {
    let v = &a.view;
    html! {
        section class={ "alert " (a.urgency.class()) } {
            h3 { (v.threshold) ": " (urgency(a.urgency)) " " (v.status) }
            @if let Some(c) = &v.content { p { (c.summary) } }
            dl {
                @if let Some(s) = &v.clock_start { dt { "Clock start" } dd { (s) } }
                @if let Some(r) = &v.reason { dt { "Reason" } dd { (r) } }
                @if let Some(d) = v.deadline_ms {
                    dt { "Deadline" } dd { (when(d)) " (" (time_left(d, now)) ")" }
                }
                @if let Some(x) = &v.acknowledged { dt { "Acknowledged" } dd { (x) } }
                @if let Some(x) = &v.dismissed { dt { "Dismissed" } dd { (x) } }
            }
            @if let Some(c) = &a.clock {
                (evidence(c))
                @if !c.facts.is_empty() {
                    @if let Some(content) = v.content.as_ref().and_then(|c| c.clock.as_ref()) {
                        h4 { "Facts added since" }
                        ul { @for f in &content.facts { li { (f) } } }
                    }
                }
            }
            h4 { "History (audit log)" }
            table {
                thead { tr { th scope="col" { "#" } th scope="col" { "Recorded" } th scope="col" { "By" } th scope="col" { "What" } } }
                tbody {
                    @for h in &a.history {
                        tr { td class="num" { (h.seq) } td class="nw" { (when(h.at_ms)) } td class="nw" { (h.actor) } td { (h.what) } }
                    }
                }
            }
            h4 { "Deliveries" }
            @if a.deliveries.is_empty() { p { "None yet." } } @else {
                table {
                    thead { tr { th scope="col" { "Sink" } th scope="col" { "Event" } th scope="col" { "State" } th scope="col" { "Attempts" } th scope="col" { "Delivered" } } }
                    tbody {
                        @for d in &a.deliveries {
                            tr {
                                td { (d.sink) } td { (d.key) }
                                td { @if d.delivered { "delivered" } @else { "pending" @if let Some(e) = &d.last_error { ": " (e) } } }
                                td class="num" { (d.attempts) }
                                td { @match d.delivered_ms { Some(t) => (when(t)), None => "—" } }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn report(r: &Report) -> Markup {
    let c = &r.computation;
    let href = model_href(&r.model);
    html! {
        section aria-labelledby="annex" {
            h2 id="annex" { "Annex XI §1.2(d)(e) / Model Documentation Form" }
            p class="downloads" {
                "Download the report: "
                a href={ (href) "/report.txt" } download { "text" } " · "
                a href={ (href) "/report.csv" } download { "CSV" } " · "
                a href={ (href) "/report.json" } download { "JSON" }
                " (generated " (date_time(Some(r.generated_unix_ms))) "). Print this page for a paper copy."
            }
            table class="kv" {
                tbody {
                    tr { th scope="row" { "Computation" } td { (band(c.counted)) " FLOP (central [low – high])" } }
                    tr { th scope="row" { "Method mix" } td { @if c.method_mix_text.is_empty() { "—" } @else { (c.method_mix_text) } } }
                    tr { th scope="row" { "Excluded by stage policy" } td { (band(c.excluded)) " FLOP (measured, not counted)" } }
                    tr { th scope="row" { "Training time" } td {
                        (sig2(r.training_time.wall_clock_days)) " wall-clock days ("
                        (date_time(r.training_time.first_event_unix_ms)) " to " (date_time(r.training_time.last_event_unix_ms)) ")"
                    } }
                    tr { th scope="row" { "Hardware" } td {
                        @if r.hardware.is_empty() { "—" }
                        @for h in &r.hardware { (sig2(h.gpu_days)) " " (h.gpu_type) " GPU-days" br; }
                    } }
                    tr { th scope="row" { "Energy" } td { (sig2(r.energy.counted_mwh)) " MWh (GPU energy measured by NVML; excluded stages " (sig2(r.energy.excluded_mwh)) " MWh)" } }
                    @if let Some(b) = &r.base_model {
                        tr { th scope="row" { "Base model" } td {
                            (b.base_model) " with " @match b.base_flop { Some(f) => { (flop(f)) " FLOP" }, None => "unknown compute" }
                            @if let Some(s) = b.modification_share_high { "; this model's counted high bound is " (format!("{:.1}%", s * 100.0)) " of it" }
                        } }
                    }
                    tr { th scope="row" { "Records" } td {
                        (r.quality.records) " (" (r.quality.approximate_records) " approximate: GPU shared between processes; "
                        (r.quality.unknown_peak_records) " on uncatalogued GPUs with an operator-supplied peak)"
                    } }
                }
            }
            h3 { "Per run" }
            table {
                thead { tr {
                    th scope="col" { "Run" } th scope="col" { "Stages" } th scope="col" { "Counted FLOP" }
                    th scope="col" { "Excluded FLOP" } th scope="col" { "GPU-days" } th scope="col" { "Agents / nodes" } th scope="col" { "Period" }
                } }
                tbody {
                    @for run in &r.runs {
                        tr {
                            th scope="row" { @if run.run.is_empty() { "(none)" } @else { (run.run) } }
                            td { (run.stages.join(", ")) }
                            td class="num" { (band(run.counted)) }
                            td class="num" { @if run.excluded.central == 0 && run.excluded.high == 0 { "—" } @else { (band(run.excluded)) " (excluded by stage)" } }
                            td class="num" { (sig2(run.gpu_days)) }
                            td class="num" { (run.agents) " / " (run.nodes) }
                            td { (date_time(run.first_event_unix_ms)) " to " (date_time(run.last_event_unix_ms)) }
                        }
                    }
                }
            }
            h3 { "Per stage" }
            table {
                thead { tr { th scope="col" { "Stage" } th scope="col" { "Counts?" } th scope="col" { "FLOP" } th scope="col" { "GPU-days" } th scope="col" { "MWh" } th scope="col" { "Records" } } }
                tbody {
                    @for s in &r.stages {
                        tr {
                            th scope="row" { (s.stage) }
                            td { @if s.counts { "counts" } @else { "excluded: the stage policy does not count " (s.stage) } }
                            td class="num" { (band(s.flop)) }
                            td class="num" { (sig2(s.gpu_days)) }
                            td class="num" { (sig2(s.energy_mwh)) }
                            td class="num" { (s.records) }
                        }
                    }
                }
            }
            p {
                "Stage policy: counted " (r.policy.counted_stages.join(", ")) "; excluded "
                (r.policy.excluded_stages.join(", ")) "; unknown stages "
                @if r.policy.unknown_stages_count { "count" } @else { "are excluded" } "."
            }
            h3 { "Unattributed compute nearby" }
            p {
                (band(r.unattributed.flop)) " FLOP on this model's " (r.unattributed.nodes.len()) " node(s) in its period, "
                (r.unattributed.records) " records: no run claimed this work; it may belong to this model."
            }
            h3 { "How the figures were made" }
            ul { @for m in &r.methodology { li { (m) } } }
        }
    }
}

/// Renders the page of one model.
pub fn render(p: &ModelPage, frame: &Frame) -> Markup {
    let r = &p.report;
    let body = html! {
        h1 { "Model " (r.model) }
        @if let Some(e) = &r.entry {
            p {
                "Role: " @match e.role { Some(role) => (role.to_string()), None => "—" }
                @if let Some(plan) = e.planned_total() { " · declared plan " (flop(plan)) " FLOP" }
                @if let Some(end) = e.declared.planned_end_unix_ms { ", planned end " (day(end)) }
            }
        }
        section aria-labelledby="standing" {
            h2 id="standing" { "Against each threshold" }
            table {
                thead { tr {
                    th scope="col" { "Threshold" } th scope="col" { "Level" } th scope="col" { "Counted band vs level" }
                    th scope="col" { "Crossing" } th scope="col" { "Projected (deciding bound)" }
                } }
                tbody {
                    @for s in &p.standings {
                        tr {
                            th scope="row" { (s.id) br; small { (s.jurisdiction) " · " (s.legal_basis) } }
                            td class="num" { (flop(s.bar.level)) }
                            td {
                                span class="bar" {
                                    i class={ "x" (s.bar.low) " w" (s.bar.high.saturating_sub(s.bar.low).max(1)) } {}
                                    b class={ "x" (s.bar.central) } {}
                                }
                                @if s.bar.crossed { " crossed (" (s.bar.bound.as_str()) " bound)" }
                                @else { " " (format!("{:.0}%", s.bar.percent)) " of the level (" (s.bar.bound.as_str()) " bound)" }
                            }
                            td { @match &s.crossing {
                                Some(Crossing::Measured(t)) => { "measured " (when(*t)) }
                                Some(Crossing::Projected(t)) => { "projected " (when(*t)) }
                                None => "—",
                            } }
                            td class="num" { (flop(s.projected)) @if s.projected_crossed { " (crosses)" } }
                        }
                    }
                }
            }
        }
        section aria-labelledby="chart" {
            h2 id="chart" { "Cumulative counted FLOP over event time" }
            @match &p.chart {
                Some(c) => {
                    figure {
                        (chart::svg(c, &format!("Cumulative counted FLOP of {}", r.model)))
                        figcaption {
                            span class="key k-band" {} " band (low – high) " span class="key k-central" {} " central "
                            @if !c.projection.is_empty() { span class="key k-proj" {} " projection (dashed) " }
                            @if !c.levels.is_empty() { span class="key k-level" {} " threshold level " }
                            @if c.plan.is_some() { span class="key k-plan" {} " declared plan " }
                            @for (name, level) in &c.off_chart { br; (name) " level " (flop(*level)) " FLOP is off the chart" }
                        }
                    }
                }
                None => p { "Nothing measured in the counted stages yet." },
            }
        }
        section aria-labelledby="alerts" {
            h2 id="alerts" { "Alerts" }
            @if p.alerts.is_empty() { p { "No alert for this model." } }
            @else { p { "Acknowledge or dismiss on the " a href="/ui/alerts" { "Alerts" } " page." } }
            @for a in &p.alerts { (alert(a, p.now_ms)) }
        }
        (report(r))
        p class="note" { "Printed " (format_utc(p.now_ms)) " (engine time)." }
    };
    page(&format!("Model {}", r.model), Section::Models, frame, body)
}
