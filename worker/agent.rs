//! The worker agent: registers, adopts the id the master assigns, keeps one heartbeat
//! stream open, and reconnects by itself (registering again when the master no longer
//! knows its id), with capped exponential backoff and jitter while the master is away.
//! On shutdown it sends a last heartbeat saying STOPPING and closes the stream.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::MissedTickBehavior;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::transport::Channel;

use herd::auth::Bearer;
use herd::client::{Authed, Masters};
use herd::error::Error;
use tracing::{debug, info, warn};

use herd::pb;
use herd::pb::master_message::Body as ToWorker;
use herd::pb::registry_client::RegistryClient;

use crate::executor::Executor;
use crate::identity::Secret;
use crate::lease::Lease;
use crate::ledger::Outgoing;
use crate::telemetry::Telemetry;

/// First pause after a failed attempt.
const BACKOFF_START: Duration = Duration::from_millis(200);
/// Longest pause between attempts, so a restarted master sees its workers back quickly: one
/// heartbeat interval (a worker is not Active without heartbeats anyway), between these.
const BACKOFF_CAP_MIN: Duration = Duration::from_secs(1);
const BACKOFF_CAP: Duration = Duration::from_secs(5);

/// Capped exponential backoff with jitter (each pause is 50–100% of the current step).
struct Backoff {
    step: Duration,
}

impl Backoff {
    fn new() -> Backoff {
        Backoff {
            step: BACKOFF_START,
        }
    }

    fn reset(&mut self) {
        self.step = BACKOFF_START;
    }

    /// The next pause, growing up to one heartbeat `interval` (clamped to 1..5 s).
    fn next(&mut self, interval: Duration) -> Duration {
        let cap = interval.clamp(BACKOFF_CAP_MIN, BACKOFF_CAP);
        self.step = self.step.min(cap);
        let pause = self.step.mul_f64(0.5 + fastrand::f64() * 0.5);
        self.step = (self.step * 2).min(cap);
        pause
    }
}

/// The longest a worker waits for a master to answer a call.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// How a heartbeat session ended.
enum Ended {
    /// The master does not know our id: register again.
    Unknown(String),
    /// The connection or stream failed; try again after a pause.
    Lost(String),
    /// A standby refused us and named the leader (its URL): go there.
    Redirect(String),
    /// We are shutting down.
    Shutdown,
    /// The master refused us in a way retrying cannot heal (the token, our description):
    /// the worker ends with this message.
    Refused(Error),
}

/// What a refusal that cannot heal says, if `status` is one.
fn refusal(status: &tonic::Status) -> Option<Error> {
    let refused = || format!("the master refused this worker: {}", status.message());
    match status.code() {
        Code::Unauthenticated if status.message().contains("client certificate") => {
            Some(Error::setup(refused()))
        }
        Code::Unauthenticated => Some(Error::setup(format!(
            "the master refused this worker's token ({}): give the join token from the \
             master's <data-dir>/join-token (default ~/.local/state/herd/join-token) with \
             --token, HERD_TOKEN or --token-file",
            status.message()
        ))),
        // The token is of the wrong kind, the secret or the certificate is not this
        // worker's, or the name belongs to another worker.
        Code::PermissionDenied => Some(Error::PermissionDenied(refused())),
        Code::AlreadyExists => Some(Error::AlreadyExists(refused())),
        _ => None,
    }
}

/// Whether to obey `master`, which says it leads in `term` (none: a master without
/// standbys), having seen `newest` before; a newer term becomes the newest.
fn obey_term(newest: &mut i64, term: Option<i64>, master: &str) -> Result<(), String> {
    let Some(term) = term else {
        return Ok(());
    };
    if term < *newest {
        return Err(format!(
            "{master} leads in term {term}, older than term {newest} seen before: not obeyed"
        ));
    }
    *newest = term;
    Ok(())
}

pub struct Agent {
    /// The masters (TLS settings included), and the one talked to now.
    masters: Masters,
    /// The newest leader's term seen: a master of an older one is not obeyed.
    newest_term: i64,
    /// The cluster token on every call.
    bearer: Bearer,
    pub description: pb::WorkerDescription,
    pub telemetry: Telemetry,
    pub executor: Executor,
    /// What tasks report; forwarded into whichever stream is open (kept across streams).
    outbox: Option<mpsc::Receiver<Outgoing>>,
    /// Last id the master gave us.
    id: Option<String>,
    /// Heartbeat period the master asked for.
    interval: Duration,
    /// Heartbeat sequence, continuous across reconnects.
    sequence: Arc<AtomicU64>,
    /// Whether the last attempt reached the master (to log changes, not every try).
    reachable: bool,
    /// The secret that proves who we are (once the master issued one).
    secret: Secret,
    /// Fencing: renewed at every acknowledgement; the supervisors stop their tasks when it
    /// runs out.
    lease: Lease,
}

