//! End to end: the operator surface (herdctl, --json, drain, status, health, reflection,
//! metrics) and security (cluster token, TLS, hostile input).

use herd_testkit as common;

use std::io::{Read, Write};
use std::time::Duration;

use common::*;
use herd::auth::Bearer;
use herd::pb;
use serde_json::Value;
use tonic::Code;
use tonic::transport::Channel;

const T: Duration = Duration::from_secs(30);

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn herdctl_speaks_the_grammar_in_tables_and_in_json() {
    let dir = tempfile::tempdir().unwrap();
    let master = InProcess::start(dir.path(), FAST);
    let mut admin = master.admin().await;
    let _w = Worker::start(
        dir.path(),
        &master.url(),
        "ctl-a",
        &["--cpu", "4", "--label", "zone=a"],
    );
    let w = wait_state(&mut admin, "ctl-a", pb::WorkerState::Active, T).await;
    let url = master.url();

    let (ok, out, _) = herdctl(&url, &["workers"]);
    assert!(ok);
    assert!(
        out.starts_with("NAME") && out.contains("ctl-a") && out.contains("Active"),
        "{out}"
    );
    let (ok, out, _) = herdctl(&url, &["--json", "workers"]);
    assert!(ok);
    let list = json(&out);
    assert_eq!(list[0]["name"], "ctl-a");
    assert_eq!(list[0]["id"], w.id.as_str());
    assert_eq!(list[0]["status"], "Active");
    assert_eq!(list[0]["cpu"]["total"], 4.0);
    assert_eq!(list[0]["labels"]["zone"], "a");
    let (ok, out, _) = herdctl(&url, &["--json", "worker", "ctl-a"]);
    assert!(ok);
    assert_eq!(json(&out)["id"], w.id.as_str());

    let (ok, out, _) = herdctl(
        &url,
        &[
            "--json",
            "task",
            "submit",
            "--command",
            "echo json",
            "--cpu",
            "0.5",
        ],
    );
    assert!(ok, "{out}");
    let submitted = json(&out);
    let id = submitted["id"].as_str().unwrap().to_string();
    wait_task(&mut admin, &id, pb::TaskState::Succeeded, T).await;
    let (ok, out, _) = herdctl(&url, &["--json", "task", "status", &id]);
    assert!(ok);
    let status = json(&out);
    assert_eq!(status["state"], "succeeded");
    assert_eq!(status["exit_code"], 0);
    assert_eq!(status["worker_name"], "ctl-a");
    assert_eq!(status["cpu"], 0.5);
    let (ok, out, _) = herdctl(&url, &["--json", "tasks", "--state", "succeeded"]);
    assert!(ok);
    assert_eq!(json(&out)[0]["id"], id.as_str());
    let (ok, out, _) = herdctl(&url, &["--json", "task", "logs", &id]);
    assert!(ok);
    assert_eq!(json(&out)["output"], "json\n");
    let (ok, out, _) = herdctl(&url, &["--json", "status"]);
    assert!(ok);
    let summary = json(&out);
    assert_eq!(summary["workers"]["Active"], 1);
    assert_eq!(summary["tasks"]["succeeded"], 1);
    assert_eq!(summary["queue_length"], 0);

    // Errors: non-zero exit, one line on stderr.
    for args in [
        &["worker", "ghost"][..],
        &["bogus"][..],
        &["task", "status", "t-999"][..],
    ] {
        let (ok, out, err) = herdctl(&url, args);
        assert!(!ok, "{args:?}: {out}");
        assert!(err.starts_with("herdctl: error"), "{args:?}: {err}");
    }
    let (ok, _, err) = herdctl("http://127.0.0.1:1", &["workers"]);
    assert!(!ok && err.contains("cannot reach the master"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_without_the_right_token_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let master = Master::start(dir.path(), FAST);
    let mut admin = master.admin().await;

    // Workers with a wrong or no token never appear.
    let wrong_log = dir.path().join("wrong.log");
    let mut wrong = std::process::Command::new(WORKER)
        .args([
            "--master",
            &master.url(),
            "--name",
            "intruder",
            "--runtime",
            "none",
        ])
        .arg("--work-dir")
        .arg(dir.path().join("work-intruder"))
        .env("HERD_TOKEN", "not-the-token")
        .stderr(std::fs::File::create(&wrong_log).unwrap())
        .spawn()
        .unwrap();
    let mut missing = std::process::Command::new(WORKER)
        .args([
            "--master",
            &master.url(),
            "--name",
            "stranger",
            "--runtime",
            "none",
        ])
        .arg("--work-dir")
        .arg(dir.path().join("work-stranger"))
        .env_remove("HERD_TOKEN")
        .env("HERD_DATA_DIR", dir.path().join("nowhere"))
        .current_dir(dir.path())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Deadline::new(T, "both are refused and the worker says why");
    while master
        .log_text()
        .matches("refused a call without a valid token")
        .count()
        < 2
        || !std::fs::read_to_string(&wrong_log)
            .unwrap_or_default()
            .contains("wrong token")
    {
        deadline.wait().await;
    }
    assert!(workers(&mut admin).await.is_empty());
    assert_eq!(db_count(&master.db()), 0);
    for child in [&mut wrong, &mut missing] {
        let _ = child.kill();
        let _ = child.wait();
    }
    assert!(
        master.log_text().contains("peer=127.0.0.1:"),
        "the refusal names the peer"
    );
    // Logs speak to people, not in Rust's debug notation.
    let log = master.log_text();
    assert!(!log.contains("=Some(") && !log.contains("=None"), "{log}");

    // The same from herdctl and a raw client.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_herdctl"))
        .args(["--master", &master.url(), "--token", "nope", "workers"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("refused"));
    let channel = Channel::from_shared(master.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut bare = pb::registry_client::RegistryClient::new(channel);
    let status = bare
        .register(pb::RegisterRequest {
            worker: Some(description("sneaky")),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(workers(&mut admin).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_is_made_once_and_found_on_the_masters_machine() {
    let dir = tempfile::tempdir().unwrap();
    // No --data-dir: the per-user state folder, whatever folder a program starts in.
    let state = dir.path().join("state");
    let data = state.join("herd");
    let (here, there) = (dir.path().join("here"), dir.path().join("there"));
    std::fs::create_dir_all(&here).unwrap();
    std::fs::create_dir_all(&there).unwrap();
    let port = free_port();
    // No HERD_TOKEN: the master makes one.
    let mut master = std::process::Command::new(MASTER)
        .env("HERD_HTTP_LISTEN", "off")
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--no-repl",
            "--local-worker",
        ])
        .args(FAST)
        .current_dir(&here)
        .env_remove("HERD_TOKEN")
        .env_remove("HERD_DATA_DIR")
        .env("XDG_STATE_HOME", &state)
        .env("HERD_WORKER_NAME", "found-it")
        .env("HERD_RUNTIME", "none")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let token_file = data.join("token");
    let deadline = Deadline::new(T, "the token file appears");
    while !token_file.exists() {
        deadline.wait().await;
    }
    let mode = std::fs::metadata(&token_file).unwrap().permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );
    let token = std::fs::read_to_string(&token_file)
        .unwrap()
        .trim()
        .to_string();
    assert_eq!(token.len(), 64);

    // herdctl on the master's machine finds it by itself, from any folder; so did
    // --local-worker. A URL without a scheme means http://.
    let url = format!("127.0.0.1:{port}");
    let deadline = Deadline::new(T, "the local worker is Active");
    loop {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_herdctl"))
            .args(["--master", &url, "workers", "--json"])
            .current_dir(&there)
            .env_remove("HERD_TOKEN")
            .env_remove("HERD_DATA_DIR")
            .env("XDG_STATE_HOME", &state)
            .output()
            .unwrap();
        if out.status.success() {
            let list = json(&String::from_utf8_lossy(&out.stdout));
            if list[0]["status"] == "Active" {
                assert_eq!(list[0]["name"], "found-it");
                break;
            }
        }
        deadline.wait().await;
    }
    // And the token stays the same across restarts.
    unsafe { libc::kill(master.id() as i32, libc::SIGTERM) };
    master.wait().unwrap();
    let mut err = String::new();
    master
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(err.contains("generated the admin token"), "{err}");
    assert!(err.contains("generated the join token"), "{err}");
    let join = std::fs::read_to_string(data.join("join-token")).unwrap();
    assert_eq!(join.trim().len(), 64);
    assert_ne!(
        join.trim(),
        token,
        "the local worker holds only the join token"
    );
    assert!(
        err.contains(&data.display().to_string()),
        "the data dir is printed: {err}"
    );
    assert!(!here.join("herd-data").exists() && !there.join("herd-data").exists());
    let (again, made) = herd::auth::master_token(None, &data).unwrap();
    assert_eq!((again, made), (token, false));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insecure_masters_say_so_and_take_calls_without_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let master = Master::start(dir.path(), &[FAST, &["--insecure"]].concat());
    master.admin().await;
    let channel = Channel::from_shared(master.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut bare = pb::admin_client::AdminClient::new(channel);
    bare.list_workers(pb::ListWorkersRequest::default())
        .await
        .unwrap();
    assert!(
        master
            .log_text()
            .contains("--insecure: calls need no token")
    );
    assert!(!master.data_dir.join("token").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_works_with_the_ca_and_plain_text_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let port = free_port();
    let master = Master::start_with_env(
        dir.path(),
        &dir.path().join("data"),
        port,
        &[
            FAST,
            &[
                "--local-worker",
                "--tls-cert",
                cert_path.to_str().unwrap(),
                "--tls-key",
                key_path.to_str().unwrap(),
            ],
        ]
        .concat(),
        &[("HERD_WORKER_NAME", "local-tls"), ("HERD_RUNTIME", "none")],
    );
    let url = format!("https://localhost:{port}");
    let ca = cert_path.to_str().unwrap();
    let _w = Worker::start(dir.path(), &url, "secure", &["--ca", ca]);
    let deadline = Deadline::new(T, "the TLS worker is Active");
    loop {
        let (ok, out, _) = herdctl(&url, &["--ca", ca, "--json", "workers"]);
        // The remote worker and the master's own local worker, both over TLS.
        if ok
            && json(&out)
                .as_array()
                .is_some_and(|list| list.len() == 2 && list.iter().all(|w| w["status"] == "Active"))
        {
            break;
        }
        deadline.wait().await;
    }

    // Plain text to a TLS port: refused.
    let (ok, _, err) = herdctl(&master.url(), &["workers"]);
    assert!(!ok, "plain text was answered");
    assert!(err.contains("error"), "{err}");
    // An https URL without --ca: a clear message, not a hang.
    let (ok, _, err) = herdctl(&url, &["workers"]);
    assert!(!ok && err.contains("--ca"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_keeps_new_tasks_away_and_holds_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let data = dir.path().join("data");
    let mut master = Master::start_on(dir.path(), &data, port, FAST);
    let mut admin = master.admin().await;
    let _w = Worker::start(dir.path(), &master.url(), "tired", &[]);
    wait_state(&mut admin, "tired", pb::WorkerState::Active, T).await;
    let running = submit(&mut admin, "sleep 2", 0.5).await;
    wait_task(&mut admin, &running.id, pb::TaskState::Running, T).await;

    let (ok, out, _) = herdctl(&master.url(), &["drain", "tired"]);
    assert!(ok && out.contains("draining"), "{out}");
    let (_, out, _) = herdctl(&master.url(), &["workers"]);
    assert!(out.contains("Draining"), "{out}");
    let waiting = submit(&mut admin, "echo later", 0.5).await;
    assert_eq!(waiting.state(), pb::TaskState::Queued);
    // What runs, finishes.
    wait_task(&mut admin, &running.id, pb::TaskState::Succeeded, T).await;
    assert_eq!(
        task(&mut admin, &waiting.id).await.state(),
        pb::TaskState::Queued
    );

    master.kill9();
    let master = Master::start_on(dir.path(), &data, port, FAST);
    let mut admin = master.admin().await;
    let w = wait_state(&mut admin, "tired", pb::WorkerState::Draining, T).await;
    assert_eq!(w.description.unwrap().name, "tired");
    assert_eq!(
        task(&mut admin, &waiting.id).await.state(),
        pb::TaskState::Queued
    );

    let (ok, _, _) = herdctl(&master.url(), &["undrain", "tired"]);
    assert!(ok);
    wait_task(&mut admin, &waiting.id, pb::TaskState::Succeeded, T).await;
    let (ok, _, err) = herdctl(&master.url(), &["drain", "nobody"]);
    assert!(!ok && err.contains("no worker"), "{err}");
}

fn scrape(addr: &str) -> Vec<(String, f64)> {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    assert!(
        head.to_lowercase().contains("content-type: text/plain"),
        "{head}"
    );
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (name, value) = l.rsplit_once(' ').unwrap_or_else(|| panic!("bad line {l}"));
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad value in {l}"));
            (name.to_string(), value)
        })
        .collect()
}

fn metric(samples: &[(String, f64)], name: &str) -> f64 {
    samples
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no {name} in {samples:?}"))
        .1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reflection_and_metrics_answer() {
    let dir = tempfile::tempdir().unwrap();
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let master = InProcess::start(
        dir.path(),
        &[FAST, &["--metrics-listen", &metrics_addr]].concat(),
    );
    let mut admin = master.admin().await;

    // Health and reflection need no token, like grpc_health_probe and grpcurl expect.
    let channel = Channel::from_shared(master.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    for service in ["", "herd.v1.Registry", "herd.v1.Admin"] {
        let status = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status();
        assert_eq!(
            status,
            tonic_health::pb::health_check_response::ServingStatus::Serving
        );
    }
    use tonic_reflection::pb::v1 as reflection;
    let mut reflect = reflection::server_reflection_client::ServerReflectionClient::new(channel);
    let request = reflection::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            reflection::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    let mut replies = reflect
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    let reply = replies.message().await.unwrap().unwrap();
    let Some(reflection::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        reply.message_response
    else {
        panic!("unexpected {reply:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains(&"herd.v1.Registry".to_string()), "{names:?}");
    assert!(names.contains(&"herd.v1.Admin".to_string()), "{names:?}");

    let before = scrape(&metrics_addr);
    let _w = Worker::start(dir.path(), &master.url(), "measured", &[]);
    wait_state(&mut admin, "measured", pb::WorkerState::Active, T).await;
    let t = submit(&mut admin, "true", 0.5).await;
    wait_task(&mut admin, &t.id, pb::TaskState::Succeeded, T).await;
    let deadline = Deadline::new(T, "heartbeats and flushes are counted");
    let after = loop {
        let after = scrape(&metrics_addr);
        if metric(&after, "herd_heartbeats_received_total") >= 3.0
            && metric(&after, "herd_store_liveness_commit_seconds_count") >= 1.0
        {
            break after;
        }
        deadline.wait().await;
    };
    assert!(
        metric(&after, "herd_heartbeats_received_total")
            > metric(&before, "herd_heartbeats_received_total")
    );
    assert_eq!(metric(&after, "herd_workers{state=\"Active\"}"), 1.0);
    assert_eq!(metric(&after, "herd_tasks{state=\"succeeded\"}"), 1.0);
    assert_eq!(metric(&after, "herd_queue_length"), 0.0);
    assert!(metric(&after, "herd_scheduling_pass_seconds_count") >= 1.0);
}

#[test]
fn the_bearer_helper_refuses_tokens_a_header_cannot_carry() {
    assert!(Bearer::new(Some("bad\ntoken")).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_with_a_wrong_token_exits_at_once_saying_where_the_right_one_is() {
    let dir = tempfile::tempdir().unwrap();
    let master = Master::start(dir.path(), FAST);
    master.admin().await;
    let started = std::time::Instant::now();
    let out = std::process::Command::new(WORKER)
        .args([
            "--master",
            &master.addr.to_string(),
            "--name",
            "wrong-token",
        ])
        .args(["--runtime", "none", "--work-dir"])
        .arg(dir.path().join("work"))
        .env("HERD_TOKEN", "not-the-cluster-token")
        .output()
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refused this worker's token"), "{err}");
    assert!(err.contains("<data-dir>/join-token"), "{err}");
    assert!(
        master
            .log_text()
            .contains("refused a call without a valid token")
    );
}
