//! `/api/v1/...`: thin adapters from HTTP and JSON to the operations the gRPC Admin
//! service calls (`ops/`); answers carry the field names of `herdctl --json`.
//! The OpenAPI document is generated from these handlers.

use axum::Router;
use axum::extract::{Extension, Path, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::{IntoParams, OpenApi, ToSchema};

use herd::domain::TaskState;
use herd::domain::body::SubmitBody;
use herd::error::Error;
use herd::pb;
use herd::views as view;

use super::{ApiError, Http, JsonBody, Query, access, stream};
use crate::identity::Caller;
use crate::identity::authz::Op;

type Answer = Result<axum::Json<Value>, ApiError>;

#[derive(OpenApi)]
#[openapi(
    info(title = "herd", description = "The herd master's HTTP API: the operations of herdctl, in JSON with the field names of `herdctl --json`."),
    paths(
        list_workers, add_worker, get_worker, drain, undrain, forget, list_tasks, submit,
        submit_batch, get_task, cancel, logs, get_scheduler, set_scheduler, status, history,
        stream::events, access::list_tokens, access::create_token, access::revoke_token,
        access::audit, access::issue_worker_secret
    ),
    components(schemas(SubmitBody, BatchBody, SchedulerBody, AddWorkerBody, access::TokenBody)),
    modifiers(&Bearer)
)]
pub(super) struct Doc;

struct Bearer;

impl utoipa::Modify for Bearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{
            HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
        };
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        openapi.security = Some(vec![SecurityRequirement::new(
            "bearer",
            Vec::<String>::new(),
        )]);
        // A task needs a command or an image (or both): the schema says so too.
        if let Some(submit) = components.schemas.remove("SubmitBody") {
            use utoipa::openapi::schema::{AllOfBuilder, AnyOfBuilder, ObjectBuilder};
            let needs = |field: &str| {
                let non_empty = ObjectBuilder::new()
                    .schema_type(utoipa::openapi::Type::String)
                    .min_length(Some(1));
                ObjectBuilder::new()
                    .required(field)
                    .property(field, non_empty)
                    .into()
            };
            let either: utoipa::openapi::RefOr<utoipa::openapi::Schema> = AnyOfBuilder::new()
                .item::<utoipa::openapi::RefOr<utoipa::openapi::Schema>>(needs("command"))
                .item::<utoipa::openapi::RefOr<utoipa::openapi::Schema>>(needs("image"))
                .into();
            let both = AllOfBuilder::new().item(submit).item(either).build();
            components.schemas.insert(
                "SubmitBody".into(),
                utoipa::openapi::RefOr::T(utoipa::openapi::Schema::AllOf(both)),
            );
        }
        // Every call may be refused for its token, and any input the handler reads may be
        // bad: say so once for all of them.
        for item in openapi.paths.paths.values_mut() {
            for op in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
            ]
            .into_iter()
            .flatten()
            {
                for (code, what) in [
                    ("401", "no token, or the wrong one: `{error, code}`"),
                    (
                        "403",
                        "the token's role does not allow this, or it is the join token: `{error, code}`",
                    ),
                    ("400", "bad input, saying which: `{error, code}`"),
                ] {
                    op.responses
                        .responses
                        .entry(code.into())
                        .or_insert_with(|| {
                            utoipa::openapi::ResponseBuilder::new()
                                .description(what)
                                .into()
                        });
                }
            }
        }
    }
}

pub fn routes() -> Router<Http> {
    Router::new()
        .route("/api/v1/workers", get(list_workers).post(add_worker))
        .route("/api/v1/workers/{worker}", get(get_worker).delete(forget))
        .route(
            "/api/v1/workers/{worker}/drain",
            axum::routing::post(drain).delete(undrain),
        )
        .route("/api/v1/tasks", get(list_tasks).post(submit))
        .route("/api/v1/tasks/batch", axum::routing::post(submit_batch))
        .route("/api/v1/tasks/{id}", get(get_task))
        .route("/api/v1/tasks/{id}/cancel", axum::routing::post(cancel))
        .route("/api/v1/tasks/{id}/logs", get(logs))
        .route("/api/v1/scheduler", get(get_scheduler).put(set_scheduler))
        .route("/api/v1/status", get(status))
        .route("/api/v1/history", get(history))
        .merge(access::routes())
}

