//! End to end: how a task runs (`--timeout`, `--env`, `--workdir`, `--retries`) and
//! batches (`--count`, `--file`, `SubmitTasks`, `POST /api/v1/tasks/batch`), with real
//! master and worker processes.

use herd_testkit as common;

use std::time::{Duration, Instant};

use common::http::Api;
use common::*;
use herd::pb;
use hyper::{Method, StatusCode};
use serde_json::json;

const T: Duration = Duration::from_secs(30);

fn spec(command: &str) -> pb::TaskSpec {
    pb::TaskSpec {
        command: command.into(),
        resources: Some(pb::Resources {
            cpu: 0.5,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Waits until task `id` has ended, whichever way, and returns it.
async fn wait_end(admin: &mut Admin, id: &str, limit: Duration) -> pb::TaskInfo {
    let deadline = Deadline::new(limit, format!("task {id} ends"));
    loop {
        let t = task(admin, id).await;
        if matches!(
            t.state(),
            pb::TaskState::Succeeded | pb::TaskState::Failed | pb::TaskState::Cancelled
        ) {
            return t;
        }
        deadline.wait().await;
    }
}

fn outcomes(t: &pb::TaskInfo) -> Vec<&str> {
    t.history.iter().map(|a| a.outcome.as_str()).collect()
}

/// The first word herdctl printed (the id, or the range of ids).
fn first_word(out: &str) -> String {
    out.split_whitespace()
        .next()
        .unwrap_or_default()
        .trim_end_matches(':')
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_kills_every_process_of_the_task_and_fails_it_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let master = InProcess::start(dir.path(), FAST);
    let mut admin = master.admin().await;
    for isolation in ["cgroup", "process-group"] {
        let name = format!("w-{isolation}");
        let mut worker = Worker::start(
            dir.path(),
            &master.url(),
            &name,
            &["--kill-grace", "1s", "--isolation", isolation],
        );
        if worker.child.try_wait().unwrap().is_some() {
            // No cgroups here: the worker refuses --isolation cgroup.
            println!("SKIPPED the {isolation} case: {}", worker.log_text());
            continue;
        }
        wait_state(&mut admin, &name, pb::WorkerState::Active, T).await;
        // A process that left the task's process group, and a shell that ignores SIGTERM
        // (so do its children): only the SIGKILL after the grace period ends them.
        let marker = format!("31.{}", fastrand::u32(1000..u32::MAX));
        let started = Instant::now();
        let (ok, out, err) = herdctl(
            &master.url(),
            &[
                "task",
                "submit",
                "--command",
                &format!("trap '' TERM; setsid sleep {marker} & sleep {marker}"),
                "--cpu",
                "0.5",
                "--timeout",
                "1s",
                "--retries",
                "2",
            ],
        );
        assert!(ok, "{err}");
        let id = first_word(&out);
        let running = wait_task(&mut admin, &id, pb::TaskState::Running, T).await;
        assert_eq!(running.spec.unwrap().timeout_ms, 1000);
        let deadline = Deadline::new(T, "the task's processes run");
        while processes_with(&marker).len() < 2 {
            deadline.wait().await;
        }
        let t = wait_end(&mut admin, &id, T).await;
        let took = started.elapsed();
        assert_eq!(t.state(), pb::TaskState::Failed, "{isolation}: {t:?}");
        assert_eq!(t.reason, "timed out after 1s", "{isolation}");
        assert_eq!(
            t.exit_code, None,
            "{isolation}: killed, no exit code of its own"
        );
        // Not retried: it was killed, it did not exit non-zero.
        assert_eq!(
            (t.attempts, outcomes(&t)),
            (1, vec!["failed"]),
            "{isolation}"
        );
        assert!(
            took >= Duration::from_secs(2),
            "{isolation}: grace skipped ({took:?})"
        );
        assert!(
            processes_with(&marker).is_empty(),
            "{isolation}: processes of the task outlived it: {:?}",
            processes_with(&marker)
        );
        worker.kill9();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deadline_holds_across_a_restart_of_the_worker_agent() {
    let dir = tempfile::tempdir().unwrap();
    let master = InProcess::start(dir.path(), FAST);
    let mut admin = master.admin().await;
    let mut worker = Worker::start(
        dir.path(),
        &master.url(),
        "restarts",
        &["--kill-grace", "1s"],
    );
    wait_state(&mut admin, "restarts", pb::WorkerState::Active, T).await;
    let marker = format!("32.{}", fastrand::u32(1000..u32::MAX));
    let mut s = spec(&format!("sleep {marker}"));
    s.timeout_ms = 4000;
    let started = Instant::now();
    let id = submit_spec(&mut admin, s).await.id;
    wait_task(&mut admin, &id, pb::TaskState::Running, T).await;
    // The agent dies; the task's supervisor (which keeps the time) does not.
    worker.kill9();
    let _again = Worker::start(
        dir.path(),
        &master.url(),
        "restarts",
        &["--kill-grace", "1s"],
    );
    let t = wait_end(&mut admin, &id, T).await;
    assert_eq!(t.state(), pb::TaskState::Failed, "{t:?}");
    assert_eq!(t.reason, "timed out after 4s");
    assert_eq!(t.attempts, 1, "the same attempt, reattached");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(4) && took < Duration::from_secs(20),
        "{took:?}"
    );
    assert!(processes_with(&marker).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_run_a_failing_task_again_each_run_an_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let master = InProcess::start(dir.path(), &[FAST, &["--max-attempts", "1"]].concat());
    let mut admin = master.admin().await;
    let _w = Worker::start(dir.path(), &master.url(), "retrier", &[]);
    wait_state(&mut admin, "retrier", pb::WorkerState::Active, T).await;

    // Three runs, each failed: more than --max-attempts 1, which counts lost placements.
    let (ok, out, err) = herdctl(
        &master.url(),
        &["task", "submit", "--command", "exit 3", "--retries", "2"],
    );
    assert!(ok, "{err}");
    let id = first_word(&out);
    let t = wait_end(&mut admin, &id, T).await;
    assert_eq!(t.state(), pb::TaskState::Failed, "{t:?}");
    assert_eq!(t.attempts, 3);
    assert_eq!(outcomes(&t), ["failed", "failed", "failed"]);
    assert!(t.history.iter().all(|a| a.exit_code == Some(3)), "{t:?}");
    assert_eq!(t.exit_code, Some(3));
    assert_eq!(t.reason, "exited with code 3");
    let (ok, shown, err) = herdctl(&master.url(), &["task", "status", &id]);
    assert!(ok, "{err}");
    assert_eq!(shown.matches("attempt:").count(), 3, "{shown}");
    assert!(shown.contains("retries:    2 (2 used)"), "{shown}");
    let (ok, json, _) = herdctl(&master.url(), &["task", "status", &id, "--json"]);
    assert!(ok);
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["retries"], 2);
    assert_eq!(json["history"].as_array().unwrap().len(), 3);

    // One that fails once, then succeeds: two attempts.
    let flag = dir.path().join("failed-once");
    let mut s = spec(&format!(
        "test -e {0} && exit 0; touch {0}; exit 4",
        flag.display()
    ));
    s.retries = 5;
    let once = submit_spec(&mut admin, s).await.id;
    let t = wait_end(&mut admin, &once, T).await;
    assert_eq!(t.state(), pb::TaskState::Succeeded, "{t:?}");
    assert_eq!(outcomes(&t), ["failed", "succeeded"]);
    assert_eq!(t.history[0].exit_code, Some(4));

    // Without retries, one run.
    let id = submit(&mut admin, "exit 5", 0.5).await.id;
    let t = wait_end(&mut admin, &id, T).await;
    assert_eq!((t.state(), t.attempts), (pb::TaskState::Failed, 1));

    // The retried runs are in SQLite too.
    let stored: String = master
        .db()
        .query_row(
            "SELECT history FROM tasks WHERE id = ?1 AND retries = 5",
            [&once],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(stored.matches("\"failed\"").count(), 1, "{stored}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_task_sees_its_environment_and_working_directory() {
    let dir = tempfile::tempdir().unwrap();
    let master = InProcess::start(dir.path(), FAST);
    let mut admin = master.admin().await;
    let _w = Worker::start(dir.path(), &master.url(), "envy", &[]);
    wait_state(&mut admin, "envy", pb::WorkerState::Active, T).await;
    let place = tempfile::tempdir().unwrap();
    let place = place.path().canonicalize().unwrap();
    let (ok, out, err) = herdctl(
        &master.url(),
        &[
            "task",
            "submit",
            "--command",
            "echo \"greeting=$GREETING\"; echo \"empty=[$EMPTY]\"; echo \"id=$HERD_TASK_ID\"; pwd",
            "--env",
            "GREETING=hello there=you",
            "--env",
            "EMPTY=",
            "--env",
            "HERD_TASK_ID=mine",
            "--workdir",
            place.to_str().unwrap(),
        ],
    );
    assert!(ok, "{err}");
    let id = first_word(&out);
    let t = wait_task(&mut admin, &id, pb::TaskState::Succeeded, T).await;
    let output = logs(&mut admin, &id, false).await;
    assert!(output.contains("greeting=hello there=you\n"), "{output}");
    assert!(output.contains("empty=[]\n"), "{output}");
    assert!(
        output.contains(&format!("id={id}\n")),
        "herd's own wins: {output}"
    );
    assert!(
        output.contains(&format!("{}\n", place.display())),
        "{output}"
    );
    let spec = t.spec.unwrap();
    assert_eq!(spec.env["GREETING"], "hello there=you");
    assert_eq!(spec.workdir, place.to_str().unwrap());
    let (ok, shown, _) = herdctl(&master.url(), &["task", "status", &id]);
    assert!(ok);
    assert!(shown.contains("GREETING=hello there=you"), "{shown}");
    assert!(
        shown.contains(&format!("workdir:    {}", place.display())),
        "{shown}"
    );

    // A workdir the worker does not have fails the task, saying so.
    let mut s = spec_with_workdir("/nonexistent/herd-test");
    s.retries = 3;
    let id = submit_spec(&mut admin, s).await.id;
    let t = wait_end(&mut admin, &id, T).await;
    assert_eq!(t.state(), pb::TaskState::Failed);
    assert_eq!(
        t.reason,
        "workdir /nonexistent/herd-test does not exist on this worker"
    );
    assert_eq!(t.attempts, 1, "not retried: it never ran");

    // Bad options are refused, naming the flag, and nothing is stored.
    let before = db_tasks(&master.db());
    for (args, expected) in [
        (&["--env", "1BAD=x"][..], "not a variable name"),
        (&["--workdir", "relative/dir"][..], "absolute"),
        (&["--retries", "1000"][..], "at most 100"),
        (&["--timeout", "1000d"][..], "at most"),
    ] {
        let mut line = vec!["task", "submit", "--command", "true"];
        line.extend_from_slice(args);
        let (ok, _, err) = herdctl(&master.url(), &line);
        assert!(!ok, "{args:?}");
        assert!(err.contains(expected), "{args:?}: {err}");
    }
    assert_eq!(db_tasks(&master.db()), before);
}

fn spec_with_workdir(workdir: &str) -> pb::TaskSpec {
    pb::TaskSpec {
        workdir: workdir.into(),
        ..spec("true")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn count_submits_a_thousand_copies_in_one_call_each_with_its_index() {
    let _heavy = heavy();
    let dir = tempfile::tempdir().unwrap();
    let master = InProcess::start(dir.path(), FAST);
    let mut admin = master.admin().await;
    let _w = Worker::start(dir.path(), &master.url(), "counter", &["--label", "pool=a"]);
    wait_state(&mut admin, "counter", pb::WorkerState::Active, T).await;

    // 1000 copies that no worker takes (so they stay put to be looked at).
    let started = Instant::now();
    let (ok, out, err) = herdctl(
        &master.url(),
        &[
            "task",
            "submit",
            "--command",
            "echo $HERD_TASK_INDEX",
            "--constraint",
            "pool=b",
            "--count",
            "1000",
        ],
    );
    let took = started.elapsed();
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "t-1..t-1000: 1000 tasks submitted");
    println!("herdctl task submit --count 1000: {took:?}");
    assert_eq!(db_tasks(&master.db()), 1000);
    let tasks = all_tasks(&mut admin).await;
    assert_eq!(tasks.len(), 1000);
    let mut indexes: Vec<u32> = tasks
        .iter()
        .map(|t| {
            t.spec.as_ref().unwrap().env["HERD_TASK_INDEX"]
                .parse()
                .unwrap()
        })
        .collect();
    indexes.sort_unstable();
    assert_eq!(indexes, (0..1000).collect::<Vec<_>>());
    let t7 = task(&mut admin, "t-8").await;
    assert_eq!(t7.spec.unwrap().env["HERD_TASK_INDEX"], "7");

    // Copies that run see their index.
    let (ok, out, err) = herdctl(
        &master.url(),
        &[
            "task",
            "submit",
            "--command",
            "echo index=$HERD_TASK_INDEX",
            "--cpu",
            "0.25",
            "--count",
            "3",
            "--json",
        ],
    );
    assert!(ok, "{err}");
    let ids: serde_json::Value = serde_json::from_str(&out).unwrap();
    let ids: Vec<String> = ids["task_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, ["t-1001", "t-1002", "t-1003"]);
    for (i, id) in ids.iter().enumerate() {
        wait_task(&mut admin, id, pb::TaskState::Succeeded, T).await;
        assert_eq!(logs(&mut admin, id, false).await, format!("index={i}\n"));
    }

    // Over the bound: refused, nothing stored.
    let status = admin
        .submit_tasks(pb::SubmitTasksRequest {
            specs: vec![spec("true")],
            count: 10_001,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("10000"), "{}", status.message());
    assert_eq!(db_tasks(&master.db()), 1003);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_is_submitted_whole_or_not_at_all_naming_the_bad_line() {
    let dir = tempfile::tempdir().unwrap();
    let master = InProcess::start(
        dir.path(),
        &[FAST, &["--http-listen", "127.0.0.1:0"]].concat(),
    );
    let mut admin = master.admin().await;
    let _w = Worker::start(dir.path(), &master.url(), "filer", &[]);
    wait_state(&mut admin, "filer", pb::WorkerState::Active, T).await;

    let good = dir.path().join("good.jsonl");
    std::fs::write(
        &good,
        r#"{"command": "echo one", "cpu": 0.25, "name": "first"}
{"command": "echo $WHO in $PWD", "cpu": 0.25, "env": {"WHO": "two"}, "workdir": "/tmp"}

{"command": "sleep 30", "cpu": 0.25, "timeout_ms": 500, "retries": 1}
"#,
    )
    .unwrap();
    let (ok, out, err) = herdctl(
        &master.url(),
        &["task", "submit", "--file", good.to_str().unwrap()],
    );
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "t-1..t-3: 3 tasks submitted");
    wait_task(&mut admin, "t-1", pb::TaskState::Succeeded, T).await;
    wait_task(&mut admin, "t-2", pb::TaskState::Succeeded, T).await;
    assert_eq!(task(&mut admin, "t-1").await.spec.unwrap().name, "first");
    assert_eq!(logs(&mut admin, "t-2", false).await, "two in /tmp\n");
    let t3 = wait_end(&mut admin, "t-3", T).await;
    assert_eq!(
        (t3.state(), t3.reason.as_str()),
        (pb::TaskState::Failed, "timed out after 500ms")
    );

    // A bad third line: nothing of the file is stored, and the error names the line.
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"command\": \"true\"}\n{\"command\": \"true\"}\n{\"command\": \"true\", \"cpu\": -1}\n",
    )
    .unwrap();
    let before = db_tasks(&master.db());
    let (ok, _, err) = herdctl(
        &master.url(),
        &["task", "submit", "--file", bad.to_str().unwrap()],
    );
    assert!(!ok);
    assert!(
        err.contains("bad.jsonl line 3: --cpu must be above 0"),
        "{err}"
    );
    std::fs::write(&bad, "{\"command\": \"true\"}\n{\"comand\": \"true\"}\n").unwrap();
    let (ok, _, err) = herdctl(
        &master.url(),
        &["task", "submit", "--file", bad.to_str().unwrap()],
    );
    assert!(!ok);
    assert!(err.contains("line 2: not a task"), "{err}");
    assert!(err.contains("comand"), "{err}");
    assert_eq!(db_tasks(&master.db()), before);

    // The master refuses a bad task of a batch itself, whole, naming its place.
    let mut wrong = spec("true");
    wrong.env.insert("NOT-A-NAME".into(), "x".into());
    let status = admin
        .submit_tasks(pb::SubmitTasksRequest {
            specs: vec![spec("true"), wrong],
            count: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().starts_with("specs[1]: "),
        "{}",
        status.message()
    );
    assert_eq!(db_tasks(&master.db()), before);

    // The HTTP API takes batches too, with the same answers.
    let api = Api::of_in_process(&master);
    let (status, body) = api
        .json(
            Method::POST,
            "/api/v1/tasks/batch",
            Some(json!({"tasks": [{"command": "echo http $HERD_TASK_INDEX", "cpu": 0.25}], "count": 2})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["task_ids"], json!(["t-4", "t-5"]));
    wait_task(&mut admin, "t-5", pb::TaskState::Succeeded, T).await;
    assert_eq!(logs(&mut admin, "t-5", false).await, "http 1\n");
    let (status, body) = api
        .json(
            Method::POST,
            "/api/v1/tasks/batch",
            Some(json!({"tasks": [{"command": "true"}, {"command": "true", "retries": 101}]})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .starts_with("tasks[1]: --retries"),
        "{body}"
    );
    let (status, body) = api
        .json(
            Method::POST,
            "/api/v1/tasks",
            Some(json!({"command": "echo $A", "env": {"A": "b"}, "timeout_ms": 60000, "workdir": "/tmp", "retries": 1})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(
        (
            &body["env"],
            &body["timeout_ms"],
            &body["workdir"],
            &body["retries"]
        ),
        (&json!({"A": "b"}), &json!(60000), &json!("/tmp"), &json!(1))
    );
    assert_eq!(db_tasks(&master.db()), before + 3);
    let doc = api.without_token().get("/api/v1/openapi.json").await;
    assert!(doc["paths"].get("/api/v1/tasks/batch").is_some());
    let props = &doc["components"]["schemas"]["SubmitBody"]["allOf"][0]["properties"];
    for field in ["timeout_ms", "env", "workdir", "retries"] {
        assert!(props.get(field).is_some(), "{field} missing: {props}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_task_gets_its_env_and_workdir_and_is_removed_at_its_timeout() {
    let Some(runtime) = container_runtime() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let master = InProcess::start(dir.path(), FAST);
    let mut admin = master.admin().await;
    let _w = Worker::start(
        dir.path(),
        &master.url(),
        "boxed",
        &["--runtime", runtime, "--kill-grace", "1s"],
    );
    wait_state(&mut admin, "boxed", pb::WorkerState::Active, T).await;
    let image = |command: &str| pb::TaskSpec {
        image: "localhost/busybox:test".into(),
        ..spec(command)
    };
    let mut s = image("echo \"$GREETING\"; pwd");
    s.env
        .insert("GREETING".into(), "hi from 'inside' $HOME".into());
    s.workdir = "/bin".into();
    let id = submit_spec(&mut admin, s).await.id;
    wait_task(
        &mut admin,
        &id,
        pb::TaskState::Succeeded,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(
        logs(&mut admin, &id, false).await,
        "hi from 'inside' $HOME\n/bin\n"
    );
    // A workdir the image does not have: the runtime's word on it is the reason.
    let mut s = image("true");
    s.workdir = "/not/in/the/image".into();
    s.retries = 2;
    let id = submit_spec(&mut admin, s).await.id;
    let t = wait_end(&mut admin, &id, Duration::from_secs(60)).await;
    assert_eq!(t.state(), pb::TaskState::Failed);
    assert_eq!(t.attempts, 1, "not retried: the container never ran");
    assert!(
        t.reason.contains("/not/in/the/image") && t.reason.contains("does not exist"),
        "{}",
        t.reason
    );

    let mut s = image("sleep 300");
    s.timeout_ms = 3000;
    let id = submit_spec(&mut admin, s).await.id;
    let t = wait_end(&mut admin, &id, Duration::from_secs(90)).await;
    assert_eq!(
        (t.state(), t.reason.as_str()),
        (pb::TaskState::Failed, "timed out after 3s")
    );
    let exists = std::process::Command::new(runtime)
        .args([
            "container",
            "exists",
            &container_name(dir.path(), "boxed", &id, 1),
        ])
        .status()
        .unwrap()
        .success();
    assert!(!exists, "the container outlived its timeout");
}
