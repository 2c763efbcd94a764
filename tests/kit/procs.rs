//! What `/proc` says of processes: alive or not, their parent and process group, their
//! command and arguments. One reader of `/proc/PID/stat` for all of them.

/// The fields of `/proc/PID/stat` the tests look at.
pub struct Stat {
    /// The command name (`comm`), without its parentheses.
    pub comm: String,
    /// The state letter (`Z` for a zombie, `X` for dead).
    pub state: char,
    pub ppid: u32,
    pub pgrp: i32,
}

impl Stat {
    /// The process `pid`, if it exists.
    pub fn of(pid: u32) -> Option<Stat> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // "pid (comm) state ppid pgrp ...": the command may hold spaces and parentheses.
        let (head, rest) = stat.rsplit_once(')')?;
        let comm = head.split_once('(')?.1.to_string();
        let mut fields = rest.split_whitespace();
        Some(Stat {
            comm,
            state: fields.next()?.chars().next()?,
            ppid: fields.next()?.parse().ok()?,
            pgrp: fields.next()?.parse().ok()?,
        })
    }

    /// Not a zombie, not dead.
    pub fn alive(&self) -> bool {
        self.state != 'Z' && self.state != 'X'
    }
}

/// Every pid in `/proc` now.
pub fn pids() -> impl Iterator<Item = u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| entry.file_name().to_string_lossy().parse().ok())
}

/// Whether a process exists and is not a zombie.
pub fn process_alive(pid: u32) -> bool {
    Stat::of(pid).is_some_and(|s| s.alive())
}

/// Processes whose process group is `pgid` (zombies excluded).
pub fn group_members(pgid: i32) -> Vec<u32> {
    pids()
        .filter(|pid| Stat::of(*pid).is_some_and(|s| s.pgrp == pgid && s.alive()))
        .collect()
}

/// Live children of `parent` whose command is `name`.
pub fn children_named(parent: u32, name: &str) -> Vec<u32> {
    pids()
        .filter(|pid| {
            Stat::of(*pid).is_some_and(|s| s.comm == name && s.ppid == parent && s.alive())
        })
        .collect()
}

/// The command-line arguments of `pid`.
pub fn args_of(pid: u32) -> Vec<Vec<u8>> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| c.split(|b| *b == 0).map(<[u8]>::to_vec).collect())
        .unwrap_or_default()
}

/// Pids of live processes with `arg` among their command-line arguments.
pub fn processes_with(arg: &str) -> Vec<u32> {
    pids()
        .filter(|pid| args_of(*pid).iter().any(|a| a == arg.as_bytes()) && process_alive(*pid))
        .collect()
}

/// Kills, when dropped, every process that works in a folder under `dir` (the tasks that
/// a test's workers started, and their supervisors), so a test that fails half-way leaves
/// nothing running.
pub struct KillUnder(pub std::path::PathBuf);

impl Drop for KillUnder {
    fn drop(&mut self) {
        for pid in pids() {
            let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap_or_default();
            let cwd = cwd.to_string_lossy();
            let cwd = cwd.strip_suffix(" (deleted)").unwrap_or(&cwd);
            if std::path::Path::new(cwd).starts_with(&self.0) {
                // SAFETY: kill has no memory preconditions.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
        }
    }
}
