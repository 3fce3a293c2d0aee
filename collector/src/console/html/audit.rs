//! The audit page: the chain's head, `audit verify` on demand, the export, the latest entries.

use maud::{Markup, html};

use super::{Frame, Section, page, when};
use crate::console::model::{AuditPage, Verification};

/// Renders the audit page.
pub fn render(p: &AuditPage, frame: &Frame) -> Markup {
    let body = html! {
        h1 { "Audit log" }
        section aria-labelledby="head" {
            h2 id="head" { "Chain head" }
            p {
                (p.head.next_seq) " entries; the last entry's hash is "
                code class="hash" { (p.head.last_hash) }
                ". Each entry's SHA-256 covers the previous hash, so changing, removing or reordering any entry breaks every link after it."
            }
        }
        section aria-labelledby="verify" {
            h2 id="verify" { "Verify" }
            @match &p.verification {
                Some(Verification::Ok(n)) => p class="notice ok" role="status" { "Verified: OK, " (n) " entries, every link and the stored head check out." },
                Some(Verification::Broken(i, why)) => p class="notice refused" role="alert" { "BROKEN at entry " (i) ": " (why) },
                None => p { "Recompute every hash now (the same check as flopmeter audit verify)." },
            }
            form method="get" action="/ui/audit" {
                input type="hidden" name="verify" value="1";
                button type="submit" { "Verify the chain now" }
            }
        }
        section aria-labelledby="export" {
            h2 id="export" { "Export" }
            form method="get" action="/ui/audit/export.jsonl" {
                label for="since" { "Entries since (YYYY-MM-DD, UTC; empty for all)" }
                input id="since" name="since" type="text" pattern="[0-9]{4}-[0-9]{2}-[0-9]{2}" placeholder="2026-01-01";
                button type="submit" { "Download JSON lines" }
            }
        }
        section aria-labelledby="recent" {
            h2 id="recent" { "Latest entries" }
            table {
                thead { tr { th scope="col" { "#" } th scope="col" { "Recorded" } th scope="col" { "By" } th scope="col" { "Kind" } th scope="col" { "About" } th scope="col" { "What" } } }
                tbody {
                    @for (h, (kind, about)) in p.recent.iter().zip(&p.subjects) {
                        tr { td class="num" { (h.seq) } td class="nw" { (when(h.at_ms)) } td class="nw" { (h.actor) } td class="nw" { (kind) } td { (about) } td { (h.what) } }
                    }
                }
            }
        }
    };
    page("Audit", Section::Audit, frame, body)
}