/// A page of workers.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WorkersQuery {
    /// Include Removed workers.
    #[serde(default)]
    all: bool,
    /// At most this many (default 100; above 1000 means 1000).
    #[serde(default)]
    #[param(value_type = u64, minimum = 0, maximum = 4294967295_u64)]
    page_size: u32,
    /// From the previous page's `next_page_token`.
    #[serde(default)]
    #[param(max_length = 128)]
    page_token: String,
}

#[utoipa::path(get, path = "/api/v1/workers", params(WorkersQuery),
    responses((status = 200, description = "`{workers, next_page_token}`, by name", body = Value),
              (status = 401, description = "no or wrong token", body = Value)))]
async fn list_workers(
    State(http): State<Http>,
    Extension(who): Extension<Caller>,
    Query(q): Query<WorkersQuery>,
) -> Result<Response, ApiError> {
    let event_id = http.events.last_id();
    let page = http.app.list_workers(
        &who,
        pb::ListWorkersRequest {
            all: q.all,
            page_size: q.page_size,
            page_token: q.page_token,
        },
    )?;
    let body = json!({
        "workers": view::workers(&page.workers),
        "next_page_token": page.next_page_token,
    });
    Ok(as_of_event(event_id, body))
}

/// A list read after event `id`: a client that opens `/api/v1/events?last_event_id=ID`
/// right after misses no change and replays none it already has.
fn as_of_event(id: u64, body: Value) -> Response {
    let mut response = axum::Json(body).into_response();
    response
        .headers_mut()
        .insert("x-herd-event-id", HeaderValue::from(id));
    response
}

/// A worker to pre-register (`worker add`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddWorkerBody {
    /// The name it will register with (`herd-worker --name`).
    name: String,
    /// Merged over the labels the worker reports (these win); at most 64.
    #[serde(default)]
    labels: std::collections::HashMap<String, String>,
}

#[utoipa::path(post, path = "/api/v1/workers", request_body = AddWorkerBody,
    responses((status = 201, description = "the worker, stored as Pending", body = Value),
              (status = 400, description = "a bad name or label", body = Value),
              (status = 409, description = "a worker of that name is known", body = Value)))]
async fn add_worker(
    State(http): State<Http>,
    Extension(who): Extension<Caller>,
    JsonBody(body): JsonBody<AddWorkerBody>,
) -> Result<Response, ApiError> {
    who.may(Op::AddWorker)?;
    let info = http
        .app
        .add_worker(
            &who,
            pb::AddWorkerRequest {
                name: body.name,
                labels: body.labels,
            },
        )
        .await?;
    Ok((StatusCode::CREATED, axum::Json(view::worker(&info))).into_response())
}

#[utoipa::path(get, path = "/api/v1/workers/{worker}", params(("worker" = String, Path, description = "a worker id or name")),
    responses((status = 200, description = "the worker", body = Value), (status = 404, description = "no such worker", body = Value)))]
async fn get_worker(
    State(http): State<Http>,
    Extension(who): Extension<Caller>,
    Path(worker): Path<String>,
) -> Answer {
    Ok(axum::Json(view::worker(
        &http.app.get_worker(&who, &worker)?,
    )))
}

#[utoipa::path(post, path = "/api/v1/workers/{worker}/drain", params(("worker" = String, Path, description = "a worker id or name")),
    responses((status = 200, description = "the drained worker", body = Value), (status = 404, description = "no such worker", body = Value)))]
