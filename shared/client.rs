//! How herd programs reach a master: plain HTTP/2 or TLS (with the CA the operator gives),
//! and the bearer token on every call.

use std::path::Path;
use std::time::Duration;

use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::auth::Bearer;
use crate::error::Error;

/// A channel that adds the cluster token to every call.
pub type Authed = InterceptedService<Channel, Bearer>;

/// `url` with `http://` in front when it names no scheme (`host:50051`).
pub fn with_scheme(url: &str) -> String {
    if url.contains("://") {
        url.to_string()
    } else {
        format!("http://{url}")
    }
}

/// An endpoint for `url` (`http://` is assumed when it has no scheme): `http://` in plain text, `https://` with TLS trusting `ca`.
pub fn endpoint(url: &str, ca: Option<&Path>) -> Result<Endpoint, Error> {
    endpoint_as(url, ca, None)
}

/// Like [`endpoint`], presenting the client certificate `identity` (certificate and key
/// files, PEM) to a master that asks for one (`--tls-client-ca`).
pub fn endpoint_as(
    url: &str,
    ca: Option<&Path>,
    identity: Option<(&Path, &Path)>,
) -> Result<Endpoint, Error> {
    let url = &with_scheme(url);
    let endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|e| {
            Error::Setup(format!(
                "'{url}' is not a master URL ({e}): use http://HOST:PORT"
            ))
        })?
        .connect_timeout(Duration::from_secs(3))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        // Room for a whole page or log chunk in flight: with HTTP/2's default 64 KiB
        // window, a larger reply waits a round trip (and a delayed ACK) for more.
        .initial_stream_window_size(Some(2 << 20))
        .initial_connection_window_size(Some(8 << 20))
        .keep_alive_timeout(Duration::from_secs(10));
    match (url.starts_with("https://"), ca) {
        (true, Some(ca)) => {
            let pem = std::fs::read(ca).map_err(|e| {
                Error::Setup(format!(
                    "cannot read the CA certificate {}: {e}",
                    ca.display()
                ))
            })?;
            let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem));
            if let Some((cert, key)) = identity {
                let read = |p: &Path| {
                    std::fs::read(p)
                        .map_err(|e| Error::Setup(format!("cannot read {}: {e}", p.display())))
                };
                tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
            }
            endpoint
                .tls_config(tls)
                .map_err(|e| Error::Setup(format!("bad TLS settings: {e}")))
        }
        (true, None) => Err(Error::Setup(format!(
            "{url} uses TLS: give the CA that signed the master's certificate with --ca"
        ))),
        (false, Some(_)) => Err(Error::Setup(format!(
            "--ca was given but {url} is plain http: use https://HOST:PORT"
        ))),
        (false, None) if identity.is_some() => Err(Error::Setup(format!(
            "a client certificate was given but {url} is plain http: use https://HOST:PORT"
        ))),
        (false, None) => Ok(endpoint),
    }
}
