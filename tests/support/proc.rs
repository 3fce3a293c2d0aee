//! Child processes and waiting, shared by the workspace's test trees (`#[path]`-included by
//! `agent/tests` and `collector/tests`).
//!
//! Waiting is always for a condition, bounded only so that a broken build cannot hang the
//! suite; no test sleeps for a time it hopes is long enough.
#![allow(dead_code)]

use std::io::Read;
use std::path::Path;
use std::process::{Child, ChildStderr, Command, ExitStatus};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Kills the child when the test ends, however it ends.
#[derive(Debug)]
pub struct Proc(pub Child);

impl Proc {
    /// SIGTERM, as an operator or a supervisor stops it, and its exit status (bounded wait,
    /// then SIGKILL and a panic: a process that ignores SIGTERM is a bug).
    pub fn terminate(&mut self) -> ExitStatus {
        signal(self.0.id(), "-TERM");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.0.try_wait().expect("wait for the child") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.0.kill();
                panic!("process {} ignored SIGTERM for 60 s", self.0.id());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, and reaps it.
    pub fn kill9(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Sends a signal (`-TERM`, `-KILL`, `-STOP`, ...) with kill(1): the tests' crates forbid
/// `unsafe`, so no libc::kill.
pub fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("kill(1) runs")
        .success();
    assert!(ok, "kill {sig} {pid}");
}

/// A child's stderr, read on a thread as it comes: a chatty child never blocks on a full
/// pipe, and the test can read what it said so far.
#[derive(Debug, Clone, Default)]
pub struct Log(Arc<Mutex<String>>);

impl Log {
    /// Starts draining `pipe`.
    pub fn drain(mut pipe: ChildStderr) -> Log {
        let log = Log::default();
        let sink = log.0.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        log
    }

    /// Everything read so far.
    pub fn text(&self) -> String {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn contains(&self, needle: &str) -> bool {
        self.text().contains(needle)
    }
}

/// Waits until `child` has written its `--ready-file` at `path` and returns the JSON in it.
/// Panics with the child's log if it exits first (a port taken, a bad flag).
pub fn wait_ready_file(child: &mut Child, path: &Path, log: &Log) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(text) = std::fs::read_to_string(path)
            && let Ok(v) = serde_json::from_str(&text)
        {
            return v;
        }
        if let Some(status) = child.try_wait().expect("wait for the child") {
            // Let the drain thread catch the last words.
            std::thread::sleep(Duration::from_millis(100));
            panic!("exited ({status}) before it was ready:\n{}", log.text());
        }
        assert!(
            Instant::now() < deadline,
            "not ready within 120 s:\n{}",
            log.text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits (bounded, generously) for `cond`; only keeps a broken build from hanging.
pub fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("never happened: {what}");
}

/// [`eventually`] inside a tokio test: polls without blocking the runtime's thread.
pub async fn eventually_async(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("never happened: {what}");
}
