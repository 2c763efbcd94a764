//! End to end: GPUs handed out by index (each task sees only its own in
//! CUDA_VISIBLE_DEVICES, no index to two tasks, kept across a master restart) and disk
//! counted like memory, with a real master and real workers.

use herd_testkit as common;

use std::time::Duration;

use common::http::Api;
use common::*;
use herd::pb;

const T: Duration = Duration::from_secs(30);

fn spec(command: &str, gpu: u32, disk_gb: f64) -> pb::TaskSpec {
    pb::TaskSpec {
        command: command.into(),
        resources: Some(pb::Resources {
            cpu: 0.5,
            gpu,
            disk_gb,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A command that runs until `stop` appears, or until the test's folder is gone: a task
/// the test no longer waits for (one on a killed worker, whose supervisor lives on) must
/// not poll for ever once the folder is deleted.
fn hold_until(stop: &std::path::Path) -> String {
    let dir = stop.parent().expect("stop is in the test's folder");
    format!(
        "while [ ! -e {} ] && [ -d {} ]; do sleep 0.1; done",
        stop.display(),
        dir.display()
    )
}

/// Waits until `worker` shows `n` GPUs held, and returns (index, task) pairs.
async fn wait_holders(admin: &mut Admin, worker: &str, n: usize) -> Vec<(u32, String)> {
    let deadline = Deadline::new(T, format!("{worker} shows {n} GPUs held"));
    loop {
        let w = admin
            .get_worker(pb::GetWorkerRequest {
                worker: worker.into(),
            })
            .await
            .unwrap()
            .into_inner();
        if w.gpu_holders.len() == n {
            return w
                .gpu_holders
                .into_iter()
                .map(|h| (h.index, h.task_id))
                .collect();
        }
        deadline.wait().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_get_distinct_gpus_and_a_third_waits_until_one_is_free() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = free_port();
    let args = [FAST, &["--http-listen", "127.0.0.1:0"]].concat();
    let mut master = Master::start_on(dir.path(), &data, port, &args);
    let mut admin = master.admin().await;
    let _w = Worker::start(
        dir.path(),
        &master.url(),
        "gpu-box",
        &["--gpu", "2", "--cpu", "8"],
    );
    let w = wait_state(&mut admin, "gpu-box", pb::WorkerState::Active, T).await;
    let d = w.description.unwrap();
    assert_eq!(d.capacity.unwrap().gpu, 2);
    assert_eq!(d.gpus.iter().map(|g| g.index).collect::<Vec<_>>(), [0, 1]);
    assert!(
        !d.labels.contains_key("gpu.model"),
        "--gpu N says nothing of the model"
    );

    // Each holds its GPU until the stop file appears.
    let stop = dir.path().join("stop");
    let hold = format!(
        "echo \"cuda=$CUDA_VISIBLE_DEVICES nvidia=$NVIDIA_VISIBLE_DEVICES\"; {}",
        hold_until(&stop)
    );
    // The GPUs herd gives win over any the task's own environment names.
    let mut first = spec(&hold, 1, 0.0);
    first.env = [("CUDA_VISIBLE_DEVICES".to_string(), "7".to_string())].into();
    let a = submit_spec(&mut admin, first).await.id;
    let b = submit_spec(&mut admin, spec(&hold, 1, 0.0)).await.id;
    wait_task(&mut admin, &a, pb::TaskState::Running, T).await;
    wait_task(&mut admin, &b, pb::TaskState::Running, T).await;
    let third = submit_spec(&mut admin, spec("echo $CUDA_VISIBLE_DEVICES", 1, 0.0)).await;
    assert_eq!(third.state(), pb::TaskState::Queued);
    assert_eq!(third.reason, "no Active worker with 1 GPUs free");
    // A task that asks for no GPU runs meanwhile, and sees none.
    let show = "echo \"[${CUDA_VISIBLE_DEVICES-unset}] [${NVIDIA_VISIBLE_DEVICES-unset}]\"";
    let none = submit_spec(&mut admin, spec(show, 0, 0.0)).await.id;
    wait_task(&mut admin, &none, pb::TaskState::Succeeded, T).await;
    assert_eq!(logs(&mut admin, &none, false).await.trim(), "[] [void]");

    let mut seen = Vec::new();
    for id in [&a, &b] {
        let deadline = Deadline::new(T, format!("{id} prints its GPUs"));
        let out = loop {
            let out = logs(&mut admin, id, false).await;
            if out.contains("cuda=") {
                break out;
            }
            deadline.wait().await;
        };
        let t = task(&mut admin, id).await;
        assert_eq!(t.gpu_ids.len(), 1, "{t:?}");
        let g = t.gpu_ids[0];
        assert_eq!(out.trim(), format!("cuda={g} nvidia={g}"), "{id}");
        assert_eq!(t.history.last().unwrap().gpu_ids, vec![g]);
        seen.push((g, id.clone()));
    }
    seen.sort();
    assert_eq!(seen.iter().map(|s| s.0).collect::<Vec<_>>(), [0, 1]);
    assert_eq!(wait_holders(&mut admin, "gpu-box", 2).await, seen);

    // `worker <id>` shows each GPU and its holder: herdctl, --json, HTTP.
    let (ok, out, err) = herdctl(&master.url(), &["worker", "gpu-box"]);
    assert!(ok, "{err}");
    for (g, id) in &seen {
        let line = out
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("gpu {g}:")))
            .unwrap_or_else(|| panic!("no line for gpu {g}:\n{out}"));
        assert!(line.ends_with(&format!("held by {id}")), "{line}");
    }
    let (ok, out, err) = herdctl(&master.url(), &["worker", "gpu-box", "--json"]);
    assert!(ok, "{err}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["gpus"][0]["index"], 0);
    assert_eq!(json["gpus"][seen[1].0 as usize]["task_id"], *seen[1].1);
    let api = Api::of(&master).await;
    let http = api.get("/api/v1/workers/gpu-box").await;
    assert_eq!(http["gpus"], json["gpus"]);
    // The HTTP API takes a disk request and shows the GPU indices of a task.
    let (status, t) = api
        .json(
            hyper::Method::POST,
            "/api/v1/tasks",
            Some(serde_json::json!({"command": "true", "disk_gb": 0.5})),
        )
        .await;
    assert_eq!(status, hyper::StatusCode::CREATED, "{t}");
    assert_eq!(t["disk_gb"], 0.5);
    let shown = api.get(&format!("/api/v1/tasks/{}", seen[0].1)).await;
    assert_eq!(shown["gpu_ids"], serde_json::json!([seen[0].0]));

    // A master restart reads the indices back from SQLite: the same tasks hold the same
    // GPUs, and the third still waits.
    master.kill9();
    let mut master = Master::start_on(dir.path(), &data, port, FAST);
    let mut admin = master.admin().await;
    wait_state(&mut admin, "gpu-box", pb::WorkerState::Active, T).await;
    assert_eq!(wait_holders(&mut admin, "gpu-box", 2).await, seen);
    let waiting = task(&mut admin, &third.id).await;
    assert_eq!(waiting.state(), pb::TaskState::Queued, "{waiting:?}");

    // Once one of the two ends, its GPU is free again and the third gets it.
    std::fs::write(&stop, "").unwrap();
    for id in [&a, &b] {
        wait_task(&mut admin, id, pb::TaskState::Succeeded, T).await;
    }
    let done = wait_task(&mut admin, &third.id, pb::TaskState::Succeeded, T).await;
    let got = done.history.last().unwrap().gpu_ids.clone();
    assert!(got == [0] || got == [1], "{got:?}");
    assert_eq!(
        logs(&mut admin, &third.id, false).await.trim(),
        got[0].to_string()
    );
    assert!(wait_holders(&mut admin, "gpu-box", 0).await.is_empty());
    master.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_is_counted_and_a_request_that_fits_nowhere_waits_naming_disk() {
    let dir = tempfile::tempdir().unwrap();
    let master = InProcess::start(dir.path(), FAST);
    let mut admin = master.admin().await;
    {
        // Without --disk a worker advertises the free space of its work dir.
        let _detected = Worker::start(dir.path(), &master.url(), "detected-disk", &[]);
        let w = wait_state(&mut admin, "detected-disk", pb::WorkerState::Active, T).await;
        assert!(w.description.unwrap().capacity.unwrap().disk_gb > 0.0);
    }
    wait_state(&mut admin, "detected-disk", pb::WorkerState::Inactive, T).await;
    let _small = Worker::start(dir.path(), &master.url(), "small-disk", &["--disk", "10"]);
    let _big = Worker::start(dir.path(), &master.url(), "big-disk", &["--disk", "100"]);
    wait_state(&mut admin, "small-disk", pb::WorkerState::Active, T).await;
    wait_state(&mut admin, "big-disk", pb::WorkerState::Active, T).await;

    let huge = submit_spec(&mut admin, spec("true", 0, 500.0)).await;
    assert_eq!(huge.state(), pb::TaskState::Queued);
    assert_eq!(huge.reason, "no Active worker with 500 GB free disk");

    // 60 GB fits only on big-disk; a second 60 GB waits while the first holds it.
    let stop = dir.path().join("stop");
    let hold = hold_until(&stop);
    let (ok, out, err) = herdctl(
        &master.url(),
        &["task", "submit", "--command", &hold, "--disk", "60"],
    );
    assert!(ok, "{err}");
    let first = out.split_whitespace().next().unwrap().to_string();
    let t = wait_task(&mut admin, &first, pb::TaskState::Running, T).await;
    assert_eq!(t.worker_name, "big-disk");
    assert_eq!(t.spec.unwrap().resources.unwrap().disk_gb, 60.0);
    let second = submit_spec(&mut admin, spec("true", 0, 60.0)).await;
    assert_eq!(second.state(), pb::TaskState::Queued);
    assert_eq!(second.reason, "no Active worker with 60 GB free disk");
    // A small one still fits (on either).
    let small = submit_spec(&mut admin, spec("true", 0, 8.0)).await.id;
    wait_task(&mut admin, &small, pb::TaskState::Succeeded, T).await;

    let (ok, table, err) = herdctl(&master.url(), &["workers"]);
    assert!(ok, "{err}");
    assert!(table.lines().next().unwrap().contains("DISK"), "{table}");
    let row = table.lines().find(|l| l.starts_with("big-disk")).unwrap();
    assert!(row.contains("60/100 GB"), "{row}");

    std::fs::write(&stop, "").unwrap();
    wait_task(&mut admin, &first, pb::TaskState::Succeeded, T).await;
    let t = wait_task(&mut admin, &second.id, pb::TaskState::Succeeded, T).await;
    assert_eq!(t.worker_name, "big-disk");
    assert_eq!(
        task(&mut admin, &huge.id).await.state(),
        pb::TaskState::Queued
    );

    // A bad disk request is refused, naming the flag.
    let status = admin
        .submit_task(pb::SubmitTaskRequest {
            spec: Some(spec("true", 0, -1.0)),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("--disk"), "{}", status.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpus_of_a_lost_attempt_are_freed_and_the_task_gets_them_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "--heartbeat-interval",
        "200ms",
        "--heartbeat-timeout",
        "1s",
        "--check-interval",
        "100ms",
        "--worker-timeout",
        "3s",
    ];
    let master = InProcess::start(dir.path(), &args);
    let mut admin = master.admin().await;
    let mut a = Worker::start(dir.path(), &master.url(), "gpu-a", &["--gpu", "1"]);
    wait_state(&mut admin, "gpu-a", pb::WorkerState::Active, T).await;
    let stop = dir.path().join("stop");
    let hold = hold_until(&stop);
    let x = submit_spec(&mut admin, spec(&hold, 1, 0.0)).await.id;
    wait_task(&mut admin, &x, pb::TaskState::Running, T).await;
    let y = submit_spec(&mut admin, spec("true", 1, 0.0)).await;
    assert_eq!(y.reason, "no Active worker with 1 GPUs free");

    // The host of gpu-a is lost: its attempt is lost, its GPU booked to no one.
    a.kill9();
    wait_state(&mut admin, "gpu-a", pb::WorkerState::Removed, T).await;
    let requeued = wait_task(&mut admin, &x, pb::TaskState::Queued, T).await;
    let gone = worker(&mut admin, "gpu-a").await.unwrap();
    assert!(gone.gpu_holders.is_empty(), "{:?}", gone.gpu_holders);
    assert_eq!(requeued.history[0].outcome, "lost");
    assert_eq!(requeued.history[0].gpu_ids, vec![0]);
    assert!(requeued.gpu_ids.is_empty());

    // Re-queued first within its priority: it takes gpu-b's only GPU before y.
    let _b = Worker::start(dir.path(), &master.url(), "gpu-b", &["--gpu", "1"]);
    let x_on_b = wait_task(&mut admin, &x, pb::TaskState::Running, T).await;
    assert_eq!(x_on_b.worker_name, "gpu-b");
    assert_eq!(x_on_b.gpu_ids, vec![0]);
    assert_eq!(task(&mut admin, &y.id).await.state(), pb::TaskState::Queued);
    std::fs::write(&stop, "").unwrap();
    wait_task(&mut admin, &x, pb::TaskState::Succeeded, T).await;
    let y = wait_task(&mut admin, &y.id, pb::TaskState::Succeeded, T).await;
    assert_eq!(y.worker_name, "gpu-b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bin_pack_fills_one_worker_before_the_next_and_is_kept_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = free_port();
    let mut master = Master::start_on(dir.path(), &data, port, FAST);
    let mut admin = master.admin().await;
    let _a = Worker::start(dir.path(), &master.url(), "pack-a", &["--cpu", "4"]);
    let _b = Worker::start(dir.path(), &master.url(), "pack-b", &["--cpu", "4"]);
    wait_state(&mut admin, "pack-a", pb::WorkerState::Active, T).await;
    wait_state(&mut admin, "pack-b", pb::WorkerState::Active, T).await;
    let (ok, out, err) = herdctl(&master.url(), &["scheduler", "bin-pack"]);
    assert!(ok && out.contains("bin-pack"), "{out} {err}");

    let stop = dir.path().join("stop");
    let hold = hold_until(&stop);
    let (mut ids, mut placed) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        let mut s = spec(&hold, 0, 0.0);
        s.resources.as_mut().unwrap().cpu = 1.0;
        let id = submit_spec(&mut admin, s).await.id;
        // One at a time, so each placement sees the ones before it.
        placed.push(
            wait_task(&mut admin, &id, pb::TaskState::Running, T)
                .await
                .worker_name,
        );
        ids.push(id);
    }
    assert_eq!(placed, ["pack-a", "pack-a", "pack-a", "pack-a", "pack-b"]);
    std::fs::write(&stop, "").unwrap();
    // Every task ends before the test does: a task still polling for `stop` when the
    // temporary folder goes would poll for ever (its supervisor outlives the worker).
    for id in &ids {
        wait_task(&mut admin, id, pb::TaskState::Succeeded, T).await;
    }

    master.terminate();
    let master = Master::start_on(dir.path(), &data, port, FAST);
    master.admin().await; // up and answering
    let (ok, out, err) = herdctl(&master.url(), &["scheduler"]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "scheduler: bin-pack");
}
