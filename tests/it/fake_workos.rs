//! A stand-in for WorkOS's REST API, as `../shared/spec/API.md` documents it: `GET /events`,
//! `/directories`, `/directory_users`, `/directory_groups` with the list envelopes, paging by
//! `after`/`before`/`limit`/`order`, bearer keys (401), and failures a test injects (429 with
//! `Retry-After`, 500s, slow answers). Its state is WorkOS's: tests change it and say which of
//! the resulting events were delivered by webhook.
//!
//! Choices where WorkOS's behaviour is unconfirmed (API.md §5): a cursor (`after`/`before`) that
//! names no listed object, such as an expired event, gets 400 `{"message": …}`; `range_start`
//! is inclusive; events are served oldest first whatever `order` says (as reported live).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Query, State as AxumState};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::{json, Value};
use tokio::net::TcpListener;

/// The API key the stand-in accepts.
pub const API_KEY: &str = "sk_test_fake_workos_4417";

/// A failure to answer the next request with.
#[derive(Debug, Clone)]
pub enum Failure {
    /// This status, with a JSON error body.
    Status(u16),
    /// 429 with `Retry-After: <seconds>`.
    RateLimited(u64),
    /// Answer normally, after this long.
    Slow(Duration),
    /// Answer normally, once the test says so.
    Hold(Arc<tokio::sync::Notify>),
}

/// A request the stand-in received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub at: Instant,
    pub path: String,
    pub query: HashMap<String, String>,
    /// The bearer key it carried.
    pub key: Option<String>,
    pub status: u16,
}

/// An event as WorkOS keeps it: served exactly as this text.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub id: String,
    pub event: String,
    pub created_at: String,
    pub raw: String,
}

/// WorkOS's state.
#[derive(Default)]
pub struct Workos {
    pub events: Vec<StoredEvent>,
    pub directories: Vec<Value>,
    pub users: Vec<Value>,
    pub groups: Vec<Value>,
    /// (group id, user id)
    pub memberships: Vec<(String, String)>,
    /// Failures for the next requests to a path, in order.
    pub failures: VecDeque<(String, Failure)>,
    pub seen: Vec<Seen>,
    /// The keys accepted (besides [`API_KEY`]).
    pub other_keys: Vec<String>,
    sequence: u64,
}

/// A running stand-in.
pub struct FakeWorkos {
    pub url: String,
    pub state: Arc<Mutex<Workos>>,
}

