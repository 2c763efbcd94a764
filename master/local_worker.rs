//! `--local-worker`: one herd-worker beside the master, started from next to this binary.
//! It runs in a session of its own, so no key pressed at the REPL (Ctrl-C, Ctrl-Z, Ctrl-\)
//! reaches it; it dies with the master even on kill -9 (parent-death signal); if it exits
//! anyway the master logs why and starts it again with backoff. Its work dir is
//! `<data-dir>/work`, so a restarted one reattaches to the tasks it was running.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

/// First pause before a restart; doubles up to [`RESTART_CAP`].
const RESTART_START: Duration = Duration::from_millis(500);
const RESTART_CAP: Duration = Duration::from_secs(30);
/// A worker that ran this long before exiting starts the backoff afresh.
const STABLE: Duration = Duration::from_secs(60);

/// How to start the local worker.
#[derive(Debug, Clone)]
pub struct LocalWorker {
    pub exe: PathBuf,
    pub url: String,
    /// The master's own certificate, trusted as the CA under TLS.
    pub ca: Option<PathBuf>,
    /// The join token (a worker needs no more).
    pub token: Option<String>,
    pub data_dir: PathBuf,
}

impl LocalWorker {
    pub fn new(
        url: String,
        ca: Option<&Path>,
        token: Option<&str>,
        data_dir: &Path,
    ) -> anyhow::Result<LocalWorker> {
        let exe = std::env::current_exe()?.with_file_name("herd-worker");
        if !exe.exists() {
            bail!(
                "--local-worker needs herd-worker next to herd-master ({} is missing): \
                 build both with cargo build --release",
                exe.display()
            );
        }
        Ok(LocalWorker {
            exe,
            url,
            ca: ca.map(Path::to_path_buf),
            token: token.map(str::to_string),
            data_dir: data_dir.to_path_buf(),
        })
    }

    /// Starts it and keeps it running until `shutdown` flips, then stops it (SIGTERM, and
    /// SIGKILL after 5 s).
    pub fn supervise(self, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<JoinHandle<()>> {
        let mut child = self.start()?;
        Ok(tokio::spawn(async move {
            let mut pause = RESTART_START;
            loop {
                let started = tokio::time::Instant::now();
                tokio::select! {
                    status = child.wait() => {
                        if started.elapsed() > STABLE {
                            pause = RESTART_START;
                        }
                        let how = match status {
                            Ok(s) => s.to_string(),
                            Err(e) => format!("lost ({e})"),
                        };
                        warn!(status = %how, restart_in = ?pause, log = %self.log_path().display(),
                              "the local worker exited; starting it again");
                        tokio::select! {
                            _ = tokio::time::sleep(pause) => {}
                            _ = shutdown.changed() => return,
                        }
                        pause = (pause * 2).min(RESTART_CAP);
                        child = match self.start() {
                            Ok(child) => child,
                            Err(err) => {
                                error!("cannot start the local worker again: {err:#}");
                                return;
                            }
                        };
                    }
                    _ = shutdown.changed() => {
                        stop(&mut child).await;
                        return;
                    }
                }
            }
        }))
    }

    fn log_path(&self) -> PathBuf {
        self.data_dir.join("local-worker.log")
    }

    fn start(&self) -> anyhow::Result<Child> {
        let log_path = self.log_path();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("cannot open {}", log_path.display()))?;
        let mut command = Command::new(&self.exe);
        command
            .arg("--master")
            .arg(&self.url)
            .arg("--work-dir")
            .arg(self.data_dir.join("work"));
        if let Some(ca) = &self.ca {
            command.arg("--ca").arg(ca);
        }
        match &self.token {
            Some(token) => command.env("HERD_TOKEN", token),
            None => command.env_remove("HERD_TOKEN"),
        };
        command
            .env_remove("HERD_MASTER")
            .env_remove("HERD_TOKEN_FILE")
            .env_remove("HERD_WORK_DIR")
            .env_remove("HERD_WORKER_SECRET")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        // SAFETY: setsid and prctl are async-signal-safe and touch only the child.
        unsafe {
            command.pre_exec(|| {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {}", self.exe.display()))?;
        info!(pid = child.id(), log = %log_path.display(), "local worker started");
        Ok(child)
    }
}

/// Asks a child to stop (SIGTERM), and kills it if it has not within 5 s.
async fn stop(child: &mut Child) {
    if let Some(pid) = child.id() {
        // SAFETY: sending a signal to our own child's pid.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    }
    if tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .is_err()
    {
        warn!("the local worker did not stop within 5s; killing it");
        let _ = child.kill().await;
    }
}