async fn drain(
    State(http): State<Http>,
    Extension(who): Extension<Caller>,
    Path(worker): Path<String>,
) -> Answer {
    Ok(axum::Json(view::worker(
        &http.app.drain(&who, &worker, true).await?,
    )))
}

#[utoipa::path(delete, path = "/api/v1/workers/{worker}/drain", params(("worker" = String, Path, description = "a worker id or name")),
    responses((status = 200, description = "the undrained worker", body = Value), (status = 404, description = "no such worker", body = Value)))]
async fn undrain(
    State(http): State<Http>,
    Extension(who): Extension<Caller>,
    Path(worker): Path<String>,
) -> Answer {
    Ok(axum::Json(view::worker(
        &http.app.drain(&who, &worker, false).await?,
    )))
}

#[utoipa::path(delete, path = "/api/v1/workers/{worker}", params(("worker" = String, Path, description = "a worker id or name")),
    responses((status = 200, description = "the forgotten worker", body = Value),
              (status = 409, description = "the worker is Active", body = Value), (status = 404, description = "no such worker", body = Value)))]
async fn forget(
    State(http): State<Http>,
    Extension(who): Extension<Caller>,
    Path(worker): Path<String>,
) -> Answer {
    Ok(axum::Json(view::worker(
        &http.app.forget(&who, &worker).await?,
    )))
}

/// A page of tasks, newest first.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TasksQuery {
    /// Only tasks in this state: queued, assigned, running, succeeded, failed, cancelled.
    #[param(value_type = Option<String>, pattern = "^(queued|assigned|running|succeeded|failed|cancelled)?$")]
    state: Option<String>,
    /// Only tasks placed (now or last) on this worker, by id or name.
    worker: Option<String>,
    /// Only tasks submitted at or after this time (unix ms).
    since: Option<i64>,
    /// At most this many (default 100; above 1000 means 1000).
    #[serde(default)]
    #[param(value_type = u64, minimum = 0, maximum = 4294967295_u64)]
    page_size: u32,
    /// From the previous page's `next_page_token`.
    #[serde(default)]
    #[param(pattern = "^[0-9]{0,19}$")]
    page_token: String,
}

#[utoipa::path(get, path = "/api/v1/tasks", params(TasksQuery),
    responses((status = 200, description = "`{tasks, next_page_token}`, newest first", body = Value),
              (status = 400, description = "a bad filter", body = Value),
              (status = 404, description = "no such worker (the worker filter)", body = Value)))]
async fn list_tasks(
    State(http): State<Http>,
    Extension(who): Extension<Caller>,
    Query(q): Query<TasksQuery>,
) -> Result<Response, ApiError> {
    let event_id = http.events.last_id();
    let state = match q.state.as_deref().filter(|s| !s.is_empty()) {
        None => pb::TaskState::Unspecified,
        Some(word) => TaskState::parse(word)
            .map(pb::TaskState::from)
            .ok_or_else(|| Error::invalid(format!(
                "state '{}' is not a task state: use queued, assigned, running, succeeded, failed or cancelled",
                herd::text::clip(word)
            )))?,
    };
    let page = http
        .app
        .list_tasks(
            &who,
            pb::ListTasksRequest {
                state: state as i32,
                page_size: q.page_size,
                page_token: q.page_token,
                worker: q.worker.unwrap_or_default(),
                submitted_since_ms: q.since.unwrap_or(0),
            },
        )
        .await?;
    let body = json!({
        "tasks": view::tasks(&page.tasks),
        "next_page_token": page.next_page_token,
    });
    Ok(as_of_event(event_id, body))
}

#[utoipa::path(post, path = "/api/v1/tasks", request_body = SubmitBody,
    responses((status = 201, description = "the task, stored", body = Value), (status = 400, description = "a bad field", body = Value)))]
