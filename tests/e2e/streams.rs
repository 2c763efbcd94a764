//! Heartbeat streams that misbehave (a wrong token, a stranger's id, garbage, oversized
//! messages, a second stream for one worker) get their status and change nothing.

use herd_testkit as common;

use std::time::Duration;

use common::*;
use herd::pb;
use herd::pb::worker_message::Body;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

const T: Duration = Duration::from_secs(30);

/// Opens a heartbeat stream as worker `id` (with its `secret`), returns the sender and
/// the master's replies.
async fn stream_as(
    registry: &mut Registry,
    id: &str,
    secret: &str,
) -> (
    tokio::sync::mpsc::Sender<pb::WorkerMessage>,
    tonic::Streaming<pb::MasterMessage>,
) {
    let first = pb::Heartbeat {
        worker_secret: secret.into(),
        ..hb(id, 1)
    };
    open_stream(registry, first).await
}

fn hb(id: &str, sequence: u64) -> pb::Heartbeat {
    pb::Heartbeat {
        worker_id: id.into(),
        sequence,
        ..Default::default()
    }
}

fn heartbeat(id: &str, sequence: u64) -> pb::WorkerMessage {
    pb::WorkerMessage {
        body: Some(Body::Heartbeat(hb(id, sequence))),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_streams_get_their_status_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let master = Master::start(dir.path(), FAST);
    let mut admin = master.admin().await;
    let mut registry = master.registry().await;
    let (victim, victim_secret) = register(&mut registry, "victim").await;
    let (attacker, secret) = register(&mut registry, "attacker").await;
    let (_victim_tx, mut victim_replies) = stream_as(&mut registry, &victim, &victim_secret).await;
    wait_state(&mut admin, "victim", pb::WorkerState::Active, T).await;

    // Taking the victim's place: its name without its secret, a stream for its id with
    // another secret. Both are refused, and the victim's stream is not replaced.
    let status = registry
        .register(pb::RegisterRequest {
            worker: Some(description("victim")),
            worker_secret: secret.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(pb::WorkerMessage {
        body: Some(Body::Heartbeat(pb::Heartbeat {
            worker_secret: secret.clone(),
            ..hb(&victim, 100)
        })),
    })
    .await
    .unwrap();
    let status = registry
        .heartbeat(ReceiverStream::new(rx))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(
        !master.log_text().contains("replaced an open one"),
        "the victim's stream was replaced"
    );
    assert!(matches!(
        tokio::time::timeout(Duration::from_millis(300), victim_replies.message()).await,
        Err(_) | Ok(Ok(Some(_)))
    ));

    // Speaking for another worker.
    let (tx, mut replies) = stream_as(&mut registry, &attacker, &secret).await;
    tx.send(heartbeat(&victim, 2)).await.unwrap();
    assert_eq!(
        stream_error(&mut replies).await.code(),
        Code::PermissionDenied
    );

    // Reporting on a task it was never given: the task is untouched.
    let victim_task = submit(&mut admin, "sleep 30", 1.0).await;
    let before = task(&mut admin, &victim_task.id).await;
    let (tx, mut replies) = stream_as(&mut registry, &attacker, &secret).await;
    tx.send(pb::WorkerMessage {
        body: Some(Body::TaskUpdate(pb::TaskUpdate {
            task_id: victim_task.id.clone(),
            attempt: 1,
            event: pb::TaskEvent::Failed as i32,
            exit_code: Some(1),
            message: "forged".into(),
        })),
    })
    .await
    .unwrap();
    assert_eq!(
        stream_error(&mut replies).await.code(),
        Code::PermissionDenied
    );
    let (tx, mut replies) = stream_as(&mut registry, &attacker, &secret).await;
    tx.send(pb::WorkerMessage {
        body: Some(Body::Output(pb::TaskOutput {
            task_id: victim_task.id.clone(),
            attempt: 1,
            data: b"forged output".to_vec(),
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    assert_eq!(
        stream_error(&mut replies).await.code(),
        Code::PermissionDenied
    );
    let after = task(&mut admin, &victim_task.id).await;
    assert_eq!(
        (after.state, after.reason.clone()),
        (before.state, before.reason)
    );
    assert!(
        !logs(&mut admin, &victim_task.id, false)
            .await
            .contains("forged")
    );

    // Out-of-order and replayed sequence numbers: still alive, nothing breaks.
    let (tx, mut replies) = stream_as(&mut registry, &attacker, &secret).await;
    for sequence in [5, 3, 3, u64::MAX, 0, 7] {
        tx.send(heartbeat(&attacker, sequence)).await.unwrap();
    }
    let mut acks = 0;
    while acks < 4 {
        match replies.message().await.unwrap().unwrap().body {
            Some(pb::master_message::Body::Ack(_)) => acks += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        worker(&mut admin, "attacker").await.unwrap().state(),
        pb::WorkerState::Active
    );

    // A stream that never says anything is closed (after the heartbeat timeout, 2s here).
    let (_silent_tx, rx) = tokio::sync::mpsc::channel::<pb::WorkerMessage>(1);
    let status = registry
        .heartbeat(ReceiverStream::new(rx))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded);

    // Oversized messages and names.
    let mut big = description("big");
    big.labels
        .insert("blob".into(), "x".repeat(2 * 1024 * 1024));
    let status = registry
        .register(pb::RegisterRequest {
            worker: Some(big),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        matches!(status.code(), Code::OutOfRange | Code::ResourceExhausted),
        "{status:?}"
    );
    let status = registry
        .register(pb::RegisterRequest {
            worker: Some(description(&"n".repeat(300))),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let mut many = description("labels");
    for i in 0..100 {
        many.labels.insert(format!("k{i}"), "v".into());
    }
    let status = registry
        .register(pb::RegisterRequest {
            worker: Some(many),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let (ok, _, err) = herdctl(
        &master.url(),
        &["task", "submit", "--command", &"x".repeat(70_000)],
    );
    assert!(!ok && err.contains("at most"), "{err}");
    assert_eq!(workers(&mut admin).await.len(), 2, "nothing new was stored");
}
