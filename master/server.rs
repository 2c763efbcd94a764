//! The gRPC servers: the public one (TCP, optionally TLS, with health and reflection) and
//! an in-process one that the master's own REPL talks to. Both put every Registry and Admin
//! call through the token gate.

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

use herd::auth::authorized;
use herd::domain::MAX_MESSAGE_BYTES;
use herd::pb;
use herd::pb::admin_server::AdminServer;
use herd::pb::registry_server::RegistryServer;

use crate::service::Master;

/// HTTP/2 streams one connection may hold open (a load generator multiplexes thousands of
/// simulated workers over a few connections).
const MAX_STREAMS_PER_CONNECTION: u32 = 16_384;

/// Refuses calls without the cluster token (when there is one).
#[derive(Clone)]
pub struct Gate {
    token: Option<Arc<str>>,
}

impl Gate {
    pub fn new(token: Option<String>) -> Gate {
        Gate {
            token: token.map(Arc::from),
        }
    }
}

impl Interceptor for Gate {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(token) = &self.token else {
            return Ok(request);
        };
        if authorized(&request, token) {
            return Ok(request);
        }
        let given = request.metadata().contains_key("authorization");
        warn!(peer = ?request.remote_addr(), token_given = given, "refused a call without a valid token");
        Err(Status::unauthenticated(if given {
            "wrong cluster token: use the one in the master's <data-dir>/token"
        } else {
            "no cluster token: pass --token, HERD_TOKEN or --token-file \
             (the master keeps it in <data-dir>/token)"
        }))
    }
}

fn router(server: &mut Server, master: &Master, gate: &Gate) -> tonic::transport::server::Router {
    let registry = RegistryServer::new(master.clone())
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let admin = AdminServer::new(master.clone())
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    server
        .add_service(InterceptedService::new(registry, gate.clone()))
        .add_service(InterceptedService::new(admin, gate.clone()))
}

/// Serves the public gRPC API on `listener` until `shutdown` flips.
pub async fn serve_tcp(
    listener: TcpListener,
    tls: Option<ServerTlsConfig>,
    master: Master,
    gate: Gate,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<JoinHandle<Result<(), tonic::transport::Error>>> {
    let (health, health_service) = tonic_health::server::health_reporter();
    // SQLite is open and loaded before the server starts: serving from the first call.
    health.set_serving::<RegistryServer<Master>>().await;
    health.set_serving::<AdminServer<Master>>().await;
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
    let router = router(&mut server, &master, &gate)
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
/// neither the network, nor TLS, nor a client certificate, yet goes through the same gate.
pub fn in_process(master: Master, gate: Gate, mut shutdown: watch::Receiver<bool>) -> Channel {
    let (connections, incoming) = mpsc::channel::<tokio::io::DuplexStream>(4);
    let mut server = Server::builder();
    let router = router(&mut server, &master, &gate);
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