async fn submit(
    State(http): State<Http>,
    Extension(who): Extension<Caller>,
    JsonBody(body): JsonBody<SubmitBody>,
) -> Result<Response, ApiError> {
    // Bad credentials change nothing, and say so before anything about the body.
    who.may(Op::SubmitTask)?;
    let spec = body.into_spec()?;
    let info = http.app.submit(&who, Some(spec)).await?;
    Ok((StatusCode::CREATED, axum::Json(view::task(&info))).into_response())
}

/// A batch of tasks, stored in one transaction: every one or none.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchBody {
    /// The tasks, in order (at most 10,000); with `count`, exactly one.
    tasks: Vec<SubmitBody>,
    /// Submit the one task this many times, each copy with `HERD_TASK_INDEX` 0..count-1
    /// in its environment (default: the tasks as given).
    #[schema(value_type = Option<u32>)]
    count: Option<f64>,
}

#[utoipa::path(post, path = "/api/v1/tasks/batch", request_body = BatchBody,
    responses((status = 201, description = "`{task_ids}`: the new tasks' ids in order, stored", body = Value),
              (status = 400, description = "a bad task (`tasks[i]: ...`) or batch; nothing was stored", body = Value)))]
async fn submit_batch(
    State(http): State<Http>,
    Extension(who): Extension<Caller>,
    JsonBody(body): JsonBody<BatchBody>,
) -> Result<Response, ApiError> {
    who.may(Op::SubmitTask)?;
    let specs = body
        .tasks
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            t.into_spec()
                .map_err(|e| Error::invalid(format!("tasks[{i}]: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let count = match herd::domain::body::whole::<u32>("count", body.count)? {
        Some(0) => {
            return Err(Error::invalid(
                "count must be at least 1; leave it out to submit the tasks as given",
            )
            .into());
        }
        count => count.unwrap_or(0),
    };
    let req = pb::SubmitTasksRequest { specs, count };
    // The operation names a bad task by its place in `specs`: here that is `tasks`.
    let ids = http
        .app
        .submit_batch(&who, req)
        .await
        .map_err(|e| match e {
            Error::InvalidArgument(m) => match m.strip_prefix("specs[") {
                Some(rest) => Error::invalid(format!("tasks[{rest}")),
                None => Error::invalid(m),
            },
            other => other,
        })?;
    let body = json!({ "task_ids": ids.task_ids });
    Ok((StatusCode::CREATED, axum::Json(body)).into_response())
}

#[utoipa::path(get, path = "/api/v1/tasks/{id}", params(("id" = String, Path, description = "a task id")),
    responses((status = 200, description = "the task with every attempt", body = Value), (status = 404, description = "no such task", body = Value)))]
async fn get_task(
    State(http): State<Http>,
    Extension(who): Extension<Caller>,
    Path(id): Path<String>,
) -> Answer {
    Ok(axum::Json(view::task(&http.app.get_task(&who, &id).await?)))
}

/// Cancel is not delete: the task stays, `cancelled` (its record, attempts and output are
/// kept, and `GET /api/v1/tasks/{id}` shows it).
#[utoipa::path(post, path = "/api/v1/tasks/{id}/cancel", params(("id" = String, Path, description = "a task id")),
    responses((status = 200, description = "the task, cancelled or being cancelled (it is kept: cancel is not delete)", body = Value),
              (status = 409, description = "it has ended", body = Value), (status = 404, description = "no such task", body = Value)))]
async fn cancel(
    State(http): State<Http>,
    Extension(who): Extension<Caller>,
    Path(id): Path<String>,
) -> Answer {
    Ok(axum::Json(view::task(&http.app.cancel(&who, &id).await?)))
}

/// Which part of the output.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogsQuery {
    /// Where to start in the latest attempt's output (default: the last `length` bytes, or
    /// the last 1 MiB).
    #[param(minimum = 0, maximum = 9223372036854775807_i64)]
    offset: Option<u64>,
    /// At most this many bytes.
    #[serde(default)]
    #[param(minimum = 0, maximum = 9223372036854775807_i64)]
    length: u64,
    /// Stream as Server-Sent Events until the task ends.
    #[serde(default)]
    follow: bool,
}

