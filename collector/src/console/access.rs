//! Who may read the console, who may act through it, and how a browser proves it.
//!
//! - **Read access** is open (a trusted network, as the JSON API always was) unless
//!   `--viewer-tokens FILE` names viewers; then every page, and `/api/v1`, needs a viewer's
//!   or an admin's token (a session cookie, or `Authorization: Bearer` for scripts).
//! - **Acting** (acknowledge, dismiss) needs a session opened with a *named* admin token
//!   (`--admin-tokens FILE`), so the audit log records the person the credential belongs to.
//!   The shared `--admin-token` names nobody and cannot open a session.
//!
//! Sessions are **stateless**: the cookie carries role, actor and expiry, signed with
//! HMAC-SHA256 under that actor's own token. Any collector replica given the same tokens files
//! accepts it (no session table to share), and removing a person's token ends their sessions.
//! The price: logging out clears the browser's cookie but cannot revoke a copy; sessions are
//! therefore short ([`SESSION_MS`]) and the cookie is HttpOnly and SameSite=Strict (and Secure
//! under TLS).
//!
//! CSRF: every form carries a token derived from the session (HMAC under the actor's token of
//! the cookie's value), which a page on another origin cannot compute; it is checked before
//! anything else on every POST. `SameSite=Strict` does not suffice alone: another port of the
//! same host is the same *site*, so its pages' requests carry the cookie.

use std::collections::HashMap;

use flopmeter_core::utc::MS_PER_HOUR;
use hmac::{KeyInit, Mac};
use sha2::Sha256;

use crate::ingest::auth::same_token;

/// How long a console session lasts.
pub const SESSION_MS: i64 = 8 * MS_PER_HOUR;

/// What a session may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Read the console.
    Viewer,
    /// Read, and acknowledge or dismiss alerts.
    Admin,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Admin => "admin",
        }
    }

    fn parse(s: &str) -> Option<Role> {
        match s {
            "viewer" => Some(Role::Viewer),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// A verified session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// What it may do.
    pub role: Role,
    /// Whose token opened it (the audit log's actor).
    pub actor: String,
    /// When it ends, Unix ms.
    pub expires_ms: i64,
    /// The cookie value, which the CSRF token is derived from.
    value: String,
}

/// The console's credentials: named admin and viewer tokens (actor → token).
#[derive(Clone, Default)]
pub struct Access {
    admins: HashMap<String, String>,
    viewers: HashMap<String, String>,
    secure: bool,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names = |m: &HashMap<String, String>| {
            let mut v: Vec<String> = m.keys().cloned().collect();
            v.sort();
            v
        };
        f.debug_struct("Access")
            .field("admins", &names(&self.admins))
            .field("viewers", &names(&self.viewers))
            .field("secure", &self.secure)
            .finish()
    }
}

const SESSION_CONTEXT: &str = "flopmeter-console-session-v1";
const CSRF_CONTEXT: &str = "flopmeter-console-csrf-v1";

