//! The master's REPL driven through a pseudo-terminal, as an operator types at it.

use herd_testkit as common;

use std::process::Command;
use std::time::Duration;

use common::*;
use herd::pb;

const T: Duration = Duration::from_secs(30);

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
    let screen = repl.exp_eof().unwrap();
    // The screen shows warnings, not the INFO lines; those are in <data-dir>/master.log.
    assert!(!screen.contains(" INFO "), "{screen}");
    let log = std::fs::read_to_string(dir.path().join("data/master.log")).unwrap();
    assert!(log.contains("herd-master stopped"), "{log}");
}

/// herd-master with a REPL on a terminal, listening on `port` with data in `data`.
fn master_command(data: &std::path::Path, port: u16) -> Command {
    let mut command = Command::new(MASTER);
    command
        .env("HERD_HTTP_LISTEN", "off")
        .args(["--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(data)
        .args(FAST)
        .env("TERM", "xterm")
        .env("HERD_TOKEN", TOKEN)
        .env("HERD_JOIN_TOKEN", JOIN_TOKEN);
    command
}

fn repl_master(data: &std::path::Path, port: u16, no_color: bool) -> rexpect::session::PtySession {
    let mut command = master_command(data, port);
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

/// The pid of the herd-master started with `--listen 127.0.0.1:PORT`.
fn master_listening_on(port: u16) -> u32 {
    let listen = format!("127.0.0.1:{port}");
    pids()
        .find(|pid| {
            let args = args_of(*pid);
            args.first().is_some_and(|a| a.ends_with(b"herd-master"))
                && args.iter().any(|a| *a == listen.as_bytes())
        })
        .expect("the master runs")
}

/// The one local worker of the master `parent`, once it runs.
async fn the_local_worker(parent: u32) -> u32 {
    let deadline = Deadline::new(Duration::from_secs(20), "the local worker runs");
    loop {
        if let [pid] = children_named(parent, "herd-worker")[..] {
            return pid;
        }
        deadline.wait().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_at_the_repl_never_reach_the_local_worker_and_a_killed_one_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut command = master_command(&dir.path().join("data"), port);
    command
        .arg("--local-worker")
        .env("NO_COLOR", "1")
        .env("HERD_WORKER_NAME", "local-keys")
        .env("HERD_RUNTIME", "none");
    let mut repl = rexpect::session::spawn_command(command, Some(20_000)).unwrap();
    repl.exp_string("master> ").unwrap();
    let master_pid = master_listening_on(port);
    let mut admin = clients(&url).await.unwrap().0;
    wait_state(&mut admin, "local-keys", pb::WorkerState::Active, T).await;
    let pid = the_local_worker(master_pid).await;

    // Ctrl-C during `task logs --follow` and during `status` interrupts them only.
    let t = submit(&mut admin, "echo following; sleep 30", 0.1).await;
    wait_task(&mut admin, &t.id, pb::TaskState::Running, T).await;
    repl.send_line(&format!("task logs {} --follow", t.id))
        .unwrap();
    repl.exp_string("following").unwrap();
    repl.send_control('c').unwrap();
    repl.exp_string("master> ").unwrap();
    repl.send_line("status").unwrap();
    repl.exp_string("press any key to stop").unwrap();
    repl.send_control('c').unwrap();
    repl.exp_string("master> ").unwrap();
    repl.send_line("workers").unwrap();
    repl.exp_regex(r"local-keys\s+w-[0-9a-f]{8}\s+Active")
        .unwrap();
    repl.exp_string("master> ").unwrap();
    assert!(
        process_alive(pid),
        "the local worker died of a key pressed at the REPL"
    );
    assert_eq!(
        the_local_worker(master_pid).await,
        pid,
        "restarted, not spared"
    );
    assert_eq!(
        wait_state(&mut admin, "local-keys", pb::WorkerState::Active, T)
            .await
            .state(),
        pb::WorkerState::Active
    );

    // kill -9 of the local worker: the master starts it again, and it is Active again.
    // SAFETY: signalling a process this test found as the master's child.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    wait_state(&mut admin, "local-keys", pb::WorkerState::Inactive, T).await;
    let deadline = Deadline::new(T, "a new local worker runs");
    let again = loop {
        match children_named(master_pid, "herd-worker")[..] {
            [p] if p != pid => break p,
            _ => deadline.wait().await,
        }
    };
    wait_state(&mut admin, "local-keys", pb::WorkerState::Active, T).await;
    assert!(process_alive(again));
    repl.send_line("exit").unwrap();
    repl.exp_eof().unwrap();
}

/// Where a log line's timestamp (`2026-12-01T07:10:00`) starts in `text`, if anywhere.
fn timestamp_at(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    (0..bytes.len().saturating_sub(19)).find(|&i| {
        let d = |j: usize| bytes[i + j].is_ascii_digit();
        (0..4).all(d)
            && bytes[i + 4] == b'-'
            && d(5)
            && d(6)
            && bytes[i + 7] == b'-'
            && d(8)
            && d(9)
            && bytes[i + 10] == b'T'
            && d(11)
            && d(12)
            && bytes[i + 13] == b':'
    })
}

/// `text` without ANSI escape sequences.
fn plain(text: &str) -> String {
    let mut out = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() || c == '~' {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_lines_never_land_inside_a_reply_while_workers_come_and_go() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut command = master_command(&dir.path().join("data"), port);
    command.env("NO_COLOR", "1");
    let mut repl = rexpect::session::spawn_command(command, Some(20_000)).unwrap();
    repl.exp_string("master> ").unwrap();
    let mut admin = clients(&url).await.unwrap().0;
    let _keeper = Worker::start(dir.path(), &url, "keeper", &[]);
    wait_state(&mut admin, "keeper", pb::WorkerState::Active, T).await;

    // Workers come and go the whole time: every one logs a few lines at the master.
    let churn_dir = dir.path().to_path_buf();
    let churn_url = url.clone();
    let churn = tokio::spawn(async move {
        for i in 0..12 {
            let mut w = Worker::start(&churn_dir, &churn_url, &format!("churn-{i}"), &[]);
            tokio::time::sleep(Duration::from_millis(250)).await;
            w.kill9();
        }
    });
    let mut replies = Vec::new();
    while !churn.is_finished() {
        repl.send_line("workers").unwrap();
        replies.push(repl.exp_string("master> ").unwrap());
    }
    churn.await.unwrap();
    let logged = replies
        .iter()
        .any(|r| r.contains("INFO") || r.contains("WARN"));
    assert!(logged, "the churn logged nothing at the REPL: {replies:?}");
    for reply in &replies {
        let text = plain(reply);
        let lines: Vec<&str> = text
            .split(['\r', '\n'])
            .map(str::trim_end)
            .filter(|l| !l.trim().is_empty())
            .collect();
        // A log line starts a line of its own, and none lands between two lines of the
        // reply: it comes before the reply (printed as the command line was entered) or
        // after it (held back while it was written).
        let (mut in_table, mut logged_in_table) = (false, false);
        for line in &lines {
            let table = line.starts_with("NAME")
                || line.starts_with("keeper")
                || line.starts_with("churn-");
            assert!(
                !(table && logged_in_table),
                "a log line inside the reply: {reply:?}"
            );
            in_table |= table;
            if let Some(at) = timestamp_at(line) {
                assert!(
                    line[..at].trim().is_empty(),
                    "a log line glued to output: {line:?} in {reply:?}"
                );
                logged_in_table |= in_table;
            }
        }
    }
    repl.send_line("exit").unwrap();
    repl.exp_eof().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_repl_submits_batches_from_a_file_on_the_masters_side() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut repl = repl_master(&dir.path().join("data"), port, true);
    let file = dir.path().join("batch.jsonl");
    std::fs::write(
        &file,
        "{\"command\": \"true\"}\n{\"command\": \"true\", \"retries\": 1}\n",
    )
    .unwrap();
    repl.send_line(&format!("task submit --file {}", file.display()))
        .unwrap();
    repl.exp_string("t-1..t-2: 2 tasks submitted").unwrap();
    repl.exp_string("master> ").unwrap();
    std::fs::write(
        &file,
        "{\"command\": \"true\"}\n{\"command\": \"true\", \"env\": {\"a b\": \"x\"}}\n",
    )
    .unwrap();
    repl.send_line(&format!("task submit --file {}", file.display()))
        .unwrap();
    repl.exp_string("batch.jsonl line 2: --env name 'a b' is not a variable name")
        .unwrap();
    repl.exp_string("master> ").unwrap();
    repl.send_line("task submit --command true --count 3 --timeout 1m")
        .unwrap();
    repl.exp_string("t-3..t-5: 3 tasks submitted").unwrap();
    repl.exp_string("master> ").unwrap();
    let mut admin = clients(&url).await.unwrap().0;
    assert_eq!(all_tasks(&mut admin).await.len(), 5);
    repl.send_control('d').unwrap();
    repl.exp_eof().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_repl_is_the_trusted_admin_named_repl_in_the_audit_log() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut repl = repl_master(&dir.path().join("data"), port, true);
    let mut admin = clients(&url).await.unwrap().0;

    repl.send_line("token create from-repl --role viewer")
        .unwrap();
    repl.exp_string("shown only this once").unwrap();
    repl.exp_string("master> ").unwrap();
    repl.send_line("task submit --command true").unwrap();
    let (_, id) = repl.exp_regex(r"t-[0-9]+").unwrap();
    repl.exp_string("master> ").unwrap();
    assert_eq!(task(&mut admin, &id).await.submitted_by, "repl");

    repl.send_line("audit").unwrap();
    repl.exp_regex(r"repl\s+admin\s+task submit\s+t-[0-9]+\s+local")
        .unwrap();
    repl.exp_regex(r"repl\s+admin\s+token create\s+from-repl\s+local")
        .unwrap();
    repl.exp_string("master> ").unwrap();
    repl.send_control('d').unwrap();
    repl.exp_eof().unwrap();
}

/// Input arrives as people type and paste: a pasted block (bracketed paste, as terminals
/// send it) is every line of it, and lines typed while log lines stream above the prompt
/// lose no character.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pasted_block_and_lines_typed_while_output_streams_are_taken_whole() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut repl = repl_master(&dir.path().join("data"), port, true);
    let _w = Worker::start(dir.path(), &url, "paste-worker", &[]);
    let mut admin = clients(&url).await.unwrap().0;
    wait_state(&mut admin, "paste-worker", pb::WorkerState::Active, T).await;

    let block: Vec<String> = (0..10)
        .map(|i| format!("task submit --name pasted-{i} --command 'echo {i}' --cpu 0.1"))
        .collect();
    repl.send(&format!("\x1b[200~{}\x1b[201~", block.join("\n")))
        .unwrap();
    repl.send_line("").unwrap();
    // While those tasks run and their events print, five more lines are typed, one key
    // at a time, without waiting for the prompt.
    for i in 0..5 {
        for c in format!("task submit --name typed-{i} --command 'true' --cpu 0.1\n").chars() {
            repl.send(&c.to_string()).unwrap();
            repl.flush().unwrap();
        }
    }
    let deadline = Deadline::new(T, "all 15 tasks are stored");
    loop {
        let names: std::collections::BTreeSet<String> = all_tasks(&mut admin)
            .await
            .into_iter()
            .filter_map(|t| t.spec.map(|s| s.name))
            .collect();
        let wanted: std::collections::BTreeSet<String> = (0..10)
            .map(|i| format!("pasted-{i}"))
            .chain((0..5).map(|i| format!("typed-{i}")))
            .collect();
        assert!(
            names.is_subset(&wanted),
            "a task with a mangled name: {names:?}"
        );
        if names == wanted {
            break;
        }
        deadline.wait().await;
    }
    // Every one runs to its end, and its events are logged meanwhile.
    let deadline = Deadline::new(T, "all 15 tasks have succeeded");
    while all_tasks(&mut admin)
        .await
        .iter()
        .any(|t| t.state() != pb::TaskState::Succeeded)
    {
        deadline.wait().await;
    }
    repl.send_control('d').unwrap();
    // Thirty task events did not scroll the screen: they went to master.log.
    let screen = repl.exp_eof().unwrap();
    assert!(!screen.contains("task ended"), "{screen}");
    let log = std::fs::read_to_string(dir.path().join("data/master.log")).unwrap();
    assert!(log.contains("task ended"), "{log}");
}
