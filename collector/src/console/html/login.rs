//! The login page: a named admin token (to act) or a viewer token (to read) opens a session.

use maud::{Markup, html};

use super::{Frame, Section, page};

/// Renders the login page; `refused` explains a failed attempt.
pub fn render(frame: &Frame, next: &str, refused: Option<&str>, possible: bool) -> Markup {
    let body = html! {
        h1 { "Log in" }
        @if let Some(why) = refused { p class="notice refused" role="alert" { (why) } }
        @if possible {
            p { "Paste your token. A named admin token (--admin-tokens) lets you acknowledge and dismiss alerts, recorded under your name; a viewer token (--viewer-tokens) lets you read. The session lasts 8 hours." }
            form method="post" action="/ui/login" {
                input type="hidden" name="next" value=(next);
                label for="token" { "Token" }
                input id="token" name="token" type="password" required autocomplete="current-password";
                button type="submit" { "Log in" }
            }
        } @else {
            p { "This collector has no named admin or viewer tokens, so there is nothing to log in with: reading is open, and alerts are acknowledged with flopmeter ack. Start the collector with --admin-tokens FILE to act here." }
        }
    };
    page("Log in", Section::Login, frame, body)
}
