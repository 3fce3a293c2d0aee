//! Who may read and act through the console, over real HTTP against a running collector
//! with `--viewer-tokens` and `--admin-tokens`: reads need a login (the console) or a bearer
//! token (`/api/v1`), a viewer can read but not act, a forged or foreign session is no
//! session, a login never redirects off the collector, and every page carries the security
//! headers. (The browser side, CSRF included, is `tests/console_browser.rs`.)

use crate::support;

use std::collections::HashMap;
use std::net::SocketAddr;

use flopmeter_collector::Collector;
use flopmeter_collector::config::CollectorConfig;
use flopmeter_collector::ledger::LedgerStore;
use flopmeter_collector::ledger::sled_store::SledStore;
use support::http::Reply;
use support::{incoming, rec_at};

const END: i64 = 1_780_000_000_000;

/// What the tests read off a console page.
trait Page {
    /// The session cookie a login set (`name=value`).
    fn cookie(&self) -> String;
    /// The first CSRF token in a page's forms.
    fn csrf(&self) -> String;
}

impl Page for Reply {
    fn cookie(&self) -> String {
        let c = self.header("set-cookie").expect("a Set-Cookie header");
        c.split(';').next().unwrap().to_string()
    }

    fn csrf(&self) -> String {
        let at = self
            .body
            .find("name=\"csrf\" value=\"")
            .expect("a form with a CSRF token");
        let rest = &self.body[at + 19..];
        rest[..rest.find('"').unwrap()].to_string()
    }
}