fn hmac_hex(key: &str, context: &str, msg: &str) -> String {
    let mut mac = <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(key.as_bytes())
        .expect("HMAC takes keys of any length");
    mac.update(context.as_bytes());
    mac.update(b"\n");
    mac.update(msg.as_bytes());
    hex(&mac.finalize().into_bytes())
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

impl Access {
    /// Credentials from the named admin tokens and the viewer tokens; `secure` marks cookies
    /// Secure (the listener serves TLS).
    pub fn new(
        admins: HashMap<String, String>,
        viewers: HashMap<String, String>,
        secure: bool,
    ) -> Access {
        Access {
            admins,
            viewers,
            secure,
        }
    }

    /// Whether anyone who reaches the HTTP port may read (no viewer tokens).
    pub fn read_is_open(&self) -> bool {
        self.viewers.is_empty()
    }

    /// Whether anyone can log in at all.
    pub fn has_logins(&self) -> bool {
        !self.admins.is_empty() || !self.viewers.is_empty()
    }

    /// Whether named admins exist (so acting through the console is possible).
    pub fn has_admins(&self) -> bool {
        !self.admins.is_empty()
    }

    /// The session cookie's name. Under TLS the `__Host-` prefix makes browsers refuse a
    /// cookie of that name set by another host or over plain HTTP.
    pub fn cookie_name(&self) -> &'static str {
        if self.secure {
            "__Host-flopmeter_session"
        } else {
            "flopmeter_session"
        }
    }

    fn token_of(&self, role: Role, actor: &str) -> Option<&str> {
        match role {
            Role::Admin => self.admins.get(actor),
            Role::Viewer => self.viewers.get(actor),
        }
        .map(String::as_str)
    }

    /// Whose token `presented` is. Every token is compared, so the time taken does not tell
    /// which one matched; an admin's token wins over a viewer's.
    pub fn identify(&self, presented: &str) -> Option<(Role, String)> {
        let presented = presented.trim();
        if presented.is_empty() {
            return None;
        }
        let mut found = None;
        for (actor, token) in &self.viewers {
            if same_token(presented, token) {
                found = Some((Role::Viewer, actor.clone()));
            }
        }
        for (actor, token) in &self.admins {
            if same_token(presented, token) {
                found = Some((Role::Admin, actor.clone()));
            }
        }
        found
    }

    /// The cookie value of a new session for `actor`, valid [`SESSION_MS`] from `now_ms`.
    pub fn issue(&self, role: Role, actor: &str, now_ms: i64) -> Option<String> {
        let token = self.token_of(role, actor)?;
        let payload =
            hex(format!("{}\n{actor}\n{}", role.as_str(), now_ms + SESSION_MS).as_bytes());
        let mac = hmac_hex(token, SESSION_CONTEXT, &payload);
        Some(format!("{payload}.{mac}"))
    }

    /// Verifies a cookie value at `now_ms`: well formed, signed with the named person's
    /// current token, not expired.
    pub fn session(&self, value: &str, now_ms: i64) -> Option<Session> {
        let (payload, mac) = value.split_once('.')?;
        let text = String::from_utf8(unhex(payload)?).ok()?;
        let mut parts = text.splitn(3, '\n');
        let role = Role::parse(parts.next()?)?;
        let actor = parts.next()?;
        let expires_ms: i64 = parts.next()?.parse().ok()?;
        let token = self.token_of(role, actor)?;
        if !same_token(&hmac_hex(token, SESSION_CONTEXT, payload), mac) || expires_ms <= now_ms {
            return None;
        }
        Some(Session {
            role,
            actor: actor.to_string(),
            expires_ms,
            value: value.to_string(),
        })
    }

    /// The CSRF token the session's forms carry.
    pub fn csrf_token(&self, s: &Session) -> String {
        self.token_of(s.role, &s.actor)
            .map(|t| hmac_hex(t, CSRF_CONTEXT, &s.value))
            .unwrap_or_default()
    }

    /// Whether a form's CSRF token belongs to the session.
    pub fn csrf_ok(&self, s: &Session, presented: &str) -> bool {
        let expected = self.csrf_token(s);
        !expected.is_empty() && same_token(&expected, presented)
    }

    /// The `Set-Cookie` value opening a session.
    pub fn set_cookie(&self, value: &str) -> String {
        format!(
            "{}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
            self.cookie_name(),
            SESSION_MS / 1000,
            if self.secure { "; Secure" } else { "" }
        )
    }

    /// The `Set-Cookie` value ending the session in this browser.
    pub fn clear_cookie(&self) -> String {
        format!(
            "{}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{}",
            self.cookie_name(),
            if self.secure { "; Secure" } else { "" }
        )
    }

    /// The session of a request's `Cookie` header values, if one verifies.
    pub fn session_from_cookies<'a>(
        &self,
        cookie_headers: impl Iterator<Item = &'a str>,
        now_ms: i64,
    ) -> Option<Session> {
        let name = self.cookie_name();
        cookie_headers
            .flat_map(|h| h.split(';'))
            .filter_map(|c| c.trim().split_once('='))
            .filter(|(n, _)| *n == name)
            .find_map(|(_, v)| self.session(v.trim(), now_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access() -> Access {
        Access::new(
            [("alice".to_string(), "alice-secret".to_string())].into(),
            [("victor".to_string(), "victor-secret".to_string())].into(),
            false,
        )
    }

    #[test]
    fn tokens_identify_their_owner_and_role() {
        let a = access();
        assert_eq!(
            a.identify(" alice-secret "),
            Some((Role::Admin, "alice".into()))
        );
        assert_eq!(
            a.identify("victor-secret"),
            Some((Role::Viewer, "victor".into()))
        );
        assert_eq!(a.identify("alice-secre"), None);
        assert_eq!(a.identify(""), None);
    }

    #[test]
    fn a_session_verifies_until_it_expires() {
        let a = access();
        let v = a.issue(Role::Admin, "alice", 1_000).unwrap();
        let s = a.session(&v, 1_000 + SESSION_MS - 1).unwrap();
        assert_eq!((s.role, s.actor.as_str()), (Role::Admin, "alice"));
        assert!(a.session(&v, 1_000 + SESSION_MS).is_none());
    }

    #[test]
    fn a_forged_or_altered_session_is_refused() {
        let a = access();
        let v = a.issue(Role::Viewer, "victor", 0).unwrap();
        let (payload, mac) = v.split_once('.').unwrap();
        // Claiming the admin role (or another actor) with the viewer's signature.
        let forged = hex(format!("admin\nalice\n{}", SESSION_MS).as_bytes());
        assert!(a.session(&format!("{forged}.{mac}"), 1).is_none());
        // Flipping one character of the signature.
        let mut bad = mac.to_string();
        bad.replace_range(0..1, if bad.starts_with('0') { "1" } else { "0" });
        assert!(a.session(&format!("{payload}.{bad}"), 1).is_none());
        // Garbage.
        for g in ["", ".", "zz.zz", "abc"] {
            assert!(a.session(g, 1).is_none(), "{g}");
        }
        // A token removed from the file ends the sessions it opened.
        let other = Access::new(HashMap::new(), access().viewers, false);
        assert!(
            other
                .session(&a.issue(Role::Admin, "alice", 0).unwrap(), 1)
                .is_none()
        );
    }

    #[test]
    fn csrf_tokens_are_bound_to_the_session() {
        let a = access();
        let s1 = a
            .session(&a.issue(Role::Admin, "alice", 0).unwrap(), 1)
            .unwrap();
        let s2 = a
            .session(&a.issue(Role::Admin, "alice", 5).unwrap(), 6)
            .unwrap();
        let t1 = a.csrf_token(&s1);
        assert!(a.csrf_ok(&s1, &t1));
        assert!(!a.csrf_ok(&s2, &t1));
        assert!(!a.csrf_ok(&s1, ""));
    }

    #[test]
    fn cookies_are_httponly_strict_and_secure_under_tls() {
        let plain = access();
        let c = plain.set_cookie("v");
        assert!(
            c.contains("HttpOnly") && c.contains("SameSite=Strict"),
            "{c}"
        );
        assert!(!c.contains("Secure"), "{c}");
        let tls = Access::new(access().admins, access().viewers, true);
        let c = tls.set_cookie("v");
        assert!(
            c.starts_with("__Host-flopmeter_session=v;") && c.contains("; Secure"),
            "{c}"
        );
        let v = tls.issue(Role::Admin, "alice", 0).unwrap();
        let header = format!("other=1; __Host-flopmeter_session={v}");
        assert!(
            tls.session_from_cookies([header.as_str()].into_iter(), 1)
                .is_some()
        );
        // The plain-HTTP cookie name is not accepted under TLS.
        let header = format!("flopmeter_session={v}");
        assert!(
            tls.session_from_cookies([header.as_str()].into_iter(), 1)
                .is_none()
        );
    }
}
