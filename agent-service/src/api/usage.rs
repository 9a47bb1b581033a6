//! REST for the usage ledger, behind the proxy's identity: `GET /api/usage?from=&to=` (the
//! caller's own use) and `GET /api/admin/usage?from=&to=` (every user's, for admins only, decided
//! by the verified identity). Dates are `YYYY-MM-DD` (UTC days, both ends included).

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chrono::NaiveDate;
use serde_json::json;
use shared::error_body::ErrorBody;
use shared::identity::Identity;

use crate::chat::store::Store;
use crate::chat::usage::{self, Ledger};

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (status, Json(ErrorBody::new(code, message))).into_response()
}

/// The report range, or a 400 response.
fn range(params: &HashMap<String, String>) -> Result<(NaiveDate, NaiveDate), Box<Response>> {
    usage::parse_range(
        params.get("from").map(String::as_str),
        params.get("to").map(String::as_str),
        usage::today(),
    )
    .map_err(|m| Box::new(error(StatusCode::BAD_REQUEST, "bad_request", &m)))
}

fn unavailable(e: impl std::fmt::Display) -> Response {
    tracing::error!("{e}");
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "store_unavailable",
        "Usage is unavailable; try again shortly.",
    )
}

pub async fn mine(
    State(store): State<Store>,
    Extension(me): Extension<Identity>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let (from, to) = match range(&params) {
        Ok(r) => r,
        Err(resp) => return *resp,
    };
    let ledger = Ledger::new(store);
    let (f, t) = (from.to_string(), to.to_string());
    match ledger.buckets(Some(me.user_id), from, to).await {
        Ok(buckets) => {
            let report = usage::reports(&buckets, &f, &t)
                .into_iter()
                .next()
                .unwrap_or_else(|| usage::empty_report(me.user_id, &f, &t));
            Json(report).into_response()
        }
        Err(e) => unavailable(e),
    }
}

pub async fn everyone(
    State(store): State<Store>,
    Extension(me): Extension<Identity>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    if !me.is_admin {
        return error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "Only administrators may read everyone's usage.",
        );
    }
    let (from, to) = match range(&params) {
        Ok(r) => r,
        Err(resp) => return *resp,
    };
    let ledger = Ledger::new(store);
    let (f, t) = (from.to_string(), to.to_string());
    match ledger.buckets(None, from, to).await {
        Ok(buckets) => Json(json!({
            "from": f,
            "to": t,
            "users": usage::reports(&buckets, &f, &t),
        }))
        .into_response(),
        Err(e) => unavailable(e),
    }
}
