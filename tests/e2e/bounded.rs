//! End to end: everything bounded, clear errors, and lists that hold up as a cluster grows
//! for months (paging across 100,000 tasks and 20,000 workers with maximum-size fields,
//! bad fields and bad stream messages with their status codes).

use herd_testkit as common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use herd::pb;
use herd::pb::worker_message::Body;
use prost::Message;
use tonic::Code;

const T: Duration = Duration::from_secs(60);
/// The message limit; a page must stay far below it.
const LIMIT: usize = 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_pages_cross_100000_stored_tasks_and_those_in_memory() {
    let _heavy = heavy();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let data = dir.path().join("data");
    let mut master = Master::start_on(dir.path(), &data, port, FAST);
    master.admin().await;
    assert!(master.terminate().success());
    seed_finished_tasks(&master.db(), 100_000);

    let master = Master::start_on(dir.path(), &data, port, FAST);
    let mut admin = master.admin().await;
    // Queued ones (nothing can run them) live in memory.
    let mut queued = Vec::new();
    for _ in 0..30 {
        queued.push(submit(&mut admin, "true", 1.0).await.id);
    }
    let summary = admin
        .summary(pb::SummaryRequest {})
        .await
        .unwrap()
        .into_inner();
    let count = |state: &str| {
        summary
            .tasks
            .iter()
            .find(|c| c.state == state)
            .map(|c| c.count)
    };
    assert_eq!(count("succeeded"), Some(90_000));
    assert_eq!(count("failed"), Some(10_000));
    assert_eq!(count("queued"), Some(30));

    let mut seen = HashSet::new();
    let mut last = u64::MAX;
    let mut page_token = String::new();
    let mut pages = 0;
    loop {
        let page = admin
            .list_tasks(pb::ListTasksRequest {
                page_size: 1000,
                page_token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(
            page.encoded_len() < LIMIT / 2,
            "a page of {} bytes",
            page.encoded_len()
        );
        for t in &page.tasks {
            let n: u64 = t.id[2..].parse().unwrap();
            assert!(n < last, "not newest first: {} after {last}", t.id);
            last = n;
            assert!(seen.insert(t.id.clone()), "{} twice", t.id);
        }
        pages += 1;
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(seen.len(), 100_030);
    assert!(pages >= 101, "{pages} pages");
    // The newest page starts with what is in memory.
    let first = admin
        .list_tasks(pb::ListTasksRequest {
            page_size: 5,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<&str> = first.tasks.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(
        ids,
        ["t-100030", "t-100029", "t-100028", "t-100027", "t-100026"]
    );
    assert_eq!(ids[0], queued.last().unwrap());

    // Filtered on the server.
    let failed = admin
        .list_tasks(pb::ListTasksRequest {
            state: pb::TaskState::Failed as i32,
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(failed.tasks.len(), 1000);
    assert!(
        failed
            .tasks
            .iter()
            .all(|t| t.state() == pb::TaskState::Failed)
    );
    let recent = admin
        .list_tasks(pb::ListTasksRequest {
            submitted_since_ms: 99_991,
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(recent.tasks.len(), 40, "10 stored + 30 queued");
    // A finished task is read back whole from SQLite.
    let old = task(&mut admin, "t-40000").await;
    assert_eq!(
        old.spec.unwrap().command.len(),
        herd::domain::MAX_COMMAND_LEN
    );
    // herdctl shows the newest 50 unless told otherwise.
    let (ok, out, err) = herdctl(&master.url(), &["tasks"]);
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 51, "a header and 50 rows");
    let (ok, out, _) = herdctl(&master.url(), &["tasks", "--limit", "3", "--json"]);
    assert!(ok);
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_pages_cross_20000_workers_some_with_every_label() {
    let _heavy = heavy();
    let dir = tempfile::tempdir().unwrap();
    let master = InProcess::start(dir.path(), FAST);
    master.admin().await;
    let registry = master.registry().await;
    let mut joins = tokio::task::JoinSet::new();
    for chunk in 0..8 {
        let mut registry = registry.clone();
        joins.spawn(async move {
            for i in (chunk..20_000).step_by(8) {
                let mut d = description(&format!("node-{i:05}"));
                if i % 1000 == 0 {
                    d.labels = (0..herd::domain::MAX_LABELS)
                        .map(|l| (format!("{l:0>256}"), "v".repeat(256)))
                        .collect();
                }
                registry
                    .register(pb::RegisterRequest {
                        worker: Some(d),
                        ..Default::default()
                    })
                    .await
                    .unwrap();
            }
        });
    }
    while let Some(done) = joins.join_next().await {
        done.unwrap();
    }
    let mut admin = master.admin().await;
    let mut names = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = admin
            .list_workers(pb::ListWorkersRequest {
                all: true,
                page_size: 1000,
                page_token,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(
            page.encoded_len() < LIMIT / 2,
            "a page of {} bytes",
            page.encoded_len()
        );
        names.extend(
            page.workers
                .iter()
                .map(|w| w.description.as_ref().unwrap().name.clone()),
        );
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(names.len(), 20_000);
    let mut sorted = names.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted, names, "in name order, each once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_fields_and_bad_stream_messages_get_their_status_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let master = InProcess::start(dir.path(), FAST);
    let mut admin = master.admin().await;
    let mut registry = master.registry().await;

    // A name with the shape of an id.
    let status = registry
        .register(pb::RegisterRequest {
            worker: Some(description("w-0123abcd")),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("shape of a worker id"),
        "{}",
        status.message()
    );

    // Huge unknown ids: NOT_FOUND, with a short message.
    let huge = "w".repeat(20_000);
    let status = admin
        .get_worker(pb::GetWorkerRequest {
            worker: huge.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert!(status.message().len() < 300, "{}", status.message().len());
    let status = admin
        .get_task(pb::GetTaskRequest {
            task_id: huge.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert!(status.message().len() < 300);

    let (id, secret) = register(&mut registry, "honest").await;
    let hb = |sequence: u64, cpu_percent: f64| pb::Heartbeat {
        worker_id: id.clone(),
        worker_secret: secret.clone(),
        sequence,
        usage: Some(pb::Usage {
            cpu_percent,
            memory_used_gb: 1.0,
        }),
        ..Default::default()
    };
    // NaN usage on an open stream ends it with INVALID_ARGUMENT naming the field.
    let (tx, mut replies) = open_stream(&mut registry, hb(1, 5.0)).await;
    tx.send(pb::WorkerMessage {
        body: Some(Body::Heartbeat(hb(2, f64::NAN))),
    })
    .await
    .unwrap();
    let status = stream_error(&mut replies).await;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("cpu_percent"),
        "{}",
        status.message()
    );
    // Negative usage in the very first heartbeat is refused the same way.
    let status = registry
        .heartbeat(tokio_stream::iter([pb::WorkerMessage {
            body: Some(Body::Heartbeat(hb(3, -4.0))),
        }]))
        .await
        .err()
        .unwrap_or_else(|| panic!("accepted"));
    assert_eq!(status.code(), Code::InvalidArgument);

    // A message over the limit ends the stream with RESOURCE_EXHAUSTED.
    let (tx, mut replies) = open_stream(&mut registry, hb(4, 5.0)).await;
    tx.send(pb::WorkerMessage {
        body: Some(Body::Output(pb::TaskOutput {
            task_id: "t-1".into(),
            data: vec![b'x'; 2 * LIMIT],
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    assert_eq!(
        stream_error(&mut replies).await.code(),
        Code::ResourceExhausted
    );

    // A worker's long update message is cut, and the task still reads back.
    let t = submit(&mut admin, "sleep 60", 0.5).await;
    let (tx, mut replies) = open_stream(&mut registry, hb(5, 5.0)).await;
    let deadline = Deadline::new(T, "the task is assigned to the stream");
    while task(&mut admin, &t.id).await.worker_id != id {
        deadline.wait().await;
    }
    tx.send(pb::WorkerMessage {
        body: Some(Body::TaskUpdate(pb::TaskUpdate {
            task_id: t.id.clone(),
            attempt: 1,
            event: pb::TaskEvent::Failed as i32,
            exit_code: Some(1),
            message: "e".repeat(200_000),
        })),
    })
    .await
    .unwrap();
    let deadline = Deadline::new(T, "the task failed");
    let failed = loop {
        let info = task(&mut admin, &t.id).await;
        if info.state() == pb::TaskState::Failed {
            break info;
        }
        deadline.wait().await;
    };
    assert!(failed.reason.len() < 1200, "{}", failed.reason.len());
    assert!(failed.reason.contains("[cut: 200000 bytes in all]"));
    drop(tx);
    let _ = replies.message().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forget_removes_only_a_worker_that_is_not_active_and_the_scheduler_choice_persists() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let data = dir.path().join("data");
    let mut master = Master::start_on(dir.path(), &data, port, FAST);
    let mut admin = master.admin().await;
    let mut w = Worker::start(dir.path(), &master.url(), "old-box", &[]);
    let active = wait_state(&mut admin, "old-box", pb::WorkerState::Active, T).await;

    let (ok, _, err) = herdctl(&master.url(), &["worker", "forget", "old-box"]);
    assert!(!ok);
    assert!(err.contains("is Active"), "{err}");
    w.kill9();
    wait_state(&mut admin, "old-box", pb::WorkerState::Inactive, T).await;
    let (ok, out, err) = herdctl(&master.url(), &["worker", "forget", "old-box"]);
    assert!(ok, "{err}");
    assert!(out.contains("forgotten"), "{out}");
    assert!(worker(&mut admin, "old-box").await.is_none());
    assert_eq!(db_count(&master.db()), 0);
    // The name is free: the next one of that name is a new worker.
    let _w = Worker::start(dir.path(), &master.url(), "old-box", &[]);
    let again = wait_state(&mut admin, "old-box", pb::WorkerState::Active, T).await;
    assert_ne!(again.id, active.id);

    let (ok, _, err) = herdctl(&master.url(), &["scheduler", "round-robin"]);
    assert!(ok, "{err}");
    assert!(master.terminate().success());
    let master = Master::start_on(dir.path(), &data, port, FAST);
    master.admin().await;
    let (ok, out, _) = herdctl(&master.url(), &["scheduler"]);
    assert!(ok);
    assert!(
        out.contains("round-robin"),
        "kept across the restart: {out}"
    );
}

/// The output of `seq 1 N`.
fn seq_output(n: u64) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 1..=n {
        out.extend_from_slice(format!("{i}\n").as_bytes());
    }
    out
}

/// A task's logs as asked for, as chunks (offset, bytes).
async fn chunks(
    admin: &mut Admin,
    id: &str,
    offset: Option<u64>,
    follow: bool,
) -> Vec<(u64, Vec<u8>)> {
    let mut stream = admin
        .task_logs(pb::TaskLogsRequest {
            task_id: id.into(),
            follow,
            offset,
            length: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let mut out = Vec::new();
    while let Some(chunk) = stream.message().await.unwrap() {
        out.push((chunk.offset, chunk.data));
    }
    out
}

/// A task's logs as asked for: (first offset, bytes), which must come contiguous.
async fn logs_range(
    admin: &mut Admin,
    id: &str,
    offset: Option<u64>,
    length: u64,
    follow: bool,
) -> (u64, Vec<u8>) {
    let mut stream = admin
        .task_logs(pb::TaskLogsRequest {
            task_id: id.into(),
            follow,
            offset,
            length,
        })
        .await
        .unwrap()
        .into_inner();
    let mut first = None;
    let mut out = Vec::new();
    while let Some(chunk) = stream.message().await.unwrap() {
        assert!(chunk.data.len() <= 256 * 1024);
        let at = *first.get_or_insert(chunk.offset);
        assert_eq!(chunk.offset, at + out.len() as u64, "chunks are contiguous");
        out.extend(chunk.data);
    }
    (first.unwrap_or(0), out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_logs_of_a_50_mb_task_print_by_tail_range_and_follow() {
    let _heavy = heavy();
    let dir = tempfile::tempdir().unwrap();
    let master = InProcess::start(dir.path(), FAST);
    let mut admin = master.admin().await;
    let _w = Worker::start(dir.path(), &master.url(), "chatty", &[]);
    wait_state(&mut admin, "chatty", pb::WorkerState::Active, T).await;
    let n = 6_500_000; // about 50 MB
    let expected = seq_output(n);
    assert!(expected.len() > 50_000_000);
    let t = submit(&mut admin, &format!("sleep 1; seq 1 {n}; sleep 1"), 0.5).await;
    wait_task(&mut admin, &t.id, pb::TaskState::Running, T).await;
    // Followed while it runs: every chunk is the task's output at its offset, in order, up
    // to the end (a follower that falls behind what the master keeps skips ahead, and the
    // offsets say by how much).
    let followed = chunks(&mut admin, &t.id, None, true).await;
    let mut at = 0;
    for (offset, data) in &followed {
        assert!(*offset >= at, "out of order at {offset}");
        let offset = *offset as usize;
        assert!(
            data[..] == expected[offset..offset + data.len()],
            "wrong bytes at {offset}"
        );
        at = (offset + data.len()) as u64;
    }
    assert_eq!(at as usize, expected.len(), "followed to the end");
    wait_task(&mut admin, &t.id, pb::TaskState::Succeeded, T).await;

    // By default the last MiB.
    let (start, tail) = logs_range(&mut admin, &t.id, None, 0, false).await;
    assert_eq!(tail.len(), 1024 * 1024);
    assert_eq!(start as usize, expected.len() - tail.len());
    assert!(tail == expected[start as usize..]);
    // A range inside what the master keeps.
    let from = expected.len() as u64 - 1_500_000;
    let (start, range) = logs_range(&mut admin, &t.id, Some(from), 1000, false).await;
    assert_eq!(start, from);
    assert!(range == expected[from as usize..from as usize + 1000]);
    // An offset older than what it keeps starts at the oldest byte kept.
    let (start, kept) = logs_range(&mut admin, &t.id, Some(0), 0, false).await;
    assert!(start > 0 && kept.len() >= 1024 * 1024);
    assert!(kept == expected[start as usize..]);
    // herdctl prints them without error.
    let (ok, out, err) = herdctl(&master.url(), &["task", "logs", &t.id]);
    assert!(ok, "{err}");
    assert!(out.ends_with(&format!("{n}\n")));
    let (ok, out, _) = herdctl(&master.url(), &["task", "logs", &t.id, "--all"]);
    assert!(ok);
    assert_eq!(out.len(), kept.len());
}

/// The failure herd-bench once reported ("a task never reached a worker") had a suspect in
/// the master: a worker whose queue of messages is full is skipped by the scheduler, and it
/// could stay Active and skipped for ever. Here a worker heartbeats but never reads its
/// stream: its queue fills, the master cuts it off after a heartbeat timeout (Inactive, a
/// status that says why), and the task that waited meanwhile runs on a healthy worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_never_reads_its_stream_is_cut_off_and_no_task_waits_on_it() {
    let dir = tempfile::tempdir().unwrap();
    let master = Master::start(dir.path(), FAST);
    let mut admin = master.admin().await;
    // A small window: the master's messages back up at once instead of filling megabytes
    // of the client's buffers first.
    let channel = herd::client::endpoint(&master.url(), None)
        .unwrap()
        .initial_stream_window_size(Some(1024))
        .connect()
        .await
        .unwrap();
    let mut registry = pb::registry_client::RegistryClient::with_interceptor(
        channel,
        herd::auth::Bearer::new(Some(JOIN_TOKEN)).unwrap(),
    );
    let mut desc = description("deaf");
    desc.capacity.as_mut().unwrap().cpu = 1000.0;
    let registered = registry
        .register(pb::RegisterRequest {
            worker: Some(desc),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let (id, secret) = (registered.worker_id, registered.worker_secret);
    let hb = move |sequence| pb::WorkerMessage {
        body: Some(Body::Heartbeat(pb::Heartbeat {
            worker_id: id.clone(),
            sequence,
            worker_secret: secret.clone(),
            ..Default::default()
        })),
    };
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tx.send(hb(1)).await.unwrap();
    // The replies are never read.
    let _replies = registry
        .heartbeat(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    wait_state(&mut admin, "deaf", pb::WorkerState::Active, T).await;
    // Every heartbeat is acknowledged: heartbeats as fast as the master takes them keep
    // the queue full (and the worker Active) until the master cuts the stream.
    let sender = tokio::spawn(async move {
        for sequence in 2u64.. {
            if tx.send(hb(sequence)).await.is_err() {
                return;
            }
            if sequence % 500 == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });
    let task = submit(&mut admin, "true", 1.0).await;

    let cut = wait_state(&mut admin, "deaf", pb::WorkerState::Inactive, T).await;
    assert!(!cut.connected);
    let log = master.log_text();
    assert!(
        log.contains("stopped reading its stream"),
        "the master says why: {log}"
    );
    // The task was never lost to it: queued (or re-queued) with a reason, or placed on it
    // and re-queued once it was cut off; a healthy worker runs it.
    let _ok = Worker::start(dir.path(), &master.url(), "healthy", &[]);
    let done = wait_task(&mut admin, &task.id, pb::TaskState::Succeeded, T).await;
    assert_eq!(done.worker_name, "healthy");
    sender.abort();
}