#[utoipa::path(get, path = "/api/v1/tasks/{id}/logs", params(("id" = String, Path, description = "a task id"), LogsQuery),
    responses((status = 200, description = "the bytes (text/plain; X-Herd-Offset: where they start), or with follow=true Server-Sent Events `output` (id = offset) and `end`", content((String = "text/plain"), (String = "text/event-stream"))),
              (status = 404, description = "no such task", body = Value)))]
async fn logs(
    State(http): State<Http>,
    Extension(who): Extension<Caller>,
    Path(id): Path<String>,
    Query(q): Query<LogsQuery>,
) -> Result<Response, ApiError> {
    if q.offset.is_some_and(|o| o > i64::MAX as u64) || q.length > i64::MAX as u64 {
        return Err(Error::invalid("offset and length must be at most 2^63 - 1").into());
    }
    let req = pb::TaskLogsRequest {
        task_id: id,
        follow: q.follow,
        offset: q.offset,
        length: q.length,
    };
    let mut chunks = http.app.logs(&who, req.clone()).await?;
    if q.follow {
        return Ok(stream::logs(chunks).into_response());
    }
    let mut data = Vec::new();
    let mut first = None;
    while let Some(chunk) = chunks.recv().await {
        let chunk = chunk?;
        first.get_or_insert(chunk.offset);
        data.extend(chunk.data);
    }
    let offset = first.or(req.offset).unwrap_or(0);
    let mut response = (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; charset=utf-8",
        )],
        data,
    )
        .into_response();
    response
        .headers_mut()
        .insert("x-herd-offset", HeaderValue::from(offset));
    Ok(response)
}

/// The placement policy.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SchedulerBody {
    /// `round-robin` or `resource-aware`.
    scheduler: String,
}

#[utoipa::path(get, path = "/api/v1/scheduler", responses((status = 200, description = "`{scheduler}`", body = Value)))]
async fn get_scheduler(State(http): State<Http>, Extension(who): Extension<Caller>) -> Answer {
    let now = http.app.scheduler(&who, "").await?;
    Ok(axum::Json(json!({ "scheduler": now.name })))
}

#[utoipa::path(put, path = "/api/v1/scheduler", request_body = SchedulerBody,
    responses((status = 200, description = "`{scheduler}`, switched (kept across restarts)", body = Value), (status = 400, description = "unknown policy", body = Value)))]
async fn set_scheduler(
    State(http): State<Http>,
    Extension(who): Extension<Caller>,
    JsonBody(body): JsonBody<SchedulerBody>,
) -> Answer {
    who.may(Op::SwitchScheduler)?;
    if body.scheduler.is_empty() {
        return Err(Error::invalid("give a scheduler: round-robin or resource-aware").into());
    }
    let now = http.app.scheduler(&who, &body.scheduler).await?;
    Ok(axum::Json(json!({ "scheduler": now.name })))
}

#[utoipa::path(get, path = "/api/v1/status", responses((status = 200, description = "`{workers, tasks, queue_length, scheduler, masters}`", body = Value)))]
async fn status(
    State(http): State<Http>,
    Extension(who): Extension<Caller>,
) -> Result<Response, ApiError> {
    let event_id = http.events.last_id();
    Ok(as_of_event(
        event_id,
        view::summary(&http.app.summary(&who).await?),
    ))
}

#[utoipa::path(get, path = "/api/v1/history", responses((status = 200, description = "`{interval_ms, samples}`: the last 15 minutes, a sample every 10 s", body = Value)))]
async fn history(State(http): State<Http>, Extension(who): Extension<Caller>) -> Answer {
    who.may(Op::Watch)?;
    Ok(axum::Json(json!({
        "interval_ms": crate::history::INTERVAL.as_millis() as u64,
        "samples": http.history.samples(),
    })))
}
