//! The HTTP listener (`--http-listen`): the JSON API under `/api/v1/` (thin adapters over
//! the same operations as gRPC, in `api.rs`), its event and log streams (`stream.rs`), the
//! dashboard (assets embedded in the binary), `/metrics` and `/healthz`. TLS with the same
//! certificate as gRPC when one is given.

mod access;
mod api;
mod openapi;
mod stream;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::{HeaderValue, StatusCode, header, request::Parts};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use herd::error::Error;

use crate::app::App;
use crate::events::Events;
use crate::history::History;
use crate::identity::Refusal;

/// What every handler can reach.
#[derive(Clone)]
pub struct Http {
    pub app: App,
    pub events: Arc<Events>,
    pub history: Arc<History>,
    /// Flips when the master stops: open streams end.
    pub shutdown: watch::Receiver<bool>,
}

/// An error as the API answers it: `{error, code}` with the HTTP status of its gRPC code.
pub struct ApiError(pub Error);

impl From<Error> for ApiError {
    fn from(err: Error) -> Self {
        ApiError(err)
    }
}

impl ApiError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match &self.0 {
            Error::InvalidArgument(_) => (StatusCode::BAD_REQUEST, "INVALID_ARGUMENT"),
            Error::NotFound(_) => (StatusCode::NOT_FOUND, "NOT_FOUND"),
            Error::FailedPrecondition(_) => (StatusCode::CONFLICT, "FAILED_PRECONDITION"),
            Error::AlreadyExists(_) => (StatusCode::CONFLICT, "ALREADY_EXISTS"),
            Error::PermissionDenied(_) => (StatusCode::FORBIDDEN, "PERMISSION_DENIED"),
            Error::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE"),
            Error::Storage(_) => (StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL"),
            Error::Setup(_) => (StatusCode::CONFLICT, "FAILED_PRECONDITION"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        error_body(status, code, &self.0.to_string())
    }
}

fn error_body(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({ "error": message, "code": code });
    (status, axum::Json(body)).into_response()
}

/// Refuses `/api` calls without an operator token (`Authorization: Bearer TOKEN`, or for
/// the two streams a browser's EventSource opens, which cannot set headers,
/// `?token=TOKEN`), and hands the handlers the [`crate::identity::Caller`] it resolves to.
/// The join token is refused with 403: it is a worker's credential.
async fn authorize(State(http): State<Http>, mut request: Request, next: Next) -> Response {
    let bearer = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);
    let streaming =
        request.uri().path().ends_with("/events") || request.uri().path().ends_with("/logs");
    let query = streaming
        .then(|| query_token(request.uri().query().unwrap_or_default()))
        .flatten();
    let given = bearer.or(query);
    let peer = request
        .extensions()
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let checked = http.app.credentials.operator(
        given.as_deref().map(str::trim),
        peer.map(|p| p.to_string()).unwrap_or_default(),
    );
    match checked {
        Ok(caller) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Err(Refusal::Unauthenticated(why)) => {
            warn!(peer = %herd::text::Maybe(&peer), path = %request.uri().path(), token_given = given.is_some(), "refused an HTTP call without a valid token");
            let why = match given {
                Some(_) => why,
                None => "no token: send Authorization: Bearer TOKEN (the master keeps the admin \
                         token in <data-dir>/token; tokens with roles come from `token create`)"
                    .into(),
            };
            error_body(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED", &why)
        }
        Err(Refusal::PermissionDenied(why)) => {
            warn!(peer = %herd::text::Maybe(&peer), path = %request.uri().path(), %why, "refused an HTTP call with a token of the wrong kind");
            error_body(StatusCode::FORBIDDEN, "PERMISSION_DENIED", &why)
        }
    }
}

fn query_token(query: &str) -> Option<String> {
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix("token="))
        .map(|t| t.to_string())
}

