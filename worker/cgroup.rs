//! Task containment with cgroups: which kind this host offers (v2, the v1 `pids`, `cpu`,
//! `memory` hierarchies, or none), one cgroup per task under `herd/` with the task's cpu and
//! memory requests as limits, joining it between fork and exec, killing everything in it,
//! and telling a memory-limit kill from any other.
//!
//! Hand-written rather than cgroups-rs: the whole job is a dozen file writes, and the
//! join must happen in `pre_exec` without allocating, which needs paths prepared here.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use herd::config::IsolationChoice;

const ROOT: &str = "/sys/fs/cgroup";
/// The v1 hierarchies a task cgroup is made in; `pids` first, so it is the one listed.
const V1_HIERARCHIES: [&str; 3] = ["pids", "cpu", "memory"];
/// CFS period for CPU quotas (the kernel's default).
const CPU_PERIOD_US: u64 = 100_000;

/// How tasks are contained on this worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    CgroupV2,
    CgroupV1,
    ProcessGroup,
}

impl Isolation {
    /// The words the master shows (`WorkerDescription.isolation`).
    pub fn label(self) -> &'static str {
        match self {
            Isolation::CgroupV2 => "cgroup v2",
            Isolation::CgroupV1 => "cgroup v1",
            Isolation::ProcessGroup => "process group",
        }
    }

    pub fn from_label(text: &str) -> Isolation {
        match text {
            "cgroup v2" => Isolation::CgroupV2,
            "cgroup v1" => Isolation::CgroupV1,
            _ => Isolation::ProcessGroup,
        }
    }

    /// Resolves `--isolation` on this host by trying to make (and remove) a cgroup.
    pub fn detect(
        choice: IsolationChoice,
    ) -> Result<(Isolation, Option<String>), herd::error::Error> {
        if choice == IsolationChoice::ProcessGroup {
            return Ok((Isolation::ProcessGroup, None));
        }
        let probe = format!("probe-{}", std::process::id());
        let tried = [Isolation::CgroupV2, Isolation::CgroupV1].map(|kind| {
            Cgroup::create(kind, &probe, 0.0, 0.0).map(|cg| {
                cg.remove();
                kind
            })
        });
        let why = match tried {
            [Ok(kind), _] | [_, Ok(kind)] => return Ok((kind, None)),
            [Err(v2), Err(v1)] => format!("cgroup v2: {v2}; cgroup v1: {v1}"),
        };
        match choice {
            IsolationChoice::Cgroup => Err(herd::error::Error::setup(format!(
                "--isolation cgroup: no usable cgroups ({why})"
            ))),
            _ => Ok((Isolation::ProcessGroup, Some(why))),
        }
    }
}

/// One task's cgroup (one directory on v2, one per hierarchy on v1).
pub struct Cgroup {
    kind: Isolation,
    dirs: Vec<PathBuf>,
    /// `<dir>/cgroup.procs` of each dir, ready for `pre_exec`, where allocating is unsafe.
    procs_files: Vec<CString>,
    /// The memory limit in GB, 0 for none: named when the task is killed by it.
    pub memory_gb: f64,
}

impl Cgroup {
    /// Makes the cgroup `herd/<name>` with limits: `cpu` CPUs (0: none) and `memory_gb`
    /// (0: none).
    pub fn create(kind: Isolation, name: &str, cpu: f64, memory_gb: f64) -> io::Result<Cgroup> {
        let dirs: Vec<PathBuf> = match kind {
            Isolation::CgroupV2 => {
                let root = Path::new(ROOT);
                let controllers = std::fs::read_to_string(root.join("cgroup.controllers"))?;
                for needed in ["cpu", "memory", "pids"] {
                    if !controllers.split_whitespace().any(|c| c == needed) {
                        return Err(io::Error::other(format!("no {needed} controller")));
                    }
                }
                // Controllers must be enabled on every level above the task's cgroup.
                std::fs::write(root.join("cgroup.subtree_control"), "+cpu +memory +pids")?;
                let herd = root.join("herd");
                mkdir(&herd)?;
                std::fs::write(herd.join("cgroup.subtree_control"), "+cpu +memory +pids")?;
                vec![herd.join(name)]
            }
            Isolation::CgroupV1 => V1_HIERARCHIES
                .iter()
                .map(|h| Path::new(ROOT).join(h))
                .map(|h| {
                    if !h.join("cgroup.procs").exists() {
                        return Err(io::Error::other(format!("no {}", h.display())));
                    }
                    mkdir(&h.join("herd"))?;
                    if h.ends_with("cpu") {
                        // v1 weighs a group like one process of its parent: give the tasks
                        // together the weight of one process per CPU, or a busy host
                        // starves them.
                        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
                        let _ = std::fs::write(
                            h.join("herd").join("cpu.shares"),
                            (1024 * cpus).to_string(),
                        );
                    }
                    Ok(h.join("herd").join(name))
                })
                .collect::<io::Result<_>>()?,
            Isolation::ProcessGroup => return Err(io::Error::other("no cgroup wanted")),
        };
        let mut cgroup = Cgroup {
            kind,
            procs_files: Vec::new(),
            dirs: Vec::new(),
            memory_gb,
        };
        let made = dirs.into_iter().try_for_each(|dir| {
            mkdir(&dir)?;
            let procs = CString::new(dir.join("cgroup.procs").as_os_str().as_bytes())
                .map_err(io::Error::other)?;
            cgroup.procs_files.push(procs);
            cgroup.dirs.push(dir);
            Ok(())
        });
        // Whatever was made is removed again if any step fails.
        if let Err(err) = made.and_then(|()| cgroup.limit(cpu, memory_gb)) {
            cgroup.remove();
            return Err(err);
        }
        Ok(cgroup)
    }