impl Agent {
    // Each is a separate part of the worker, built in main.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        masters: Masters,
        bearer: Bearer,
        description: pb::WorkerDescription,
        telemetry: Telemetry,
        executor: Executor,
        outbox: mpsc::Receiver<Outgoing>,
        secret: Secret,
    ) -> Agent {
        Agent {
            lease: Lease::new(executor.work_dir()),
            secret,
            masters,
            newest_term: 0,
            bearer,
            description,
            telemetry,
            executor,
            outbox: Some(outbox),
            id: None,
            interval: Duration::from_secs(5),
            sequence: Arc::new(AtomicU64::new(0)),
            reachable: true,
        }
    }

    /// Runs until `shutdown` flips, or ends with the reason the master refused us for good.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) -> Result<(), Error> {
        let mut backoff = Backoff::new();
        loop {
            if *shutdown.borrow() {
                return Ok(());
            }
            let ended = match self.connect().await {
                Ok(channel) => self.session(channel, &mut backoff, &mut shutdown).await,
                Err(ended) => ended,
            };
            if let Ended::Redirect(leader) = &ended
                && self.masters.follow(leader)
            {
                info!(master = %self.masters.current(), "a standby named the leader; following it");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                    _ = shutdown.changed() => return Ok(()),
                }
                continue;
            }
            match ended {
                Ended::Shutdown => return Ok(()),
                Ended::Refused(why) => return Err(why),
                Ended::Unknown(msg) => {
                    warn!(id = ?self.id, reason = %msg, "the master does not know this worker; registering again");
                    self.id = None;
                    continue;
                }
                Ended::Lost(err) | Ended::Redirect(err) => {
                    if self.reachable {
                        warn!(master = %self.masters.current(), error = %err, "lost the master; retrying with backoff");
                        self.reachable = false;
                    } else {
                        debug!(error = %err, "master still unreachable");
                    }
                    // Another master may lead now.
                    self.masters.next();
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff.next(self.interval)) => {}
                _ = shutdown.changed() => return Ok(()),
            }
        }
    }

    /// A connection to the current master. A certificate or scheme that cannot work ends
    /// the worker with what to fix, instead of retrying for ever.
    async fn connect(&self) -> Result<Channel, Ended> {
        let endpoint = self.masters.endpoint().map_err(Ended::Refused)?;
        endpoint.connect().await.map_err(|err| {
            let url = self.masters.current();
            match herd::client_trouble::setup_trouble(&err, url) {
                Some(trouble) => Ended::Refused(Error::Setup(trouble)),
                None => Ended::Lost(format!("cannot connect: {err}")),
            }
        })
    }

    /// Whether the master that answered leads in a term at least as new as the newest
    /// seen: a deposed leader, resumed, is not obeyed.
    fn current_term(&mut self, meta: &tonic::metadata::MetadataMap) -> Result<(), Ended> {
        let term = herd::client::term_of(meta);
        obey_term(&mut self.newest_term, term, self.masters.current()).map_err(Ended::Lost)
    }

    async fn register(&mut self, client: &mut RegistryClient<Authed>) -> Result<String, Ended> {
        let request = client.register(pb::RegisterRequest {
            worker: Some(self.description.clone()),
            worker_secret: self.secret.current().to_string(),
        });
        // A frozen master accepts the connection and answers nothing: try another.
        let response = tokio::time::timeout(CALL_TIMEOUT, request)
            .await
            .map_err(|_| Ended::Lost(format!("no answer to register within {CALL_TIMEOUT:?}")))?
            .map_err(|status| match status.code() {
                // Our own description is wrong: retrying cannot help.
                Code::InvalidArgument => Ended::Refused(Error::invalid(format!(
                    "the master refused this worker: {}",
                    status.message()
                ))),
                _ if let Some(trouble) =
                    herd::client_trouble::setup_trouble(&status, self.masters.current()) =>
                {
                    Ended::Refused(Error::Setup(trouble))
                }
                _ => match (refusal(&status), herd::client::leader_hint(&status)) {
                    (Some(why), _) => Ended::Refused(why),
                    (None, Some((leader, _))) => Ended::Redirect(leader),
                    (None, None) => Ended::Lost(format!("register failed: {}", status.message())),
                },
            })?;
        self.current_term(response.metadata())?;
        if let Some(warning) = response
            .metadata()
            .get("herd-warning")
            .and_then(|v| v.to_str().ok())
        {
            warn!("THE MASTER SAYS: {warning}");
        }
        let response = response.into_inner();
        if response.worker_secret.is_empty() {
            self.secret.accepted().map_err(Ended::Refused)?;
        } else {
            self.secret
                .keep(response.worker_secret)
                .map_err(Ended::Refused)?;
        }
        self.interval = Duration::from_millis(response.heartbeat_interval_ms.max(10));
        self.lease.granted(response.fence_after_ms);
        info!(
            worker = %self.description.name, id = %response.worker_id,
            reregistered = response.reregistered, heartbeat_interval = ?self.interval,
            "registered; adopting the id the master assigned"
        );
        Ok(response.worker_id)
    }

    async fn session(
        &mut self,
        channel: Channel,
        backoff: &mut Backoff,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Ended {
        let mut client = RegistryClient::with_interceptor(channel, self.bearer.clone())
            .max_decoding_message_size(herd::domain::MAX_MESSAGE_BYTES);
        let id = match self.id.clone() {
            Some(id) => id,
            None => match self.register(&mut client).await {
                Ok(id) => {
                    self.id = Some(id.clone());
                    id
                }
                Err(ended) => return ended,
            },
        };

        let (tx, rx) = mpsc::channel(16);
        let mut heartbeats = HeartbeatSource {
            id: id.clone(),
            telemetry: self.telemetry.clone(),
            executor: self.executor.clone(),
            sequence: self.sequence.clone(),
            stopping: false,
        };
        // The first heartbeat of a stream proves who we are.
        let mut first = heartbeats.next();
        if let Some(pb::worker_message::Body::Heartbeat(hb)) = first.body.as_mut() {
            hb.worker_secret = self.secret.current().to_string();
        }
        let _ = tx.try_send(first);
        let opened = tokio::time::timeout(CALL_TIMEOUT, client.heartbeat(ReceiverStream::new(rx)));
        let Ok(opened) = opened.await else {
            return Ended::Lost(format!("no answer to the stream within {CALL_TIMEOUT:?}"));
        };
        let mut inbound = match opened {
            Ok(response) => {
                if let Err(ended) = self.current_term(response.metadata()) {
                    return ended;
                }
                response.into_inner()
            }
            Err(status) if status.code() == Code::NotFound => {
                return Ended::Unknown(status.message().to_string());
            }
            Err(status) => {
                return match (refusal(&status), herd::client::leader_hint(&status)) {
                    (Some(why), _) => Ended::Refused(why),
                    (None, Some((leader, _))) => Ended::Redirect(leader),
                    (None, None) => Ended::Lost(format!("heartbeat stream refused: {status}")),
                };
            }
        };
        if !self.reachable {
            info!(master = %self.masters.current(), "master reachable again");
        }
        self.reachable = true;
        backoff.reset();
        info!(%id, master = %self.masters.current(), "heartbeat stream open");

        // Task reports go into the same stream, forwarded by a task of their own; the
        // outbox survives the stream and is handed back when it ends.
        let (stop_forwarding, mut stopped) = oneshot::channel::<()>();
        let forwarder = {
            let mut outbox = self
                .outbox
                .take()
                .expect("the outbox is home between streams");
            let tx = tx.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = &mut stopped => break,
                        msg = outbox.recv() => match msg {
                            Some(Outgoing { msg, delivered }) => {
                                if tx.send(msg).await.is_err() {
                                    break;
                                }
                                if let Some(delivered) = delivered {
                                    let _ = delivered.send(());
                                }
                            }
                            None => break,
                        },
                    }
                }
                outbox
            })
        };

        // Heartbeats run on their own task: nothing the worker does can delay them.
        let mut last_words = heartbeats.clone();
        let sender = {
            let tx = tx.clone();
            let period = self.interval;
            tokio::spawn(async move {
                let mut ticks = tokio::time::interval(period);
                ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
                ticks.tick().await; // the first heartbeat already went with the stream
                loop {
                    ticks.tick().await;
                    if tx.send(heartbeats.next()).await.is_err() {
                        break;
                    }
                }
            })
        };

        let mut first_ack = true;
        // A master that answers nothing for this long (frozen, or cut off on the way back)
        // is lost: another may lead.
        let silence = (self.interval * 4).max(Duration::from_secs(2));
        let ended = loop {
            let msg = tokio::select! {
                msg = inbound.message() => msg,
                _ = shutdown.changed() => break Ended::Shutdown,
                _ = tokio::time::sleep(silence) => {
                    break Ended::Lost(format!("no word from the master for {silence:?}"));
                }
            };
            match msg {
                Ok(Some(pb::MasterMessage { body: Some(body) })) => match body {
                    ToWorker::Ack(ack) => {
                        debug!(sequence = ack.sequence, "heartbeat acknowledged");
                        self.lease.renew();
                        if first_ack {
                            // Only the first ack of a stream says where output resumes.
                            self.executor.resume(&ack.resume);
                            first_ack = false;
                        }
                        self.executor.acknowledged(&ack.finished_task_ids);
                    }
                    ToWorker::Assign(task) => {
                        info!(task = %task.task_id, attempt = task.attempt, "task assigned");
                        self.executor.assign(task);
                    }
                    ToWorker::Cancel(order) => self.executor.cancel(&order),
                },
                Ok(Some(pb::MasterMessage { body: None })) => {}
                Ok(None) => break Ended::Lost("the master closed the stream".into()),
                Err(status) if status.code() == Code::NotFound => {
                    break Ended::Unknown(status.message().to_string());
                }
                Err(status) => {
                    break Ended::Lost(format!("{}: {}", status.code(), status.message()));
                }
            }
        };
        sender.abort();
        let _ = stop_forwarding.send(());
        match forwarder.await {
            Ok(outbox) => self.outbox = Some(outbox),
            Err(err) => panic!("the outbox forwarder failed: {err}"),
        }
        if matches!(ended, Ended::Shutdown) {
            // The last word: the master marks us Inactive ("shut down") at once and leaves
            // our tasks placed here, to be reattached when we are back.
            // Closing our side ends the stream; wait (briefly: a stalled stream must not
            // hold up the exit) until the master has read it, so the last heartbeat is not
            // cut off with the connection.
            last_words.stopping = true;
            let _ = tokio::time::timeout(Duration::from_secs(2), async move {
                let _ = tx.send(last_words.next()).await;
                drop(tx);
                while let Ok(Some(_)) = inbound.message().await {}
            })
            .await;
            info!(%id, "sent the stopping heartbeat; stream closed");
        }
        ended
    }
}

