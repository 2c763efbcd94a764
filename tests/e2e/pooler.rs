//! The rule for connection poolers, with a real PgBouncer in front of a real PostgreSQL: a
//! pool in transaction mode hands a connection's statements to any server session, so the
//! leader's session lock would be someone else's; herd-master refuses to start through one,
//! saying why and what to do. Through a pool in session mode it leads.

use herd_testkit as common;

use std::process::Stdio;
use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_mode_pool_is_refused_and_a_session_mode_pool_works() {
    let test = "pooler::a_transaction_mode_pool_is_refused";
    if !postgres_available(test) || !pgbouncer_available(test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let database = postgres_database();

    let pool = pgbouncer(&database, "transaction");
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut command = master_command(MASTER.path(), addr, &dir.path().join("refused"));
    command
        .args(["--store", &pool.url])
        .env("XDG_STATE_HOME", dir.path().join("state"))
        .stdin(Stdio::null());
    let out = output_within(
        command,
        Duration::from_secs(30),
        "herd-master stops by itself",
    )
    .await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("pooler in transaction mode"), "{err}");
    assert!(err.contains("or at a pool in session mode"), "{err}");
    drop(pool);

    let pool = pgbouncer(&database, "session");
    let args = [FAST, &["--store", pool.url.as_str()]].concat();
    let master = Master::start_on(dir.path(), &dir.path().join("led"), free_port(), &args);
    let mut admin = master.admin().await;
    let status = admin
        .summary(herd::pb::SummaryRequest {})
        .await
        .expect("the master leads through the session-mode pool")
        .into_inner();
    assert_eq!(status.masters.len(), 1, "{:?}", status.masters);
    assert_eq!(status.masters[0].role, "leader");
}
