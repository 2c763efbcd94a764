//! Fencing on the worker: a lease in `<work-dir>/lease` that every acknowledgement from the
//! master renews, and that each task's supervisor reads. When it runs out (no word from the
//! master for the time the master gave at registration) a supervisor stops its task
//! (SIGTERM, then SIGKILL after the kill grace) and records it lost, before the master
//! re-queues it: so a task never runs on both sides of a partition. The supervisors, not
//! the agent, enforce it, so a worker agent that is paused (SIGSTOP), hung or dead fences
//! its tasks all the same. A task submitted with `--on-disconnect keep` is left running.
//!
//! Times are on CLOCK_BOOTTIME, shared by every process of the host and counting while
//! it is suspended (the master's clock runs on meanwhile).

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use tracing::warn;

/// The lease file of a work dir: `<deadline_ms> <fence_after_ms>` on CLOCK_BOOTTIME.
pub fn path(work_dir: &Path) -> PathBuf {
    work_dir.join("lease")
}

/// Milliseconds on CLOCK_BOOTTIME, now.
pub fn now_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

/// The agent's side: renews the lease at every acknowledgement.
#[derive(Debug)]
pub struct Lease {
    path: PathBuf,
    /// What the master said at the last registration (`None`: no fencing).
    fence_after: Mutex<Option<Duration>>,
}

impl Lease {
    pub fn new(work_dir: &Path) -> Lease {
        Lease {
            path: path(work_dir),
            fence_after: Mutex::new(None),
        }
    }

    /// The master's word at registration: tasks must be stopped `fence_after_ms` after the
    /// last acknowledgement (0: the master does not fence; any lease left goes). Counts
    /// as an acknowledgement.
    pub fn granted(&self, fence_after_ms: u64) {
        let fence_after = Some(Duration::from_millis(fence_after_ms)).filter(|d| !d.is_zero());
        *self.fence_after.lock().unwrap_or_else(|p| p.into_inner()) = fence_after;
        if fence_after.is_none() {
            let _ = std::fs::remove_file(&self.path);
        }
        self.renew();
    }

    /// The master acknowledged us: the lease runs from now.
    pub fn renew(&self) {
        let Some(fence_after) = *self.fence_after.lock().unwrap_or_else(|p| p.into_inner()) else {
            return;
        };
        let ms = fence_after.as_millis() as u64;
        let text = format!("{} {ms}\n", now_ms() + ms);
        let tmp = self.path.with_extension("tmp");
        if let Err(err) =
            std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, &self.path))
        {
            warn!(file = %self.path.display(), %err, "cannot renew the fencing lease");
        }
    }
}

/// A supervisor's side: once the lease of `work_dir` has run out less `grace` (the time
/// SIGTERM to SIGKILL takes), why the task must stop; `None` while it holds, or without
/// a lease (a master that does not fence).
pub fn expired(work_dir: &Path, grace: Duration) -> Option<String> {
    let text = std::fs::read_to_string(path(work_dir)).ok()?;
    let mut fields = text.split_whitespace().map(|f| f.parse::<u64>().ok());
    let (deadline, fence_after) = (fields.next()??, fields.next()??);
    // Stop early enough for SIGKILL to land by the deadline, yet never in the first
    // half of the time the master gave.
    let stop_at = deadline
        .saturating_sub(grace.as_millis() as u64)
        .max(deadline.saturating_sub(fence_after / 2));
    let now = now_ms();
    if now < stop_at {
        return None;
    }
    let silent = Duration::from_millis(now.saturating_sub(deadline.saturating_sub(fence_after)));
    Some(format!(
        "stopped by its worker: no word from the master for {} (its fencing deadline is {}), \
         so the task is run again elsewhere, never on both sides",
        herd::time::short(silent),
        herd::time::short(Duration::from_millis(fence_after))
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_holds_until_its_deadline_less_the_grace() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            expired(dir.path(), Duration::ZERO),
            None,
            "no lease, no fencing"
        );
        let lease = Lease::new(dir.path());
        lease.granted(60_000);
        assert_eq!(expired(dir.path(), Duration::from_secs(10)), None);
        // Run out: the deadline is in the past.
        std::fs::write(path(dir.path()), format!("{} 60000", now_ms() - 1)).unwrap();
        let why = expired(dir.path(), Duration::from_secs(10)).expect("ran out");
        assert!(why.contains("no word from the master for 1m"), "{why}");
        // Within the grace of the deadline: stopped already, so SIGKILL lands in time.
        std::fs::write(path(dir.path()), format!("{} 60000", now_ms() + 5_000)).unwrap();
        assert!(expired(dir.path(), Duration::from_secs(10)).is_some());
        assert_eq!(expired(dir.path(), Duration::from_secs(1)), None);
        // Never in the first half of the time given, whatever the grace.
        std::fs::write(path(dir.path()), format!("{} 60000", now_ms() + 40_000)).unwrap();
        assert_eq!(expired(dir.path(), Duration::from_secs(3600)), None);
        // Renewed: holds again. A master that does not fence: the lease goes.
        lease.renew();
        assert_eq!(expired(dir.path(), Duration::from_secs(10)), None);
        lease.granted(0);
        assert!(!path(dir.path()).exists());
    }
}
