//! `task logs`: a byte range of the output of a task's latest attempt, read from the store
//! (SQLite's output files or a PostgreSQL table) in chunks far below the message limit,
//! and followed until the task ends.

use std::time::Duration;

use tokio::sync::mpsc;

use herd::domain::MAX_LOG_BYTES;
use herd::error::Error;
use herd::pb;

use crate::app::App;
use crate::tasks::{LogsView, Lookup};

/// How often a follower looks for new output.
const FOLLOW_PERIOD: Duration = Duration::from_millis(200);
/// Largest piece of output in one chunk.
pub const LOG_CHUNK: usize = 256 * 1024;

/// Chunks of output as they are read; an error ends the stream.
pub type Chunks = mpsc::Receiver<Result<pb::TaskLogsChunk, Error>>;

impl App {
    /// Starts streaming the range `req` asks for (NOT_FOUND at once for an unknown task).
    pub async fn logs(
        &self,
        who: &crate::identity::Caller,
        req: pb::TaskLogsRequest,
    ) -> Result<Chunks, Error> {
        who.may(crate::identity::authz::Op::TaskLogs)?;
        self.logs_view(&req.task_id).await?;
        let (tx, rx) = mpsc::channel(4);
        let master = self.clone();
        let revoked = self.credentials.revoked(who);
        tokio::spawn(async move {
            tokio::select! {
                streamed = master.stream_logs(&req, &tx) => {
                    if let Err(err) = streamed {
                        let _ = tx.send(Err(err)).await;
                    }
                }
                _ = revoked => {
                    let why = "the token of this stream was revoked".to_string();
                    let _ = tx.send(Err(Error::PermissionDenied(why))).await;
                }
            }
        });
        Ok(rx)
    }

    /// Where a task's output stands, from memory or (for a finished task) SQLite.
    async fn logs_view(&self, id: &str) -> Result<LogsView, Error> {
        match self.cluster.logs(id)? {
            Lookup::Here(view) => Ok(view),
            Lookup::Stored => {
                let info = self.find_task(id).await?;
                Ok(LogsView {
                    attempt: info.attempts,
                    len: u64::MAX,
                    done: true,
                })
            }
        }
    }

    async fn stream_logs(
        &self,
        req: &pb::TaskLogsRequest,
        tx: &mpsc::Sender<Result<pb::TaskLogsChunk, Error>>,
    ) -> Result<(), Error> {
        let id = req.task_id.as_str();
        let first = self.logs_view(id).await?;
        // Everything handed to the store so far is on disk after a sync: before the
        // output folder is looked for, or a task that has just ended (its output still on
        // its way to disk) would be taken for one that ended before output moved to files,
        // and print nothing.
        self.store.sync().await?;
        if first.done && !self.store.has_output(id).await? {
            // Ended before output moved to files: what SQLite kept.
            let data = self.store.read_output(id).await?;
            let start = req.offset.unwrap_or(0) as usize;
            for (i, piece) in data
                .get(start.min(data.len())..)
                .unwrap_or_default()
                .chunks(LOG_CHUNK)
                .enumerate()
            {
                let offset = (start + i * LOG_CHUNK) as u64;
                let chunk = pb::TaskLogsChunk {
                    data: piece.to_vec(),
                    offset,
                };
                if tx.send(Ok(chunk)).await.is_err() {
                    break;
                }
            }
            return Ok(());
        }
        let mut attempt = first.attempt;
        let kept_end = self.output_len(id, attempt, &first).await?;
        let (mut from, limit_end) = match req.offset {
            Some(offset) if req.length > 0 => (offset, offset.saturating_add(req.length)),
            Some(offset) => (offset, u64::MAX),
            None => {
                let tail = if req.length > 0 {
                    req.length
                } else {
                    MAX_LOG_BYTES as u64
                };
                (kept_end.saturating_sub(tail), u64::MAX)
            }
        };
        loop {
            let view = self.logs_view(id).await?;
            if view.attempt != attempt {
                // A new attempt started: its output from the beginning.
                (attempt, from) = (view.attempt, 0);
            }
            let end = if view.done { u64::MAX } else { view.len }.min(limit_end);
            while from < end {
                let want = (end - from).min(LOG_CHUNK as u64) as usize;
                let (start, data) = self.store.output(id, attempt, from, want).await?;
                if data.is_empty() {
                    break;
                }
                from = start + data.len() as u64;
                if tx
                    .send(Ok(pb::TaskLogsChunk {
                        data,
                        offset: start,
                    }))
                    .await
                    .is_err()
                {
                    return Ok(());
                }
            }
            if view.done || !req.follow || from >= limit_end {
                return Ok(());
            }
            tokio::select! {
                _ = tokio::time::sleep(FOLLOW_PERIOD) => {}
                _ = tx.closed() => return Ok(()),
            }
            self.store.sync().await?;
        }
    }

    /// How much output of `attempt` the master has: in memory while it runs, on disk
    /// after it ended.
    async fn output_len(&self, id: &str, attempt: u32, view: &LogsView) -> Result<u64, Error> {
        if !view.done {
            return Ok(view.len);
        }
        self.store.output_len(id, attempt).await
    }
}
