//! End to end: how workers prove who they are (issue 13). The join token lets workers in
//! and nothing else; each worker's secret keeps its name its own; `worker add --secret`
//! provisions a machine; mTLS ties a worker's certificate to its name; an old data dir
//! keeps working. Real processes on 127.0.0.1.

use herd_testkit as common;

use std::path::Path;
use std::process::{Command, Stdio};
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

/// Runs a herd-worker to its end (it is expected to be refused): (success, stderr).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joined_worker_is_active_and_the_join_token_is_refused_on_every_admin_call() {
    let dir = tempfile::tempdir().unwrap();
    let master = InProcess::start(
        dir.path(),
        &[FAST, &["--http-listen", "127.0.0.1:0"]].concat(),
    );
    let mut admin = master.admin().await;
    let _w = Worker::start(dir.path(), &master.url(), "joined", &[]);
    let info = wait_state(&mut admin, "joined", pb::WorkerState::Active, T).await;
    // Its secret is kept in its work dir, readable by it alone.
    let secret = dir.path().join("work-joined/worker-secret");
    let mode = std::fs::metadata(&secret).unwrap().permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );
    let kept: Vec<u8> = master
        .db()
        .query_row(
            "SELECT secret_hash FROM workers WHERE id = ?1",
            [&info.id],
            |r| r.get(0),
        )
        .unwrap();
    let text = std::fs::read_to_string(&secret).unwrap();
    let plain = text.lines().nth(1).unwrap();
    assert_eq!(kept.len(), 32, "the master keeps a SHA-256 hash");
    assert_ne!(kept, plain.as_bytes(), "not the secret itself");

    let mut joiner = admin_with(&master.url(), JOIN_TOKEN).await;
    let task_id = "t-1".to_string();
    let mut refusals: Vec<(&str, tonic::Status)> = Vec::new();
    macro_rules! refused {
        ($name:expr, $call:expr) => {
            refusals.push(($name, $call.await.map(|_| ()).unwrap_err()));
        };
    }
    refused!(
        "ListWorkers",
        joiner.list_workers(pb::ListWorkersRequest::default())
    );
    refused!(
        "GetWorker",
        joiner.get_worker(pb::GetWorkerRequest {
            worker: "joined".into()
        })
    );
    refused!(
        "SubmitTask",
        joiner.submit_task(pb::SubmitTaskRequest {
            spec: Some(pb::TaskSpec {
                command: "touch /tmp/never".into(),
                ..Default::default()
            }),
        })
    );
    refused!(
        "SubmitTasks",
        joiner.submit_tasks(pb::SubmitTasksRequest {
            specs: vec![pb::TaskSpec {
                command: "touch /tmp/never".into(),
                ..Default::default()
            }],
            count: 0,
        })
    );
    refused!(
        "ListTasks",
        joiner.list_tasks(pb::ListTasksRequest::default())
    );
    refused!(
        "GetTask",
        joiner.get_task(pb::GetTaskRequest {
            task_id: task_id.clone()
        })
    );
    refused!(
        "CancelTask",
        joiner.cancel_task(pb::CancelTaskRequest {
            task_id: task_id.clone()
        })
    );
    refused!(
        "TaskLogs",
        joiner.task_logs(pb::TaskLogsRequest {
            task_id: task_id.clone(),
            ..Default::default()
        })
    );
    refused!(
        "Scheduler",
        joiner.scheduler(pb::SchedulerRequest {
            name: "round-robin".into()
        })
    );
    refused!(
        "Drain",
        joiner.drain(pb::DrainRequest {
            worker: "joined".into(),
            drain: true
        })
    );
    refused!(
        "ForgetWorker",
        joiner.forget_worker(pb::ForgetWorkerRequest {
            worker: "joined".into()
        })
    );
    refused!(
        "AddWorker",
        joiner.add_worker(pb::AddWorkerRequest {
            name: "sleeper".into(),
            ..Default::default()
        })
    );
    refused!(
        "IssueWorkerSecret",
        joiner.issue_worker_secret(pb::IssueWorkerSecretRequest {
            worker: "joined".into()
        })
    );
    refused!("Summary", joiner.summary(pb::SummaryRequest {}));
    refused!(
        "CreateToken",
        joiner.create_token(pb::CreateTokenRequest {
            name: "sneaky".into(),
            role: "admin".into()
        })
    );
    refused!(
        "ListTokens",
        joiner.list_tokens(pb::ListTokensRequest::default())
    );
    refused!(
        "RevokeToken",
        joiner.revoke_token(pb::RevokeTokenRequest {
            name: "anyone".into()
        })
    );
    refused!(
        "ListAudit",
        joiner.list_audit(pb::ListAuditRequest::default())
    );
    assert_eq!(refusals.len(), 18, "every Admin call");
    for (call, status) in &refusals {
        assert_eq!(status.code(), Code::PermissionDenied, "{call}: {status:?}");
        assert!(
            status.message().contains("join token"),
            "{call} says which kind of token it is: {status:?}"
        );
    }
    // The HTTP API, too.
    let api = Api::of_in_process(&master);
    let joiner_api = Api {
        token: Some(JOIN_TOKEN.into()),
        ..api.clone()
    };
    let (status, body) = joiner_api.json(Method::GET, "/api/v1/workers", None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["code"], "PERMISSION_DENIED");
    assert!(
        body["error"].as_str().unwrap().contains("join token"),
        "{body}"
    );
    let (status, _) = joiner_api
        .json(
            Method::POST,
            "/api/v1/tasks",
            Some(json!({"command": "touch /tmp/never"})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // Nothing changed.
    assert!(all_tasks(&mut admin).await.is_empty());
    assert_eq!(db_tasks(&master.db()), 0);
    let w = worker(&mut admin, "joined").await.unwrap();
    assert_eq!(w.state(), pb::WorkerState::Active);
    let entries = admin
        .list_audit(pb::ListAuditRequest::default())
        .await
        .unwrap()
        .into_inner()
        .entries;
    assert!(entries.is_empty(), "{entries:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_with_the_same_name_is_refused_and_the_first_is_not_disturbed() {
    let dir = tempfile::tempdir().unwrap();
    let master = Master::start(dir.path(), FAST);
    let mut admin = master.admin().await;
    let mut first = Worker::start(dir.path(), &master.url(), "dup", &[]);
    let before = wait_state(&mut admin, "dup", pb::WorkerState::Active, T).await;

    let started = Instant::now();
    let (ok, err) = run_refused_worker(dir.path(), &master.url(), "dup", &[]).await;
    assert!(!ok, "the second process exits non-zero");
    assert!(started.elapsed() < Duration::from_secs(10), "at once");
    assert!(err.contains("worker 'dup'"), "names the worker: {err}");
    assert!(err.contains(&before.id), "{err}");
    assert!(
        err.contains("is connected from 127.0.0.1:"),
        "says where the other one is: {err}"
    );
    assert!(
        err.contains("worker forget dup"),
        "says how to free the name: {err}"
    );

    // The master logged the attempt; the first worker kept its stream and its id.
    let log = master.log_text();
    assert!(log.contains("refused a registration"), "{log}");
    assert!(!log.contains("replaced an open one"), "{log}");
    let deadline = Deadline::new(T, "the first worker heartbeats on");
    loop {
        let w = worker(&mut admin, "dup").await.unwrap();
        assert_eq!(w.id, before.id);
        assert_eq!(w.state(), pb::WorkerState::Active);
        if w.last_sequence > before.last_sequence + 3 {
            break;
        }
        deadline.wait().await;
    }
    assert!(
        !first.log_text().contains("replaced"),
        "{}",
        first.log_text()
    );

    // `worker forget` frees the name: the next one to register it is a new identity.
    first.kill9();
    wait_state(&mut admin, "dup", pb::WorkerState::Inactive, T).await;
    let (ok, out, err) = herdctl(&master.url(), &["worker", "forget", "dup"]);
    assert!(ok, "{err}");
    assert!(out.contains("forgotten"), "{out}");
    let _second = Worker::start_in(dir.path(), &master.url(), "dup", "work-dup-2", &[]);
    let after = wait_state(&mut admin, "dup", pb::WorkerState::Active, T).await;
    assert_ne!(after.id, before.id, "a new identity");
}

/// A CA, and certificates it signs for `names` (PEM files in `dir`): returns the CA's path.
fn issue_certs(dir: &Path, names: &[&str]) -> std::path::PathBuf {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "herd test CA");
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    for name in names {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
    }
    dir.join("ca.pem")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_client_ca_a_worker_needs_a_certificate_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    let ca = issue_certs(&certs, &["localhost", "tls-good", "someone-else"]);
    let file = |name: &str| certs.join(name).to_str().unwrap().to_string();
    let port = free_port();
    let _master = Master::start_on(
        dir.path(),
        &dir.path().join("data"),
        port,
        &[
            FAST,
            &[
                "--tls-cert",
                &file("localhost.pem"),
                "--tls-key",
                &file("localhost.key"),
                "--tls-client-ca",
                ca.to_str().unwrap(),
            ],
        ]
        .concat(),
    );
    let url = format!("https://localhost:{port}");
    let ca = ca.to_str().unwrap();
    let _good = Worker::start(
        dir.path(),
        &url,
        "tls-good",
        &[
            "--ca",
            ca,
            "--client-cert",
            &file("tls-good.pem"),
            "--client-key",
            &file("tls-good.key"),
        ],
    );
    // herdctl needs no client certificate: it carries a token.
    let deadline = Deadline::new(T, "the worker with its certificate is Active");
    loop {
        let (ok, out, _) = herdctl(&url, &["--ca", ca, "--json", "workers"]);
        if ok && parse(&out)[0]["status"] == "Active" {
            assert_eq!(parse(&out)[0]["name"], "tls-good");
            break;
        }
        deadline.wait().await;
    }

    let (ok, err) = run_refused_worker(dir.path(), &url, "tls-none", &["--ca", ca]).await;
    assert!(!ok);
    assert!(err.contains("client certificate"), "{err}");
    let (ok, err) = run_refused_worker(
        dir.path(),
        &url,
        "tls-bad",
        &[
            "--ca",
            ca,
            "--client-cert",
            &file("someone-else.pem"),
            "--client-key",
            &file("someone-else.key"),
        ],
    )
    .await;
    assert!(!ok);
    assert!(err.contains("does not name worker 'tls-bad'"), "{err}");
    let (ok, out, _) = herdctl(&url, &["--ca", ca, "--json", "workers"]);
    assert!(ok);
    assert_eq!(parse(&out).as_array().unwrap().len(), 1, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_data_dir_keeps_working_and_old_workers_are_told_to_switch() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let data = dir.path().join("data");
    // A data dir as the release before identities left it: a token, no join token, and
    // herd.db at schema version 10 (identities are migration 11; 12 to 14 came after),
    // with a worker that has no secret and a task with no submitter.
    let mut master = Master::start_on(dir.path(), &data, port, FAST);
    let mut admin = master.admin().await;
    let mut old = Worker::start(dir.path(), &master.url(), "veteran", &[]);
    let before = wait_state(&mut admin, "veteran", pb::WorkerState::Active, T).await;
    let t = submit(&mut admin, "echo old", 1.0).await;
    wait_task(&mut admin, &t.id, pb::TaskState::Succeeded, T).await;
    old.kill9();
    master.terminate();
    std::fs::remove_file(dir.path().join("work-veteran/worker-secret")).unwrap();
    let db = rusqlite::Connection::open(data.join("herd.db")).unwrap();
    let before_version: i64 = db
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        before_version, 14,
        "this test undoes migrations 14, 13, 12 and 11"
    );
    db.execute_batch(
        "ALTER TABLE tasks DROP COLUMN keep_on_disconnect;
         DROP INDEX tasks_open;
         DROP INDEX tasks_done_by_seq;
         DROP INDEX tasks_done_by_state;
         DROP INDEX tasks_done_by_worker;
         CREATE INDEX tasks_by_state ON tasks(state);
         CREATE INDEX tasks_by_seq ON tasks(seq);
         CREATE INDEX tasks_by_state_seq ON tasks(state, seq);
         CREATE INDEX tasks_by_worker_seq ON tasks(worker_id, seq);
         ALTER TABLE tasks DROP COLUMN submitted_by;
         ALTER TABLE workers DROP COLUMN secret_hash;
         DROP TABLE tokens;
         DROP TABLE audit;
         PRAGMA user_version = 10;",
    )
    .unwrap();
    drop(db);

    // The new master migrates it, without a --join-token: it makes one.
    let master = Master::start_with_env(dir.path(), &data, port, FAST, &[("HERD_JOIN_TOKEN", "")]);
    let mut admin = master.admin().await;
    let join = data.join("join-token");
    let deadline = Deadline::new(T, "the join token is made");
    while !join.exists() {
        deadline.wait().await;
    }
    let version: i64 = master
        .db()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, before_version);
    assert_eq!(task(&mut admin, &t.id).await.submitted_by, "");

    // A worker still holding the old token (the admin token) is accepted, and told.
    let log = dir.path().join("veteran-again.log");
    let mut again = Command::new(WORKER)
        .args([
            "--master",
            &master.url(),
            "--name",
            "veteran",
            "--runtime",
            "none",
        ])
        .arg("--work-dir")
        .arg(dir.path().join("work-veteran"))
        .env("HERD_TOKEN", TOKEN)
        .env("XDG_STATE_HOME", dir.path().join("state"))
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let after = wait_state(&mut admin, "veteran", pb::WorkerState::Active, T).await;
    assert_eq!(after.id, before.id, "it keeps its id");
    let deadline = Deadline::new(T, "both sides say to switch to the join token");
    while !(master
        .log_text()
        .contains("THIS WORKER PRESENTED THE ADMIN TOKEN")
        && std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("join token"))
    {
        deadline.wait().await;
    }
    // It was issued a secret at that registration, so its name is its own from now on.
    assert!(dir.path().join("work-veteran/worker-secret").exists());
    let join_token = std::fs::read_to_string(&join).unwrap().trim().to_string();
    let (ok, err) = run_refused_worker(
        dir.path(),
        &master.url(),
        "veteran",
        &["--token", &join_token],
    )
    .await;
    assert!(!ok && err.contains("already exists"), "{err}");
    let _ = again.kill();
    let _ = again.wait();

    // herdctl with the old token is the admin; the join token from the file joins workers.
    let (ok, _, err) = herdctl(&master.url(), &["token", "list"]);
    assert!(ok, "{err}");
    let mut joined = Command::new(WORKER)
        .args([
            "--master",
            &master.url(),
            "--name",
            "newcomer",
            "--runtime",
            "none",
        ])
        .arg("--work-dir")
        .arg(dir.path().join("work-newcomer"))
        .env("HERD_TOKEN", &join_token)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_state(&mut admin, "newcomer", pb::WorkerState::Active, T).await;
    let _ = joined.kill();
    let _ = joined.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_machine_is_provisioned_with_the_secret_worker_add_prints() {
    let dir = tempfile::tempdir().unwrap();
    let master = InProcess::start(dir.path(), FAST);
    let mut admin = master.admin().await;
    let url = master.url();
    let (ok, out, err) = herdctl(
        &url,
        &["worker", "add", "prov-1", "--label", "rack=7", "--secret"],
    );
    assert!(ok, "{err}");
    let secret = out.lines().next().unwrap().trim().to_string();
    assert_eq!(secret.len(), 64, "{out}");
    assert!(
        out.contains("shown only this once") && out.contains("--worker-secret"),
        "{out}"
    );
    let pending = worker(&mut admin, "prov-1").await.unwrap();
    assert_eq!(pending.state(), pb::WorkerState::Pending);

    // Without the secret, the name is not anyone's to take.
    let (ok, err) = run_refused_worker(dir.path(), &url, "prov-1", &[]).await;
    assert!(!ok && err.contains("pre-registered with a secret"), "{err}");
    let (ok, err) = run_refused_worker(
        dir.path(),
        &url,
        "prov-1",
        &["--worker-secret", "0123456789abcdef"],
    )
    .await;
    assert!(!ok && err.contains("not it"), "{err}");

    // With it, the machine takes the pre-registered id, and keeps the secret itself.
    let _w = Worker::start(dir.path(), &url, "prov-1", &["--worker-secret", &secret]);
    let active = wait_state(&mut admin, "prov-1", pb::WorkerState::Active, T).await;
    assert_eq!(active.id, pending.id);
    let kept = std::fs::read_to_string(dir.path().join("work-prov-1/worker-secret")).unwrap();
    assert!(kept.contains(&secret));

    // A new secret only for a worker that is not Active.
    let (ok, _, err) = herdctl(&url, &["worker", "secret", "prov-1"]);
    assert!(!ok && err.contains("is Active"), "{err}");
    let (_, out, _) = herdctl(&url, &["audit", "--json"]);
    let actions: Vec<String> = parse(&out)
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(actions, ["worker secret", "worker add"], "{out}");
}
