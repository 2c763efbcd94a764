//! One worker's heartbeat stream, from its handshake to its end: where a heartbeat, a task
//! update and task output arrive from a worker, and where acknowledgements leave.
//! [`WorkerSession::open`] takes the first heartbeat (the cluster checks the worker and
//! its secret), [`WorkerSession::run`] reads the stream until it or the master ends it, and
//! [`WorkerSession::close`] tells the cluster (Inactive at once, or Removed's work).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};
use tracing::debug;

use herd::pb;
use herd::pb::worker_message::Body;

use crate::app::App;
use crate::store::Store;
use crate::workers::Outbound;

/// Messages queued towards one worker; past this, acknowledgements are dropped and
/// assignments wait for the next scheduling pass. A queue that stays full for a heartbeat
/// timeout ends the stream (see `Cluster::tick`).
const OUTBOUND_CAPACITY: usize = 1024;

/// What goes down the stream to the worker.
pub type ToWorker = tokio_stream::adapters::Map<
    ReceiverStream<Result<Box<pb::MasterMessage>, Status>>,
    fn(Result<Box<pb::MasterMessage>, Status>) -> Result<pb::MasterMessage, Status>,
>;

/// An open heartbeat stream of one worker.
pub struct WorkerSession {
    app: App,
    worker_id: String,
    /// Which stream of the worker this is: a newer one replaces it.
    generation: u64,
    /// Fires when the master ends the stream (replaced, Removed, backed up, shutdown).
    end: oneshot::Receiver<Status>,
    tx: Outbound,
}

impl WorkerSession {
    /// Opens the session of the worker `first` names: the cluster checks the worker (an
    /// unknown or Removed id gets NOT_FOUND) and its secret, and takes the first heartbeat.
    /// Returns the session and the stream of messages to the worker, whose first is the
    /// acknowledgement (with how much output the master has of each attempt held).
    pub fn open(
        app: &App,
        first: pb::Heartbeat,
        peer: Option<SocketAddr>,
    ) -> Result<(WorkerSession, ToWorker), Status> {
        let (tx, rx) = mpsc::channel(OUTBOUND_CAPACITY);
        let accepted = app.cluster.connect(&first, tx.clone(), peer)?;
        debug!(id = %first.worker_id, peer = %herd::text::Maybe(&peer), "heartbeat stream accepted");
        let mut first_ack = ack(first.sequence, Vec::new());
        if let Some(pb::master_message::Body::Ack(a)) = first_ack.body.as_mut() {
            a.resume = accepted.resume;
        }
        acknowledge(&app.store, &tx, first_ack, accepted.acked);
        app.metrics.heartbeats.inc();
        let unbox: fn(_) -> _ =
            |message: Result<Box<pb::MasterMessage>, Status>| message.map(|boxed| *boxed);
        let session = WorkerSession {
            app: app.clone(),
            worker_id: first.worker_id,
            generation: accepted.generation,
            end: accepted.end,
            tx,
        };
        Ok((session, ReceiverStream::new(rx).map(unbox)))
    }

    /// Reads the worker's messages until the stream ends, a message is refused, or the
    /// master ends the session; then closes it.
    pub async fn run(mut self, mut inbound: Streaming<pb::WorkerMessage>) {
        loop {
            let msg = tokio::select! {
                status = &mut self.end => {
                    // The queue may be full (that can be why the stream ends): the status
                    // waits a moment for room, never forever.
                    if let Ok(status) = status {
                        let _ = tokio::time::timeout(Duration::from_secs(1), self.tx.send(Err(status))).await;
                    }
                    break;
                }
                msg = inbound.message() => msg,
            };
            let body = match msg {
                Ok(Some(pb::WorkerMessage { body: Some(body) })) => body,
                Ok(Some(pb::WorkerMessage { body: None })) => continue,
                Ok(None) => break,
                Err(status) => {
                    // Undecodable or oversized: the stream ends with a status that says so,
                    // never OK.
                    debug!(id = %self.worker_id, %status, "heartbeat stream broke");
                    let _ = self.tx.send(Err(bad_message(&status))).await;
                    break;
                }
            };
            if let Err(err) = self.take(body) {
                let _ = self.tx.send(Err(err.into())).await;
                break;
            }
        }
        self.close();
    }

    /// One message from the worker.
    fn take(&self, body: Body) -> Result<(), herd::Error> {
        let (cluster, id, generation) = (&self.app.cluster, &self.worker_id, self.generation);
        match body {
            Body::Heartbeat(hb) => {
                let acked = cluster.heartbeat(id, generation, &hb)?;
                self.app.metrics.heartbeats.inc();
                acknowledge(
                    &self.app.store,
                    &self.tx,
                    ack(hb.sequence, Vec::new()),
                    acked,
                );
                Ok(())
            }
            Body::TaskUpdate(update) => cluster.task_update(id, generation, &update),
            Body::Output(output) => cluster.task_output(id, generation, &output),
        }
    }

    /// The stream has ended: the worker is Inactive at once (unless a newer stream took
    /// over), or Removed's work is done if it is past the worker timeout.
    pub fn close(self) {
        self.app
            .cluster
            .disconnect(&self.worker_id, self.generation);
    }
}

/// The status a stream ends with when a message on it could not be read.
fn bad_message(status: &Status) -> Status {
    match status.code() {
        tonic::Code::OutOfRange | tonic::Code::ResourceExhausted => {
            Status::resource_exhausted(format!(
                "a message on the heartbeat stream is larger than {} bytes",
                herd::domain::MAX_MESSAGE_BYTES
            ))
        }
        tonic::Code::Internal | tonic::Code::InvalidArgument | tonic::Code::Unknown => {
            Status::invalid_argument(format!(
                "a message on the heartbeat stream could not be decoded: {}",
                herd::text::clip(status.message())
            ))
        }
        _ => status.clone(),
    }
}

fn ack(sequence: u64, finished_task_ids: Vec<String>) -> pb::MasterMessage {
    pb::MasterMessage {
        body: Some(pb::master_message::Body::Ack(pb::HeartbeatAck {
            sequence,
            finished_task_ids,
            resume: Vec::new(),
        })),
    }
}

/// Sends a heartbeat's acknowledgement. One that names finished tasks leaves only once
/// their results are committed (off the stream's reader, so heartbeats keep flowing); a
/// plain one goes at once, and may be dropped when the worker reads slowly (the next one
/// will do: finished tasks are repeated until acknowledged).
fn acknowledge(
    store: &Store,
    tx: &Outbound,
    mut message: pb::MasterMessage,
    finished: Vec<String>,
) {
    if finished.is_empty() {
        let _ = tx.try_send(Ok(Box::new(message)));
        return;
    }
    let (store, tx) = (store.clone(), tx.clone());
    tokio::spawn(async move {
        if store.sync().await.is_ok() {
            if let Some(pb::master_message::Body::Ack(a)) = message.body.as_mut() {
                a.finished_task_ids = finished;
            }
            let _ = tx.send(Ok(Box::new(message))).await;
        }
    });
}
