//! The gRPC edge: the public server (TCP, optionally TLS, with health and reflection) and
//! an in-process one that the master's own REPL talks to. Both put every call through a
//! [`CredentialCheck`] of its credential, then to the Registry service (`workers.rs`, what
//! workers call; each heartbeat stream is a `session.rs` [`WorkerSession`]) or the Admin
//! service (`admin.rs`, what operators call), thin adapters over the operations in `ops/`.

mod admin;
mod session;
mod workers;

pub use admin::AdminService;
pub use session::WorkerSession;
pub use workers::WorkerService;

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint, Server, ServerTlsConfig};
use tonic::{Request, Status};
use tracing::warn;

use herd::domain::MAX_MESSAGE_BYTES;
use herd::pb;
use herd::pb::admin_server::AdminServer;
use herd::pb::registry_server::RegistryServer;

use crate::identity::{Caller, Credentials, Refusal};

/// HTTP/2 streams one connection may hold open (a load generator multiplexes thousands of
/// simulated workers over a few connections).
const MAX_STREAMS_PER_CONNECTION: u32 = 16_384;

/// Checks the credential of every call before it reaches a service: the Registry takes the
/// join token (and, for a migration, the admin token); Admin takes operator tokens and
/// hands the handlers the [`Caller`] they resolve to. The master's own REPL is trusted.
#[derive(Clone)]
pub enum CredentialCheck {
    Workers(Arc<Credentials>),
    Operators(Arc<Credentials>),
    /// Every call is this caller (the in-process channel of the master's REPL).
    Trusted(Caller),
}

fn bearer<T>(request: &Request<T>) -> Option<&str> {
    request
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

impl Interceptor for CredentialCheck {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let peer = request.remote_addr();
        let checked = match self {
            CredentialCheck::Trusted(caller) => {
                request.extensions_mut().insert(caller.clone());
                return Ok(request);
            }
            CredentialCheck::Workers(credentials) => {
                credentials.worker(bearer(&request)).map(|token| {
                    request.extensions_mut().insert(token);
                })
            }
            CredentialCheck::Operators(credentials) => {
                let peer = peer.map(|p| p.to_string()).unwrap_or_default();
                credentials.operator(bearer(&request), peer).map(|caller| {
                    request.extensions_mut().insert(caller);
                })
            }
        };
        match checked {
            Ok(_) => Ok(request),
            Err(refusal) => {
                let given = request.metadata().contains_key("authorization");
                match &refusal {
                    Refusal::Unauthenticated(_) => warn!(
                        peer = %herd::text::Maybe(&peer),
                        token_given = given,
                        "refused a call without a valid token"
                    ),
                    Refusal::PermissionDenied(why) => warn!(peer = %herd::text::Maybe(&peer), %why,
                        "refused a call with a token of the wrong kind"),
                }
                Err(refusal.into())
            }
        }
    }
}

/// The caller the Admin gate resolved (every Admin handler starts here).
pub fn caller<T>(request: &Request<T>) -> Result<Caller, Status> {
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("the call did not pass the token check"))
}

fn router(
    server: &mut Server,
    services: &WorkerService,
    workers: CredentialCheck,
    operators: CredentialCheck,
) -> tonic::transport::server::Router {
    let cluster = RegistryServer::new(services.clone())
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let admin = AdminServer::new(AdminService(services.app.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    server
        .add_service(InterceptedService::new(cluster, workers))
        .add_service(InterceptedService::new(admin, operators))
}

/// Serves the public gRPC API on `listener` until `shutdown` flips.
pub async fn serve_tcp(
    listener: TcpListener,
    tls: Option<ServerTlsConfig>,
    services: WorkerService,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<JoinHandle<Result<(), tonic::transport::Error>>> {
    let (health, health_service) = tonic_health::server::health_reporter();
    // SQLite is open and loaded before the server starts: serving from the first call.
    health.set_serving::<RegistryServer<WorkerService>>().await;
    health.set_serving::<AdminServer<AdminService>>().await;
    health
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let mut server = Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
        // Many workers' streams may share a connection (behind a proxy, or herd-bench's
        // generator). h2 resets a connection that holds more small DATA frames unread than
        // half its window allows (every heartbeat is one): a window sized for thousands of
        // streams keeps a moment's backlog from taking them all down.
        .initial_connection_window_size(Some(16 << 20))
        .initial_stream_window_size(Some(1 << 20));
    if let Some(tls) = tls {
        server = server.tls_config(tls)?;
    }
    let credentials = services.app.credentials.clone();
    let router = router(
        &mut server,
        &services,
        CredentialCheck::Workers(credentials.clone()),
        CredentialCheck::Operators(credentials),
    )
    .add_service(health_service)
    .add_service(reflection);
    // Accepted sockets get TCP_NODELAY here: the builder's setting only reaches sockets
    // tonic binds itself, and with Nagle on, a reply larger than one segment waits out the
    // peer's delayed ACK (40 ms).
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    Ok(tokio::spawn(router.serve_with_incoming_shutdown(
        incoming,
        async move {
            let _ = shutdown.changed().await;
        },
    )))
}

/// A channel to the same services, in memory: the master's REPL uses it, so it needs
/// neither the network, nor TLS, nor a token: whoever holds the master's terminal is its
/// admin, named [`Caller::repl`] in the audit log.
pub fn in_process(services: WorkerService, mut shutdown: watch::Receiver<bool>) -> Channel {
    let (connections, incoming) = mpsc::channel::<tokio::io::DuplexStream>(4);
    let mut server = Server::builder();
    let workers = CredentialCheck::Workers(services.app.credentials.clone());
    let router = router(
        &mut server,
        &services,
        workers,
        CredentialCheck::Trusted(Caller::repl()),
    );
    tokio::spawn(router.serve_with_incoming_shutdown(
        ReceiverStream::new(incoming).map(Ok::<_, std::io::Error>),
        async move {
            let _ = shutdown.changed().await;
        },
    ));
    Endpoint::from_static("http://in-process.invalid").connect_with_connector_lazy(
        tower::service_fn(move |_| {
            let connections = connections.clone();
            async move {
                let (client, server) = tokio::io::duplex(1 << 16);
                connections
                    .send(server)
                    .await
                    .map_err(|_| std::io::Error::other("the master is stopping"))?;
                Ok::<_, std::io::Error>(TokioIo::new(client))
            }
        }),
    )
}
