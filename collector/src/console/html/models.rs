//! The landing page: one row per model, most urgent first.

use maud::{Markup, html};

use super::{Frame, Section, band, day, model_href, page, time_left, urgency, when};
use crate::console::model::{Bar, ClusterCell, Crossing, ModelsPage, Sort, Urgency};

fn sort_link(p: &ModelsPage, sort: Sort, label: &str) -> Markup {
    html! {
        @if p.sort == sort { a href={ "?sort=" (sort.as_str()) } aria-current="true" { (label) " ▾" } }
        @else { a href={ "?sort=" (sort.as_str()) } { (label) } }
    }
}

fn bar(b: &Bar) -> Markup {
    let width = b.high.saturating_sub(b.low).max(1);
    html! {
        // A band wholly below the scale (under a thousandth of the level) draws nothing: most
        // models of a large fleet, so the empty bar is kept short for the page's weight.
        @if b.high == 0 { span class="bar" {} } @else {
            span class="bar" {
                i class={ "x" (b.low) " w" (width) } {}
                b class={ "x" (b.central) } {}
            }
        }
        @if b.crossed { " crossed" } @else { " " (format!("{:.0}%", b.percent)) }
    }
}

fn clusters(c: &[ClusterCell]) -> Markup {
    html! {
        @for (i, cell) in c.iter().enumerate() {
            @if i > 0 { ", " }
            (cell.name.as_deref().unwrap_or("local"))
            @if let Some(n) = cell.nodes {
                " · " (n) @if n == 1 { " node" } @else { " nodes" }
            }
            @if let Some(p) = cell.percent { " · " (p) "%" }
        }
    }
}

/// Renders the landing page.
pub fn render(p: &ModelsPage, frame: &Frame) -> Markup {
    let body = html! {
        h1 { "Models" }
        section class="summary" aria-label="Clocks" {
            p {
                strong { (p.running) } " notification clock" @if p.running != 1 { "s" } " running"
                @if p.overdue > 0 { ", " strong class="u-overdue-text" { (p.overdue) " OVERDUE" } }
                @if let Some((m, t, d)) = &p.next_deadline {
                    ". Next deadline: " a href=(model_href(m)) { (m) } " / " (t) " at " (when(*d))
                    " (" (time_left(*d, p.now_ms)) ")"
                }
                "."
            }
            @if !p.evaluated {
                p class="note" { "The compliance engine has not evaluated since the collector started; bars and crossings appear after its first pass." }
            }
            p class="note" {
                "FLOP counted under the stage policy, as central [low – high]. Each bar runs on a log scale from a thousandth of the level to ten times it; the mark is the level, the shaded span the band, the tick the central estimate; the figure beside it is the deciding bound's share of the level."
            }
        }
        table class="models" {
            caption { "Models, sorted by " (p.sort.as_str()) }
            thead {
                tr {
                    th scope="col" { (sort_link(p, Sort::Urgency, "Urgency")) " / " (sort_link(p, Sort::Model, "Model")) }
                    th scope="col" { (sort_link(p, Sort::Flop, "Counted FLOP")) }
                    @for c in &p.columns {
                        th scope="col" class="lvl" { (c.level) br; small { (c.ids.join(", ")) } }
                    }
                    th scope="col" { (sort_link(p, Sort::Crossing, "Crossing")) }
                    th scope="col" { (sort_link(p, Sort::Deadline, "Clock and deadline")) }
                    th scope="col" { "Clusters · unattributed nearby" }
                }
            }
            tbody {
                @for r in &p.rows {
                    // Quiet rows carry no colour, so they need no badge to say it in words.
                    tr class=[(r.urgency != Urgency::Quiet).then(|| r.urgency.class())] {
                        th scope="row" {
                            @if r.urgency != Urgency::Quiet { (urgency(r.urgency)) " " }
                            a href=(model_href(&r.model)) { (r.model) }
                        }
                        td class="num" { (band(r.counted)) }
                        @for b in &r.bars {
                            td { @match b { Some(b) => (bar(b)), None => "n/a" } }
                        }
                        td {
                            @match &r.crossing {
                                Some(Crossing::Measured(t)) => { "crossed " (day(*t)) }
                                Some(Crossing::Projected(t)) => { "projected " (day(*t)) }
                                None => "—",
                            }
                        }
                        td {
                            @match &r.clock {
                                Some(c) => {
                                    (c.status.replace('-', " ")) " · " (c.threshold)
                                    @if let Some(d) = c.deadline_ms {
                                        @if c.urgency == Urgency::Done { br; "deadline was " (when(d)) }
                                        @else { br; "due " (when(d)) br; (time_left(d, p.now_ms)) }
                                    }
                                    @if c.others > 0 { br; small { "+" (c.others) " more" } }
                                }
                                None => "—",
                            }
                        }
                        td { (clusters(&r.clusters)) " · " (format!("{:.0}%", r.unattributed_share * 100.0)) }
                    }
                }
            }
        }
        @if p.rows.is_empty() {
            p { "No model has reported yet. Label training jobs with FLOPMETER_MODEL (README, \"Label a training job\")." }
        }
    };
    page("Models", Section::Models, frame, body)
}
