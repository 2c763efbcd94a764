//! Workers behind a real link (issue 24 A): the master in one network namespace, a worker
//! in another, and the link between them cut and mended under running tasks.

use herd_testkit as common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::netns::{Link, scaled_down};
use common::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(40);

/// herdctl in the master's namespace, with `--json`; the parsed answer.
fn herdctl_json(link: &Link, url: &str, args: &[&str]) -> Value {
    try_herdctl_json(link, url, args).unwrap_or_else(|err| panic!("herdctl {args:?}: {err}"))
}

fn try_herdctl_json(link: &Link, url: &str, args: &[&str]) -> Result<Value, String> {
    let out = link
        .command(&link.master_ns, HERDCTL)
        .args(["--master", url, "--json"])
        .args(args)
        .env("HERD_TOKEN", TOKEN)
        .stdin(Stdio::null())
        .output()
        .expect("run herdctl");
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
}

/// `(id, status)` of the worker `name`, once the master lists it.
fn worker_state(link: &Link, url: &str, name: &str) -> Option<(String, String)> {
    let list = try_herdctl_json(link, url, &["workers", "--all"]).ok()?;
    list.as_array()?
        .iter()
        .find(|w| w["name"] == name)
        .map(|w| {
            (
                w["id"].as_str().unwrap_or_default().to_string(),
                w["status"].as_str().unwrap_or_default().to_string(),
            )
        })
}

async fn wait_status(link: &Link, url: &str, name: &str, status: &str) -> String {
    let deadline = Deadline::new(T, format!("{name} is {status}"));
    loop {
        if let Some((id, now)) = worker_state(link, url, name)
            && now == status
        {
            return id;
        }
        deadline.wait().await;
    }
}

fn submit(link: &Link, url: &str, command: &str) -> String {
    let task = herdctl_json(
        link,
        url,
        &["task", "submit", "--command", command, "--cpu", "0.1"],
    );
    task["id"].as_str().expect("an id").to_string()
}

fn task(link: &Link, url: &str, id: &str) -> Value {
    herdctl_json(link, url, &["task", "status", id])
}

async fn wait_task(link: &Link, url: &str, id: &str, state: &str) -> Value {
    let deadline = Deadline::new(T, format!("{id} is {state}"));
    loop {
        let t = task(link, url, id);
        if t["state"] == state {
            return t;
        }
        deadline.wait().await;
    }
}

