//! PgBouncer in front of the throwaway PostgreSQL (Debian's `pgbouncer`), in transaction or
//! session mode, for the tests of the rule that a leader's lock connection must not go
//! through a transaction-mode pool. Run as `postgres` when the tests run as root (PgBouncer
//! refuses root); killed when dropped.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use herd_master::store::postgres::scratch::run_as;

const BIN: &str = "/usr/sbin/pgbouncer";

/// A running PgBouncer; `url` reaches the database through it.
pub struct Pooler {
    child: Child,
    pub url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Pooler {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether PgBouncer is installed; without it the test is skipped (and says so), unless
/// CI requires the PostgreSQL tests (`HERD_REQUIRE_POSTGRES=1`): then it fails.
pub fn pgbouncer_available(test: &str) -> bool {
    if Path::new(BIN).exists() {
        return true;
    }
    let required = std::env::var("HERD_REQUIRE_POSTGRES").is_ok_and(|v| v == "1");
    assert!(
        !required,
        "{test} needs PgBouncer: apt-get install pgbouncer"
    );
    eprintln!("SKIPPED {test}: PgBouncer is not installed ({BIN})");
    false
}

/// Starts PgBouncer in `mode` ("transaction" or "session") in front of the database of
/// `url` (a URL of the throwaway server), and waits until it listens.
pub fn pgbouncer(url: &str, mode: &str) -> Pooler {
    let (server, db) = url
        .strip_prefix("postgres://herd@")
        .and_then(|rest| rest.split_once('/'))
        .expect("a URL of the throwaway server");
    let (host, port) = server.split_once(':').expect("host:port");
    let dir = tempfile::tempdir().unwrap();
    let user = run_as().expect("a user to run PgBouncer as");
    if let Some((uid, gid)) = user {
        std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
    }
    let listen = crate::free_port();
    let ini = dir.path().join("pgbouncer.ini");
    std::fs::write(
        &ini,
        format!(
            "[databases]\n{db} = host={host} port={port} dbname={db} user=herd\n\
             [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {listen}\n\
             auth_type = any\npool_mode = {mode}\ndefault_pool_size = 4\n\
             unix_socket_dir =\nlogfile = {log}\n\
             ignore_startup_parameters = extra_float_digits\n",
            log = dir.path().join("pgbouncer.log").display(),
        ),
    )
    .unwrap();
    let mut command = Command::new(BIN);
    command
        .arg(&ini)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some((uid, gid)) = user {
        command.uid(uid).gid(gid);
    }
    let child = command.spawn().expect("start pgbouncer");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", listen)).is_err() {
        assert!(
            Instant::now() < deadline,
            "pgbouncer did not listen within 10 s: {}",
            std::fs::read_to_string(dir.path().join("pgbouncer.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Pooler {
        child,
        url: format!("postgres://herd@127.0.0.1:{listen}/{db}"),
        _dir: dir,
    }
}
