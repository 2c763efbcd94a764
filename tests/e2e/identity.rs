//! End to end: operator tokens and the audit log (issue 13). Tokens carry roles (viewer,
//! operator, admin), tasks say who submitted them, a revoked token is refused within a
//! second, and every change is in the audit log. Real processes on 127.0.0.1.

use herd_testkit as common;

use std::time::{Duration, Instant};

use common::http::Api;
use common::*;
use herd::pb;
use hyper::{Method, StatusCode};
use serde_json::{Value, json};
use tonic::Code;

const T: Duration = Duration::from_secs(30);

fn parse(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Makes a named token with herdctl (as the admin) and returns it.
fn create_token(url: &str, name: &str, role: &str) -> String {
    let (ok, out, err) = herdctl(url, &["token", "create", name, "--role", role]);
    assert!(ok, "{err}");
    assert!(out.contains("shown only this once"), "{out}");
    let token = out.lines().next().unwrap().trim().to_string();
    assert_eq!(token.len(), 64, "{out}");
    token
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_read_operators_submit_and_tasks_say_who_submitted_them() {
    let dir = tempfile::tempdir().unwrap();
    let master = InProcess::start(
        dir.path(),
        &[FAST, &["--http-listen", "127.0.0.1:0"]].concat(),
    );
    let mut admin = master.admin().await;
    let url = master.url();
    let _w = Worker::start(dir.path(), &url, "busy", &[]);
    wait_state(&mut admin, "busy", pb::WorkerState::Active, T).await;
    let viewer = create_token(&url, "watcher", "viewer");
    let operator = create_token(&url, "ops-bot", "operator");

    // A batch records its submitter too.
    let (ok, _, err) = herdctl_as(
        &url,
        &operator,
        &["task", "submit", "--command", "true", "--count", "2"],
    );
    assert!(ok, "{err}");
    let batch = all_tasks(&mut admin).await;
    assert!(batch.len() == 2 && batch.iter().all(|t| t.submitted_by == "ops-bot"));

    // An operator submits; the task says so everywhere.
    let (ok, out, err) = herdctl_as(
        &url,
        &operator,
        &["task", "submit", "--command", "sleep 30"],
    );
    assert!(ok, "{err}");
    let id = out.split_whitespace().next().unwrap().to_string();
    let (ok, out, _) = herdctl_as(&url, &viewer, &["task", "status", &id]);
    assert!(ok && out.contains("ops-bot"), "{out}");
    let (ok, out, _) = herdctl_as(&url, &viewer, &["task", "status", &id, "--json"]);
    assert!(ok);
    assert_eq!(parse(&out)["submitted_by"], "ops-bot");
    assert_eq!(task(&mut admin, &id).await.submitted_by, "ops-bot");
    let api = Api::of_in_process(&master);
    let viewer_api = Api {
        token: Some(viewer.clone()),
        ..api.clone()
    };
    assert_eq!(
        viewer_api.get(&format!("/api/v1/tasks/{id}")).await["submitted_by"],
        "ops-bot"
    );
    let submitted_by: String = master
        .db()
        .query_row("SELECT submitted_by FROM tasks WHERE id = ?1", [&id], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(submitted_by, "ops-bot");

    // A viewer lists and reads, but cannot submit or cancel.
    for args in [
        &["workers"][..],
        &["tasks"],
        &["status", "--json"],
        &["task", "logs", &id],
    ] {
        let (ok, _, err) = herdctl_as(&url, &viewer, args);
        assert!(ok, "{args:?}: {err}");
    }
    let before = db_tasks(&master.db());
    for args in [
        &["task", "submit", "--command", "true"][..],
        &["task", "cancel", &id],
        &["drain", "busy"],
        &["token", "list"],
        &["audit"],
    ] {
        let (ok, _, err) = herdctl_as(&url, &viewer, args);
        assert!(!ok, "{args:?} was allowed");
        assert!(err.contains("viewer"), "{args:?}: {err}");
    }
    let (status, body) = viewer_api
        .json(
            Method::POST,
            "/api/v1/tasks",
            Some(json!({"command": "true"})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, _) = viewer_api
        .json(Method::POST, &format!("/api/v1/tasks/{id}/cancel"), None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(db_tasks(&master.db()), before, "nothing was submitted");
    assert_eq!(task(&mut admin, &id).await.state(), pb::TaskState::Running);
    assert_ne!(
        worker(&mut admin, "busy").await.unwrap().state(),
        pb::WorkerState::Draining
    );

    // An operator cancels and drains, but makes no tokens and switches no policy.
    let (ok, _, err) = herdctl_as(&url, &operator, &["task", "cancel", &id]);
    assert!(ok, "{err}");
    let (ok, _, err) = herdctl_as(
        &url,
        &operator,
        &["token", "create", "x", "--role", "admin"],
    );
    assert!(!ok && err.contains("operator"), "{err}");
    let (ok, _, err) = herdctl_as(&url, &operator, &["scheduler", "round-robin"]);
    assert!(!ok && err.contains("operator"), "{err}");

    // `token list`: names, roles, created, last used; never a token.
    let (ok, out, err) = herdctl(&url, &["token", "list"]);
    assert!(ok, "{err}");
    assert!(out.contains("watcher") && out.contains("viewer"), "{out}");
    assert!(out.contains("ops-bot") && out.contains("operator"), "{out}");
    assert!(!out.contains(&viewer) && !out.contains(&operator), "{out}");
    let (_, out, _) = herdctl(&url, &["token", "list", "--json"]);
    let list = parse(&out);
    let bot = list
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "ops-bot")
        .unwrap();
    assert!(bot["last_used_ms"].as_i64().unwrap() > 0, "{bot}");
    assert!(bot.get("token").is_none(), "{bot}");
    // SQLite holds hashes only.
    let raw = std::fs::read(master.data_dir.join("herd.db")).unwrap();
    let wal = std::fs::read(master.data_dir.join("herd.db-wal")).unwrap_or_default();
    for haystack in [&raw, &wal] {
        assert!(
            !haystack
                .windows(64)
                .any(|w| w == viewer.as_bytes() || w == operator.as_bytes()),
            "a token is stored in the clear"
        );
    }
    // A name is taken once, and reserved names not at all.
    let (ok, _, err) = herdctl(&url, &["token", "create", "watcher", "--role", "admin"]);
    assert!(!ok && err.contains("exists"), "{err}");
    let (ok, _, err) = herdctl(&url, &["token", "create", "repl", "--role", "admin"]);
    assert!(!ok && err.contains("taken"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_is_refused_within_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let master = InProcess::start(dir.path(), FAST);
    let mut admin = master.admin().await;
    let url = master.url();
    let _w = Worker::start(dir.path(), &url, "runner", &[]);
    wait_state(&mut admin, "runner", pb::WorkerState::Active, T).await;
    let token = create_token(&url, "short-lived", "operator");
    let mut client = admin_with(&url, &token).await;
    client.summary(pb::SummaryRequest {}).await.unwrap();
    // A stream it opened, following a task that runs on.
    let long = submit(&mut admin, "echo started; sleep 60", 1.0).await;
    let mut follow = client
        .task_logs(pb::TaskLogsRequest {
            task_id: long.id.clone(),
            follow: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();

    let (ok, out, err) = herdctl(&url, &["token", "revoke", "short-lived"]);
    assert!(ok && out.contains("revoked"), "{out}{err}");
    let revoked = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(1), async {
        loop {
            match follow.message().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the followed stream ends within a second of the revocation");
    let status = ended.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("revoked"), "{status:?}");
    let deadline = Deadline::new(Duration::from_secs(1), "the revoked token is refused");
    let status = loop {
        match client.summary(pb::SummaryRequest {}).await {
            Err(status) => break status,
            Ok(_) => deadline.wait().await,
        }
    };
    assert!(revoked.elapsed() < Duration::from_secs(1));
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("revoked"), "{status:?}");
    let status = client
        .submit_task(pb::SubmitTaskRequest {
            spec: Some(pb::TaskSpec {
                command: "true".into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(db_tasks(&master.db()), 1, "only the admin's task");
    let (ok, _, err) = herdctl(&url, &["token", "revoke", "short-lived"]);
    assert!(!ok && err.contains("no token named"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_log_lists_every_change_in_order_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let data = dir.path().join("data");
    let mut master = Master::start_on(dir.path(), &data, port, FAST);
    let mut admin = master.admin().await;
    let url = master.url();
    let mut w = Worker::start(dir.path(), &url, "audited", &[]);
    wait_state(&mut admin, "audited", pb::WorkerState::Active, T).await;

    let operator = create_token(&url, "ci", "operator");
    let (ok, out, _) = herdctl_as(
        &url,
        &operator,
        &["task", "submit", "--command", "sleep 60"],
    );
    assert!(ok);
    let id = out.split_whitespace().next().unwrap().to_string();
    for args in [
        &["task", "cancel", &id][..],
        &["drain", "audited"],
        &["undrain", "audited"],
    ] {
        let (ok, _, err) = herdctl_as(&url, &operator, args);
        assert!(ok, "{args:?}: {err}");
    }
    // Reads and refusals are not changes.
    herdctl_as(&url, &operator, &["tasks"]);
    herdctl_as(&url, &operator, &["scheduler", "round-robin"]);
    for args in [
        &["scheduler", "round-robin"][..],
        &["token", "revoke", "ci"],
    ] {
        let (ok, _, err) = herdctl(&url, args);
        assert!(ok, "{args:?}: {err}");
    }
    w.kill9();
    wait_state(&mut admin, "audited", pb::WorkerState::Inactive, T).await;
    let (ok, _, err) = herdctl(&url, &["worker", "forget", "audited"]);
    assert!(ok, "{err}");

    let expected = [
        ("admin", "token create", "ci"),
        ("ci", "task submit", id.as_str()),
        ("ci", "task cancel", id.as_str()),
        ("ci", "drain", "audited"),
        ("ci", "undrain", "audited"),
        ("admin", "scheduler switch", "round-robin"),
        ("admin", "token revoke", "ci"),
        ("admin", "worker forget", "audited"),
    ];
    let check = |entries: &Value| {
        let entries = entries.as_array().unwrap();
        let got: Vec<(&str, &str, &str)> = entries
            .iter()
            .rev()
            .map(|e| {
                (
                    e["who"].as_str().unwrap(),
                    e["action"].as_str().unwrap(),
                    e["target"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(got, expected, "oldest last, in the order they happened");
        let seqs: Vec<u64> = entries.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
        assert!(
            seqs.windows(2).all(|p| p[0] > p[1]),
            "newest first: {seqs:?}"
        );
        for e in entries {
            assert!(e["peer"].as_str().unwrap().starts_with("127.0.0.1:"), "{e}");
            assert!(e["at_ms"].as_i64().unwrap() > now_ms() - 120_000, "{e}");
        }
        assert!(entries[6]["detail"].as_str().unwrap().contains("sleep 60"));
    };
    let (ok, out, err) = herdctl(&url, &["audit", "--json"]);
    assert!(ok, "{err}");
    check(&parse(&out));
    let (ok, out, _) = herdctl(&url, &["audit", "--limit", "2"]);
    assert!(ok);
    assert!(
        out.contains("worker forget") && out.contains("token revoke"),
        "{out}"
    );
    assert!(!out.contains("scheduler switch"), "{out}");
    assert_eq!(out.lines().count(), 3, "a header and two rows: {out}");

    // Paged like other lists.
    let mut seen = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = admin
            .list_audit(pb::ListAuditRequest {
                page_size: 3,
                page_token,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.entries.len() <= 3);
        seen.extend(page.entries.into_iter().map(|e| e.seq));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(seen.len(), expected.len(), "{seen:?}");

    // Durable: a restarted master has it all.
    master.kill9();
    let master = Master::start_on(dir.path(), &data, port, FAST);
    master.admin().await;
    let (ok, out, err) = herdctl(&master.url(), &["audit", "--json"]);
    assert!(ok, "{err}");
    check(&parse(&out));
}
