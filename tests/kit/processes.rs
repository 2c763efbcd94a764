//! Masters and workers as real processes (for tests that kill, pause or read them), each
//! master on its own port with its own data dir, its log in a file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use herd::pb;

use crate::{Admin, Deadline, JOIN_TOKEN, MASTER, Registry, TOKEN, WORKER, clients, free_port};

/// The command every herd-master of the tests and of herd-bench starts from: `bin`
/// headless on `addr` with `data_dir`, presenting [`TOKEN`] and [`JOIN_TOKEN`], without
/// its HTTP listener (many run side by side) unless the caller's own flags ask for one.
pub fn master_command(bin: &Path, addr: SocketAddr, data_dir: &Path) -> Command {
    let mut command = Command::new(bin);
    command
        .arg("--listen")
        .arg(addr.to_string())
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--no-repl")
        .env("HERD_TOKEN", TOKEN)
        .env("HERD_JOIN_TOKEN", JOIN_TOKEN)
        .env("HERD_HTTP_LISTEN", "off");
    command
}

/// A running herd-master.
pub struct Master {
    pub child: Child,
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    pub log: PathBuf,
}

impl Master {
    /// Starts a headless master on a free port, with `dir/data` as data dir.
    pub fn start(dir: &Path, args: &[&str]) -> Master {
        Master::start_on(dir, &dir.join("data"), free_port(), args)
    }

    /// Starts a headless master on `port` with `data_dir`.
    pub fn start_on(dir: &Path, data_dir: &Path, port: u16, args: &[&str]) -> Master {
        Master::start_with_env(dir, data_dir, port, args, &[])
    }

    /// Like [`Master::start_on`], with extra environment variables.
    pub fn start_with_env(
        dir: &Path,
        data_dir: &Path,
        port: u16,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Master {
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let log = dir.join(format!("master-{}.log", fastrand::u32(..)));
        let child = master_command(MASTER.path(), addr, data_dir)
            .args(args)
            .env("HERD_LOG", "info,herd_master=debug")
            // Nothing a test starts writes to the real per-user state folder.
            .env("XDG_STATE_HOME", dir.join("state"))
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start herd-master");
        Master {
            child,
            addr,
            data_dir: data_dir.to_path_buf(),
            log,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// An Admin client, once the master answers.
    pub async fn admin(&self) -> Admin {
        let deadline = Deadline::new(Duration::from_secs(15), "the master answers");
        loop {
            if let Ok((mut c, _)) = clients(&self.url()).await
                && c.list_workers(pb::ListWorkersRequest {
                    all: true,
                    ..Default::default()
                })
                .await
                .is_ok()
            {
                return c;
            }
            deadline.wait().await;
        }
    }

    pub async fn registry(&self) -> Registry {
        self.admin().await;
        clients(&self.url()).await.unwrap().1
    }

    pub fn db(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(self.data_dir.join("herd.db")).unwrap()
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.child.wait().unwrap()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Master {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A running herd-worker.
pub struct Worker {
    pub child: Child,
    pub name: String,
    pub log: PathBuf,
}

impl Worker {
    pub fn start(dir: &Path, master: &str, name: &str, args: &[&str]) -> Worker {
        Worker::start_in(dir, master, name, &format!("work-{name}"), args)
    }

    /// Like [`Worker::start`], with `dir/work` as its work dir.
    pub fn start_in(dir: &Path, master: &str, name: &str, work: &str, args: &[&str]) -> Worker {
        Worker::start_with_env(dir, master, name, work, args, &[])
    }

    /// Like [`Worker::start_in`], with extra environment variables.
    pub fn start_with_env(
        dir: &Path,
        master: &str,
        name: &str,
        work: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Worker {
        let log = dir.join(format!("worker-{name}-{}.log", fastrand::u32(..)));
        let child = Command::new(WORKER)
            .arg("--master")
            .arg(master)
            .arg("--name")
            .arg(name)
            .args(if args.contains(&"--runtime") {
                &[][..]
            } else {
                &["--runtime", "none"][..]
            })
            .arg("--work-dir")
            .arg(dir.join(work))
            .args(args)
            .env("HERD_TOKEN", JOIN_TOKEN)
            .env("XDG_STATE_HOME", dir.join("state"))
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start herd-worker");
        Worker {
            child,
            name: name.to_string(),
            log,
        }
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: signalling our own child.
        let rc = unsafe { libc::kill(self.child.id() as i32, signal) };
        assert_eq!(rc, 0, "kill({signal}) failed");
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.signal_cont_quietly();
        self.kill9();
    }
}

impl Worker {
    fn signal_cont_quietly(&self) {
        // SAFETY: signalling our own child; a stopped child must be continued to die cleanly.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGCONT) };
    }
}

/// The pid the master logged for its local worker.
pub async fn local_worker_pid(master: &Master) -> u32 {
    let deadline = Deadline::new(Duration::from_secs(10), "the master logs its local worker");
    loop {
        let log = master.log_text();
        if let Some(pid) = log
            .lines()
            .find(|l| l.contains("local worker started"))
            .and_then(|l| l.split("pid=").nth(1))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|pid| pid.parse().ok())
        {
            return pid;
        }
        deadline.wait().await;
    }
}

/// Runs a herd-worker that should be refused and exit by itself (within 30 s): whether it
/// succeeded, and what it said on stderr.
pub async fn run_refused_worker(
    dir: &Path,
    master: &str,
    name: &str,
    args: &[&str],
) -> (bool, String) {
    let mut command = Command::new(WORKER);
    command
        .args(["--master", master, "--name", name, "--runtime", "none"])
        .arg("--work-dir")
        .arg(dir.join(format!("work-{name}-{}", fastrand::u32(..))))
        .args(args)
        .env("HERD_TOKEN", JOIN_TOKEN)
        .env("XDG_STATE_HOME", dir.join("state"))
        .stdin(Stdio::null());
    let out = output_within(command, Duration::from_secs(30), "a refused worker exits").await;
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `command` to its end, which must come within `limit` (`what` says what is awaited).
pub async fn output_within(
    mut command: Command,
    limit: Duration,
    what: &str,
) -> std::process::Output {
    tokio::time::timeout(
        limit,
        tokio::task::spawn_blocking(move || command.output().unwrap()),
    )
    .await
    .unwrap_or_else(|_| panic!("{what} within {limit:?}"))
    .unwrap()
}
