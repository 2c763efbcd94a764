//! End to end: the HTTP/JSON API and its event stream, with a plain HTTP client against a
//! real master and worker: every endpoint, 401 without the token, 400 with bad input,
//! paging, Server-Sent Events resumed with Last-Event-ID.

use herd_testkit as common;

use std::time::Duration;

use common::http::Api;
use common::*;
use herd::pb;
use hyper::{Method, StatusCode};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(30);

fn http_master(dir: &std::path::Path) -> Master {
    Master::start(dir, &[FAST, &["--http-listen", "127.0.0.1:0"]].concat())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_answers_with_the_herdctl_json_fields() {
    let dir = tempfile::tempdir().unwrap();
    let master = http_master(dir.path());
    let mut admin = master.admin().await;
    let api = Api::of(&master).await;
    assert_eq!(
        api.token.as_deref(),
        Some(TOKEN),
        "the printed line carries the token"
    );
    let _w = Worker::start(dir.path(), &master.url(), "web-1", &[]);
    wait_state(&mut admin, "web-1", pb::WorkerState::Active, T).await;

    let (status, kind, body) = api
        .without_token()
        .call(Method::GET, "/healthz", None)
        .await;
    assert_eq!(
        (status, body.as_slice()),
        (StatusCode::OK, &b"ok\n"[..]),
        "{kind}"
    );
    let (status, kind, body) = api.without_token().call(Method::GET, "/", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(kind.starts_with("text/html"));
    assert!(String::from_utf8_lossy(&body).contains("/app.js"));
    let (status, _, body) = api
        .without_token()
        .call(Method::GET, "/metrics", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(String::from_utf8_lossy(&body).contains("herd_workers"));

    let page = api.get("/api/v1/workers").await;
    assert_eq!(page["workers"][0]["name"], "web-1");
    assert_eq!(page["workers"][0]["status"], "Active");
    assert_eq!(page["next_page_token"], "");
    let one = api.get("/api/v1/workers/web-1").await;
    let id = one["id"].as_str().unwrap().to_string();
    assert_eq!(
        api.get(&format!("/api/v1/workers/{id}")).await["name"],
        "web-1"
    );

    let (status, task) = api
        .json(
            Method::POST,
            "/api/v1/tasks",
            Some(json!({"command": "echo from http", "cpu": 0.25})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{task}");
    let tid = task["id"].as_str().unwrap().to_string();
    assert_eq!(task["cpu"], 0.25);
    wait_task(&mut admin, &tid, pb::TaskState::Succeeded, T).await;
    let task = api.get(&format!("/api/v1/tasks/{tid}")).await;
    assert_eq!(task["state"], "succeeded");
    assert_eq!(task["worker_name"], "web-1");
    assert_eq!(task["history"][0]["outcome"], "succeeded");
    let (status, kind, body) = api
        .call(Method::GET, &format!("/api/v1/tasks/{tid}/logs"), None)
        .await;
    assert_eq!(
        (status, body.as_slice()),
        (StatusCode::OK, &b"from http\n"[..])
    );
    assert!(kind.starts_with("text/plain"));
    let (_, _, body) = api
        .call(
            Method::GET,
            &format!("/api/v1/tasks/{tid}/logs?offset=5&length=4"),
            None,
        )
        .await;
    assert_eq!(body, b"http");
    let list = api.get("/api/v1/tasks?state=succeeded").await;
    assert_eq!(list["tasks"][0]["id"], tid.as_str());
    assert!(
        api.get("/api/v1/tasks?state=queued").await["tasks"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    // Cancel a running task.
    let (_, long) = api
        .json(
            Method::POST,
            "/api/v1/tasks",
            Some(json!({"command": "sleep 60"})),
        )
        .await;
    let lid = long["id"].as_str().unwrap().to_string();
    wait_task(&mut admin, &lid, pb::TaskState::Running, T).await;
    let (status, cancelled) = api
        .json(Method::POST, &format!("/api/v1/tasks/{lid}/cancel"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{cancelled}");
    wait_task(&mut admin, &lid, pb::TaskState::Cancelled, T).await;
    let (status, err) = api
        .json(Method::POST, &format!("/api/v1/tasks/{lid}/cancel"), None)
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{err}");
    assert_eq!(err["code"], "FAILED_PRECONDITION");

    // Drain and undrain.
    let (status, drained) = api
        .json(Method::POST, "/api/v1/workers/web-1/drain", None)
        .await;
    assert_eq!(
        (status, drained["status"].as_str()),
        (StatusCode::OK, Some("Draining"))
    );
    let (_, back) = api
        .json(Method::DELETE, "/api/v1/workers/web-1/drain", None)
        .await;
    assert_eq!(back["status"], "Active");

    // Scheduler and status.
    assert_eq!(
        api.get("/api/v1/scheduler").await["scheduler"],
        "resource-aware"
    );
    let (status, now) = api
        .json(
            Method::PUT,
            "/api/v1/scheduler",
            Some(json!({"scheduler": "round-robin"})),
        )
        .await;
    assert_eq!(
        (status, now["scheduler"].as_str()),
        (StatusCode::OK, Some("round-robin"))
    );
    let status = api.get("/api/v1/status").await;
    assert_eq!(status["workers"]["Active"], 1);
    assert_eq!(status["tasks"]["succeeded"], 1);
    assert_eq!(status["scheduler"], "round-robin");
    let history = api.get("/api/v1/history").await;
    assert_eq!(history["interval_ms"], 10_000);

    // The OpenAPI document is served and names every path.
    let doc = api.without_token().get("/api/v1/openapi.json").await;
    for path in [
        "/api/v1/workers",
        "/api/v1/tasks/{id}/logs",
        "/api/v1/events",
        "/api/v1/scheduler",
    ] {
        assert!(
            doc["paths"].get(path).is_some(),
            "{path} missing from the OpenAPI document"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_without_the_token_or_with_bad_input_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let master = http_master(dir.path());
    let mut admin = master.admin().await;
    let api = Api::of(&master).await;
    let bare = api.without_token();
    for (method, path) in [
        (Method::GET, "/api/v1/workers"),
        (Method::GET, "/api/v1/status"),
        (Method::POST, "/api/v1/tasks"),
        (Method::GET, "/api/v1/events"),
    ] {
        let (status, body) = bare
            .json(method, path, Some(json!({"command": "true"})))
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(body["code"], "UNAUTHENTICATED");
        assert!(body["error"].as_str().unwrap().contains("Bearer"), "{body}");
    }
    let wrong = Api {
        addr: api.addr,
        token: Some("not-the-token".into()),
    };
    assert_eq!(
        wrong.json(Method::GET, "/api/v1/workers", None).await.0,
        StatusCode::UNAUTHORIZED
    );

    for body in [
        json!({"command": "true", "cpu": -1}),
        json!({"cpu": 1}),
        json!({"command": "true", "bogus": 1}),
        json!({"command": 5}),
    ] {
        let (status, err) = api
            .json(Method::POST, "/api/v1/tasks", Some(body.clone()))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {err}");
        assert_eq!(err["code"], "INVALID_ARGUMENT");
    }
    let (status, _, _) = api
        .call(Method::POST, "/api/v1/tasks", Some("{not json"))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, err) = api
        .json(Method::GET, "/api/v1/tasks?state=lost", None)
        .await;
    assert_eq!(
        (status, err["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("INVALID_ARGUMENT"))
    );
    let (status, _) = api
        .json(Method::GET, "/api/v1/tasks?page_size=x", None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, err) = api
        .json(
            Method::PUT,
            "/api/v1/scheduler",
            Some(json!({"scheduler": "fastest"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
    let (status, err) = api.json(Method::GET, "/api/v1/workers/nobody", None).await;
    assert_eq!(
        (status, err["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("NOT_FOUND"))
    );
    let (status, _) = api.json(Method::GET, "/api/v1/tasks/t-999", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = api.json(Method::GET, "/api/v1/nothing-here", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Nothing was stored.
    assert_eq!(db_tasks(&master.db()), 0);
    assert!(all_tasks(&mut admin).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_come_in_pages() {
    let dir = tempfile::tempdir().unwrap();
    let master = http_master(dir.path());
    let mut admin = master.admin().await;
    let api = Api::of(&master).await;
    for _ in 0..25 {
        submit(&mut admin, "true", 64.0).await;
    }
    let mut ids = Vec::new();
    let mut token = String::new();
    loop {
        let page = api
            .get(&format!("/api/v1/tasks?page_size=10&page_token={token}"))
            .await;
        let tasks = page["tasks"].as_array().unwrap();
        assert!(tasks.len() <= 10);
        ids.extend(tasks.iter().map(|t| t["id"].as_str().unwrap().to_string()));
        token = page["next_page_token"].as_str().unwrap().to_string();
        if token.is_empty() {
            break;
        }
    }
    let expected: Vec<String> = (1..=25).rev().map(|n| format!("t-{n}")).collect();
    assert_eq!(ids, expected, "newest first, each once");
}

fn data(event: &common::http::Event) -> Value {
    serde_json::from_str(&event.data).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_stream_shows_every_change_and_resumes_with_last_event_id() {
    let dir = tempfile::tempdir().unwrap();
    let master = http_master(dir.path());
    let mut admin = master.admin().await;
    let api = Api::of(&master).await;
    let mut events = api.events("/api/v1/events", None).await;

    let mut w = Worker::start(dir.path(), &master.url(), "evented", &[]);
    let active = events
        .until(T, |e| e.kind == "worker" && data(e)["status"] == "Active")
        .await;
    assert_eq!(data(&active)["name"], "evented");
    let t = submit(&mut admin, "true", 0.5).await;
    let done = events
        .until(T, |e| e.kind == "task" && data(e)["state"] == "succeeded")
        .await;
    assert_eq!(data(&done)["id"], t.id.as_str());
    let last: u64 = done.id.clone().unwrap().parse().unwrap();

    // kill -9: Inactive comes as an event at once.
    w.kill9();
    let inactive = events
        .until(Duration::from_secs(2), |e| {
            e.kind == "worker" && data(e)["status"] == "Inactive"
        })
        .await;
    let inactive_id: u64 = inactive.id.unwrap().parse().unwrap();
    assert!(inactive_id > last);

    // A client that saw `last` and reconnects gets what came after it, in order.
    let mut resumed = api
        .events(&format!("/api/v1/events?token={TOKEN}"), Some(last))
        .await;
    let mut ids = Vec::new();
    let again = loop {
        let e = tokio::time::timeout(T, resumed.next())
            .await
            .unwrap()
            .unwrap();
        ids.push(e.id.as_deref().unwrap().parse::<u64>().unwrap());
        if *ids.last().unwrap() == inactive_id {
            break e;
        }
    };
    let expected: Vec<u64> = (last + 1..=inactive_id).collect();
    assert_eq!(ids, expected, "everything after Last-Event-ID, in order");
    assert_eq!(data(&again)["status"], "Inactive");
    // A list says which event it is as of; a stream opened from there replays nothing
    // the list already had, and gets what comes next.
    let as_of = api.listed_event_id().await;
    assert_eq!(as_of, inactive_id, "nothing happened since");
    let mut from_list = api
        .events(&format!("/api/v1/events?last_event_id={as_of}"), None)
        .await;
    let t2 = submit(&mut admin, "true", 0.5).await;
    let next = from_list.next().await.unwrap();
    assert_eq!(
        next.id.as_deref().unwrap().parse::<u64>().unwrap(),
        as_of + 1
    );
    assert_eq!(data(&next)["id"], t2.id.as_str());
    // The token may also come in the query (EventSource cannot set headers).
    let mut by_query = api
        .without_token()
        .events(&format!("/api/v1/events?token={TOKEN}"), Some(0))
        .await;
    assert!(by_query.next().await.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followed_logs_stream_as_server_sent_events_until_the_task_ends() {
    let dir = tempfile::tempdir().unwrap();
    let master = http_master(dir.path());
    let mut admin = master.admin().await;
    let api = Api::of(&master).await;
    let _w = Worker::start(dir.path(), &master.url(), "talker", &[]);
    wait_state(&mut admin, "talker", pb::WorkerState::Active, T).await;
    let t = submit(&mut admin, "echo one; sleep 1; echo two", 0.5).await;
    wait_task(&mut admin, &t.id, pb::TaskState::Running, T).await;
    let mut stream = api
        .events(
            &format!("/api/v1/tasks/{}/logs?follow=true&offset=0", t.id),
            None,
        )
        .await;
    let mut text = String::new();
    loop {
        let event = tokio::time::timeout(T, stream.next())
            .await
            .unwrap()
            .unwrap();
        match event.kind.as_str() {
            "output" => text.push_str(&event.data),
            "end" => break,
            other => panic!("unexpected event {other}: {}", event.data),
        }
    }
    assert_eq!(text.replace('\n', ""), "onetwo");
}

/// A client further behind than the events the master keeps is told so (`resync`, then
/// the end of the stream) instead of getting the kept ones with a silent gap before them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_behind_what_is_kept_is_told_to_resync_not_skipped_in_silence() {
    let dir = tempfile::tempdir().unwrap();
    let master = http_master(dir.path());
    let registry = master.registry().await;
    let api = Api::of(&master).await;
    let before = api.listed_event_id().await;
    // One event per registration, past what is kept (10,000).
    let mut jobs = Vec::new();
    for part in 0..8 {
        let mut registry = registry.clone();
        jobs.push(tokio::spawn(async move {
            for i in (part..10_050).step_by(8) {
                registry
                    .register(pb::RegisterRequest {
                        worker: Some(description(&format!("many-{i:05}"))),
                        ..Default::default()
                    })
                    .await
                    .unwrap();
            }
        }));
    }
    for job in jobs {
        job.await.unwrap();
    }
    let mut behind = api
        .events(&format!("/api/v1/events?last_event_id={before}"), None)
        .await;
    let first = tokio::time::timeout(T, behind.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.kind, "resync", "{first:?}");
    assert!(data(&first)["reason"].as_str().unwrap().contains("list"));
    assert!(
        tokio::time::timeout(T, behind.next())
            .await
            .unwrap()
            .is_none(),
        "the stream ends"
    );
    // From a recent id it streams as usual.
    let now = api.listed_event_id().await;
    let mut recent = api
        .events(&format!("/api/v1/events?last_event_id={}", now - 5), None)
        .await;
    let e = tokio::time::timeout(T, recent.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(e.kind, "worker");
}

/// The OpenAPI document says exactly what the server accepts (issue 24 C, found by
/// schemathesis): what it allows is taken, what it forbids is refused, and cancel is a
/// POST that keeps the task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_takes_what_its_document_allows_and_refuses_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let master = http_master(dir.path());
    let api = Api::of(&master).await;
    let doc = api.get("/api/v1/openapi.json").await;
    let submit = &doc["components"]["schemas"]["SubmitBody"]["allOf"][0]["properties"];
    assert_eq!(
        submit["env"]["propertyNames"]["pattern"],
        "^[A-Za-z_][A-Za-z0-9_]*$"
    );
    assert_eq!(submit["retries"]["maximum"], 100);

    // Whole numbers written as JSON floats are integers, as JSON Schema says.
    let (status, task) = api
        .json(
            Method::POST,
            "/api/v1/tasks",
            Some(
                json!({"command": "true", "retries": 2.0, "priority": -3.0, "timeout_ms": 5000.0}),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{task}");
    assert_eq!(
        (task["retries"].as_u64(), task["priority"].as_i64()),
        (Some(2), Some(-3))
    );
    let id = task["id"].as_str().unwrap().to_string();

    // What the document forbids is refused, saying why.
    for (method, path, body, why) in [
        (
            Method::POST,
            "/api/v1/tasks",
            json!({"command": "true", "env": {"": "x"}}),
            "--env name",
        ),
        (
            Method::POST,
            "/api/v1/tasks",
            json!({"command": "true", "retries": 2.5}),
            "whole number",
        ),
        (
            Method::POST,
            "/api/v1/tasks",
            json!({"command": "true", "constraints": ["a b=c"]}),
            "constraint",
        ),
        (
            Method::POST,
            "/api/v1/tasks/batch",
            json!({"tasks": [{"command": "true"}], "count": 0}),
            "at least 1",
        ),
        (
            Method::POST,
            "/api/v1/workers",
            json!({"name": "w", "labels": {"": "x"}}),
            "empty key",
        ),
        (
            Method::POST,
            "/api/v1/workers",
            json!({"name": "w", "labels": {"a b": "x"}}),
            "label key",
        ),
        (
            Method::GET,
            "/api/v1/audit?page_token=00000000000000000000001",
            Value::Null,
            "page_token",
        ),
        (
            Method::GET,
            "/api/v1/tasks?page_token=%2B5",
            Value::Null,
            "page_token",
        ),
    ] {
        let body = (!body.is_null()).then_some(body);
        let (status, err) = api.json(method, path, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {err}");
        assert!(
            err["error"].as_str().unwrap().contains(why),
            "{path}: {err}"
        );
    }
    let response = api
        .send(
            Method::GET,
            "/api/v1/events",
            None,
            &[("last-event-id", "soon")],
        )
        .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    // A name the master keeps for itself is taken, like one another token has.
    let (status, err) = api
        .json(
            Method::POST,
            "/api/v1/tokens",
            Some(json!({"name": "admin", "role": "viewer"})),
        )
        .await;
    assert_eq!(
        (status, err["code"].as_str()),
        (StatusCode::CONFLICT, Some("ALREADY_EXISTS"))
    );

    // Cancel is not delete: the task is kept, cancelled; DELETE is no longer a way in.
    let (status, _, _) = api
        .call(Method::DELETE, &format!("/api/v1/tasks/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    let (status, cancelled) = api
        .json(Method::POST, &format!("/api/v1/tasks/{id}/cancel"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{cancelled}");
    assert_eq!(
        api.get(&format!("/api/v1/tasks/{id}")).await["state"],
        "cancelled"
    );
}
