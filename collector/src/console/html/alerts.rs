//! The alerts page: open alerts by deadline, overdue first, each with acknowledge and dismiss
//! forms for a logged-in admin; then the closed ones.

use maud::{Markup, html};

use super::{Frame, Section, model_href, page, time_left, urgency, when};
use crate::console::model::{AlertRow, AlertsPage, Urgency};

/// A message after an action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// It worked.
    Done(String),
    /// It did not; what to do.
    Refused(String),
}

/// What the forms need: the CSRF token of an admin session; `None` hides them.
#[derive(Debug, Clone)]
pub struct Forms {
    /// The session's CSRF token.
    pub csrf: String,
    /// Who acts (shown so nobody acts under someone else's name by mistake).
    pub actor: String,
}

fn forms(i: usize, r: &AlertRow, f: &Forms) -> Markup {
    let v = &r.view;
    html! {
        div class="actions" {
            form method="post" action="/ui/alerts/ack" {
                input type="hidden" name="csrf" value=(f.csrf);
                input type="hidden" name="model" value=(v.model);
                input type="hidden" name="threshold" value=(v.threshold);
                label for={ "ref-" (i) } { "Notification reference" }
                input id={ "ref-" (i) } name="reference" type="text" required
                    placeholder="e.g. the AI Office's receipt number" autocomplete="off";
                button type="submit" { "Acknowledge as " (f.actor) }
            }
            form method="post" action="/ui/alerts/dismiss" {
                input type="hidden" name="csrf" value=(f.csrf);
                input type="hidden" name="model" value=(v.model);
                input type="hidden" name="threshold" value=(v.threshold);
                label for={ "why-" (i) } { "Reason for dismissing" }
                input id={ "why-" (i) } name="reason" type="text" required autocomplete="off";
                button type="submit" { "Dismiss as " (f.actor) }
            }
        }
    }
}

fn row(i: usize, r: &AlertRow, now: i64, f: Option<&Forms>) -> Markup {
    let v = &r.view;
    html! {
        tr class=(r.urgency.class()) {
            th scope="row" { (urgency(r.urgency)) br; a href=(model_href(&v.model)) { (v.model) } " / " (v.threshold) }
            td { (v.status) }
            td {
                @match v.deadline_ms {
                    Some(d) if r.urgency == Urgency::Done => { "was " (when(d)) }
                    Some(d) => { (when(d)) br; (time_left(d, now)) }
                    None => {
                        @match v.content.as_ref().and_then(|c| c.projected_crossing.clone()) {
                            Some(c) => { "no clock; projected crossing " (c) }
                            None => "no clock",
                        }
                    }
                }
            }
            td {
                @if let Some(reason) = &v.reason { "started " (v.clock_start.clone().unwrap_or_default()) ", reason " (reason) }
                @if let Some(c) = &v.content { p class="summary-line" { (c.summary) } }
                @if let Some(a) = &v.acknowledged { "acknowledged " (a) }
                @if let Some(d) = &v.dismissed { "dismissed " (d) }
                @if let Some(f) = f { (forms(i, r, f)) }
            }
        }
    }
}

/// Renders the alerts page.
pub fn render(
    p: &AlertsPage,
    frame: &Frame,
    forms: Option<&Forms>,
    notice: Option<&Notice>,
    admins: bool,
) -> Markup {
    let body = html! {
        h1 { "Alerts" }
        @match notice {
            Some(Notice::Done(m)) => p class="notice ok" role="status" { "Done: " (m) },
            Some(Notice::Refused(m)) => p class="notice refused" role="alert" { "Not done: " (m) },
            None => {},
        }
        @if forms.is_none() {
            p class="note" {
                @if admins { "Log in with your named admin token to acknowledge or dismiss alerts: the audit log records you as the actor. " a href="/ui/login?next=/ui/alerts" { "Log in" } }
                @else { "Acknowledging through the console needs named admin tokens (--admin-tokens FILE on the collector); until then use flopmeter ack / dismiss." }
            }
        }
        section aria-labelledby="open" {
            h2 id="open" { "Open (" (p.open.len()) "), overdue first, then by deadline" }
            @if p.open.is_empty() { p { "No open alert." } } @else {
                table class="alerts" {
                    thead { tr { th scope="col" { "Alert" } th scope="col" { "Status" } th scope="col" { "Deadline" } th scope="col" { "Details" } } }
                    tbody { @for (i, r) in p.open.iter().enumerate() { (row(i, r, p.now_ms, forms)) } }
                }
            }
        }
        section aria-labelledby="closed" {
            h2 id="closed" { "Acknowledged or dismissed (" (p.closed.len()) ")" }
            @if p.closed.is_empty() { p { "None." } } @else {
                table class="alerts" {
                    thead { tr { th scope="col" { "Alert" } th scope="col" { "Status" } th scope="col" { "Deadline" } th scope="col" { "Details" } } }
                    tbody { @for (i, r) in p.closed.iter().enumerate() { (row(p.open.len() + i, r, p.now_ms, None)) } }
                }
            }
        }
    };
    page("Alerts", Section::Alerts, frame, body)
}
