//! Reading and signalling processes through /proc: a process's start time (to tell a live
//! supervisor from a reused pid), the descendants of a supervisor and the members of a
//! process group (to find every process of a task where there is no cgroup).

use std::collections::HashMap;

/// What /proc/PID/stat says about one process.
#[derive(Debug, Clone, Copy)]
pub struct Stat {
    pub state: char,
    pub ppid: i32,
    pub pgrp: i32,
    /// Field 22: clock ticks after boot when the process started; with the pid, this
    /// names one process for the host's lifetime.
    pub start_time: u64,
}

impl Stat {
    pub fn read(pid: i32) -> Option<Stat> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name is parenthesised and may contain anything: split after it.
        let (_, rest) = text.rsplit_once(')')?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // `rest` starts at field 3 (state), so field N is at index N - 3.
        Some(Stat {
            state: fields.first()?.chars().next()?,
            ppid: fields.get(1)?.parse().ok()?,
            pgrp: fields.get(2)?.parse().ok()?,
            start_time: fields.get(19)?.parse().ok()?,
        })
    }

    /// Exited but not yet reaped (or being torn down): no longer a running process.
    pub fn is_dead(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// Whether `pid` is the very process that started at `start_time` and still runs.
pub fn is_same_live(pid: i32, start_time: u64) -> bool {
    Stat::read(pid).is_some_and(|s| s.start_time == start_time && !s.is_dead())
}

/// Every live process on the host with its stat.
fn all() -> Vec<(i32, Stat)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| Some((pid, Stat::read(pid)?)))
        .filter(|(_, s)| !s.is_dead())
        .collect()
}

/// Live processes below `root` (not `root` itself). A subreaper's orphaned grandchildren
/// are its children, so for a supervisor this is everything its task left behind.
pub fn descendants(root: i32) -> Vec<i32> {
    let procs = all();
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    for (pid, stat) in &procs {
        children.entry(stat.ppid).or_default().push(*pid);
    }
    let mut found = Vec::new();
    let mut todo = vec![root];
    while let Some(pid) = todo.pop() {
        for &child in children.get(&pid).into_iter().flatten() {
            found.push(child);
            todo.push(child);
        }
    }
    found
}

/// Live members of the process group `pgid`.
pub fn group(pgid: i32) -> Vec<i32> {
    all()
        .into_iter()
        .filter(|(_, s)| s.pgrp == pgid)
        .map(|(pid, _)| pid)
        .collect()
}

/// Sends `signal` to `pid`; a process that is already gone is not an error.
pub fn signal(pid: i32, signal: i32) {
    if pid > 1 {
        // SAFETY: kill(2) has no memory effects; pids come from /proc or our own records.
        unsafe { libc::kill(pid, signal) };
    }
}

/// Start time of this process (field 22 of /proc/self/stat).
pub fn own_start_time() -> u64 {
    Stat::read(std::process::id() as i32)
        .map(|s| s.start_time)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_own_stat_reads_back_and_a_wrong_start_time_is_another_process() {
        let me = std::process::id() as i32;
        let stat = Stat::read(me).unwrap();
        assert!(!stat.is_dead());
        assert!(is_same_live(me, stat.start_time));
        assert!(!is_same_live(me, stat.start_time + 1));
        assert_eq!(stat.ppid, std::os::unix::process::parent_id() as i32);
    }

    #[test]
    fn a_child_is_among_our_descendants_until_it_is_reaped() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        assert!(descendants(std::process::id() as i32).contains(&pid));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!descendants(std::process::id() as i32).contains(&pid));
    }
}
