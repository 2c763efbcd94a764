//! A throwaway PostgreSQL server for tests: `initdb` and `postgres` from Debian's
//! `postgresql` package in a temporary folder, on a free port of 127.0.0.1, run as the
//! `postgres` user when the tests run as root (PostgreSQL refuses root). One server per
//! test process, started on first use; each test takes a database of its own. The server
//! dies with the test process (it is started with a parent-death signal from a thread
//! that lives as long as the process).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

/// The server of this test process.
pub struct Server {
    pub port: u16,
    dir: PathBuf,
    bin: PathBuf,
    pid: u32,
}

static SERVER: OnceLock<Result<Server, String>> = OnceLock::new();
static DATABASES: AtomicU32 = AtomicU32::new(0);

/// The server of this process, started on first use; an error says what is missing.
pub fn server() -> Result<&'static Server, String> {
    SERVER.get_or_init(start).as_ref().map_err(Clone::clone)
}

/// Whether tests can have a server. Without PostgreSQL installed they are skipped (and
/// say so), unless CI requires them (`CI=true` or `HERD_REQUIRE_POSTGRES=1`): then the
/// test fails with what is missing.
pub fn available(test: &str) -> bool {
    match server() {
        Ok(_) => true,
        Err(why) if required() => panic!("{test} needs PostgreSQL: {why}"),
        Err(why) => {
            eprintln!("SKIPPED {test}: {why}");
            false
        }
    }
}

fn required() -> bool {
    let set = |name: &str| std::env::var(name).is_ok_and(|v| v == "1" || v == "true");
    set("CI") || set("HERD_REQUIRE_POSTGRES")
}

/// A new empty database on the server; its URL.
pub fn database() -> String {
    let server = server().expect("a throwaway PostgreSQL server");
    let name = format!(
        "herd_{}_{}",
        std::process::id(),
        DATABASES.fetch_add(1, Ordering::Relaxed)
    );
    server
        .psql(&format!("CREATE DATABASE {name}"))
        .expect("create a database");
    server.url(&name)
}

/// Runs `sql` on the database of `url` (one made by [`database`]); what psql printed.
pub fn query(url: &str, sql: &str) -> String {
    let db = url.rsplit('/').next().expect("a database in the URL");
    let server = server().expect("a throwaway PostgreSQL server");
    server.psql_on(db, sql).expect("the query runs")
}

impl Server {
    /// The URL of database `db` on this server.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://herd@127.0.0.1:{}/{db}", self.port)
    }

    /// The postmaster's pid (to stop or pause the store in a test).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Where its data lives.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Runs `sql` with psql on the `postgres` database.
    pub fn psql(&self, sql: &str) -> Result<String, String> {
        self.psql_on("postgres", sql)
    }

    /// Runs `sql` with psql on database `db`; what it printed (unaligned, no headers).
    pub fn psql_on(&self, db: &str, sql: &str) -> Result<String, String> {
        let out = Command::new(self.bin.join("psql"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "herd",
            ])
            .args(["-d", db, "-v", "ON_ERROR_STOP=1", "-tAc", sql])
            .output()
            .map_err(|e| format!("psql: {e}"))?;
        match out.status.success() {
            true => Ok(String::from_utf8_lossy(&out.stdout).into_owned()),
            false => Err(String::from_utf8_lossy(&out.stderr).into_owned()),
        }
    }
}

/// The newest PostgreSQL's programs (`/usr/lib/postgresql/<version>/bin`).
fn bin_dir() -> Result<PathBuf, String> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|e| {
            format!(
                "PostgreSQL is not installed (/usr/lib/postgresql: {e}); apt-get install postgresql"
            )
        })?
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, bin)| bin.join("initdb").exists())
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .ok_or_else(|| "no initdb under /usr/lib/postgresql/*/bin".into())
}

/// The user and group the server (and a test's PgBouncer) runs as: `postgres` when this
/// process is root.
pub fn run_as() -> Result<Option<(u32, u32)>, String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let name = std::ffi::CString::new("postgres").expect("no NUL");
    // SAFETY: a NUL-terminated name; the result is read at once, before any other call.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    if pw.is_null() {
        return Err("running as root and there is no postgres user to run PostgreSQL as".into());
    }
    // SAFETY: not null, checked above.
    let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
    Ok(Some((uid, gid)))
}

fn as_user(command: &mut Command, user: Option<(u32, u32)>) -> &mut Command {
    if let Some((uid, gid)) = user {
        command.uid(uid).gid(gid);
    }
    command
}

fn start() -> Result<Server, String> {
    let bin = bin_dir()?;
    let user = run_as()?;
    sweep_stale();
    let dir = std::env::temp_dir().join(format!("herd-pg-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if let Some((uid, gid)) = user {
        std::os::unix::fs::chown(&dir, Some(uid), Some(gid))
            .map_err(|e| format!("chown {}: {e}", dir.display()))?;
    }
    let data = dir.join("data");
    let out = as_user(&mut Command::new(bin.join("initdb")), user)
        .args(["-D"])
        .arg(&data)
        .args([
            "-U",
            "herd",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-sync",
            "--no-locale",
        ])
        .stdout(Stdio::null())
        .output()
        .map_err(|e| format!("initdb: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let port = free_port();
    let (tx, rx) = mpsc::channel();
    let (postgres, data_dir) = (bin.join("postgres"), data.clone());
    let _ = &data;
    // The thread that starts the server lives as long as the process, so the parent-death
    // signal fires when the process ends, not when this thread would.
    std::thread::Builder::new()
        .name("scratch-postgres".into())
        .spawn(move || {
            let mut child = Command::new(postgres);
            as_user(&mut child, user)
                .arg("-D")
                .arg(&data_dir)
                .args(["-p", &port.to_string(), "-k"])
                .arg(&data_dir)
                .args([
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    "fsync=off",
                    "-c",
                    "max_connections=300",
                    "-c",
                    "log_min_messages=fatal",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0);
            // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
            unsafe {
                child.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGQUIT);
                    Ok(())
                });
            }
            let started: Result<Child, String> =
                child.spawn().map_err(|e| format!("postgres: {e}"));
            let _ = tx.send(started.as_ref().map(Child::id).map_err(Clone::clone));
            if let Ok(mut child) = started {
                let _ = child.wait();
            }
            // Parked, not ended: see above.
            let park = Mutex::new(());
            let _hold = park.lock();
            loop {
                std::thread::park();
            }
        })
        .map_err(|e| format!("a thread: {e}"))?;
    let pid = rx.recv().map_err(|e| e.to_string())??;
    let server = Server {
        port,
        dir,
        bin,
        pid,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match server.psql("SELECT 1") {
            Ok(_) => return Ok(server),
            Err(err) if Instant::now() > deadline => {
                return Err(format!("the throwaway PostgreSQL did not start: {err}"));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Removes the folders of servers whose test process is gone.
fn sweep_stale() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix("herd-pg-")) else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}
