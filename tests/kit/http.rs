//! A plain HTTP/1.1 client for the HTTP API tests: one request per connection, JSON in and
//! out, and a reader of Server-Sent Events.

use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;

use super::{Deadline, Master};

/// The address the master logged in its `dashboard:` line, and the token to log in with:
/// the test token when the line asks for one (the log never holds a token), none for an
/// `--insecure` master.
pub async fn dashboard(master: &Master) -> (SocketAddr, String) {
    let deadline = Deadline::new(
        Duration::from_secs(15),
        "the master prints its dashboard line",
    );
    loop {
        let log = master.log_text();
        if let Some(line) = log
            .lines()
            .find_map(|l| l.split("dashboard: http://").nth(1))
        {
            let url = line.split_whitespace().next().unwrap_or_default();
            // Logs are kept and shipped: the admin token must never be in one.
            assert!(
                !log.contains(crate::TOKEN),
                "the admin token is in the master's log"
            );
            let token = match line.contains("admin token") {
                true => crate::TOKEN.to_string(),
                false => String::new(),
            };
            return (url.trim_end_matches('/').parse().unwrap(), token);
        }
        deadline.wait().await;
    }
}

/// A client of one master's HTTP API.
#[derive(Clone)]
pub struct Api {
    pub addr: SocketAddr,
    pub token: Option<String>,
}

impl Api {
    pub async fn of(master: &Master) -> Api {
        let (addr, token) = dashboard(master).await;
        Api {
            addr,
            token: Some(token).filter(|t| !t.is_empty()),
        }
    }

    /// The HTTP API of an in-process master started with `--http-listen 127.0.0.1:0`.
    pub fn of_in_process(master: &crate::InProcess) -> Api {
        Api {
            addr: master.http_addr.expect("started with --http-listen"),
            token: Some(crate::TOKEN.to_string()),
        }
    }

    pub fn without_token(&self) -> Api {
        Api {
            addr: self.addr,
            token: None,
        }
    }

    /// Sends one request and returns the response, its body still to be read.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Response<Incoming> {
        let tcp = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .unwrap();
        tokio::spawn(conn);
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", self.addr.to_string());
        if let Some(token) = &self.token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        if body.is_some() {
            request = request.header("content-type", "application/json");
        }
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default().to_string())))
            .unwrap();
        sender.send_request(request).await.unwrap()
    }

    /// The event id a list of the workers is as of (`X-Herd-Event-Id`): a stream resumed
    /// from it replays nothing the list had.
    pub async fn listed_event_id(&self) -> u64 {
        let response = self.send(Method::GET, "/api/v1/workers", None, &[]).await;
        response.headers()["x-herd-event-id"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap()
    }

    /// A request whose whole answer is read: (status, content type, body).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&str>,
    ) -> (StatusCode, String, Vec<u8>) {
        let response = self.send(method, path, body, &[]).await;
        let status = response.status();
        let kind = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let body = response
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec();
        (status, kind, body)
    }

    /// A JSON call: (status, parsed body).
    pub async fn json(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let text = body.map(|b| b.to_string());
        let (status, _, bytes) = self.call(method, path, text.as_deref()).await;
        let value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| panic!("{path}: not JSON: {:?}", String::from_utf8_lossy(&bytes)));
        (status, value)
    }

    pub async fn get(&self, path: &str) -> Value {
        let (status, value) = self.json(Method::GET, path, None).await;
        assert_eq!(status, StatusCode::OK, "{path}: {value}");
        value
    }

    /// Opens a Server-Sent Events stream.
    pub async fn events(&self, path: &str, last_event_id: Option<u64>) -> Events {
        let id = last_event_id.map(|i| i.to_string());
        let headers: Vec<(&str, &str)> = id.iter().map(|i| ("last-event-id", i.as_str())).collect();
        let response = self.send(Method::GET, path, None, &headers).await;
        assert_eq!(response.status(), StatusCode::OK);
        Events {
            body: response.into_body(),
            buffer: String::new(),
        }
    }
}

/// One Server-Sent Event.
#[derive(Debug, Clone, Default)]
pub struct Event {
    pub id: Option<String>,
    pub kind: String,
    pub data: String,
}

/// Reads events off an open stream.
pub struct Events {
    body: Incoming,
    buffer: String,
}

impl Events {
    /// The next event (keep-alive comments skipped), or `None` when the stream ends.
    pub async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(at) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..at + 2).collect();
                let mut event = Event::default();
                let mut data = Vec::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        event.id = Some(v.trim().to_string());
                    } else if let Some(v) = line.strip_prefix("event:") {
                        event.kind = v.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push(v.strip_prefix(' ').unwrap_or(v).to_string());
                    }
                }
                if event.kind.is_empty() && data.is_empty() {
                    continue;
                }
                event.data = data.join("\n");
                return Some(event);
            }
            let frame = self.body.frame().await?.ok()?;
            if let Ok(data) = frame.into_data() {
                self.buffer.push_str(&String::from_utf8_lossy(&data));
            }
        }
    }

    /// The next event for which `wanted` holds, within `limit`.
    pub async fn until(&mut self, limit: Duration, wanted: impl Fn(&Event) -> bool) -> Event {
        tokio::time::timeout(limit, async {
            loop {
                match self.next().await {
                    Some(e) if wanted(&e) => return e,
                    Some(_) => continue,
                    None => panic!("the event stream ended"),
                }
            }
        })
        .await
        .expect("the awaited event did not come in time")
    }
}
