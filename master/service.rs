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

use clap::ValueEnum;
use herd::config::SchedulerKind;
use herd::domain::{TaskSpec, TaskState, WorkerSpec};
use herd::pb;
use herd::pb::worker_message::Body;

use crate::metrics::Metrics;
use crate::output::OutputDir;
use crate::registry::Registry;
use crate::store::{Store, Write};

/// Messages queued towards one worker; past this, acknowledgements are dropped and
/// assignments wait for the next scheduling pass.
const OUTBOUND_CAPACITY: usize = 1024;
/// How often `task logs --follow` looks for new output.
const FOLLOW_PERIOD: Duration = Duration::from_millis(200);
/// Largest piece of output in one TaskLogsChunk, far below the message limit.
const LOG_CHUNK: usize = 256 * 1024;

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
        self.store
            .write(Write::Worker(Box::new(registered.record)))
            .await?;
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
        let (tx, rx) = mpsc::channel(OUTBOUND_CAPACITY);
        let accepted = self.registry.connect(&first, tx.clone())?;
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
                        if let Ok(status) = status {
                            let _ = tx.send(Err(status)).await;
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
                        debug!(%id, %status, "heartbeat stream broke");
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
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
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
    tx: &mpsc::Sender<Result<pb::MasterMessage, Status>>,
    mut message: pb::MasterMessage,
    finished: Vec<String>,
) {
    if finished.is_empty() {
        let _ = tx.try_send(Ok(message));
        return;
    }
    let (store, tx) = (store.clone(), tx.clone());
    tokio::spawn(async move {
        if store.sync().await.is_ok() {
            if let Some(pb::master_message::Body::Ack(a)) = message.body.as_mut() {
                a.finished_task_ids = finished;
            }
            let _ = tx.send(Ok(message)).await;
        }
    });
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

    async fn submit_task(
        &self,
        request: Request<pb::SubmitTaskRequest>,
    ) -> Result<Response<pb::TaskInfo>, Status> {
        let spec = request
            .into_inner()
            .spec
            .ok_or_else(|| Status::invalid_argument("SubmitTaskRequest has no task spec"))?;
        let task = self.registry.new_task(TaskSpec::try_from(spec)?);
        // Stored before its id is handed out: an acknowledged task survives kill -9.
        self.store
            .write(Write::Task(Box::new(task.clone())))
            .await?;
        Ok(Response::new(self.registry.enqueue(task)))
    }

    async fn list_tasks(
        &self,
        request: Request<pb::ListTasksRequest>,
    ) -> Result<Response<pb::ListTasksResponse>, Status> {
        let state = match request.into_inner().state() {
            pb::TaskState::Unspecified => None,
            other => Some(TaskState::try_from(other)?),
        };
        Ok(Response::new(pb::ListTasksResponse {
            tasks: self.registry.tasks(state),
        }))
    }

    async fn get_task(
        &self,
        request: Request<pb::GetTaskRequest>,
    ) -> Result<Response<pb::TaskInfo>, Status> {
        Ok(Response::new(
            self.registry.task(&request.into_inner().task_id)?,
        ))
    }

    async fn cancel_task(
        &self,
        request: Request<pb::CancelTaskRequest>,
    ) -> Result<Response<pb::TaskInfo>, Status> {
        let info = self.registry.cancel(&request.into_inner().task_id)?;
        // "Cancelled" is said only once it is stored.
        self.store.sync().await?;
        Ok(Response::new(info))
    }

    type TaskLogsStream =
        Pin<Box<dyn Stream<Item = Result<pb::TaskLogsChunk, Status>> + Send + 'static>>;

    async fn task_logs(
        &self,
        request: Request<pb::TaskLogsRequest>,
    ) -> Result<Response<Self::TaskLogsStream>, Status> {
        let pb::TaskLogsRequest { task_id, follow } = request.into_inner();
        self.registry.logs(&task_id)?;
        let (tx, rx) = mpsc::channel(4);
        let (registry, store, output) = (
            self.registry.clone(),
            self.store.clone(),
            self.output.clone(),
        );
        tokio::spawn(async move {
            if let Err(status) =
                stream_logs(&registry, &store, &output, &task_id, follow, &tx).await
            {
                let _ = tx.send(Err(status)).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn scheduler(
        &self,
        request: Request<pb::SchedulerRequest>,
    ) -> Result<Response<pb::SchedulerResponse>, Status> {
        let name = request.into_inner().name;
        let to = if name.is_empty() {
            None
        } else {
            Some(SchedulerKind::from_str(&name, false).map_err(|_| {
                Status::invalid_argument(format!(
                    "unknown scheduler '{name}': use round-robin or resource-aware"
                ))
            })?)
        };
        let kind = self.registry.scheduler(to);
        Ok(Response::new(pb::SchedulerResponse {
            name: scheduler_name(kind),
        }))
    }

    async fn drain(
        &self,
        request: Request<pb::DrainRequest>,
    ) -> Result<Response<pb::WorkerInfo>, Status> {
        let pb::DrainRequest { worker, drain } = request.into_inner();
        let record = self.registry.drain(&worker, drain)?;
        let id = record.id.clone();
        // Acknowledged only once stored: a drain survives a restart.
        self.store
            .write(Write::Draining {
                id: record.id,
                draining: drain,
            })
            .await?;
        Ok(Response::new(self.registry.get(&id)?))
    }

    async fn summary(
        &self,
        _request: Request<pb::SummaryRequest>,
    ) -> Result<Response<pb::ClusterSummary>, Status> {
        let summary = self.registry.summary();
        let counts = |list: Vec<(&str, usize)>| {
            list.into_iter()
                .map(|(state, n)| pb::StateCount {
                    state: state.to_string(),
                    count: n as u32,
                })
                .collect()
        };
        Ok(Response::new(pb::ClusterSummary {
            workers: counts(summary.workers),
            tasks: counts(summary.tasks),
            queue_length: summary.queued as u32,
            scheduler: scheduler_name(summary.scheduler),
        }))
    }
}

fn scheduler_name(kind: SchedulerKind) -> String {
    kind.to_possible_value()
        .map(|v| v.get_name().to_string())
        .unwrap_or_default()
}

/// Sends a task's output (what the master keeps of its latest attempt) in chunks well under
/// the message limit; with `follow`, goes on until the task ends.
async fn stream_logs(
    registry: &Registry,
    store: &Store,
    output: &OutputDir,
    task_id: &str,
    follow: bool,
    tx: &mpsc::Sender<Result<pb::TaskLogsChunk, Status>>,
) -> Result<(), Status> {
    let first = registry.logs(task_id)?;
    if first.done && !output.exists(task_id) {
        // Ended before output moved to files: what SQLite kept.
        let data = store.read_output(task_id).await?;
        for piece in data.chunks(LOG_CHUNK) {
            let chunk = pb::TaskLogsChunk {
                data: piece.to_vec(),
            };
            if tx.send(Ok(chunk)).await.is_err() {
                return Ok(());
            }
        }
        return Ok(());
    }
    let (mut attempt, mut from) = (first.attempt, 0u64);
    loop {
        // Everything handed to the store so far is on disk after this.
        store.sync().await?;
        let view = registry.logs(task_id)?;
        if view.attempt != attempt {
            (attempt, from) = (view.attempt, 0);
        }
        // A finished task's length is what its files hold (not kept in memory after a
        // restart).
        let end = if view.done { u64::MAX } else { view.len };
        while from < end {
            let want = LOG_CHUNK.min((end - from).min(LOG_CHUNK as u64) as usize);
            let (task, out) = (task_id.to_string(), output.clone());
            let read = tokio::task::spawn_blocking(move || out.read(&task, attempt, from, want))
                .await
                .map_err(|e| Status::internal(format!("reading the output failed: {e}")))?
                .map_err(|e| Status::internal(format!("cannot read the task's output: {e}")))?;
            let (start, data) = read;
            if data.is_empty() {
                break;
            }
            from = start + data.len() as u64;
            if tx.send(Ok(pb::TaskLogsChunk { data })).await.is_err() {
                return Ok(());
            }
        }
        if view.done || !follow {
            return Ok(());
        }
        tokio::select! {
            _ = tokio::time::sleep(FOLLOW_PERIOD) => {}
            _ = tx.closed() => return Ok(()),
        }
    }
}
