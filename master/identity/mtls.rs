//! `--tls-client-ca`: worker connections must present a client certificate signed by that
//! CA (TLS checks the signature), and the certificate must name the worker it registers
//! or heartbeats for: a DNS name in its subject alternative names equal to the worker
//! name, as a server certificate names its host. Admin calls (herdctl, the REPL) need no
//! client certificate; they carry operator tokens.

use rustls::pki_types::{CertificateDer, ServerName};
use tonic::{Request, Status};
use tracing::warn;

/// The client certificate a request came with (the first of the chain), if any.
pub fn peer_cert<T>(request: &Request<T>) -> Option<CertificateDer<'static>> {
    request
        .peer_certs()
        .and_then(|chain| chain.first().cloned())
}

/// Refuses a worker connection without a certificate, or with one for another name.
pub fn check(
    cert: Option<&CertificateDer<'static>>,
    worker: &str,
    peer: Option<std::net::SocketAddr>,
) -> Result<(), Status> {
    let Some(cert) = cert else {
        warn!(
            worker,
            peer = %herd::text::Maybe(&peer),
            "refused a worker connection without a client certificate"
        );
        return Err(Status::unauthenticated(
            "this master requires a client certificate on worker connections \
             (--tls-client-ca): start herd-worker with --client-cert and --client-key, a \
             certificate naming this worker",
        ));
    };
    let named = ServerName::try_from(worker.to_string())
        .ok()
        .and_then(|name| {
            let parsed = rustls::server::ParsedCertificate::try_from(cert).ok()?;
            rustls::client::verify_server_name(&parsed, &name).ok()
        });
    if named.is_none() {
        warn!(
            worker,
            peer = %herd::text::Maybe(&peer),
            "refused a worker whose client certificate names another worker"
        );
        return Err(Status::permission_denied(format!(
            "the client certificate does not name worker '{}': it needs the DNS name \
             '{}' among its subject alternative names",
            herd::text::clip(worker),
            herd::text::clip(worker)
        )));
    }
    Ok(())
}
