//! The read API: WorkOS's Directory Sync API (`GET /directories`, `/directory_users`,
//! `/directory_groups`, each list and by id), answered from the synced tables, so that an app
//! keeps its official WorkOS SDK and only changes its base URL. `../shared/spec/API.md`
//! §1–4 and §6 is the contract; README.md shows how to point each SDK here.
//!
//! This module owns everything about it: the routes and their state (here), parameter
//! validation and pagination (`params`), the JSON objects (`objects`), the queries (`sql`),
//! lookups by id that arrive together sharing one statement (`lookup`), API keys (`auth`) and
//! the error bodies ([`ApiError`]). It only reads; the receiver, the worker and the directory
//! handler know nothing of it. Its queries go to the pool it is given (`database.read_url`
//! when set).
//!
//! Only live rows are served (`deleted_at IS NULL`); a key limited to organizations sees
//! only rows of those organizations, everything else being 404 or absent from lists.

mod auth;
mod error;
mod lookup;
mod objects;
mod params;
mod sql;

pub use self::error::{ApiError, FieldError};

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{MatchedPath, Path, RawQuery, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use serde::Serialize;
use sqlx::PgPool;
use tokio::sync::Semaphore;
use tracing::Instrument;

use self::auth::{Keys, Scope};
use self::lookup::Lookups;
use self::objects::{DirectoryRow, GroupRow, List, UserJson};
use self::params::{is_id, Filter, Page, Params};
use self::sql::{Bound, DirectoryFilter, GroupsOf, Table, UsersOf};
use crate::config::ApiConfig;
use crate::metrics::Metrics;

/// The read API's routes and what they share.
#[derive(Clone)]
pub struct ReadApi {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    /// The lookups by id (`lookup`), which share statements.
    directories: Lookups<DirectoryRow>,
    users: Lookups<UserJson>,
    groups: Lookups<GroupRow>,
    keys: Keys,
    metrics: Arc<Metrics>,
}

impl ReadApi {
    /// The read API on `pool` (the read replica's, when there is one), with the keys of
    /// `config`.
    pub fn new(pool: PgPool, config: &ApiConfig, metrics: Arc<Metrics>) -> ReadApi {
        let slots = Arc::new(Semaphore::new(lookup_slots(&pool)));
        // As long as a get waited for a connection and then for its statement: both are
        // bounded by database.timeout_ms.
        let patience = 2 * pool.options().get_acquire_timeout();
        ReadApi {
            inner: Arc::new(Inner {
                directories: Lookups::new(pool.clone(), slots.clone(), patience),
                users: Lookups::new(pool.clone(), slots.clone(), patience),
                groups: Lookups::new(pool.clone(), slots, patience),
                pool,
                keys: Keys::new(&config.keys),
                metrics,
            }),
        }
    }

    /// The routes, to serve or to merge into another router. Each request is authenticated,
    /// counted in `dsyncd_api_requests_total{route,status}` and
    /// `dsyncd_api_request_duration_seconds{route}`, and runs in an `api_request` span
    /// (route, status; never a header).
    pub fn router(self) -> Router {
        let routes = Router::new()
            .route(
                "/directories",
                get(list_directories).fallback(method_not_allowed),
            )
            .route(
                "/directories/{id}",
                get(get_directory).fallback(method_not_allowed),
            )
            .route(
                "/directory_users",
                get(list_users).fallback(method_not_allowed),
            )
            .route(
                "/directory_users/{id}",
                get(get_user).fallback(method_not_allowed),
            )
            .route(
                "/directory_groups",
                get(list_groups).fallback(method_not_allowed),
            )
            .route(
                "/directory_groups/{id}",
                get(get_group).fallback(method_not_allowed),
            );
        routes
            .route_layer(axum::middleware::from_fn_with_state(
                self.clone(),
                authenticate,
            ))
            .route_layer(axum::middleware::from_fn_with_state(self.clone(), observe))
            .with_state(self)
    }
}

/// How many lookup statements may run at once: half the pool's connections (at least one),
/// so that lists always find the other half.
fn lookup_slots(pool: &PgPool) -> usize {
    (pool.options().get_max_connections() as usize / 2).max(1)
}

/// WorkOS-shaped 404 for paths that are not routes, for a listener serving only the read
/// API (`api.listen`).
pub async fn not_found() -> Response {
    ApiError::NoRoute.into_response()
}

async fn method_not_allowed() -> Response {
    ApiError::MethodNotAllowed.into_response()
}

/// A JSON body with its content type, as every SDK needs.
pub(crate) fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn ok(value: &impl Serialize) -> Response {
    json_response(
        StatusCode::OK,
        serde_json::to_vec(value).expect("the objects serialize"),
    )
}

/// Times, counts and traces every request; the span and the metrics carry the route
/// pattern, never the path's id, the query or a header.
async fn observe(State(api): State<ReadApi>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = route_name(request.extensions().get::<MatchedPath>());
    let span = tracing::info_span!("api_request", route, status = tracing::field::Empty);
    let response = next.run(request).instrument(span.clone()).await;
    let status = response.status().as_u16();
    span.record("status", status);
    api.inner
        .metrics
        .api_request(route, status, started.elapsed());
    response
}

/// The route's pattern as a `'static` label.
fn route_name(path: Option<&MatchedPath>) -> &'static str {
    const ROUTES: [&str; 6] = [
        "/directories",
        "/directories/{id}",
        "/directory_users",
        "/directory_users/{id}",
        "/directory_groups",
        "/directory_groups/{id}",
    ];
    path.and_then(|path| ROUTES.iter().find(|route| **route == path.as_str()))
        .copied()
        .unwrap_or("other")
}