/// A timestamp in WorkOS's form, `offset_ms` from now.
pub fn timestamp(offset_ms: i64) -> String {
    (chrono::Utc::now() + chrono::Duration::milliseconds(offset_ms))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl FakeWorkos {
    pub async fn start() -> FakeWorkos {
        let state = Arc::new(Mutex::new(Workos::default()));
        let router = Router::new()
            .route("/events", get(events))
            .route("/directories", get(directories))
            .route("/directory_users", get(users))
            .route("/directory_groups", get(groups))
            .with_state(state.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        FakeWorkos { url, state }
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, Workos> {
        self.state.lock().unwrap()
    }

    /// Requests to `path` so far.
    pub fn seen(&self, path: &str) -> Vec<Seen> {
        self.lock()
            .seen
            .iter()
            .filter(|seen| seen.path == path)
            .cloned()
            .collect()
    }
}

impl Workos {
    /// Records an event about `data` (with a `context`, so that a test can see every field is
    /// kept) and returns its body.
    pub fn emit(&mut self, event: &str, data: Value) -> String {
        self.emit_at(event, data, &timestamp(0))
    }

    /// Like [`Workos::emit`], created at `created_at`.
    pub fn emit_at(&mut self, event: &str, data: Value, created_at: &str) -> String {
        self.sequence += 1;
        let id = format!("event_01TEST{:020}", self.sequence);
        let created_at = created_at.to_owned();
        // Not the order serde_json would write: the body must be stored as served.
        let raw = format!(
            r#"{{"object":"event","id":"{id}","event":"{event}","data":{data},"created_at":"{created_at}","context":{{"client_id":"client_1","n":{}}}}}"#,
            self.sequence
        );
        self.events.push(StoredEvent {
            id,
            event: event.to_owned(),
            created_at,
            raw: raw.clone(),
        });
        raw
    }

    pub fn put_directory(&mut self, directory: Value) -> String {
        upsert(&mut self.directories, directory.clone());
        // Events carry the event form.
        let mut data = directory;
        data["state"] = json!("active");
        data["domains"] = json!([]);
        self.emit("dsync.activated", data)
    }

    pub fn put_user(&mut self, user: Value, created: bool) -> String {
        upsert(&mut self.users, user.clone());
        let event = if created {
            "dsync.user.created"
        } else {
            "dsync.user.updated"
        };
        self.emit(event, user)
    }

    pub fn delete_user(&mut self, id: &str) -> String {
        let position = self.users.iter().position(|user| user["id"] == id).unwrap();
        let user = self.users.remove(position);
        self.memberships.retain(|(_, user_id)| user_id != id);
        self.emit("dsync.user.deleted", user)
    }

    pub fn put_group(&mut self, group: Value, created: bool) -> String {
        upsert(&mut self.groups, group.clone());
        let event = if created {
            "dsync.group.created"
        } else {
            "dsync.group.updated"
        };
        self.emit(event, group)
    }

    pub fn add_member(&mut self, group_id: &str, user_id: &str) -> String {
        self.memberships
            .push((group_id.to_owned(), user_id.to_owned()));
        let data = self.membership_data(group_id, user_id);
        self.emit("dsync.group.user_added", data)
    }

    pub fn remove_member(&mut self, group_id: &str, user_id: &str) -> String {
        self.memberships
            .retain(|(g, u)| !(g == group_id && u == user_id));
        let data = self.membership_data(group_id, user_id);
        self.emit("dsync.group.user_removed", data)
    }

    fn membership_data(&self, group_id: &str, user_id: &str) -> Value {
        let user = self.users.iter().find(|u| u["id"] == user_id).unwrap();
        let group = self.groups.iter().find(|g| g["id"] == group_id).unwrap();
        json!({"directory_id": group["directory_id"], "user": user, "group": group})
    }

    /// Answers the next request to `path` with `failure`.
    pub fn fail(&mut self, path: &str, failure: Failure) {
        self.failures.push_back((path.to_owned(), failure));
    }

    /// Forgets the first `count` events (past WorkOS's 30 days).
    pub fn expire_events(&mut self, count: usize) {
        self.events.drain(..count);
    }
}

fn upsert(list: &mut Vec<Value>, object: Value) {
    match list.iter_mut().find(|item| item["id"] == object["id"]) {
        Some(item) => *item = object,
        None => list.push(object),
    }
}

/// A directory in the REST form, updated at `updated_at`.
pub fn directory(id: &str, updated_at: &str) -> Value {
    json!({"object": "directory", "id": id, "organization_id": "org_1", "external_key": "ek",
           "type": "okta scim v2.0", "state": "linked", "name": format!("Directory {id}"),
           "domain": "example.com", "created_at": "2026-01-01T00:00:00.000Z",
           "updated_at": updated_at})
}

/// A user, with `email`, updated at `updated_at`.
pub fn user(id: &str, directory_id: &str, email: &str, updated_at: &str) -> Value {
    json!({"object": "directory_user", "id": id, "directory_id": directory_id,
           "organization_id": "org_1", "idp_id": format!("idp_{id}"), "email": email,
           "first_name": "Ada", "last_name": "Lovelace", "name": "Ada Lovelace",
           "state": "active", "raw_attributes": {"x": 1}, "custom_attributes": {"department": "R&D"},
           "role": {"slug": "member"}, "roles": [{"slug": "member"}],
           "emails": [{"primary": true, "type": "work", "value": email}],
           "created_at": "2026-01-01T00:00:00.000Z", "updated_at": updated_at})
}

/// A group named `name`, updated at `updated_at`.
pub fn group(id: &str, directory_id: &str, name: &str, updated_at: &str) -> Value {
    json!({"object": "directory_group", "id": id, "idp_id": format!("idp_{id}"),
           "directory_id": directory_id, "organization_id": "org_1", "name": name,
           "raw_attributes": {}, "created_at": "2026-01-01T00:00:00.000Z",
           "updated_at": updated_at})
}

type Shared = AxumState<Arc<Mutex<Workos>>>;

fn error(status: u16, message: &str, code: &str) -> Response {
    (
        StatusCode::from_u16(status).unwrap(),
        [("content-type", "application/json")],
        json!({"message": message, "code": code}).to_string(),
    )
        .into_response()
}

/// Authentication, recording and injected failures, common to every route.
async fn gate(
    state: &Arc<Mutex<Workos>>,
    path: &str,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
) -> Option<Response> {
    let key = headers
        .get("authorization")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::to_owned);
    let (authorized, failure) = {
        let mut workos = state.lock().unwrap();
        let authorized = key
            .as_deref()
            .is_some_and(|key| key == API_KEY || workos.other_keys.iter().any(|k| k == key));
        let failure = workos
            .failures
            .iter()
            .position(|(failing, _)| failing == path)
            .and_then(|index| workos.failures.remove(index))
            .map(|(_, failure)| failure);
        (authorized, failure)
    };
    let response = if !authorized {
        Some(error(401, "Unauthorized", "unauthorized"))
    } else {
        match &failure {
            Some(Failure::Status(status)) => Some(error(*status, "Internal error", "server_error")),
            Some(Failure::RateLimited(seconds)) => {
                let mut response = error(429, "Too many requests.", "rate_limit_exceeded");
                response
                    .headers_mut()
                    .insert("retry-after", seconds.to_string().parse().unwrap());
                Some(response)
            }
            Some(Failure::Slow(_) | Failure::Hold(_)) | None => None,
        }
    };
    // Recorded on arrival: a client may give up on a slow answer.
    let status = response.as_ref().map_or(200, |r| r.status().as_u16());
    state.lock().unwrap().seen.push(Seen {
        at: Instant::now(),
        path: path.to_owned(),
        query: query.clone(),
        key,
        status,
    });
    match failure {
        Some(Failure::Slow(duration)) => tokio::time::sleep(duration).await,
        Some(Failure::Hold(release)) => release.notified().await,
        _ => {}
    }
    response
}

/// One page of `ids` (in listing order): the indexes to serve, or the error to answer.
// Test code, on a cold path: a plain Response is clearer than a box.
#[allow(clippy::result_large_err)]
fn page(ids: &[String], query: &HashMap<String, String>) -> Result<(usize, usize), Response> {
    let limit = match query.get("limit") {
        None => 10,
        Some(text) => match text.parse::<usize>() {
            Ok(limit) if (1..=100).contains(&limit) => limit,
            _ => return Err(error(422, "Validation failed.", "invalid_limit")),
        },
    };
    let position = |cursor: &String| ids.iter().position(|id| id == cursor);
    if let Some(after) = query.get("after") {
        let Some(index) = position(after) else {
            return Err(error(400, "Unknown cursor.", "invalid_cursor"));
        };
        let start = index + 1;
        return Ok((start, (start + limit).min(ids.len())));
    }
    if let Some(before) = query.get("before") {
        let Some(index) = position(before) else {
            return Err(error(400, "Unknown cursor.", "invalid_cursor"));
        };
        return Ok((index.saturating_sub(limit), index));
    }
    Ok((0, limit.min(ids.len())))
}

fn list_body(items: &[String], before: Option<&str>, after: Option<&str>) -> Response {
    let body = format!(
        r#"{{"object":"list","data":[{}],"list_metadata":{{"before":{},"after":{}}}}}"#,
        items.join(","),
        json!(before),
        json!(after)
    );
    (StatusCode::OK, [("content-type", "application/json")], body).into_response()
}

async fn events(
    AxumState(state): Shared,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if let Some(response) = gate(&state, "/events", &headers, &query).await {
        return response;
    }
    let Some(types) = query.get("events") else {
        return error(422, "Validation failed.", "required");
    };
    let types: Vec<&str> = types.split(',').collect();
    let workos = state.lock().unwrap();
    let range_start = query
        .get("range_start")
        .map(|text| chrono::DateTime::parse_from_rfc3339(text).unwrap());
    let matching: Vec<&StoredEvent> = workos
        .events
        .iter()
        .filter(|event| types.contains(&event.event.as_str()))
        .filter(|event| {
            range_start.is_none_or(|start| {
                chrono::DateTime::parse_from_rfc3339(&event.created_at).unwrap() >= start
            })
        })
        .collect();
    let ids: Vec<String> = matching.iter().map(|event| event.id.clone()).collect();
    let (start, end) = match page(&ids, &query) {
        Ok(range) => range,
        Err(response) => return response,
    };
    let served: Vec<String> = matching[start..end].iter().map(|e| e.raw.clone()).collect();
    let last = matching[start..end].last().map(|event| event.id.clone());
    let body = format!(
        r#"{{"object":"list","data":[{}],"list_metadata":{{"after":{}}}}}"#,
        served.join(","),
        json!(last)
    );
    (StatusCode::OK, [("content-type", "application/json")], body).into_response()
}

/// Serves `objects` (in creation order) as a list, newest first unless `order=asc`.
fn list(mut objects: Vec<Value>, query: &HashMap<String, String>) -> Response {
    if query.get("order").is_none_or(|order| order != "asc") {
        objects.reverse();
    }
    let ids: Vec<String> = objects
        .iter()
        .map(|object| object["id"].as_str().unwrap().to_owned())
        .collect();
    let (start, end) = match page(&ids, query) {
        Ok(range) => range,
        Err(response) => return response,
    };
    let items: Vec<String> = objects[start..end].iter().map(Value::to_string).collect();
    let before = (start > 0).then(|| ids[start].as_str());
    let after = (end < ids.len()).then(|| ids[end - 1].as_str());
    list_body(&items, before, after)
}

async fn directories(
    AxumState(state): Shared,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if let Some(response) = gate(&state, "/directories", &headers, &query).await {
        return response;
    }
    let objects = state.lock().unwrap().directories.clone();
    list(objects, &query)
}

async fn users(
    AxumState(state): Shared,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if let Some(response) = gate(&state, "/directory_users", &headers, &query).await {
        return response;
    }
    let workos = state.lock().unwrap();
    let objects: Vec<Value> = workos
        .users
        .iter()
        .filter(|user| {
            query
                .get("directory")
                .is_none_or(|directory| user["directory_id"] == directory.as_str())
        })
        .filter(|user| {
            query.get("group").is_none_or(|group| {
                workos
                    .memberships
                    .iter()
                    .any(|(g, u)| g == group && user["id"] == u.as_str())
            })
        })
        .map(|user| {
            let mut user = user.clone();
            user["groups"] = json!([]);
            user
        })
        .collect();
    drop(workos);
    list(objects, &query)
}

async fn groups(
    AxumState(state): Shared,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if let Some(response) = gate(&state, "/directory_groups", &headers, &query).await {
        return response;
    }
    let objects: Vec<Value> = state
        .lock()
        .unwrap()
        .groups
        .iter()
        .filter(|group| {
            query
                .get("directory")
                .is_none_or(|directory| group["directory_id"] == directory.as_str())
        })
        .cloned()
        .collect();
    list(objects, &query)
}
