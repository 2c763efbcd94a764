//! The Registry gRPC service (what workers call), a thin adapter: `Register` checks the
//! call (client certificate, legacy token) and calls [`App::register`]; `Heartbeat` reads
//! the handshake and hands the stream to a [`WorkerSession`].

use std::pin::Pin;
use std::time::Duration;

use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use herd::domain::WorkerSpec;
use herd::pb;
use herd::pb::worker_message::Body;

use super::session::WorkerSession;
use crate::app::App;
use crate::identity::{WorkerToken, mtls, warn_legacy};

/// Told to a worker that presented the admin token (it logs it).
const LEGACY_WARNING: &str = "this worker presented the admin token; give it the join token \
     (<data-dir>/join-token on the master) instead";

/// The Registry service.
#[derive(Clone)]
pub struct WorkerService {
    pub app: App,
    /// How long a new stream may stay silent before its first heartbeat: a worker sends
    /// it at once, and one that cannot would be Inactive anyway.
    pub handshake_timeout: Duration,
    /// `--tls-client-ca`: worker connections carry a client certificate naming the worker.
    pub require_client_cert: bool,
    /// The term this master leads in (a PostgreSQL store), told to workers with every
    /// registration and stream (`herd-term`) so they never obey an older leader.
    pub term: Option<i64>,
}

impl WorkerService {
    fn tell_term<T>(&self, response: &mut Response<T>) {
        if let Some(term) = self.term {
            response.metadata_mut().insert("herd-term", term.into());
        }
    }
}

#[tonic::async_trait]
impl pb::registry_server::Registry for WorkerService {
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
        let registered = self.app.register(spec, &req.worker_secret, peer).await?;
        let mut response = Response::new(pb::RegisterResponse {
            worker_id: registered.id,
            heartbeat_interval_ms: self.app.cluster.heartbeat_interval().as_millis() as u64,
            reregistered: registered.reregistered,
            worker_secret: registered.secret.unwrap_or_default(),
            fence_after_ms: self.app.cluster.fence_after().as_millis() as u64,
        });
        if legacy {
            response
                .metadata_mut()
                .insert("herd-warning", LEGACY_WARNING.parse().expect("ASCII"));
        }
        self.tell_term(&mut response);
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
                tracing::debug!(peer = %herd::text::Maybe(&peer), "a heartbeat stream stayed silent; closed");
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
        // unknown id gets NOT_FOUND when the session opens, and the worker registers).
        match self.app.cluster.name_of(&first.worker_id) {
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
        let (session, outbound) = WorkerSession::open(&self.app, first, peer)?;
        tokio::spawn(session.run(inbound));
        let mut response = Response::new(Box::pin(outbound) as Self::HeartbeatStream);
        self.tell_term(&mut response);
        Ok(response)
    }
}