    fn limit(&self, cpu: f64, memory_gb: f64) -> io::Result<()> {
        let quota = (cpu * CPU_PERIOD_US as f64).round().max(1000.0) as u64;
        let bytes = (memory_gb * 1e9).round() as u64;
        match self.kind {
            Isolation::CgroupV2 => {
                let dir = &self.dirs[0];
                if cpu > 0.0 {
                    std::fs::write(dir.join("cpu.max"), format!("{quota} {CPU_PERIOD_US}"))?;
                }
                if bytes > 0 {
                    std::fs::write(dir.join("memory.max"), bytes.to_string())?;
                    // Swapping past the limit would only make the task crawl.
                    let _ = std::fs::write(dir.join("memory.swap.max"), "0");
                }
            }
            Isolation::CgroupV1 => {
                let [_, cpu_dir, memory_dir] = &self.dirs[..] else {
                    unreachable!("v1 makes one dir per hierarchy")
                };
                if cpu > 0.0 {
                    std::fs::write(cpu_dir.join("cpu.cfs_period_us"), CPU_PERIOD_US.to_string())?;
                    std::fs::write(cpu_dir.join("cpu.cfs_quota_us"), quota.to_string())?;
                }
                if bytes > 0 {
                    std::fs::write(memory_dir.join("memory.limit_in_bytes"), bytes.to_string())?;
                    // memsw counts memory + swap and must not be below the memory limit,
                    // which was set first.
                    let memsw = memory_dir.join("memory.memsw.limit_in_bytes");
                    if memsw.exists() {
                        std::fs::write(memsw, bytes.to_string())?;
                    }
                }
            }
            Isolation::ProcessGroup => {}
        }
        Ok(())
    }

    /// The `cgroup.procs` files to write for [`join_from_pre_exec`], prepared here because
    /// nothing may be allocated between fork and exec.
    pub fn procs_files(&self) -> Vec<CString> {
        self.procs_files.clone()
    }

    /// Pids in the cgroup now.
    pub fn procs(&self) -> Vec<i32> {
        std::fs::read_to_string(self.dirs[0].join("cgroup.procs"))
            .map(|text| text.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }

    /// SIGKILL to everything in the cgroup; v2 does it in one write.
    pub fn kill_all(&self) {
        if self.kind == Isolation::CgroupV2 {
            let _ = std::fs::write(self.dirs[0].join("cgroup.kill"), "1");
        }
        for pid in self.procs() {
            crate::procs::signal(pid, libc::SIGKILL);
        }
    }

    /// Whether the kernel killed a process of this cgroup for going over the memory limit.
    pub fn oom_killed(&self) -> bool {
        let (file, key) = match self.kind {
            Isolation::CgroupV2 => (self.dirs[0].join("memory.events"), "oom_kill"),
            _ => (self.dirs[2].join("memory.oom_control"), "oom_kill"),
        };
        std::fs::read_to_string(file).is_ok_and(|text| {
            text.lines()
                .filter_map(|l| l.split_once(' '))
                .any(|(k, v)| k == key && v.trim().parse::<u64>().is_ok_and(|n| n > 0))
        })
    }

    /// Removes the cgroup dirs (only possible once empty; retried briefly while the last
    /// killed processes are torn down).
    pub fn remove(&self) {
        for dir in self.dirs.iter().rev() {
            for _ in 0..50 {
                match std::fs::remove_dir(dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        }
    }
}

/// Reopens the cgroup of a task whose supervisor is gone, to kill what is left in it.
pub fn leftovers(kind: Isolation, name: &str) -> Option<Cgroup> {
    let dirs: Vec<PathBuf> = match kind {
        Isolation::CgroupV2 => vec![Path::new(ROOT).join("herd").join(name)],
        Isolation::CgroupV1 => V1_HIERARCHIES
            .iter()
            .map(|h| Path::new(ROOT).join(h).join("herd").join(name))
            .collect(),
        Isolation::ProcessGroup => return None,
    };
    dirs.iter().all(|d| d.exists()).then(|| Cgroup {
        kind,
        dirs,
        procs_files: Vec::new(),
        memory_gb: 0.0,
    })
}

/// Moves the calling process into a cgroup by its `cgroup.procs` files. Runs between fork
/// and exec, so it only makes async-signal-safe calls on prepared paths.
pub fn join_from_pre_exec(procs_files: &[CString]) -> io::Result<()> {
    for path in procs_files {
        // SAFETY: open/write/close on a NUL-terminated path prepared before the fork.
        unsafe {
            let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            let written = libc::write(fd, b"0".as_ptr().cast(), 1);
            // Taken before close() can overwrite errno.
            let err = io::Error::last_os_error();
            libc::close(fd);
            if written != 1 {
                return Err(err);
            }
        }
    }
    Ok(())
}

fn mkdir(dir: &Path) -> io::Result<()> {
    match std::fs::create_dir(dir) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        other => other,
    }
}