/// A JSON body that says what is wrong with it (400, not axum's plain-text 422).
pub struct JsonBody<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> axum::extract::FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(JsonBody(value)),
            Err(rejection) => Err(ApiError(Error::invalid(format!(
                "the request body is not what this call takes: {}",
                herd::text::clip(&rejection.body_text())
            )))),
        }
    }
}

/// Query parameters that say what is wrong with them (400).
pub struct Query<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(Query(value)),
            Err(rejection) => Err(ApiError(Error::invalid(format!(
                "bad query parameters: {}",
                herd::text::clip(&rejection.body_text())
            )))),
        }
    }
}

/// The dashboard's files, built into the binary.
fn asset(body: &'static str, kind: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(kind)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}

/// The whole HTTP application.
pub fn router(http: Http) -> Router {
    let api = api::routes()
        .route("/api/v1/events", get(stream::events))
        .layer(axum::middleware::from_fn_with_state(
            http.clone(),
            authorize,
        ));
    Router::new()
        .merge(api)
        .route("/api/v1/openapi.json", get(openapi::openapi))
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/metrics",
            get(|State(http): State<Http>| async move {
                let text = http.app.metrics.render(http.app.cluster.summary());
                (
                    [(
                        header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    text,
                )
            }),
        )
        .route(
            "/",
            get(|| async {
                asset(
                    include_str!("dashboard/index.html"),
                    "text/html; charset=utf-8",
                )
            }),
        )
        .route(
            "/app.js",
            get(|| async {
                asset(
                    include_str!("dashboard/app.js"),
                    "text/javascript; charset=utf-8",
                )
            }),
        )
        .route(
            "/style.css",
            get(|| async {
                asset(
                    include_str!("dashboard/style.css"),
                    "text/css; charset=utf-8",
                )
            }),
        )
        .fallback(|| async {
            error_body(
                StatusCode::NOT_FOUND,
                "NOT_FOUND",
                "no such page: the API is under /api/v1/",
            )
        })
        .with_state(http)
}

/// Serves `app` on `listener` (over TLS with `tls`) until `shutdown` flips.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let Some(tls) = tls else {
        return axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            let _ = shutdown.changed().await;
        })
        .await;
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => accepted?,
            _ = shutdown.changed() => return Ok(()),
        };
        let _ = tcp.set_nodelay(true);
        let (acceptor, app) = (acceptor.clone(), app.clone());
        tokio::spawn(async move {
            let stream = match acceptor.accept(tcp).await {
                Ok(stream) => stream,
                Err(err) => {
                    debug!(%peer, %err, "TLS handshake failed");
                    return;
                }
            };
            let service = hyper::service::service_fn(
                move |mut request: hyper::Request<hyper::body::Incoming>| {
                    request
                        .extensions_mut()
                        .insert(axum::extract::ConnectInfo(peer));
                    tower::ServiceExt::oneshot(app.clone(), request)
                },
            );
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

/// A TLS configuration from PEM certificate and key.
pub fn tls_config(cert: &[u8], key: &[u8]) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_slice_iter(cert).collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Where the dashboard is. The log says where and how to log in, never the token: logs
/// are kept in files and journals, and shipped. The line a person can click, with the
/// token in the URL fragment (a browser never sends the fragment, so it reaches no server
/// log), goes only to an interactive terminal.
pub fn announce(addr: SocketAddr, https: bool, token: Option<&str>, token_file: &std::path::Path) {
    use std::io::IsTerminal;
    let host = if addr.ip().is_unspecified() {
        sysinfo::System::host_name().unwrap_or_else(|_| "localhost".into())
    } else {
        addr.ip().to_string()
    };
    let scheme = if https { "https" } else { "http" };
    let url = format!("{scheme}://{host}:{}/", addr.port());
    let Some(token) = token else {
        info!("dashboard: {url}");
        return;
    };
    info!(
        "dashboard: {url} (log in with the admin token in {}, or a token from 'token create')",
        token_file.display()
    );
    if std::io::stderr().is_terminal() {
        eprintln!("dashboard (this link logs you in; it is not logged): {url}#token={token}");
    }
}