fn count(log: &Path, what: &str) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .matches(what)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_shorter_than_the_heartbeat_timeout_changes_nothing() {
    let Some(link) = Link::new() else { return };
    let dir = tempfile::tempdir().unwrap();
    let timings = scaled_down("4s");
    let (_master, url, master_log) = link.master(dir.path(), &timings);
    let (_worker, worker_log) = link.worker(dir.path(), &url, "across");
    let id = wait_status(&link, &url, "across", "Active").await;
    let t = submit(&link, &url, "sleep 4; echo done");
    wait_task(&link, &url, &t, "running").await;
    let streams = count(&master_log, "heartbeat stream accepted");
    let registrations = count(&master_log, "registered");

    link.cut();
    // For 1.5 s of a 4 s timeout: Active throughout, as every read of the master says.
    let until = std::time::Instant::now() + Duration::from_millis(1500);
    while std::time::Instant::now() < until {
        assert_eq!(
            worker_state(&link, &url, "across"),
            Some((id.clone(), "Active".to_string()))
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    link.mend();

    let done = wait_task(&link, &url, &t, "succeeded").await;
    assert_eq!(done["attempts"], 1);
    assert_eq!(
        worker_state(&link, &url, "across"),
        Some((id, "Active".to_string()))
    );
    // No new stream, no registration, no state change logged.
    assert_eq!(count(&master_log, "heartbeat stream accepted"), streams);
    assert_eq!(count(&master_log, "registered"), registrations);
    assert_eq!(count(&master_log, "to=Inactive"), 0);
    assert_eq!(count(&worker_log, "reconnect"), 0, "the worker reconnected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_between_the_timeouts_makes_the_worker_inactive_and_runs_nothing_twice() {
    let Some(link) = Link::new() else { return };
    let dir = tempfile::tempdir().unwrap();
    let timings = scaled_down("2s");
    let (_master, url, _) = link.master(dir.path(), &timings);
    let (_worker, _) = link.worker(dir.path(), &url, "behind");
    let id = wait_status(&link, &url, "behind", "Active").await;
    let t = submit(&link, &url, "sleep 8; echo done");
    wait_task(&link, &url, &t, "running").await;

    link.cut();
    // Silent past the heartbeat timeout: Inactive, its task still placed there.
    assert_eq!(wait_status(&link, &url, "behind", "Inactive").await, id);
    let held = task(&link, &url, &t);
    assert_eq!(
        (held["state"].as_str(), held["attempts"].as_u64()),
        (Some("running"), Some(1))
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    link.mend();

    // Back, under the same id, and the task ends where it ran, once.
    assert_eq!(wait_status(&link, &url, "behind", "Active").await, id);
    let done = wait_task(&link, &url, &t, "succeeded").await;
    assert_eq!(done["attempts"], 1);
    assert_eq!(done["worker_name"], "behind");
    let out = link
        .command(&link.master_ns, HERDCTL)
        .args(["--master", &url, "task", "logs", &t])
        .env("HERD_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "done\n");
}

/// Issue 24 A3: a partition past the worker timeout never runs a task on both sides. The
/// cut-off worker stops its task at the fencing deadline the master gave it, before the
/// master re-queues it (the last output of attempt 1 is older than the first of attempt
/// 2); a task submitted with `--on-disconnect keep` is left running, and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_past_the_worker_timeout_never_runs_a_task_on_both_sides() {
    let Some(link) = Link::new() else { return };
    let dir = tempfile::tempdir().unwrap();
    let _leftovers = KillUnder(dir.path().to_path_buf());
    let mut timings = scaled_down("2s");
    timings[7] = "8s"; // --worker-timeout
    let (_master, url, master_log) = link.master(dir.path(), &timings);
    let (_far, _) = link.worker_on(
        &link.worker_ns,
        dir.path(),
        &url,
        "far",
        &["--kill-grace", "1s"],
    );
    wait_status(&link, &url, "far", "Active").await;
    let stopped = submit(&link, &url, STAMPS);
    let kept = herdctl_json(
        &link,
        &url,
        &[
            "task",
            "submit",
            "--command",
            STAMPS,
            "--cpu",
            "0.1",
            "--on-disconnect",
            "keep",
        ],
    )["id"]
        .as_str()
        .unwrap()
        .to_string();
    for t in [&stopped, &kept] {
        wait_task(&link, &url, t, "running").await;
    }
    assert_eq!(task(&link, &url, &stopped)["on_disconnect"], "stop");
    assert_eq!(task(&link, &url, &kept)["on_disconnect"], "keep");
    let status = link
        .command(&link.master_ns, HERDCTL)
        .args(["--master", &url, "task", "status", &kept])
        .env("HERD_TOKEN", TOKEN)
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(status.contains("disconnect: keep"), "{status}");

    link.cut();
    // A second worker on the master's side of the link, once both tasks are on the far one.
    let (_near, _) = link.worker_on(&link.master_ns, dir.path(), &url, "near", &[]);
    let attempt = |worker: &str, t: &str, n: u32| {
        dir.path().join(format!("work-{worker}/{t}-{n}/output.log"))
    };
    let deadline = Deadline::new(T, "both tasks print on the near worker");
    while stamps(&attempt("near", &stopped, 2)).is_empty()
        || stamps(&attempt("near", &kept, 2)).is_empty()
    {
        deadline.wait().await;
    }
    // Re-queued only once the far worker was Removed (the worker timeout), not before.
    assert!(count(&master_log, "to=Removed") >= 1);
    let far_1 = stamps(&attempt("far", &stopped, 1));
    let near_2 = stamps(&attempt("near", &stopped, 2));
    assert!(
        far_1.last().is_some_and(|last| *last < near_2[0]),
        "the task ran on both sides: attempt 1 printed until {:?}, attempt 2 from {}",
        far_1.last(),
        near_2[0]
    );
    let exit = std::fs::read_to_string(dir.path().join(format!("work-far/{stopped}-1/exit.json")))
        .unwrap();
    assert!(exit.contains("\"lost\""), "{exit}");
    // The kept task runs on: its first attempt prints after the second began.
    let began = stamps(&attempt("near", &kept, 2))[0];
    let deadline = Deadline::new(Duration::from_secs(5), "the kept task prints on");
    while stamps(&attempt("far", &kept, 1))
        .last()
        .is_none_or(|last| *last <= began)
    {
        deadline.wait().await;
    }

    // Nothing left behind: both tasks cancelled, and the far worker, back, is told to stop
    // its stale copy of the kept one.
    for t in [&stopped, &kept] {
        herdctl_json(&link, &url, &["task", "cancel", t]);
    }
    link.mend();
    let deadline = Deadline::new(T, "the far worker's stale copy is stopped");
    while !dir
        .path()
        .join(format!("work-far/{kept}-1/exit.json"))
        .exists()
    {
        deadline.wait().await;
    }
    for t in [&stopped, &kept] {
        wait_task(&link, &url, t, "cancelled").await;
    }
}

/// Issue 24 A4, a slow link: 300 ms each way (every byte held back, in order) is far
/// inside a 2 s heartbeat timeout: the worker comes up, stays Active, and runs a task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_link_keeps_the_worker_active_and_working() {
    let Some(link) = Link::new() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (_master, url, master_log) = link.master(dir.path(), &scaled_down("2s"));
    let slow = link.delay(Duration::from_millis(300), Duration::ZERO);
    let (_worker, _) = link.worker_on(&link.worker_ns, dir.path(), &slow, "slow", &[]);
    let id = wait_status(&link, &url, "slow", "Active").await;
    let started = std::time::Instant::now();
    let t = submit(&link, &url, "echo over a slow link");
    wait_task(&link, &url, &t, "succeeded").await;
    // A round trip takes at least 600 ms: the relay does hold bytes back.
    assert!(started.elapsed() >= Duration::from_millis(600));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        worker_state(&link, &url, "slow"),
        Some((id, "Active".into()))
    );
    assert_eq!(count(&master_log, "to=Inactive"), 0);
}
