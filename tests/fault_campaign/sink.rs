//! The campaign's webhook receiver: a plain HTTP/1 server that records every POST with its
//! idempotency key, refuses each key's first attempt (so every alert event passes through
//! "pending" and the chaos can kill the leader while it is), and accepts the rest.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// One POST the receiver got.
#[derive(Debug, Clone)]
pub struct Post {
    /// `X-Flopmeter-Idempotency-Key`.
    pub key: String,
    /// The body's `key` field (must equal the header).
    pub body_key: Option<String>,
    pub at: Instant,
    /// What it answered: 503 for a key's first attempt, 200 after.
    pub status: u16,
}

/// The receiver, listening until the test process ends.
#[derive(Debug, Clone)]
pub struct Sink {
    pub addr: SocketAddr,
    posts: Arc<Mutex<Vec<Post>>>,
}

impl Sink {
    pub fn start() -> Sink {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let posts = Arc::new(Mutex::new(Vec::new()));
        let p = posts.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let p = p.clone();
                std::thread::spawn(move || serve(conn, &p));
            }
        });
        Sink { addr, posts }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// Every POST so far, in arrival order.
    pub fn posts(&self) -> Vec<Post> {
        self.posts.lock().unwrap().clone()
    }

    /// Per key: how many POSTs were accepted (answered 2xx), which is what "delivered" means
    /// to a receiver.
    pub fn accepted_per_key(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for p in self.posts() {
            let n = m.entry(p.key).or_insert(0);
            if p.status == 200 {
                *n += 1;
            }
        }
        m
    }
}

fn serve(conn: TcpStream, posts: &Mutex<Vec<Post>>) {
    let mut reader = BufReader::new(match conn.try_clone() {
        Ok(c) => c,
        Err(_) => return,
    });
    let mut key = None;
    let mut len = 0usize;
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((name, value)) = l.split_once(':') {
            match name.trim().to_ascii_lowercase().as_str() {
                "x-flopmeter-idempotency-key" => key = Some(value.trim().to_string()),
                "content-length" => len = value.trim().parse().unwrap_or(0),
                _ => {}
            }
        }
    }
    let mut body = vec![0; len];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let body_key = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["key"].as_str().map(str::to_string));
    let key = key.unwrap_or_default();
    let status = {
        let mut posts = posts.lock().unwrap();
        let status = if posts.iter().any(|p| p.key == key) {
            200
        } else {
            503
        };
        posts.push(Post {
            key,
            body_key,
            at: Instant::now(),
            status,
        });
        status
    };
    let reason = if status == 200 {
        "OK"
    } else {
        "Service Unavailable"
    };
    let mut conn = conn;
    let _ = write!(
        conn,
        "HTTP/1.1 {status} {reason}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    );
    let _ = conn.flush();
}
