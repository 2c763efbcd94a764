//! The master's REPL driven through a pseudo-terminal, as an operator types at it.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use herd::pb;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_repl_lists_workers_and_survives_bad_commands() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut repl = repl_master(&dir.path().join("data"), port, false);

    let _w = Worker::start(dir.path(), &url, "repl-worker", &[]);
    let mut admin = clients(&url).await.unwrap().0;
    wait_state(
        &mut admin,
        "repl-worker",
        pb::WorkerState::Active,
        Duration::from_secs(20),
    )
    .await;

    repl.send_line("workers").unwrap();
    repl.exp_string("LAST SEEN").unwrap();
    let (_, row) = repl
        .exp_regex(r"repl-worker\s+w-[0-9a-f]{8}\s+\S+ Active")
        .unwrap();
    // On a terminal the status carries a green dot (rexpect reads bytes one by one, so
    // the UTF-8 dot is not compared here, only its colour).
    assert!(row.contains("\x1b[32m"), "{row:?}");
    repl.exp_string("master> ").unwrap();

    repl.send_line("wrokers").unwrap();
    repl.exp_string("unrecognized subcommand 'wrokers'")
        .unwrap();
    repl.exp_string("type 'help' for the commands").unwrap();
    repl.exp_string("master> ").unwrap();

    repl.send_line("worker nobody").unwrap();
    repl.exp_string("no worker with id or name 'nobody'")
        .unwrap();
    repl.exp_string("master> ").unwrap();

    repl.send_line("worker repl-worker").unwrap();
    repl.exp_regex(r"status:\s+\S+ Active").unwrap();
    repl.exp_string("master> ").unwrap();

    repl.send_line("help").unwrap();
    repl.exp_string("workers [--all]").unwrap();
    repl.exp_string("master> ").unwrap();

    // Ctrl-C clears the line and keeps the master; Ctrl-D leaves.
    repl.send("workers --bogus").unwrap();
    repl.flush().unwrap();
    repl.send_control('c').unwrap();
    repl.exp_string("master> ").unwrap();
    repl.send_line("").unwrap();
    repl.exp_string("master> ").unwrap();
    assert!(worker(&mut admin, "repl-worker").await.is_some());
    repl.send_control('d').unwrap();
    repl.exp_string("herd-master stopped").unwrap();
    repl.exp_eof().unwrap();
}

fn repl_master(data: &std::path::Path, port: u16, no_color: bool) -> rexpect::session::PtySession {
    let mut command = Command::new(MASTER);
    command
        .args(["--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(data)
        .args(FAST)
        .env("TERM", "xterm")
        .env("HERD_TOKEN", TOKEN);
    if no_color {
        command.env("NO_COLOR", "1");
    } else {
        command.env_remove("NO_COLOR");
    }
    let mut repl = rexpect::session::spawn_command(command, Some(20_000)).unwrap();
    repl.exp_string("master> ").unwrap();
    repl
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_repl_completes_remembers_and_honours_no_color() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let data = dir.path().join("data");
    let url = format!("http://127.0.0.1:{port}");
    let mut repl = repl_master(&data, port, true);
    let _w = Worker::start(dir.path(), &url, "completed-worker", &[]);
    let mut admin = clients(&url).await.unwrap().0;
    wait_state(
        &mut admin,
        "completed-worker",
        pb::WorkerState::Active,
        Duration::from_secs(20),
    )
    .await;

    // NO_COLOR: no escape codes around the status, no dot.
    repl.send_line("workers").unwrap();
    let (_, row) = repl
        .exp_regex(r"completed-worker\s+w-[0-9a-f]{8}\s+Active")
        .unwrap();
    assert!(!row.contains('\x1b'), "{row:?}");
    repl.exp_string("master> ").unwrap();

    // Tab completes commands, flags and worker names.
    repl.send("workers --a").unwrap();
    repl.flush().unwrap();
    repl.exp_string("--a").unwrap();
    repl.send("\t").unwrap();
    repl.flush().unwrap();
    repl.exp_string("ll").unwrap();
    repl.send("\r").unwrap();
    repl.flush().unwrap();
    repl.exp_string("LAST SEEN").unwrap();
    repl.exp_string("master> ").unwrap();
    repl.send("worker comp").unwrap();
    repl.flush().unwrap();
    repl.send("\t").unwrap();
    repl.flush().unwrap();
    repl.send("\r").unwrap();
    repl.flush().unwrap();
    repl.exp_regex(r"name:\s+completed-worker").unwrap();
    repl.exp_string("master> ").unwrap();

    // The live status view stops at a key press.
    repl.send_line("status").unwrap();
    repl.exp_string("press any key to stop").unwrap();
    repl.send("q").unwrap();
    repl.flush().unwrap();
    repl.exp_string("master> ").unwrap();

    repl.send_control('d').unwrap();
    repl.exp_eof().unwrap();

    // History survives a restart: Up brings back the last command.
    let mut repl = repl_master(&data, port, true);
    repl.send("\x1b[A").unwrap();
    repl.flush().unwrap();
    repl.send("\r").unwrap();
    repl.flush().unwrap();
    repl.exp_string("status").unwrap();
    repl.exp_string("press any key to stop").unwrap();
    repl.send("q").unwrap();
    repl.flush().unwrap();
    repl.exp_string("master> ").unwrap();
    repl.send_line("exit").unwrap();
    repl.exp_eof().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn herdctl_without_a_command_opens_the_same_repl_remotely() {
    let dir = tempfile::tempdir().unwrap();
    let master = Master::start(dir.path(), FAST);
    let mut admin = master.admin().await;
    let _w = Worker::start(dir.path(), &master.url(), "remote-seen", &[]);
    wait_state(
        &mut admin,
        "remote-seen",
        pb::WorkerState::Active,
        Duration::from_secs(20),
    )
    .await;

    let mut command = Command::new(env!("CARGO_BIN_EXE_herdctl"));
    command
        .args(["--master", &master.url()])
        .env("TERM", "xterm")
        .env("NO_COLOR", "1")
        .env("HERD_TOKEN", TOKEN);
    let mut repl = rexpect::session::spawn_command(command, Some(20_000)).unwrap();
    repl.exp_string("herd> ").unwrap();
    repl.send_line("workers").unwrap();
    repl.exp_regex(r"remote-seen\s+w-[0-9a-f]{8}\s+Active")
        .unwrap();
    repl.exp_string("herd> ").unwrap();
    repl.send_line("task submit --command 'echo from afar'")
        .unwrap();
    let (_, id) = repl.exp_regex(r"t-[0-9]+").unwrap();
    repl.exp_string("herd> ").unwrap();
    wait_task(
        &mut admin,
        &id,
        pb::TaskState::Succeeded,
        Duration::from_secs(20),
    )
    .await;
    repl.send_line(&format!("task logs {id}")).unwrap();
    repl.exp_string("from afar").unwrap();
    repl.send_line("quit").unwrap();
    repl.exp_eof().unwrap();
}
