//! PostgreSQL's `LISTEN`/`NOTIFY` as a counter: how one collector learns that another
//! committed to the shared ledger, without polling it.
//!
//! **Contract:**
//! - [`Database::listen`] keeps a connection of its own (not from the pool: a pooled
//!   connection's notifications are dropped by the pool) that `LISTEN`s on one channel, and
//!   bumps a counter for every notification.
//! - A notification sent while the connection was down is lost, so every (re)connection
//!   bumps the counter too: a holder that acts on a change misses nothing, it may only act
//!   once more than needed.
//! - The connection is retried every second while it fails, for as long as the [`Listener`]
//!   lives; dropping it ends the task and closes the connection.
//! - Senders write `NOTIFY channel` inside their transaction: PostgreSQL delivers it at commit,
//!   once per transaction and channel, and never for a transaction that rolled back.

use std::time::Duration;

use tokio::sync::watch;
use tokio_postgres::AsyncMessage;

use crate::database::Database;

/// The channel the ledger's writers notify on each commit group, registry change and
/// rollup, and the compliance leader listens to.
pub const LEDGER_CHANGED: &str = "flopmeter_ledger";

/// A channel being listened to; see the module's contract.
#[derive(Debug)]
pub struct Listener {
    changes: watch::Receiver<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Listener {
    /// A receiver of the counter: it moves on every notification and every (re)connection.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.clone()
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Database {
    /// Listens on `channel` (an SQL identifier: lower-case letters, digits and `_`) on a
    /// connection of its own; see the module's contract.
    pub fn listen(&self, channel: &'static str) -> Listener {
        assert!(
            channel
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
            "a channel name is a plain identifier"
        );
        let (tx, changes) = watch::channel(0u64);
        let (config, tls) = self.connection_parts();
        let task = self.spawn(async move {
            loop {
                match config.connect(tls.clone()).await {
                    Ok((client, mut connection)) => {
                        let (seen, mut notified) = tokio::sync::mpsc::unbounded_channel();
                        // The connection does its I/O only while polled; its messages are
                        // the notifications.
                        let driver = tokio::spawn(async move {
                            while let Some(Ok(message)) =
                                std::future::poll_fn(|cx| connection.poll_message(cx)).await
                            {
                                if let AsyncMessage::Notification(_) = message
                                    && seen.send(()).is_err()
                                {
                                    break;
                                }
                            }
                        });
                        match client.batch_execute(&format!("LISTEN {channel}")).await {
                            Ok(()) => {
                                tx.send_modify(|n| *n += 1);
                                while notified.recv().await.is_some() {
                                    tx.send_modify(|n| *n += 1);
                                }
                                tracing::warn!(
                                    channel,
                                    "lost the PostgreSQL connection listening for ledger \
                                     changes; reconnecting"
                                );
                            }
                            Err(e) => {
                                tracing::warn!(channel, error = %e, "cannot LISTEN; retrying")
                            }
                        }
                        driver.abort();
                    }
                    Err(e) => {
                        tracing::warn!(channel, error = %e, "cannot connect to LISTEN; retrying")
                    }
                }
                if tx.is_closed() {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        Listener { changes, task }
    }
}
