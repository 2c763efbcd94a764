//! End to end: placement constraints on worker labels (built-in and given) and priorities,
//! with real workers.

use herd_testkit as common;

use std::time::Duration;

use common::*;
use herd::pb;

const T: Duration = Duration::from_secs(30);

fn spec(command: &str, cpu: f64, priority: i32, constraints: &[&str]) -> pb::TaskSpec {
    pb::TaskSpec {
        command: command.into(),
        resources: Some(pb::Resources {
            cpu,
            ..Default::default()
        }),
        priority,
        constraints: constraints.iter().map(|c| c.to_string()).collect(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_land_only_where_their_constraints_hold_and_wait_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let master = InProcess::start(dir.path(), FAST);
    let mut admin = master.admin().await;
    let _eu = Worker::start(
        dir.path(),
        &master.url(),
        "eu-1",
        &["--label", "zone=eu", "--cpu", "8"],
    );
    let _us = Worker::start(
        dir.path(),
        &master.url(),
        "us-1",
        &["--label", "zone=us", "--cpu", "8"],
    );
    let eu = wait_state(&mut admin, "eu-1", pb::WorkerState::Active, T).await;
    wait_state(&mut admin, "us-1", pb::WorkerState::Active, T).await;
    let labels = eu.description.unwrap().labels;
    assert_eq!(labels["zone"], "eu");
    assert_eq!(labels["os"], std::env::consts::OS);
    assert_eq!(labels["runtime"], "none");
    assert!(labels.contains_key("arch") && labels.contains_key("hostname"));

    let mut on_eu = Vec::new();
    for _ in 0..4 {
        on_eu.push(
            submit_spec(&mut admin, spec("true", 0.5, 0, &["zone=eu"]))
                .await
                .id,
        );
    }
    let not_eu = submit_spec(&mut admin, spec("true", 0.5, 0, &["zone!=eu", "os"]))
        .await
        .id;
    let nowhere = submit_spec(&mut admin, spec("true", 0.5, 0, &["zone=ap"])).await;
    let apart = submit_spec(&mut admin, spec("true", 0.5, 0, &["zone=eu", "zone!=eu"])).await;
    for id in &on_eu {
        let t = wait_task(&mut admin, id, pb::TaskState::Succeeded, T).await;
        assert_eq!(t.worker_name, "eu-1", "{id}");
    }
    let t = wait_task(&mut admin, &not_eu, pb::TaskState::Succeeded, T).await;
    assert_eq!(t.worker_name, "us-1");
    let nowhere = task(&mut admin, &nowhere.id).await;
    assert_eq!(nowhere.state(), pb::TaskState::Queued);
    assert_eq!(
        nowhere.reason,
        "no Active worker meets the constraint zone=ap"
    );
    let apart = task(&mut admin, &apart.id).await;
    assert_eq!(apart.state(), pb::TaskState::Queued);
    assert!(apart.reason.contains("together"), "{}", apart.reason);

    // Bad constraints and priorities are refused, and nothing is stored.
    let before = db_tasks(&master.db());
    for bad in [spec("true", 0.5, 0, &["=eu"]), spec("true", 0.5, 5000, &[])] {
        let status = admin
            .submit_task(pb::SubmitTaskRequest { spec: Some(bad) })
            .await
            .unwrap_err();
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{}",
            status.message()
        );
    }
    assert_eq!(db_tasks(&master.db()), before);
    // herdctl takes them too.
    let (ok, out, err) = herdctl(
        &master.url(),
        &[
            "task",
            "submit",
            "--command",
            "true",
            "--constraint",
            "zone=us",
            "--priority",
            "3",
        ],
    );
    assert!(ok, "{err}");
    let id = out.split_whitespace().next().unwrap().to_string();
    let t = wait_task(&mut admin, &id, pb::TaskState::Succeeded, T).await;
    assert_eq!(t.worker_name, "us-1");
    let spec = t.spec.unwrap();
    assert_eq!(
        (spec.priority, spec.constraints),
        (3, vec!["zone=us".to_string()])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn higher_priority_goes_first_and_fifo_within_a_priority() {
    let dir = tempfile::tempdir().unwrap();
    let master = InProcess::start(dir.path(), FAST);
    let mut admin = master.admin().await;
    let _w = Worker::start(dir.path(), &master.url(), "one-slot", &["--cpu", "1"]);
    wait_state(&mut admin, "one-slot", pb::WorkerState::Active, T).await;
    let order = dir.path().join("order");
    let log = |name: &str| format!("echo {name} >> {}", order.display());

    // The only slot is busy while the others queue up.
    let busy = submit_spec(
        &mut admin,
        spec(&format!("sleep 2; {}", log("busy")), 1.0, 0, &[]),
    )
    .await;
    wait_task(&mut admin, &busy.id, pb::TaskState::Running, T).await;
    let mut ids = Vec::new();
    for (name, priority) in [
        ("low-a", 0),
        ("low-b", 0),
        ("high", 5),
        ("lowest", -1),
        ("low-c", 0),
    ] {
        ids.push(
            submit_spec(&mut admin, spec(&log(name), 1.0, priority, &[]))
                .await
                .id,
        );
    }
    for id in &ids {
        wait_task(&mut admin, id, pb::TaskState::Succeeded, T).await;
    }
    let ran = std::fs::read_to_string(&order).unwrap();
    assert_eq!(ran, "busy\nhigh\nlow-a\nlow-b\nlow-c\nlowest\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pre_registered_worker_is_pending_until_it_connects_and_takes_its_labels() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let data = dir.path().join("data");
    let mut master = Master::start_on(dir.path(), &data, port, FAST);
    let mut admin = master.admin().await;

    let (ok, out, err) = herdctl(
        &master.url(),
        &[
            "worker",
            "add",
            "gpu-box",
            "--label",
            "zone=eu",
            "--label",
            "os=custom",
        ],
    );
    assert!(ok, "{err}");
    assert!(out.contains("gpu-box") && out.contains("Pending"), "{out}");
    let added = worker(&mut admin, "gpu-box").await.expect("listed");
    assert_eq!(added.state(), pb::WorkerState::Pending);
    let id = added.id.clone();
    assert_eq!(db_row(&master.db(), &id), Some((false, "Pending".into())));
    let (_, table, _) = herdctl(&master.url(), &["workers"]);
    assert!(
        table
            .lines()
            .any(|l| l.contains("gpu-box") && l.contains("Pending")),
        "{table}"
    );

    // The name is taken; bad names and labels are refused; nothing changes.
    let again = admin
        .add_worker(pb::AddWorkerRequest {
            name: "gpu-box".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        again.code(),
        tonic::Code::AlreadyExists,
        "{}",
        again.message()
    );
    assert!(again.message().contains("gpu-box"), "{}", again.message());
    for (name, label) in [("w-0000abcd", "k"), ("bad name", "k"), ("ok-name", "")] {
        let status = admin
            .add_worker(pb::AddWorkerRequest {
                name: name.into(),
                labels: [(label.to_string(), "v".to_string())].into(),
            })
            .await
            .unwrap_err();
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{name}: {status:?}"
        );
    }
    assert_eq!(workers(&mut admin).await.len(), 1);
    // A pre-registration can be taken back.
    let (ok, _, err) = herdctl(&master.url(), &["worker", "add", "spare"]);
    assert!(ok, "{err}");
    let (ok, _, err) = herdctl(&master.url(), &["worker", "forget", "spare"]);
    assert!(ok, "{err}");
    assert_eq!(workers(&mut admin).await.len(), 1);

    // A task for it waits: Pending is never scheduled.
    let waiting = submit_spec(&mut admin, spec("true", 0.5, 0, &["zone=eu"])).await;

    // Pending survives a restart of the master.
    master.terminate();
    let master = Master::start_on(dir.path(), &data, port, FAST);
    let mut admin = master.admin().await;
    let loaded = worker(&mut admin, "gpu-box").await.expect("still known");
    assert_eq!(
        (loaded.state(), loaded.id.as_str()),
        (pb::WorkerState::Pending, id.as_str())
    );
    assert_eq!(
        task(&mut admin, &waiting.id).await.state(),
        pb::TaskState::Queued
    );

    // The worker connects: it takes the id, its labels are merged (the operator's win).
    let _w = Worker::start(
        dir.path(),
        &master.url(),
        "gpu-box",
        &["--label", "rack=7", "--label", "zone=us"],
    );
    let active = wait_state(&mut admin, "gpu-box", pb::WorkerState::Active, T).await;
    assert_eq!(active.id, id);
    let labels = active.description.unwrap().labels;
    assert_eq!(labels["zone"], "eu");
    assert_eq!(labels["os"], "custom");
    assert_eq!(labels["rack"], "7");
    assert!(labels.contains_key("hostname"));
    let t = wait_task(&mut admin, &waiting.id, pb::TaskState::Succeeded, T).await;
    assert_eq!(t.worker_id, id);
    wait_db(&master.db(), &id, (true, "Active"), T).await;
}
