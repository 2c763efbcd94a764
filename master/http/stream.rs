//! The two Server-Sent Event streams: `/api/v1/events` (every change of a worker or a
//! task, resumable with `Last-Event-ID` from a bounded buffer) and a task's followed
//! output. Each ends when the client goes or the master stops.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::{Extension, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as Sse_, KeepAlive, Sse};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use herd::error::Error;

use super::{ApiError, Http, Query};
use crate::events::Event;
use crate::identity::Caller;
use crate::identity::authz::Op;
use crate::ops::Chunks;

type Stream = axum::response::sse::KeepAliveStream<ReceiverStream<Result<Sse_, Infallible>>>;

fn sse(event: &Event) -> Sse_ {
    Sse_::default()
        .id(event.id.to_string())
        .event(event.kind)
        .data(event.data())
}

/// The last event of a stream whose client fell further behind than the events kept: a
/// `resync` event, then the end. Nothing is skipped in silence: the client reads its lists
/// again and resumes from their `X-Herd-Event-Id`.
fn resync(after: u64) -> Sse_ {
    Sse_::default().event("resync").data(
        serde_json::json!({
            "reason": format!(
                "the events after {after} are no longer kept: read the lists again and \
                 resume from their X-Herd-Event-Id"
            )
        })
        .to_string(),
    )
}

/// Where to resume: for clients that cannot send `Last-Event-ID` (a browser's first
/// EventSource), the `X-Herd-Event-Id` of a list they just read.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Like the `Last-Event-ID` header (which wins).
    #[param(minimum = 0, maximum = 9223372036854775807_i64)]
    last_event_id: Option<u64>,
}

/// `GET /api/v1/events`: what happened after `Last-Event-ID` (still in the buffer; without
/// one, from now on), then every change as it happens.
#[utoipa::path(get, path = "/api/v1/events",
    params(("Last-Event-ID" = Option<u64>, Header, description = "the id of the last event seen: what came after it is sent first"), EventsQuery),
    responses((status = 200, description = "Server-Sent Events `worker` and `task` (data: the object as JSON; id: increasing); a client further behind than the events kept (10,000) gets `resync` and the end of the stream: it reads its lists again", content_type = "text/event-stream", body = String)))]
pub async fn events(
    State(http): State<Http>,
    Extension(who): Extension<Caller>,
    headers: HeaderMap,
    Query(q): Query<EventsQuery>,
) -> Result<Sse<Stream>, ApiError> {
    who.may(Op::Watch)?;
    let header = match headers.get("last-event-id") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or_else(|| {
                    Error::invalid(
                        "Last-Event-ID must be the id of an event this master sent (a number)",
                    )
                })?,
        ),
    };
    let last = header.or(q.last_event_id);
    let revoked = http.app.credentials.revoked(&who);
    let (tx, rx) = mpsc::channel(256);
    let Some((last, missed, mut live)) = http.events.subscribe(last) else {
        let _ = tx.try_send(Ok(resync(last.unwrap_or(0))));
        return Ok(Sse::new(ReceiverStream::new(rx)).keep_alive(KeepAlive::default()));
    };
    let mut shutdown = http.shutdown.clone();
    let events = http.events.clone();
    tokio::spawn(async move {
        tokio::pin!(revoked);
        let mut sent = last;
        for event in missed {
            sent = event.id;
            if tx.send(Ok(sse(&event))).await.is_err() {
                return;
            }
        }
        loop {
            let next: Vec<Arc<Event>> = tokio::select! {
                received = live.recv() => match received {
                    Ok(event) => vec![event],
                    // Fell behind the live channel: catch up from the buffer.
                    Err(broadcast::error::RecvError::Lagged(_)) => match events.since(sent) {
                        Some(kept) => kept,
                        None => {
                            let _ = tx.send(Ok(resync(sent))).await;
                            return;
                        }
                    },
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = tx.closed() => return,
                _ = shutdown.changed() => return,
                _ = &mut revoked => return,
            };
            for event in next {
                if event.id <= sent {
                    continue;
                }
                sent = event.id;
                if tx.send(Ok(sse(&event))).await.is_err() {
                    return;
                }
            }
        }
    });
    Ok(Sse::new(ReceiverStream::new(rx)).keep_alive(KeepAlive::default()))
}

/// A task's output as it comes: `output` events (id: the offset of the data), then `end`.
pub fn logs(mut chunks: Chunks) -> Sse<Stream> {
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        while let Some(chunk) = chunks.recv().await {
            let event = match chunk {
                // SSE has no way to carry a bare CR: CRLF and CR become LF.
                Ok(chunk) => Sse_::default()
                    .event("output")
                    .id(chunk.offset.to_string())
                    .data(
                        String::from_utf8_lossy(&chunk.data)
                            .replace("\r\n", "\n")
                            .replace('\r', "\n"),
                    ),
                Err(err) => Sse_::default().event("error").data(err.to_string()),
            };
            if tx.send(Ok(event)).await.is_err() {
                return;
            }
        }
        // An event with empty data is dropped by browsers: say something.
        let _ = tx.send(Ok(Sse_::default().event("end").data("end"))).await;
    });
    Sse::new(ReceiverStream::new(rx)).keep_alive(KeepAlive::default())
}
