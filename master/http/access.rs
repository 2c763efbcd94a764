//! `/api/v1/tokens` and `/api/v1/audit`: thin adapters over the identity operations
//! (`ops/identity.rs`), with the field names of `herdctl --json`.

use axum::Router;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};

use herd::pb;
use herd::views::identity as view;

use super::{ApiError, Http, JsonBody, Query};
use crate::identity::Caller;
use crate::identity::authz::Op;

type Answer = Result<axum::Json<Value>, ApiError>;

pub fn routes() -> Router<Http> {
    Router::new()
        .route("/api/v1/tokens", get(list_tokens).post(create_token))
        .route("/api/v1/tokens/{name}", axum::routing::delete(revoke_token))
        .route("/api/v1/audit", get(audit))
        .route(
            "/api/v1/workers/{worker}/secret",
            axum::routing::post(issue_worker_secret),
        )
}

#[utoipa::path(post, path = "/api/v1/workers/{worker}/secret", params(("worker" = String, Path, description = "a worker id or name")),
    responses((status = 201, description = "`{worker, worker_secret}`: a new secret for a worker that is not Active (shown this once; the old one stops working)", body = Value),
              (status = 409, description = "the worker is Active", body = Value),
              (status = 404, description = "no such worker", body = Value)))]
pub async fn issue_worker_secret(
    State(http): State<Http>,
    Extension(who): Extension<Caller>,
    Path(worker): Path<String>,
) -> Result<Response, ApiError> {
    let issued = http
        .app
        .issue_worker_secret(&who, pb::IssueWorkerSecretRequest { worker })
        .await?;
    let body = json!({
        "worker": issued.worker.as_ref().map(herd::views::worker),
        "worker_secret": issued.worker_secret,
    });
    Ok((StatusCode::CREATED, axum::Json(body)).into_response())
}

/// A page of a list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// At most this many (default 100; above 1000 means 1000).
    #[serde(default)]
    #[param(value_type = u64, minimum = 0, maximum = 4294967295_u64)]
    page_size: u32,
    /// From the previous page's `next_page_token`.
    #[serde(default)]
    #[param(max_length = 64)]
    page_token: String,
}

#[utoipa::path(get, path = "/api/v1/tokens", params(PageQuery),
    responses((status = 200, description = "`{tokens, next_page_token}` by name: name, role, created_ms, last_used_ms (never the token)", body = Value)))]
pub async fn list_tokens(
    State(http): State<Http>,
    Extension(who): Extension<Caller>,
    Query(q): Query<PageQuery>,
) -> Answer {
    let page = http.app.list_tokens(
        &who,
        pb::ListTokensRequest {
            page_size: q.page_size,
            page_token: q.page_token,
        },
    )?;
    Ok(axum::Json(json!({
        "tokens": view::tokens(&page.tokens),
        "next_page_token": page.next_page_token,
    })))
}

/// A token to make.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenBody {
    /// 1 to 64 of letters, digits, `.`, `_`, `-` (not admin, repl, join, anonymous).
    name: String,
    /// admin, operator or viewer.
    role: String,
}

#[utoipa::path(post, path = "/api/v1/tokens", request_body = TokenBody,
    responses((status = 201, description = "`{name, role, created_ms, last_used_ms, token}`: the token is shown this once", body = Value),
              (status = 409, description = "a token with this name exists", body = Value)))]
pub async fn create_token(
    State(http): State<Http>,
    Extension(who): Extension<Caller>,
    JsonBody(body): JsonBody<TokenBody>,
) -> Result<Response, ApiError> {
    who.may(Op::CreateToken)?;
    let made = http
        .app
        .create_token(
            &who,
            pb::CreateTokenRequest {
                name: body.name,
                role: body.role,
            },
        )
        .await?;
    Ok((StatusCode::CREATED, axum::Json(view::created(&made))).into_response())
}

#[utoipa::path(delete, path = "/api/v1/tokens/{name}", params(("name" = String, Path, description = "the token's name")),
    responses((status = 200, description = "the revoked token (refused from now on)", body = Value),
              (status = 404, description = "no such token", body = Value)))]
pub async fn revoke_token(
    State(http): State<Http>,
    Extension(who): Extension<Caller>,
    Path(name): Path<String>,
) -> Answer {
    let info = http
        .app
        .revoke_token(&who, pb::RevokeTokenRequest { name })
        .await?;
    Ok(axum::Json(view::token(&info)))
}

#[utoipa::path(get, path = "/api/v1/audit", params(PageQuery),
    responses((status = 200, description = "`{entries, next_page_token}`, newest first: seq, at_ms, who, role, action, target, detail, peer", body = Value)))]
pub async fn audit(
    State(http): State<Http>,
    Extension(who): Extension<Caller>,
    Query(q): Query<PageQuery>,
) -> Answer {
    let page = http
        .app
        .list_audit(
            &who,
            pb::ListAuditRequest {
                page_size: q.page_size,
                page_token: q.page_token,
            },
        )
        .await?;
    Ok(axum::Json(json!({
        "entries": view::audit(&page.entries),
        "next_page_token": page.next_page_token,
    })))
}
