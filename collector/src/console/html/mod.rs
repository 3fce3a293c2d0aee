//! The console's HTML: one module per page, over a shared layout. maud escapes every value
//! it interpolates, so a model named `<script>` is text; nothing here builds markup from
//! strings by hand (`PreEscaped` appears only for the doctype).
//!
//! Figures are shown with `flopmeter_core::format` (two significant figures), each wrapped in
//! `<data value="…">` with the exact integer, so a reader (or a test) can check a rounded
//! figure against the ledger; instants as `<time datetime="…">` in UTC.

pub mod alerts;
pub mod audit;
pub mod login;
pub mod model;
pub mod models;

use flopmeter_core::units::FlopTotal;
use flopmeter_core::utc::{format_date, format_utc, format_utc_minute};
use maud::{DOCTYPE, Markup, html};

use super::model::Urgency;

/// Which part of the console a page belongs to (for the navigation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    /// Models (landing page and one model).
    Models,
    /// Alerts.
    Alerts,
    /// Audit.
    Audit,
    /// Login.
    Login,
}

/// What every page's frame needs to know.
#[derive(Debug, Clone, Default)]
pub struct Frame {
    /// Who is logged in, and whether as an admin.
    pub who: Option<(String, bool)>,
    /// The session's CSRF token (for the logout form).
    pub csrf: Option<String>,
    /// Whether a login exists at all (viewer or named admin tokens).
    pub logins: bool,
    /// The engine's now, Unix ms.
    pub now_ms: i64,
}

/// The page shell: head, navigation, main.
pub fn page(title: &str, section: Section, frame: &Frame, body: Markup) -> Markup {
    let nav = |s: Section, href: &str, label: &str| {
        html! {
            @if s == section { a href=(href) aria-current="page" { (label) } }
            @else { a href=(href) { (label) } }
        }
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="color-scheme" content="light dark";
                title { (title) " · flopmeter" }
                link rel="stylesheet" href="/ui/assets/console.css";
                link rel="icon" href="/ui/assets/favicon.svg" type="image/svg+xml";
            }
            body {
                header class="top" {
                    nav aria-label="Console" {
                        span class="brand" { "flopmeter" }
                        (nav(Section::Models, "/ui/", "Models"))
                        (nav(Section::Alerts, "/ui/alerts", "Alerts"))
                        (nav(Section::Audit, "/ui/audit", "Audit"))
                    }
                    div class="who" {
                        "as of " (when(frame.now_ms))
                        @match (&frame.who, &frame.csrf) {
                            (Some((actor, admin)), Some(csrf)) => {
                                " · " (actor) @if *admin { " (admin)" } @else { " (viewer)" }
                                form method="post" action="/ui/logout" class="inline" {
                                    input type="hidden" name="csrf" value=(csrf);
                                    button type="submit" { "Log out" }
                                }
                            }
                            _ => {
                                @if frame.logins && section != Section::Login {
                                    " · " a href="/ui/login" { "Log in" }
                                }
                            }
                        }
                    }
                }
                main { (body) }
                footer { "flopmeter compliance console · figures to two significant figures; exact integers in each figure's data value · times in UTC" }
            }
        }
    }
}

/// A FLOP figure: two significant figures, the exact integer as its data value.
pub fn flop(v: u128) -> Markup {
    html! { data value=(v) { (flopmeter_core::format::flop(v)) } }
}

/// A band as `central [low – high]`.
pub fn band(t: FlopTotal) -> Markup {
    html! {
        span class="band" { (flop(t.central)) " [" (flop(t.low)) " – " (flop(t.high)) "]" }
    }
}

/// An instant: `2026-12-19 04:14 UTC`, with the exact ISO 8601 instant as its datetime.
pub fn when(ms: i64) -> Markup {
    html! { time datetime=(format_utc(ms)) { (format_utc_minute(ms)) } }
}

/// A date only.
pub fn day(ms: i64) -> Markup {
    html! { time datetime=(format_utc(ms)) { (format_date(ms)) } }
}

/// Time left to a deadline, in words that do not depend on colour.
pub fn time_left(deadline_ms: i64, now_ms: i64) -> String {
    flopmeter_core::format::time_left(deadline_ms - now_ms)
}

/// The urgency badge: colour and words.
pub fn urgency(u: Urgency) -> Markup {
    html! { span class={ "badge " (u.class()) } { (u.label()) } }
}

/// A path segment with everything but unreserved characters percent-encoded, so any model
/// name makes a link to its own page.
pub fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The link to a model's page.
pub fn model_href(model: &str) -> String {
    format!("/ui/models/{}", segment(model))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_names_are_escaped_and_encoded() {
        let name = "<script>alert(1)</script>";
        let m = html! { a href=(model_href(name)) { (name) } }.into_string();
        assert!(!m.contains("<script>"), "{m}");
        assert!(m.contains("&lt;script&gt;alert(1)&lt;/script&gt;"), "{m}");
        assert!(
            m.contains("/ui/models/%3Cscript%3Ealert%281%29%3C%2Fscript%3E"),
            "{m}"
        );
        let run = "\" onmouseover=\"x";
        let m = html! { td title=(run) { (run) } }.into_string();
        assert!(!m.contains("\" onmouseover"), "{m}");
    }

    #[test]
    fn figures_carry_their_exact_value() {
        let m = band(FlopTotal {
            low: 7,
            central: 78 * 10u128.pow(20),
            high: u128::MAX,
        })
        .into_string();
        assert!(m.contains("value=\"7800000000000000000000\">7.8e21"), "{m}");
        assert!(m.contains(&format!("value=\"{}\"", u128::MAX)), "{m}");
    }

    #[test]
    fn times_are_utc_to_the_minute_with_the_exact_instant() {
        let m = when(1_798_000_000_123).into_string();
        assert!(m.contains("datetime=\"2026-12-23T"), "{m}");
        assert!(m.contains(".123Z\""), "{m}");
        assert!(m.contains(" UTC</time>"), "{m}");
        assert_eq!(time_left(10, 10), "overdue by 0 min");
        assert_eq!(time_left(86_400_000 + 10, 10), "1 d 00 h left");
    }
}
