//! What a standby master serves while another leads: gRPC health (the herd services
//! NOT_SERVING), UNAVAILABLE with the leader's address and term (`herd-leader`,
//! `herd-term`) for every other call, and over HTTP a 503 naming the leader (JSON under
//! `/api`, a page with a link to the leader's dashboard elsewhere).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, Uri};
use axum::response::{Html, IntoResponse, Response};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::service::Routes;
use tonic::transport::{Server, ServerTlsConfig};
use tracing::warn;

use herd::pb::admin_server::AdminServer;
use herd::pb::registry_server::RegistryServer;

use super::election::Leader;
use crate::grpc::{AdminService, WorkerService};

/// The servers of a standby, until [`Standby::stop`].
pub struct Standby {
    stop: watch::Sender<bool>,
    grpc: JoinHandle<()>,
    http: Option<JoinHandle<()>>,
}

/// The listeners and TLS a standby (and then the leader) serves on.
pub struct Listeners {
    pub grpc: TcpListener,
    pub grpc_tls: Option<ServerTlsConfig>,
    pub http: Option<TcpListener>,
    pub http_tls: Option<Arc<rustls::ServerConfig>>,
}

impl Standby {
    /// Serves on `listeners`, answering with what `leader` says.
    pub async fn serve(
        listeners: Listeners,
        leader: watch::Receiver<Leader>,
    ) -> anyhow::Result<Standby> {
        let (stop, stopped) = watch::channel(false);
        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_not_serving::<RegistryServer<WorkerService>>()
            .await;
        health.set_not_serving::<AdminServer<AdminService>>().await;
        health
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        let known = leader.clone();
        let routes = Routes::new(health_service)
            .into_axum_router()
            .fallback(move || {
                let leader = known.borrow().clone();
                async move { unavailable(&leader) }
            });
        let mut server = Server::builder();
        if let Some(tls) = listeners.grpc_tls {
            server = server.tls_config(tls)?;
        }
        let incoming = tonic::transport::server::TcpIncoming::from(listeners.grpc);
        let mut until = stopped.clone();
        let served = server
            .add_routes(Routes::from(routes))
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = until.changed().await;
            });
        let grpc = tokio::spawn(async move {
            if let Err(err) = served.await {
                warn!(%err, "the standby's gRPC server failed");
            }
        });
        let http = listeners.http.map(|listener| {
            let router = axum::Router::new().fallback(move |uri: Uri| {
                let leader = leader.borrow().clone();
                async move { http_answer(&uri, &leader) }
            });
            let served = crate::http::serve(listener, router, listeners.http_tls, stopped);
            tokio::spawn(async move {
                if let Err(err) = served.await {
                    warn!(%err, "the standby's HTTP server failed");
                }
            })
        });
        Ok(Standby { stop, grpc, http })
    }

    /// Stops serving and frees the ports (within 2 s: connections still open are cut).
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for task in [Some(self.grpc), self.http].into_iter().flatten() {
            let abort = task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(2), task)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }
}

/// The words a client is given.
fn message(leader: &Leader) -> String {
    match leader.address.grpc.as_str() {
        "" => "this master is a standby, and no master leads yet; try again shortly".into(),
        at => format!(
            "this master is a standby; the leader (term {}) is {at}",
            leader.term
        ),
    }
}

/// A gRPC call refused: UNAVAILABLE, with `herd-leader` and `herd-term` when one leads.
fn unavailable(leader: &Leader) -> Response {
    let mut status = tonic::Status::unavailable(message(leader));
    if let Ok(at) = leader.address.grpc.parse() {
        status.metadata_mut().insert("herd-leader", at);
        status
            .metadata_mut()
            .insert("herd-term", leader.term.into());
    }
    status.into_http::<axum::body::Body>()
}

fn http_answer(uri: &Uri, leader: &Leader) -> Response {
    let http = &leader.address.http;
    if uri.path().starts_with("/api/") || uri.path() == "/api" || uri.path() == "/metrics" {
        let body = serde_json::json!({
            "error": message(leader),
            "code": "UNAVAILABLE",
            "leader": http,
            "term": leader.term,
        });
        let mut response = (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response();
        response
            .headers_mut()
            .insert("retry-after", HeaderValue::from_static("1"));
        return response;
    }
    let who = match http.as_str() {
        "" => "no master leads yet; this page reloads by itself".to_string(),
        url => {
            let url = escape(url);
            format!(
                "the leader is <a href=\"{url}\">{url}</a> (term {})",
                leader.term
            )
        }
    };
    let page = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>herd: standby</title>\
         <meta http-equiv=\"refresh\" content=\"2\"></head>\
         <body><h1>herd</h1><p>standby: {who}</p></body></html>"
    );
    (StatusCode::SERVICE_UNAVAILABLE, Html(page)).into_response()
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// `addr` as others reach it: this machine's host name for an unspecified address.
pub fn reachable_host(addr: SocketAddr) -> String {
    match addr.ip().is_unspecified() {
        true => sysinfo::System::host_name().unwrap_or_else(|_| "localhost".into()),
        false => match addr.ip() {
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
            ip => ip.to_string(),
        },
    }
}