/// 401 without a configured key; otherwise the key's [`Scope`] goes to the handler.
async fn authenticate(State(api): State<ReadApi>, mut request: Request, next: Next) -> Response {
    match api.inner.keys.check(request.headers()) {
        Ok(scope) => {
            request.extensions_mut().insert(scope);
            next.run(request).await
        }
        Err(error) => error.into_response(),
    }
}

/// The path's id, if it can be one (anything else, including bytes that are not UTF-8, is
/// simply not found).
fn path_id(path: Result<Path<String>, axum::extract::rejection::PathRejection>) -> Option<String> {
    path.ok().map(|Path(id)| id).filter(|id| is_id(id))
}

type Answer = Result<Response, ApiError>;

/// Where `page`'s cursor points, or a 422 if it names no object of `table` that the key may
/// see. A cursor whose object was deleted since still marks its place.
async fn bound(
    api: &ReadApi,
    table: Table,
    scope: &Scope,
    page: &Page,
) -> Result<Option<Bound>, ApiError> {
    let Some((param, id)) = &page.cursor else {
        return Ok(None);
    };
    match sql::cursor(&api.inner.pool, table, scope, id).await? {
        Some(bound) => Ok(Some(bound)),
        None => Err(ApiError::Validation(vec![FieldError {
            field: match param {
                params::CursorParam::Before => "before",
                params::CursorParam::After => "after",
            }
            .to_owned(),
            code: "unknown_cursor",
        }])),
    }
}

/// A page of `rows` read for `page`, as the list envelope.
fn page_response<T: Serialize>(page: &Page, rows: Vec<T>, id: impl Fn(&T) -> &str) -> Response {
    let (rows, before, after) = page.finish(rows, id);
    ok(&List::new(&rows, &before, &after))
}

const PAGING: [&str; 4] = ["limit", "order", "before", "after"];

