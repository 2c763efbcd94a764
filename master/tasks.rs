//! Tasks as the master keeps them: state, placement, bounded output.

use std::collections::VecDeque;

use tokio::time::Instant;

use herd::domain::{MAX_LOG_BYTES, TaskSpec, TaskState};
use herd::pb;

/// The most recent output of a task, at most [`MAX_LOG_BYTES`].
#[derive(Debug, Default, Clone)]
pub struct Output {
    data: VecDeque<u8>,
    /// Bytes ever written; an offset into the whole output.
    total: u64,
}

impl Output {
    pub fn append(&mut self, bytes: &[u8]) {
        self.total += bytes.len() as u64;
        self.data.extend(bytes);
        let excess = self.data.len().saturating_sub(MAX_LOG_BYTES);
        self.data.drain(..excess);
    }

    pub fn total(&self) -> u64 {
        self.total
    }

    /// Everything kept after the whole-output offset `from`, and the offset to ask next.
    pub fn since(&self, from: u64) -> (Vec<u8>, u64) {
        let kept_from = self.total - self.data.len() as u64;
        let skip = from.saturating_sub(kept_from) as usize;
        (self.data.iter().skip(skip).copied().collect(), self.total)
    }

    pub fn to_vec(&self) -> Vec<u8> {
        self.data.iter().copied().collect()
    }
}

/// One task.
#[derive(Debug, Clone)]
pub struct Task {
    pub id: String,
    pub spec: TaskSpec,
    pub state: TaskState,
    /// Where it is placed (or last ran).
    pub worker_id: Option<String>,
    /// Placements so far; the current attempt's number.
    pub attempts: u32,
    pub exit_code: Option<i32>,
    /// Queue reason, or why it failed or was cancelled.
    pub reason: String,
    pub submitted_ms: i64,
    pub started_ms: i64,
    pub finished_ms: i64,
    /// When the current attempt was sent (a worker gets a grace period to report it).
    pub assigned_at: Option<Instant>,
    /// A cancel was sent to the worker; the task ends as Cancelled.
    pub cancel_requested: bool,
    /// Output kept in memory; `None` when it lives only in SQLite (loaded at start).
    pub output: Option<Output>,
    /// Workers that held an attempt of this task (they may report on it).
    pub holders: Vec<String>,
}

impl Task {
    pub fn info(&self, worker_name: Option<&str>) -> pb::TaskInfo {
        pb::TaskInfo {
            id: self.id.clone(),
            spec: Some((&self.spec).into()),
            state: pb::TaskState::from(self.state) as i32,
            worker_id: self.worker_id.clone().unwrap_or_default(),
            worker_name: worker_name.unwrap_or_default().to_string(),
            attempts: self.attempts,
            exit_code: self.exit_code,
            reason: self.reason.clone(),
            submitted_ms: self.submitted_ms,
            started_ms: self.started_ms,
            finished_ms: self.finished_ms,
            history: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_keeps_the_tail_and_offsets_stay_whole() {
        let mut out = Output::default();
        out.append(b"hello ");
        let (first, next) = out.since(0);
        assert_eq!(first, b"hello ");
        out.append(b"world");
        assert_eq!(out.since(next).0, b"world");
        let big = vec![b'x'; MAX_LOG_BYTES];
        out.append(&big);
        assert_eq!(out.to_vec().len(), MAX_LOG_BYTES);
        assert_eq!(out.total(), 11 + MAX_LOG_BYTES as u64);
        assert_eq!(out.since(0).0.len(), MAX_LOG_BYTES, "older output is gone");
    }
}