/// One request, as a browser would send it (no redirect followed, cookies as given).
fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply {
    support::http::request(addr, method, path, headers, body)
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

fn form(fields: &[(&str, &str)]) -> String {
    fields
        .iter()
        .map(|(k, v)| {
            let enc: String = v
                .bytes()
                .map(|b| {
                    if b.is_ascii_alphanumeric() {
                        char::from(b).to_string()
                    } else {
                        format!("%{b:02X}")
                    }
                })
                .collect();
            format!("{k}={enc}")
        })
        .collect::<Vec<_>>()
        .join("&")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_read_admins_act_and_nobody_else_does_either() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = SledStore::open(dir.path()).unwrap();
        s.apply_batch(&incoming(
            "a1",
            "n1",
            vec![rec_at(1, "acme", "r1", "pretrain", 10u64.pow(16), END)],
        ))
        .unwrap();
        s.flush().unwrap();
    }
    let mut cfg = CollectorConfig::for_data_dir(dir.path());
    cfg.limits.max_future_ms = i64::MAX / 4;
    cfg.admin_tokens = HashMap::from([("alice".to_string(), "alice-token".to_string())]);
    cfg.viewer_tokens = HashMap::from([("victor".to_string(), "victor-token".to_string())]);
    let collector = Collector::start(cfg).await.unwrap();
    collector.compliance().evaluate_now().await.unwrap();
    let addr = collector.http_addr();

    let checks = tokio::task::spawn_blocking(move || {
        // Without credentials: the console sends you to log in, the API refuses.
        let r = request(addr, "GET", "/ui/", &[], "");
        assert_eq!(r.status, 303);
        assert_eq!(r.header("location"), Some("/ui/login?next=%2Fui%2F"));
        let r = request(addr, "GET", "/api/v1/models", &[], "");
        assert_eq!(r.status, 401, "{}", r.body);
        assert!(r.body.contains("viewer or admin token"), "{}", r.body);
        let r = request(
            addr,
            "GET",
            "/api/v1/models",
            &[("Authorization", "Bearer nope")],
            "",
        );
        assert_eq!(r.status, 401);
        // Scrapers and probes are not readers.
        assert_eq!(request(addr, "GET", "/metrics", &[], "").status, 200);
        assert_eq!(request(addr, "GET", "/healthz", &[], "").status, 200);
        // A viewer's bearer token reads the API.
        let r = request(
            addr,
            "GET",
            "/api/v1/models",
            &[("Authorization", "Bearer victor-token")],
            "",
        );
        assert_eq!(r.status, 200);
        assert!(r.body.contains("\"acme\""), "{}", r.body);

        // A wrong token says what to check.
        let r = request(
            addr,
            "POST",
            "/ui/login",
            &[],
            &form(&[("token", "victor-tokeN"), ("next", "/ui/")]),
        );
        assert_eq!(r.status, 401);
        assert!(r.body.contains("neither a named admin token"), "{}", r.body);
        assert!(r.header("set-cookie").is_none());
        // A login never sends the browser off the collector.
        let r = request(
            addr,
            "POST",
            "/ui/login",
            &[],
            &form(&[("token", "victor-token"), ("next", "//evil.example/ui/")]),
        );
        assert_eq!((r.status, r.header("location")), (303, Some("/ui/")));
        // A login posted from another site is refused.
        let r = request(
            addr,
            "POST",
            "/ui/login",
            &[("Sec-Fetch-Site", "cross-site")],
            &form(&[("token", "victor-token")]),
        );
        assert_eq!(r.status, 403);

        // The viewer logs in and reads.
        let r = request(
            addr,
            "POST",
            "/ui/login",
            &[],
            &form(&[("token", "victor-token"), ("next", "/ui/alerts")]),
        );
        assert_eq!((r.status, r.header("location")), (303, Some("/ui/alerts")));
        let set = r.header("set-cookie").unwrap().to_string();
        assert!(
            set.contains("HttpOnly") && set.contains("SameSite=Strict") && !set.contains("Secure"),
            "{set}"
        );
        let viewer = r.cookie();
        let page = request(addr, "GET", "/ui/", &[("Cookie", &viewer)], "");
        assert_eq!(page.status, 200);
        assert!(
            page.body.contains("acme") && page.body.contains("victor (viewer)"),
            "{}",
            page.body
        );
        for (h, v) in [
            ("content-security-policy", "frame-ancestors 'none'"),
            ("content-security-policy", "default-src 'none'"),
            ("x-content-type-options", "nosniff"),
            ("cache-control", "no-store"),
        ] {
            assert!(
                page.header(h).is_some_and(|x| x.contains(v)),
                "{h}: {:?}",
                page.header(h)
            );
        }
        assert!(
            !page
                .header("content-security-policy")
                .unwrap()
                .contains("script-src")
        );
        // ...through the API with the session too.
        assert_eq!(
            request(addr, "GET", "/api/v1/alerts", &[("Cookie", &viewer)], "").status,
            200
        );
        // A viewer sees no forms and cannot act, even with its own CSRF token.
        let alerts = request(addr, "GET", "/ui/alerts", &[("Cookie", &viewer)], "");
        assert!(!alerts.body.contains("/ui/alerts/ack"), "{}", alerts.body);
        let csrf = alerts.csrf();
        let r = request(
            addr,
            "POST",
            "/ui/alerts/ack",
            &[("Cookie", &viewer)],
            &form(&[
                ("csrf", &csrf),
                ("model", "acme"),
                ("threshold", "eu-systemic-risk"),
                ("reference", "x"),
            ]),
        );
        assert_eq!(r.status, 403);
        assert!(
            r.body.contains("viewer token, which can read but not act"),
            "{}",
            r.body
        );

        // An admin session with a CSRF token from another session, or from another site, is refused.
        let r = request(
            addr,
            "POST",
            "/ui/login",
            &[],
            &form(&[("token", "alice-token")]),
        );
        let admin = r.cookie();
        let r = request(
            addr,
            "POST",
            "/ui/alerts/ack",
            &[("Cookie", &admin)],
            &form(&[
                ("csrf", &csrf),
                ("model", "acme"),
                ("threshold", "eu-systemic-risk"),
                ("reference", "x"),
            ]),
        );
        assert_eq!(r.status, 403);
        assert!(
            r.body.contains("CSRF token is missing or wrong"),
            "{}",
            r.body
        );
        let own = request(addr, "GET", "/ui/alerts", &[("Cookie", &admin)], "").csrf();
        let r = request(
            addr,
            "POST",
            "/ui/alerts/ack",
            &[("Cookie", &admin), ("Sec-Fetch-Site", "same-site")],
            &form(&[
                ("csrf", &own),
                ("model", "acme"),
                ("threshold", "eu-systemic-risk"),
                ("reference", "x"),
            ]),
        );
        assert_eq!(r.status, 403, "{}", r.body);
        // A bad note is refused with what to fix; no alert exists for this pair, and it says so.
        let r = request(
            addr,
            "POST",
            "/ui/alerts/ack",
            &[("Cookie", &admin)],
            &form(&[
                ("csrf", &own),
                ("model", "acme"),
                ("threshold", "eu-systemic-risk"),
                ("reference", "bad\u{7}bell"),
            ]),
        );
        assert_eq!(r.status, 400);
        assert!(r.body.contains("no control characters"), "{}", r.body);
        let r = request(
            addr,
            "POST",
            "/ui/alerts/ack",
            &[("Cookie", &admin)],
            &form(&[
                ("csrf", &own),
                ("model", "acme"),
                ("threshold", "eu-systemic-risk"),
                ("reference", "ok"),
            ]),
        );
        assert_eq!(r.status, 404, "{}", r.body);

        // A forged session (the viewer's signature under an admin's role) is no session.
        let (name, value) = viewer.split_once('=').unwrap();
        let (payload, mac) = value.split_once('.').unwrap();
        let text = String::from_utf8(
            (0..payload.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&payload[i..i + 2], 16).unwrap())
                .collect(),
        )
        .unwrap();
        let forged: String = text
            .replacen("viewer\nvictor", "admin\nalice", 1)
            .bytes()
            .map(|b| format!("{b:02x}"))
            .collect();
        let r = request(
            addr,
            "GET",
            "/ui/",
            &[("Cookie", &format!("{name}={forged}.{mac}"))],
            "",
        );
        assert_eq!(r.status, 303);

        // Unknown models and downloads are 404 pages; the report downloads as a file.
        assert_eq!(
            request(addr, "GET", "/ui/models/nope", &[("Cookie", &viewer)], "").status,
            404
        );
        let r = request(
            addr,
            "GET",
            "/ui/models/acme/report.csv",
            &[("Cookie", &viewer)],
            "",
        );
        assert_eq!(r.status, 200);
        assert!(
            r.header("content-disposition")
                .unwrap()
                .contains("flopmeter-report-acme.csv")
        );
        assert!(r.body.starts_with("section,name,counts"), "{}", r.body);
        let r = request(
            addr,
            "GET",
            "/ui/audit/export.jsonl?since=yesterday",
            &[("Cookie", &viewer)],
            "",
        );
        assert_eq!(r.status, 400);
        assert!(r.body.contains("YYYY-MM-DD"), "{}", r.body);
    });
    checks.await.unwrap();
    collector.shutdown().await.unwrap();
}
