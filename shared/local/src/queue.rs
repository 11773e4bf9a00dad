//! [`LocalQueue`]: the work and finalize queues of one process, as tokio channels, and the
//! dead-letter queue as a JSON-lines file.
//!
//! Messages travel as the same JSON bodies as on SQS, so the dispatcher hands them to the
//! same handlers. The channels live in memory: a message still queued (or waiting out its
//! delay) when the process dies is lost. That is allowed, because the state store is the
//! truth: the sweeper re-drives every request that is not finished and not claimed (see
//! [`crate::dispatch`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tb_core::ports::PortError;
use tb_pipeline::messages::{dead_letter_body, to_body};
use tb_pipeline::{FinalizeMessage, Queue, WorkMessage};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

/// The dead-letter file's name in the data directory.
pub const DEAD_LETTER_FILE: &str = "dead-letter.jsonl";

/// The sending side. Cheap to clone.
#[derive(Clone, Debug)]
pub struct LocalQueue {
    work: UnboundedSender<String>,
    finalize: UnboundedSender<String>,
    dead_letter_path: PathBuf,
    /// Serialises appends to the dead-letter file within the process.
    dead_letter_lock: Arc<tokio::sync::Mutex<()>>,
}

/// The receiving side, for the dispatcher: message bodies in the order they were sent.
#[derive(Debug)]
pub struct Receivers {
    pub work: UnboundedReceiver<String>,
    pub finalize: UnboundedReceiver<String>,
}

impl LocalQueue {
    /// A queue whose dead letters go to `dir`/[`DEAD_LETTER_FILE`] (the directory is
    /// created when the first one is written).
    pub fn new(dir: impl AsRef<Path>) -> (LocalQueue, Receivers) {
        // Unbounded: a handler sends its continuation onto the queue it is served from, so a
        // bounded channel could fill up with every consumer blocked on sending.
        let (work_tx, work_rx) = unbounded_channel();
        let (finalize_tx, finalize_rx) = unbounded_channel();
        let queue = LocalQueue {
            work: work_tx,
            finalize: finalize_tx,
            dead_letter_path: dir.as_ref().join(DEAD_LETTER_FILE),
            dead_letter_lock: Arc::default(),
        };
        let receivers = Receivers {
            work: work_rx,
            finalize: finalize_rx,
        };
        (queue, receivers)
    }

    pub fn dead_letter_path(&self) -> &Path {
        &self.dead_letter_path
    }

    /// Puts a raw body on the work queue: a job in the original system's shape, say
    /// (see [`tb_pipeline::Incoming`]).
    pub fn send_work_body(&self, body: String) -> Result<(), PortError> {
        push(&self.work, "work", body)
    }
}

fn push(channel: &UnboundedSender<String>, name: &str, body: String) -> Result<(), PortError> {
    channel
        .send(body)
        .map_err(|_| PortError::Transient(format!("the {name} queue is closed (no dispatcher)")))
}

#[async_trait]
impl Queue for LocalQueue {
    /// A delayed message is held by a timer task; it is lost if the process dies first
    /// (the sweeper re-drives its request).
    async fn send_work(&self, message: &WorkMessage, delay: Duration) -> Result<(), PortError> {
        let body = to_body(message)?;
        if delay.is_zero() || self.work.is_closed() {
            return push(&self.work, "work", body);
        }
        let channel = self.work.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            if let Err(e) = push(&channel, "work", body) {
                tracing::warn!("a delayed work message was dropped: {e}");
            }
        });
        Ok(())
    }

    async fn send_finalize(&self, message: &FinalizeMessage) -> Result<(), PortError> {
        push(&self.finalize, "finalize", to_body(message)?)
    }

    /// Appends `{"reason": …, "body": …}` as one line and syncs it to disk.
    async fn dead_letter(&self, body: &str, reason: &str) -> Result<(), PortError> {
        tracing::warn!(reason, body, "dead letter");
        let mut line = dead_letter_body(body, reason);
        line.push('\n');
        let path = &self.dead_letter_path;
        let io = |e: std::io::Error| {
            PortError::Transient(format!("writing a dead letter to {}: {e}", path.display()))
        };
        let _guard = self.dead_letter_lock.lock().await;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(dir).await.map_err(io)?;
        }
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .await
            .map_err(io)?;
        file.write_all(line.as_bytes()).await.map_err(io)?;
        file.sync_data().await.map_err(io)
    }
}