async fn list_directories(
    State(api): State<ReadApi>,
    Extension(scope): Extension<Scope>,
    RawQuery(query): RawQuery,
) -> Answer {
    let mut params = Params::parse(
        query.as_deref(),
        &[PAGING.as_slice(), &["organization_id", "search", "domain"]].concat(),
    );
    let page = params.page();
    let filter = DirectoryFilter {
        organization_id: params.id("organization_id"),
        search: params.text("search"),
        domain: params.text("domain"),
    };
    params.finish()?;
    let bound = bound(&api, Table::Directories, &scope, &page).await?;
    let rows = sql::directories(&api.inner.pool, &scope, &filter, &page, bound.as_ref()).await?;
    Ok(page_response(&page, rows, |row| &row.id))
}

async fn get_directory(
    State(api): State<ReadApi>,
    Extension(scope): Extension<Scope>,
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Answer {
    const WHAT: &str = "Directory";
    let id = path_id(path).ok_or(ApiError::NotFound(WHAT))?;
    let row = api.inner.directories.get(scope, id).await?;
    row.map(|row| ok(&row)).ok_or(ApiError::NotFound(WHAT))
}

async fn list_users(
    State(api): State<ReadApi>,
    Extension(scope): Extension<Scope>,
    RawQuery(query): RawQuery,
) -> Answer {
    let mut params = Params::parse(
        query.as_deref(),
        &[
            PAGING.as_slice(),
            &["directory", "group", "idp_id", "email"],
        ]
        .concat(),
    );
    let page = params.page();
    let (email, idp_id) = (params.text("email"), params.text("idp_id"));
    let of = match params.one_of("directory", "group") {
        Some(Filter::First(id)) => Some(UsersOf::Directory { id, email, idp_id }),
        Some(Filter::Second(group)) => {
            // As WorkOS documents: `idp_id` and `email` require `directory`.
            for (field, value) in [("idp_id", &idp_id), ("email", &email)] {
                if value.is_some() {
                    params.error(field, "requires_directory");
                }
            }
            Some(UsersOf::Group(group))
        }
        None => None,
    };
    params.finish()?;
    let of = of.expect("validated");
    let bound = bound(&api, Table::Users, &scope, &page).await?;
    let rows = sql::users(&api.inner.pool, &scope, &of, &page, bound.as_ref()).await?;
    let (rows, before, after) = page.finish(rows, |row| &row.id);
    Ok(json_response(
        StatusCode::OK,
        objects::raw_list(&rows, &before, &after),
    ))
}

async fn get_user(
    State(api): State<ReadApi>,
    Extension(scope): Extension<Scope>,
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Answer {
    const WHAT: &str = "Directory User";
    let id = path_id(path).ok_or(ApiError::NotFound(WHAT))?;
    let row = api.inner.users.get(scope, id).await?;
    row.map(|row| json_response(StatusCode::OK, row.json.into_bytes()))
        .ok_or(ApiError::NotFound(WHAT))
}

async fn list_groups(
    State(api): State<ReadApi>,
    Extension(scope): Extension<Scope>,
    RawQuery(query): RawQuery,
) -> Answer {
    let mut params = Params::parse(
        query.as_deref(),
        &[PAGING.as_slice(), &["directory", "user"]].concat(),
    );
    let page = params.page();
    let of = match params.one_of("directory", "user") {
        Some(Filter::First(directory)) => Some(GroupsOf::Directory(directory)),
        Some(Filter::Second(user)) => Some(GroupsOf::User(user)),
        None => None,
    };
    params.finish()?;
    let of = of.expect("validated");
    let bound = bound(&api, Table::Groups, &scope, &page).await?;
    let rows = sql::groups(&api.inner.pool, &scope, &of, &page, bound.as_ref()).await?;
    Ok(page_response(&page, rows, |row| &row.id))
}

async fn get_group(
    State(api): State<ReadApi>,
    Extension(scope): Extension<Scope>,
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Answer {
    const WHAT: &str = "Directory Group";
    let id = path_id(path).ok_or(ApiError::NotFound(WHAT))?;
    let row = api.inner.groups.get(scope, id).await?;
    row.map(|row| ok(&row)).ok_or(ApiError::NotFound(WHAT))
}