/// Builds successive heartbeats.
#[derive(Clone)]
struct HeartbeatSource {
    id: String,
    telemetry: Telemetry,
    executor: Executor,
    sequence: Arc<AtomicU64>,
    /// The worker is shutting down: say so.
    stopping: bool,
}

impl HeartbeatSource {
    fn next(&mut self) -> pb::WorkerMessage {
        let (running, held, finished) = self.executor.report();
        let activity = if self.stopping {
            pb::WorkerActivity::Stopping
        } else if running.is_empty() {
            pb::WorkerActivity::Idle
        } else {
            pb::WorkerActivity::Busy
        };
        pb::WorkerMessage {
            body: Some(pb::worker_message::Body::Heartbeat(pb::Heartbeat {
                worker_id: self.id.clone(),
                sequence: self.sequence.fetch_add(1, Ordering::Relaxed) + 1,
                activity: activity as i32,
                usage: Some(self.telemetry.latest()),
                running_task_ids: running,
                finished,
                held,
                worker_secret: String::new(),
            })),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A leader deposed while frozen, resumed, still answers as the leader of its old term
    /// for a moment: a worker that has seen the newer term does not obey it.
    #[test]
    fn a_master_of_an_older_term_than_seen_is_not_obeyed() {
        let mut newest = 0;
        assert_eq!(obey_term(&mut newest, Some(1), "http://a:1"), Ok(()));
        assert_eq!(obey_term(&mut newest, Some(2), "http://b:1"), Ok(()));
        assert_eq!(newest, 2);
        let refused = obey_term(&mut newest, Some(1), "http://a:1").unwrap_err();
        assert_eq!(
            refused,
            "http://a:1 leads in term 1, older than term 2 seen before: not obeyed"
        );
        assert_eq!(newest, 2, "the newest term stays");
        assert_eq!(obey_term(&mut newest, Some(2), "http://b:1"), Ok(()));
        // A master without standbys names no term.
        assert_eq!(obey_term(&mut newest, None, "http://c:1"), Ok(()));
    }

    #[test]
    fn backoff_grows_to_the_cap_with_jitter_and_resets() {
        let mut b = Backoff::new();
        let five = Duration::from_secs(5);
        let first = b.next(five);
        assert!(first >= BACKOFF_START / 2 && first <= BACKOFF_START);
        for _ in 0..20 {
            let pause = b.next(five);
            assert!(pause <= BACKOFF_CAP, "{pause:?}");
        }
        assert!(b.next(five) >= BACKOFF_CAP / 2);
        b.reset();
        assert!(b.next(five) <= BACKOFF_START);
        // With a 1 s heartbeat, never more than 1 s between attempts; and never more than
        // 5 s however long the interval.
        for _ in 0..20 {
            assert!(b.next(Duration::from_secs(1)) <= Duration::from_secs(1));
        }
        for _ in 0..20 {
            assert!(b.next(Duration::from_secs(60)) <= BACKOFF_CAP);
        }
    }
}
