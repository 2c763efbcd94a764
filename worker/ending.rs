//! How a task ended, as its supervisor records it in the exit file: what stopped it (a
//! cancel, its time limit, the worker cut off from the master) or how its main process
//! exited (its code, a signal, the memory limit).

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

use tokio::time::Instant;

use crate::cgroup::Cgroup;
use crate::folder::Exit;

/// Why the supervisor stopped the task, and when SIGKILL follows its SIGTERM.
pub struct Stop {
    pub reason: String,
    pub kill_at: Instant,
    pub why: Why,
}

/// What stopped the task.
#[derive(Clone, Copy, PartialEq)]
pub enum Why {
    /// A cancel (the master's, or the worker's shutdown with --drain-on-exit): cancelled.
    Cancelled,
    /// Its time limit: the task fails.
    TimedOut,
    /// The worker was cut off from the master past its fencing deadline: lost, and run
    /// again elsewhere.
    Fenced,
}

/// The exit file's content for how the main process ended.
pub fn describe(status: ExitStatus, stop: Option<Stop>, cgroup: Option<&Cgroup>) -> Exit {
    let exit_code = status.code();
    let signal = status.signal();
    if let Some(Stop { reason, why, .. }) = stop {
        let (outcome, exit_code) = match why {
            // Killed for its time, or before the master runs it elsewhere: whatever code it
            // managed to exit with is not its result (and with no code the master does
            // not retry it).
            Why::TimedOut => ("failed", None),
            Why::Fenced => ("lost", None),
            Why::Cancelled => ("cancelled", exit_code),
        };
        return Exit {
            outcome: outcome.into(),
            exit_code,
            signal,
            reason,
        };
    }
    let out_of_memory = cgroup.filter(|c| c.memory_gb > 0.0 && c.oom_killed());
    let (outcome, reason) = if let Some(cgroup) = out_of_memory {
        (
            "failed",
            format!("killed: out of memory (limit {} GB)", cgroup.memory_gb),
        )
    } else if status.success() {
        ("succeeded", String::new())
    } else if let Some(code) = exit_code {
        ("failed", format!("exited with code {code}"))
    } else {
        (
            "failed",
            format!("killed by signal {}", signal.unwrap_or(0)),
        )
    };
    Exit {
        outcome: outcome.into(),
        exit_code,
        signal,
        reason,
    }
}

/// The last non-empty line of `bytes`, cut to 300 characters.
pub fn last_line(bytes: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(bytes);
    let line = text.lines().rev().map(str::trim).find(|l| !l.is_empty())?;
    Some(line.chars().take(300).collect())
}
