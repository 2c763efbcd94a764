//! The Registry gRPC service (what workers call): registration and the heartbeat stream,
//! a thin adapter over the registry. [`Master`] is shared with the Admin service
//! (`admin.rs`).

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};
use tracing::debug;

use herd::domain::WorkerSpec;
use herd::pb;
use herd::pb::worker_message::Body;

use crate::identity::{Credentials, WorkerToken, mtls, secret, warn_legacy};
use crate::metrics::Metrics;
use crate::output::OutputDir;
use crate::registry::Registry;
use crate::store::{Store, Write};
use crate::workers::Outbound;

/// Messages queued towards one worker; past this, acknowledgements are dropped and
/// assignments wait for the next scheduling pass. A queue that stays full for a heartbeat
/// timeout ends the stream (see `Registry::tick`).
const OUTBOUND_CAPACITY: usize = 1024;

/// Shared by both services.
#[derive(Clone)]
pub struct Master {
    pub registry: Arc<Registry>,
    pub store: Store,
    pub output: OutputDir,
    pub metrics: Arc<Metrics>,
    /// How long a new stream may stay silent before its first heartbeat: a worker sends
    /// it at once, and one that cannot would be Inactive anyway.
    pub handshake_timeout: Duration,
    /// Every credential the master accepts (the gates and the HTTP API check them).
    pub credentials: Arc<Credentials>,
    /// `--tls-client-ca`: worker connections carry a client certificate naming the worker.
    pub require_client_cert: bool,
}

/// Told to a worker that presented the admin token (it logs it).
const LEGACY_WARNING: &str = "this worker presented the admin token; give it the join token \
     (<data-dir>/join-token on the master) instead";

#[tonic::async_trait]
impl pb::registry_server::Registry for Master {
    async fn register(
        &self,
        request: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        let peer = request.remote_addr();
        let legacy = request.extensions().get::<WorkerToken>() == Some(&WorkerToken::LegacyAdmin);
        let cert = mtls::peer_cert(&request);
        let req = request.into_inner();
        let description = req
            .worker
            .ok_or_else(|| Status::invalid_argument("RegisterRequest has no worker description"))?;
        herd::domain::check_secret("RegisterRequest.worker_secret", &req.worker_secret)?;
        let spec = WorkerSpec::try_from(description)?;
        if self.require_client_cert {
            mtls::check(cert.as_ref(), &spec.name, peer)?;
        }
        if legacy {
            warn_legacy(&spec.name, peer);
        }
        let registered =
            self.registry
                .register(spec, &req.worker_secret, peer, secret::issue()?)?;
        // The id (and the secret's hash) is only handed out once it is stored: a
        // restarted master knows it.
        self.store
            .write(Write::Worker(Box::new(registered.record)))
            .await?;
        let mut response = Response::new(pb::RegisterResponse {
            worker_id: registered.id,
            heartbeat_interval_ms: self.registry.heartbeat_interval().as_millis() as u64,
            reregistered: registered.reregistered,
            worker_secret: registered.secret.unwrap_or_default(),
        });
        if legacy {
            response
                .metadata_mut()
                .insert("herd-warning", LEGACY_WARNING.parse().expect("ASCII"));
        }
        Ok(response)
    }

    type HeartbeatStream =
        Pin<Box<dyn Stream<Item = Result<pb::MasterMessage, Status>> + Send + 'static>>;

    async fn heartbeat(
        &self,
        request: Request<Streaming<pb::WorkerMessage>>,
    ) -> Result<Response<Self::HeartbeatStream>, Status> {
        let peer = request.remote_addr();
        let legacy = request.extensions().get::<WorkerToken>() == Some(&WorkerToken::LegacyAdmin);
        let cert = mtls::peer_cert(&request);
        let mut inbound = request.into_inner();
        let first = match tokio::time::timeout(self.handshake_timeout, inbound.message()).await {
            Err(_) => {
                debug!(?peer, "a heartbeat stream stayed silent; closed");
                return Err(Status::deadline_exceeded(format!(
                    "no heartbeat within {:?} of opening the stream",
                    self.handshake_timeout
                )));
            }
            Ok(Err(status)) => return Err(status),
            Ok(Ok(None)) => {
                return Err(Status::invalid_argument(
                    "the stream closed before its first heartbeat",
                ));
            }
            Ok(Ok(Some(msg))) => msg,
        };
        let Some(Body::Heartbeat(first)) = first.body else {
            return Err(Status::invalid_argument(
                "the first message of a heartbeat stream must be a heartbeat with the worker id",
            ));
        };
        // With --tls-client-ca the certificate must name the worker the id stands for (an
        // unknown id gets NOT_FOUND below, and the worker registers).
        match self.registry.name_of(&first.worker_id) {
            Some(name) => {
                if self.require_client_cert {
                    mtls::check(cert.as_ref(), &name, peer)?;
                }
                if legacy {
                    warn_legacy(&name, peer);
                }
            }
            None if self.require_client_cert && cert.is_none() => mtls::check(None, "", peer)?,
            None => {}
        }
        let (tx, rx) = mpsc::channel(OUTBOUND_CAPACITY);
        let accepted = self.registry.connect(&first, tx.clone(), peer)?;
        debug!(id = %first.worker_id, ?peer, "heartbeat stream accepted");
        let mut first_ack = ack(first.sequence, Vec::new());
        if let Some(pb::master_message::Body::Ack(a)) = first_ack.body.as_mut() {
            a.resume = accepted.resume;
        }
        acknowledge(&self.store, &tx, first_ack, accepted.acked);
        let registry = self.registry.clone();
        let store = self.store.clone();
        let metrics = self.metrics.clone();
        metrics.heartbeats.inc();
        tokio::spawn(async move {
            let id = first.worker_id;
            let generation = accepted.generation;
            let mut end = accepted.end;
            loop {
                let msg = tokio::select! {
                    status = &mut end => {
                        // The queue may be full (that can be why the stream ends): the
                        // status waits a moment for room, never forever.
                        if let Ok(status) = status {
                            let _ = tokio::time::timeout(Duration::from_secs(1), tx.send(Err(status))).await;
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
                        // Undecodable or oversized: the stream ends with a status that says
                        // so, never OK.
                        debug!(%id, %status, "heartbeat stream broke");
                        let _ = tx.send(Err(bad_message(&status))).await;
                        break;
                    }
                };
                let handled = match body {
                    Body::Heartbeat(hb) => registry
                        .heartbeat(&id, generation, &hb)
                        .inspect(|_| {
                            metrics.heartbeats.inc();
                        })
                        .map(|acked| acknowledge(&store, &tx, ack(hb.sequence, Vec::new()), acked)),
                    Body::TaskUpdate(update) => registry.task_update(&id, generation, &update),
                    Body::Output(output) => registry.task_output(&id, generation, &output),
                };
                if let Err(err) = handled {
                    let _ = tx.send(Err(err.into())).await;
                    break;
                }
            }
            registry.disconnect(&id, generation);
        });
        let outbound = ReceiverStream::new(rx).map(|message| message.map(|boxed| *boxed));
        Ok(Response::new(Box::pin(outbound)))
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
