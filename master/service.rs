//! The gRPC services: thin adapters that convert the proto, call the registry or the
//! store, and map errors to statuses.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::debug;

use herd::domain::WorkerSpec;
use herd::pb;
use herd::pb::worker_message::Body;

use crate::registry::Registry;
use crate::store::{Store, Write};

/// How long a new stream may wait before sending its first heartbeat.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Messages queued towards one worker before acknowledgements are dropped.
const OUTBOUND_CAPACITY: usize = 64;

/// Shared by both services.
#[derive(Clone)]
pub struct Master {
    pub registry: Arc<Registry>,
    pub store: Store,
}

#[tonic::async_trait]
impl pb::registry_server::Registry for Master {
    async fn register(
        &self,
        request: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        let description = request
            .into_inner()
            .worker
            .ok_or_else(|| Status::invalid_argument("RegisterRequest has no worker description"))?;
        let spec = WorkerSpec::try_from(description)?;
        let registered = self.registry.register(spec);
        // The id is only handed out once it is stored: a restarted master knows it.
        self.store.write(Write::Worker(registered.record)).await?;
        Ok(Response::new(pb::RegisterResponse {
            worker_id: registered.id,
            heartbeat_interval_ms: self.registry.heartbeat_interval().as_millis() as u64,
            reregistered: registered.reregistered,
        }))
    }

    type HeartbeatStream =
        Pin<Box<dyn Stream<Item = Result<pb::MasterMessage, Status>> + Send + 'static>>;

    async fn heartbeat(
        &self,
        request: Request<Streaming<pb::WorkerMessage>>,
    ) -> Result<Response<Self::HeartbeatStream>, Status> {
        let peer = request.remote_addr();
        let mut inbound = request.into_inner();
        let first = match tokio::time::timeout(HANDSHAKE_TIMEOUT, inbound.message()).await {
            Err(_) => {
                return Err(Status::deadline_exceeded(
                    "no heartbeat within 10s of opening the stream",
                ));
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
        let (tx, rx) = mpsc::channel(OUTBOUND_CAPACITY);
        let accepted = self.registry.connect(&first, tx.clone())?;
        debug!(id = %first.worker_id, ?peer, "heartbeat stream accepted");
        let _ = tx.try_send(Ok(ack(first.sequence)));
        let registry = self.registry.clone();
        tokio::spawn(async move {
            let id = first.worker_id;
            let generation = accepted.generation;
            let mut end = accepted.end;
            loop {
                let msg = tokio::select! {
                    status = &mut end => {
                        if let Ok(status) = status {
                            let _ = tx.send(Err(status)).await;
                        }
                        break;
                    }
                    msg = inbound.message() => msg,
                };
                match msg {
                    Ok(Some(pb::WorkerMessage {
                        body: Some(Body::Heartbeat(hb)),
                    })) => match registry.heartbeat(&id, generation, &hb) {
                        // An acknowledgement may be dropped when the worker reads slowly;
                        // the next one will do.
                        Ok(()) => drop(tx.try_send(Ok(ack(hb.sequence)))),
                        Err(err) => {
                            let _ = tx.send(Err(err.into())).await;
                            break;
                        }
                    },
                    Ok(Some(other)) => {
                        debug!(%id, ?other, "message not handled yet");
                    }
                    Ok(None) => break,
                    Err(status) => {
                        debug!(%id, %status, "heartbeat stream broke");
                        break;
                    }
                }
            }
            registry.disconnect(&id, generation);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

fn ack(sequence: u64) -> pb::MasterMessage {
    pb::MasterMessage {
        body: Some(pb::master_message::Body::Ack(pb::HeartbeatAck { sequence })),
    }
}

#[tonic::async_trait]
impl pb::admin_server::Admin for Master {
    async fn list_workers(
        &self,
        request: Request<pb::ListWorkersRequest>,
    ) -> Result<Response<pb::ListWorkersResponse>, Status> {
        let workers = self.registry.list(request.into_inner().all);
        Ok(Response::new(pb::ListWorkersResponse { workers }))
    }

    async fn get_worker(
        &self,
        request: Request<pb::GetWorkerRequest>,
    ) -> Result<Response<pb::WorkerInfo>, Status> {
        let worker = request.into_inner().worker;
        if worker.is_empty() {
            return Err(Status::invalid_argument("give a worker id or name"));
        }
        Ok(Response::new(self.registry.get(&worker)?))
    }
}
