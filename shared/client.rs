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

/// The masters a client knows (`--master a,b,c`: one, or a leader and its standbys) and
/// the one it talks to now. A standby names the leader (`herd-leader`); the client follows.
#[derive(Debug, Clone)]
pub struct Masters {
    urls: Vec<String>,
    at: usize,
    ca: Option<std::path::PathBuf>,
    identity: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

impl Masters {
    /// The masters of a comma-separated list, each checked as [`endpoint_as`] does.
    pub fn parse(
        list: &str,
        ca: Option<&Path>,
        identity: Option<(&Path, &Path)>,
    ) -> Result<Masters, Error> {
        let urls: Vec<String> = list
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(with_scheme)
            .collect();
        if urls.is_empty() {
            return Err(Error::Setup(
                "no master given: use --master http://HOST:PORT[,http://HOST2:PORT]".into(),
            ));
        }
        for url in &urls {
            endpoint_as(url, ca, identity)?;
        }
        Ok(Masters {
            urls,
            at: 0,
            ca: ca.map(Path::to_path_buf),
            identity: identity.map(|(c, k)| (c.to_path_buf(), k.to_path_buf())),
        })
    }

    /// The master talked to now.
    pub fn current(&self) -> &str {
        &self.urls[self.at]
    }

    /// How many masters are known.
    pub fn len(&self) -> usize {
        self.urls.len()
    }

    /// Never empty.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The endpoint of the master talked to now.
    pub fn endpoint(&self) -> Result<Endpoint, Error> {
        let identity = self
            .identity
            .as_ref()
            .map(|(c, k)| (c.as_path(), k.as_path()));
        endpoint_as(self.current(), self.ca.as_deref(), identity)
    }

    /// The next master of the list (the current one failed without a hint).
    pub fn next(&mut self) {
        self.at = (self.at + 1) % self.urls.len();
    }

    /// Talks to `leader` from now on (added to the list when new). False when it was the
    /// current one already, or is not a usable URL.
    pub fn follow(&mut self, leader: &str) -> bool {
        let leader = with_scheme(leader);
        if leader == self.current() {
            return false;
        }
        let identity = self
            .identity
            .as_ref()
            .map(|(c, k)| (c.as_path(), k.as_path()));
        if endpoint_as(&leader, self.ca.as_deref(), identity).is_err() {
            return false;
        }
        self.at = match self.urls.iter().position(|u| *u == leader) {
            Some(at) => at,
            None => {
                self.urls.push(leader);
                self.urls.len() - 1
            }
        };
        true
    }
}

/// The leader a standby named in its refusal (`herd-leader`, `herd-term`), if it did.
pub fn leader_hint(status: &tonic::Status) -> Option<(String, i64)> {
    let meta = status.metadata();
    let leader = meta.get("herd-leader")?.to_str().ok()?.to_string();
    let term = meta.get("herd-term")?.to_str().ok()?.parse().ok()?;
    Some((leader, term))
}

/// The term of the master that answered (`herd-term`; none from a master on SQLite).
pub fn term_of(meta: &tonic::metadata::MetadataMap) -> Option<i64> {
    meta.get("herd-term")?.to_str().ok()?.parse().ok()
}

/// The master of `masters` that leads, for a client that makes one call or a few (herdctl):
/// each is asked in turn, and a standby's hint is followed. The first that answers as a
/// leader (anything but UNAVAILABLE) is it; with none, the last one tried, whose error the
/// caller's first call then shows.
pub async fn find_leader(masters: &mut Masters, token: &Bearer) -> String {
    let mut tries = masters.len() * 2 + 2;
    while tries > 0 {
        tries -= 1;
        let Ok(endpoint) = masters.endpoint() else {
            masters.next();
            continue;
        };
        let Ok(channel) = endpoint.connect().await else {
            masters.next();
            continue;
        };
        let mut admin =
            crate::pb::admin_client::AdminClient::with_interceptor(channel, token.clone());
        let asked = admin.list_workers(crate::pb::ListWorkersRequest {
            page_size: 1,
            ..Default::default()
        });
        match asked.await {
            Ok(_) => break,
            Err(status) if status.code() != tonic::Code::Unavailable => break,
            Err(status) => match leader_hint(&status) {
                Some((leader, _)) if masters.follow(&leader) => {}
                _ => masters.next(),
            },
        }
    }
    masters.current().to_string()
}
