//! The read API as an app sees it: the official Rust SDK (`workos`), with only its base URL
//! changed, pointed at a dsyncd whose tables were filled by applying real events through
//! `DirectoryHandler`. Lists (auto-paged, every order), gets, 404 and 401, organization-limited
//! keys, paging while rows change, hostile parameters, the read pool and `api.listen`.

use std::collections::{BTreeSet, HashSet};
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use dsyncd::config::{ApiKey, Config, Secret};
use dsyncd::{DirectoryHandler, Event, EventHandler, Role};
use futures_util::TryStreamExt;
use serde_json::{json, Value};
use sqlx::PgPool;
use workos::directory_sync::{ListDirectoriesParams, ListGroupsParams, ListUsersParams};
use workos::PaginationOrder;

use crate::helpers::*;

const ORG_A: &str = "org_01API0000000000000000000A";
const ORG_B: &str = "org_01API0000000000000000000B";
const DIR_A: &str = "directory_01API00000000000000000A";
const DIR_B: &str = "directory_01API00000000000000000B";
const GROUP: &str = "directory_group_01API00000000000000000G";
const EMPTY_GROUP: &str = "directory_group_01API00000000000000000E";
const GROUP_B: &str = "directory_group_01API0000000000000000GB";
const KEY_ALL: &str = "sk_test_api_all_4471";
const KEY_A: &str = "sk_test_api_org_a_4471";

// ---- Events ----

/// Builds events with distinct ids, as WorkOS sends them.
#[derive(Default)]
pub(crate) struct Events {
    next: u32,
    pub(crate) list: Vec<Event>,
}

/// A time `seconds` after a fixed origin, as WorkOS writes it.
pub(crate) fn time(seconds: i64) -> String {
    (DateTime::<Utc>::from_timestamp(1_700_000_000, 0).unwrap()
        + chrono::Duration::milliseconds(seconds * 1000 + 7))
    .to_rfc3339_opts(SecondsFormat::Millis, true)
}

impl Events {
    fn push(&mut self, event: &str, data: Value, at: &str) {
        self.next += 1;
        let body = json!({"object": "event", "id": format!("event_01API{:021}", self.next),
                          "event": event, "data": data, "created_at": at, "context": {}});
        self.list
            .push(Event::from_payload(&body.to_string()).expect("an event"));
    }

    pub(crate) fn directory(&mut self, id: &str, org: &str, name: &str) -> Value {
        let data = json!({"object": "directory", "id": id, "organization_id": org,
            "type": "okta scim v2.0", "state": "active", "name": name,
            "external_key": format!("key-{id}"),
            "domains": [{"object": "organization_domain", "id": format!("org_domain_{id}"),
                         "domain": format!("{name}.example.com")}],
            "created_at": time(0), "updated_at": time(0)});
        self.push("dsync.activated", data.clone(), &time(0));
        data
    }

    /// A user created at `created` seconds (`None`: no `created_at`).
    pub(crate) fn user(
        &mut self,
        directory: &str,
        org: &str,
        n: u32,
        created: Option<i64>,
    ) -> Value {
        let id = format!("directory_user_{directory}_{n:04}");
        let data = json!({"object": "directory_user", "id": id, "directory_id": directory,
            "organization_id": org, "idp_id": format!("idp-{n}"),
            "email": format!("user{n}@{directory}.example.com"), "first_name": format!("First{n}"),
            "last_name": "Last", "name": null, "username": format!("user{n}"),
            "emails": [{"primary": true, "type": "work", "value": format!("user{n}@{directory}.example.com")}],
            "job_title": "Engineer", "state": if n % 7 == 3 { "inactive" } else { "active" },
            "role": {"slug": "member"}, "roles": [{"slug": "member"}, {"slug": format!("r{n}")}],
            "raw_attributes": {"n": n, "nested": {"a": [1, 2]}},
            "custom_attributes": {"department": format!("D{}", n % 3)},
            "created_at": created.map(time), "updated_at": time(created.unwrap_or(0) + 1)});
        self.push(
            "dsync.user.created",
            data.clone(),
            &time(created.unwrap_or(0) + 1),
        );
        data
    }

    pub(crate) fn group(&mut self, id: &str, directory: &str, org: &str, created: i64) -> Value {
        let data = json!({"object": "directory_group", "id": id, "idp_id": format!("idp-{id}"),
            "directory_id": directory, "organization_id": org, "name": format!("Group {id}"),
            "raw_attributes": {"description": id},
            "created_at": time(created), "updated_at": time(created)});
        self.push("dsync.group.created", data.clone(), &time(created));
        data
    }

    pub(crate) fn add(&mut self, group: &Value, user: &Value, at: i64) {
        let data = json!({"directory_id": group["directory_id"], "user": user, "group": group});
        self.push("dsync.group.user_added", data, &time(at));
    }

    fn remove(&mut self, group: &Value, user: &Value, at: i64) {
        let data = json!({"directory_id": group["directory_id"], "user": user, "group": group});
        self.push("dsync.group.user_removed", data, &time(at));
    }

    pub(crate) fn delete_user(&mut self, user: &Value, at: i64) {
        let mut data = user.clone();
        data["updated_at"] = json!(time(at));
        self.push("dsync.user.deleted", data, &time(at));
    }

    /// Applies (and forgets) the events built so far, as one batch.
    pub(crate) async fn apply(&mut self, pool: &PgPool) {
        let refs: Vec<&Event> = self.list.iter().collect();
        let mut tx = pool.begin().await.unwrap();
        DirectoryHandler::new()
            .handle_batch(&mut tx, &refs)
            .await
            .expect("the events apply");
        tx.commit().await.unwrap();
        self.list.clear();
    }
}

/// What the tests know about the tables they filled.
struct World {
    directory_a: Value,
    directory_b: Value,
    /// The users of directory A live at the end, with their `created_at` (`None`: absent).
    live_a: Vec<(Option<i64>, String)>,
    /// The live members of [`GROUP`].
    members: Vec<(Option<i64>, String)>,
    deleted_user: String,
    user_b: String,
    users: Vec<Value>,
    group: Value,
}

/// Directory A (org A): 30 users, several created at the same time, one without
/// `created_at`; two deleted. [`GROUP`] has 12 members, one removed and one deleted.
/// Directory B (org B): 3 users and a group.
async fn world(pool: &PgPool) -> World {
    let mut events = Events::default();
    let directory_a = events.directory(DIR_A, ORG_A, "alpha");
    let directory_b = events.directory(DIR_B, ORG_B, "beta");
    let group = events.group(GROUP, DIR_A, ORG_A, 5);
    events.group(EMPTY_GROUP, DIR_A, ORG_A, 6);
    let group_b = events.group(GROUP_B, DIR_B, ORG_B, 7);
    let mut users = Vec::new();
    let mut created_of = Vec::new();
    for n in 0..30u32 {
        // Ties: users 10..15 share one time; user 29 has no created_at.
        let created = match n {
            29 => None,
            10..=14 => Some(100),
            n => Some(1000 - i64::from(n) * 13 % 500),
        };
        users.push(events.user(DIR_A, ORG_A, n, created));
        created_of.push(created);
    }
    for (n, user) in users.iter().enumerate().take(12) {
        events.add(&group, user, 2000 + n as i64);
    }
    events.remove(&group, &users[3], 3000);
    events.delete_user(&users[5], 3001);
    events.delete_user(&users[20], 3002);
    let mut user_b = String::new();
    for n in 0..3 {
        let user = events.user(DIR_B, ORG_B, n, Some(50 + i64::from(n)));
        events.add(&group_b, &user, 2500);
        user_b = user["id"].as_str().unwrap().to_owned();
    }
    events.apply(pool).await;
    let id = |n: usize| users[n]["id"].as_str().unwrap().to_owned();
    let live_a = (0..30)
        .filter(|n| ![5, 20].contains(n))
        .map(|n| (created_of[n], id(n)))
        .collect();
    let members = (0..12)
        .filter(|n| ![3, 5].contains(n))
        .map(|n| (created_of[n], id(n)))
        .collect();
    World {
        directory_a,
        directory_b,
        live_a,
        members,
        deleted_user: id(5),
        user_b,
        users,
        group,
    }
}

/// WorkOS's listing order: by `created_at` (absent = 1970), then id, bytewise.
fn in_order(rows: &[(Option<i64>, String)], descending: bool) -> Vec<String> {
    let mut rows = rows.to_vec();
    rows.sort_by(|a, b| (a.0.is_some(), a.0, &a.1).cmp(&(b.0.is_some(), b.0, &b.1)));
    if descending {
        rows.reverse();
    }
    rows.into_iter().map(|(_, id)| id).collect()
}

// ---- Starting dsyncd and the SDK ----

async fn app(pool: PgPool, keys: &[ApiKey]) -> TestApp {
    let mut config = TestApp::config();
    config.api.keys = keys.to_vec();
    TestApp::spawn_with(pool, config, Role::All).await
}

fn keys() -> Vec<ApiKey> {
    vec![
        ApiKey {
            key: Secret::new(KEY_ALL),
            organization_ids: None,
        },
        ApiKey {
            key: Secret::new(KEY_A),
            organization_ids: Some(vec![ORG_A.to_owned()]),
        },
    ]
}

/// The official SDK with its base URL changed, and nothing else but no retries.
fn sdk(app: &TestApp, key: &str) -> workos::Client {
    workos::Client::builder()
        .api_key(key)
        .base_url(&app.address)
        .max_retries(0)
        .build()
}

fn users_of_directory(order: PaginationOrder, limit: i64) -> ListUsersParams {
    ListUsersParams {
        directory: Some(DIR_A.to_owned()),
        order: Some(order),
        limit: Some(limit),
        ..Default::default()
    }
}

async fn auto_paged_users(client: &workos::Client, params: ListUsersParams) -> Vec<String> {
    let users: Vec<_> = client
        .directory_sync()
        .list_users_auto_paging(params)
        .try_collect()
        .await
        .expect("the SDK accepts every page");
    users.into_iter().map(|user| user.id).collect()
}

// ---- Lists ----

#[sqlx::test]
async fn auto_paging_lists_exactly_the_live_users_in_workos_order(pool: PgPool) {
    let world = world(&pool).await;
    let app = app(pool, &keys()).await;
    let client = sdk(&app, KEY_ALL);
    for (order, descending) in [(PaginationOrder::Desc, true), (PaginationOrder::Asc, false)] {
        for limit in [7, 100] {
            let listed = auto_paged_users(&client, users_of_directory(order.clone(), limit)).await;
            assert_eq!(
                listed,
                in_order(&world.live_a, descending),
                "{order:?} {limit}"
            );
            let params = ListUsersParams {
                group: Some(GROUP.to_owned()),
                order: Some(order.clone()),
                limit: Some(limit),
                ..Default::default()
            };
            let listed = auto_paged_users(&client, params).await;
            assert_eq!(
                listed,
                in_order(&world.members, descending),
                "group {order:?}"
            );
        }
    }
    // The SDK's defaults (limit 10, desc) walk the same list.
    let params = ListUsersParams {
        directory: Some(DIR_A.to_owned()),
        ..Default::default()
    };
    assert_eq!(
        auto_paged_users(&client, params).await,
        in_order(&world.live_a, true)
    );
    app.stop().await;
}

/// `normal`: newest first, `before` leads to older records and `after` back to newer ones.
/// (So the SDKs' auto-pagers, which follow `after`, stop after the first page.)
#[sqlx::test]
async fn normal_order_lists_newest_first_with_reversed_cursors(pool: PgPool) {
    let world = world(&pool).await;
    let app = app(pool, &[]).await;
    let client = sdk(&app, "");
    let api = client.directory_sync();
    let mut walked = Vec::new();
    let mut before = None;
    let mut pages = Vec::new();
    loop {
        let mut params = users_of_directory(PaginationOrder::Normal, 6);
        params.before = before.clone();
        let page = api.list_users(params).await.unwrap();
        walked.extend(page.data.iter().map(|user| user.id.clone()));
        pages.push(page.data.iter().map(|u| u.id.clone()).collect::<Vec<_>>());
        match page.list_metadata.before {
            Some(cursor) => before = Some(cursor),
            None => break,
        }
    }
    assert_eq!(walked, in_order(&world.live_a, true));
    // From the last page, `after` gives the page before it back, newest first.
    let last_first = pages.last().unwrap()[0].clone();
    let mut params = users_of_directory(PaginationOrder::Normal, 6);
    params.after = Some(last_first);
    let back = api.list_users(params).await.unwrap();
    let back: Vec<String> = back.data.into_iter().map(|u| u.id).collect();
    assert_eq!(back, pages[pages.len() - 2]);
    // The auto-pager follows `after`: there is nothing newer than the first page.
    let first = auto_paged_users(&client, users_of_directory(PaginationOrder::Normal, 6)).await;
    assert_eq!(first, pages[0]);
    app.stop().await;
}

/// `before` on the default order gives back the previous page, in listing order.
#[sqlx::test]
async fn before_returns_the_previous_page(pool: PgPool) {
    let world = world(&pool).await;
    let app = app(pool, &[]).await;
    let client = sdk(&app, "");
    let api = client.directory_sync();
    let first = api
        .list_users(users_of_directory(PaginationOrder::Desc, 8))
        .await
        .unwrap();
    assert!(first.list_metadata.before.is_none());
    let mut params = users_of_directory(PaginationOrder::Desc, 8);
    params.after = first.list_metadata.after.clone();
    let second = api.list_users(params).await.unwrap();
    let mut params = users_of_directory(PaginationOrder::Desc, 8);
    params.before = second.list_metadata.before.clone();
    let again = api.list_users(params).await.unwrap();
    let ids = |page: &workos::DirectoryUserList| {
        page.data.iter().map(|u| u.id.clone()).collect::<Vec<_>>()
    };
    assert_eq!(ids(&again), ids(&first));
    assert_eq!(ids(&first), in_order(&world.live_a, true)[..8]);
    // At the start of the list, `before` is null; `after` leads on.
    assert!(again.list_metadata.before.is_none());
    assert_eq!(again.list_metadata.after, first.list_metadata.after);
    app.stop().await;
}

#[sqlx::test]
async fn groups_and_directories_list_through_the_sdk(pool: PgPool) {
    let world = world(&pool).await;
    let app = app(pool, &[]).await;
    let client = sdk(&app, "");
    let api = client.directory_sync();
    let groups = |params: ListGroupsParams| async {
        let groups: Vec<workos::DirectoryGroup> = api
            .list_groups_auto_paging(params)
            .try_collect()
            .await
            .unwrap();
        groups.into_iter().map(|g| g.id).collect::<Vec<_>>()
    };
    let params = ListGroupsParams {
        directory: Some(DIR_A.to_owned()),
        limit: Some(1),
        ..Default::default()
    };
    assert_eq!(groups(params).await, [EMPTY_GROUP, GROUP]);
    let member = world.members[0].1.clone();
    let params = ListGroupsParams {
        user: Some(member.clone()),
        ..Default::default()
    };
    assert_eq!(groups(params).await, [GROUP]);
    // A removed member is in no group any more.
    let removed = world.users[3]["id"].as_str().unwrap().to_owned();
    let params = ListGroupsParams {
        user: Some(removed),
        ..Default::default()
    };
    assert!(groups(params).await.is_empty());

    let directories: Vec<workos::Directory> = api
        .list_directories_auto_paging(ListDirectoriesParams::default())
        .try_collect()
        .await
        .unwrap();
    let ids: BTreeSet<String> = directories.into_iter().map(|d| d.id).collect();
    assert_eq!(ids, BTreeSet::from([DIR_A.to_owned(), DIR_B.to_owned()]));
    #[allow(deprecated)]
    for (params, expected) in [
        (
            ListDirectoriesParams {
                organization_id: Some(ORG_B.to_owned()),
                ..Default::default()
            },
            vec![DIR_B],
        ),
        (
            ListDirectoriesParams {
                search: Some("ALP".to_owned()),
                ..Default::default()
            },
            vec![DIR_A],
        ),
        (
            ListDirectoriesParams {
                domain: Some("beta.example.com".to_owned()),
                ..Default::default()
            },
            vec![DIR_B],
        ),
        (
            ListDirectoriesParams {
                search: Some("%".to_owned()),
                ..Default::default()
            },
            vec![],
        ),
    ] {
        let listed = api.list_directories(params.clone()).await.unwrap();
        let listed: Vec<String> = listed.data.into_iter().map(|d| d.id).collect();
        assert_eq!(listed, expected, "{params:?}");
    }
    let _ = world.directory_b;
    app.stop().await;
}

/// `idp_id` and `email` narrow a directory's users.
#[sqlx::test]
async fn users_are_found_by_email_and_idp_id(pool: PgPool) {
    let world = world(&pool).await;
    let app = app(pool, &[]).await;
    let client = sdk(&app, "");
    let user = &world.users[7];
    for params in [
        ListUsersParams {
            directory: Some(DIR_A.to_owned()),
            email: user["email"].as_str().map(str::to_owned),
            ..Default::default()
        },
        ListUsersParams {
            directory: Some(DIR_A.to_owned()),
            idp_id: user["idp_id"].as_str().map(str::to_owned),
            ..Default::default()
        },
    ] {
        let page = client.directory_sync().list_users(params).await.unwrap();
        let ids: Vec<String> = page.data.into_iter().map(|u| u.id).collect();
        assert_eq!(ids, [user["id"].as_str().unwrap()]);
    }
    app.stop().await;
}

// ---- Gets ----

/// The JSON of `GET path` on `app`, checking the status and the content type.
async fn get_json(app: &TestApp, path: &str, key: Option<&str>, status: u16) -> Value {
    let mut request = app.client.get(format!("{}{path}", app.address));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status().as_u16(), status, "{path}");
    assert_eq!(
        response.headers()["content-type"],
        "application/json",
        "{path}"
    );
    response.json().await.unwrap()
}

#[sqlx::test]
async fn gets_return_what_the_events_said(pool: PgPool) {
    let world = world(&pool).await;
    let app = app(pool, &[]).await;
    let client = sdk(&app, "");
    let api = client.directory_sync();

    // A user: the event's object, with its live groups and nothing else.
    let user = &world.users[0];
    let id = user["id"].as_str().unwrap();
    let sdk_user = api.get_user(id).await.unwrap();
    assert_eq!(sdk_user.email.as_deref(), user["email"].as_str());
    assert_eq!(sdk_user.organization_id, ORG_A);
    let served = get_json(&app, &format!("/directory_users/{id}"), None, 200).await;
    let mut expected = user.clone();
    expected["groups"] = json!([world.group]);
    assert_eq!(served, expected);
    // A user without created_at, and one in no group.
    let user = &world.users[29];
    let served = get_json(
        &app,
        &format!("/directory_users/{}", user["id"].as_str().unwrap()),
        None,
        200,
    )
    .await;
    let mut expected = user.clone();
    expected["created_at"] = json!("1970-01-01T00:00:00.000Z");
    expected["groups"] = json!([]);
    assert_eq!(served, expected);

    // A group: the event's object.
    let sdk_group = api.get_group(GROUP).await.unwrap();
    assert_eq!(sdk_group.name, world.group["name"].as_str().unwrap());
    let served = get_json(&app, &format!("/directory_groups/{GROUP}"), None, 200).await;
    assert_eq!(served, world.group);

    // A directory: the REST form of the event's.
    let sdk_directory = api.get_directory(DIR_A).await.unwrap();
    assert_eq!(sdk_directory.state, workos::DirectoryState::Linked);
    assert_eq!(sdk_directory.domain.as_deref(), Some("alpha.example.com"));
    let served = get_json(&app, &format!("/directories/{DIR_A}"), None, 200).await;
    let mut expected = world.directory_a.clone();
    let expected_map = expected.as_object_mut().unwrap();
    expected_map.remove("domains");
    expected_map.insert("state".into(), json!("linked"));
    expected_map.insert("domain".into(), json!("alpha.example.com"));
    // 28 live users, of which 4 inactive (n % 7 == 3: 3, 10, 17, 24); two live groups.
    expected_map.insert(
        "metadata".into(),
        json!({"users": {"active": 24, "inactive": 4}, "groups": 2}),
    );
    assert_eq!(served, expected);
    app.stop().await;
}

/// Every by-id path the world has, and some it has not.
fn get_paths(world: &World) -> Vec<String> {
    let mut paths: Vec<String> = world
        .users
        .iter()
        .map(|user| user["id"].as_str().unwrap().to_owned())
        .chain([world.user_b.clone(), "directory_user_unknown".to_owned()])
        .map(|id| format!("/directory_users/{id}"))
        .collect();
    for group in [GROUP, EMPTY_GROUP, GROUP_B, "directory_group_unknown"] {
        paths.push(format!("/directory_groups/{group}"));
    }
    for directory in [DIR_A, DIR_B, "directory_unknown"] {
        paths.push(format!("/directories/{directory}"));
    }
    paths
}

async fn get_answer(app: &TestApp, path: &str, key: &str) -> (u16, Value) {
    let response = app
        .client
        .get(format!("{}{path}", app.address))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

#[sqlx::test]
async fn a_get_answers_the_same_alone_or_among_hundreds_at_once(pool: PgPool) {
    let world = world(&pool).await;
    let mut config = TestApp::config();
    config.api.keys = keys();
    // One lookup statement at a time: concurrent gets share it (src/api/lookup.rs).
    config.database.max_connections = 2;
    let app = TestApp::spawn_with(pool, config, Role::Api).await;
    let mut requests = Vec::new();
    for key in [KEY_ALL, KEY_A] {
        for path in get_paths(&world) {
            requests.push((key, path));
        }
    }
    // One at a time, each its own statement.
    let mut alone = Vec::new();
    for (key, path) in &requests {
        alone.push(get_answer(&app, path, key).await);
    }
    let found = alone.iter().filter(|(status, _)| *status == 200).count();
    let not_found = alone.iter().filter(|(status, _)| *status == 404).count();
    // The key of all: 29 live users, 3 groups, 2 directories; key A: those of org A only.
    assert_eq!(requests.len(), 78);
    assert_eq!((found, not_found), ((29 + 3 + 2) + (28 + 2 + 1), 78 - 65));
    // Three times over, all at once: lookups of both scopes, of the same ids, and of none.
    let together = futures_util::future::join_all(
        requests
            .iter()
            .cycle()
            .take(requests.len() * 3)
            .map(|(key, path)| get_answer(&app, path, key)),
    )
    .await;
    for (n, answer) in together.iter().enumerate() {
        let (key, path) = &requests[n % requests.len()];
        assert_eq!(answer, &alone[n % requests.len()], "{path} with {key}");
    }
    app.stop().await;
}

#[sqlx::test]
async fn deleted_and_unknown_objects_are_the_sdks_not_found(pool: PgPool) {
    let world = world(&pool).await;
    let app = app(pool, &keys()).await;
    let client = sdk(&app, KEY_ALL);
    let api = client.directory_sync();
    for error in [
        api.get_user(&world.deleted_user).await.unwrap_err(),
        api.get_user("directory_user_unknown").await.unwrap_err(),
        api.get_group("directory_group_unknown").await.unwrap_err(),
        api.get_directory("directory_unknown").await.unwrap_err(),
        api.get_user("not an id; DROP TABLE x").await.unwrap_err(),
    ] {
        assert!(error.is_not_found(), "{error}");
        assert_eq!(error.code(), Some("entity_not_found"));
    }
    // A deleted user is in no list either.
    let listed = auto_paged_users(&client, users_of_directory(PaginationOrder::Desc, 100)).await;
    assert!(!listed.contains(&world.deleted_user));

    for key in ["", "sk_wrong", &KEY_ALL[..KEY_ALL.len() - 1]] {
        let error = sdk(&app, key)
            .directory_sync()
            .get_directory(DIR_A)
            .await
            .unwrap_err();
        assert!(error.is_unauthorized(), "{error}");
        assert_eq!(error.code(), Some("unauthorized"));
    }
    let body = get_json(&app, "/directory_users?directory=x", None, 401).await;
    assert_eq!(
        body,
        json!({"message": "Unauthorized", "code": "unauthorized"})
    );
    app.stop().await;
}

#[sqlx::test]
async fn what_a_deletion_under_way_still_has_to_delete_is_already_gone(pool: PgPool) {
    let world = world(&pool).await;
    // Where the batches of two large deletions leave the tables until the worker's steps are
    // done: directory A's row deleted and its deletion recorded, its users and groups still
    // live; group B's row deleted and its deletion recorded, its memberships still live.
    sqlx::raw_sql(&format!(
        "UPDATE workos.directories SET deleted_at = now() WHERE id = '{DIR_A}';
         INSERT INTO workos.directory_deletions (directory_id, deleted_at) VALUES ('{DIR_A}', now());
         UPDATE workos.directory_groups SET deleted_at = now() WHERE id = '{GROUP_B}';
         INSERT INTO workos.group_deletions (group_id, deleted_at, cascades_until)
         VALUES ('{GROUP_B}', now(), 'infinity')"
    ))
    .execute(&pool)
    .await
    .unwrap();
    // The read API alone: no worker takes the steps meanwhile.
    let mut config = TestApp::config();
    config.api.keys = keys();
    let app = TestApp::spawn_with(pool, config, Role::Api).await;
    let client = sdk(&app, KEY_ALL);
    let api = client.directory_sync();

    assert!(
        auto_paged_users(&client, users_of_directory(PaginationOrder::Desc, 100))
            .await
            .is_empty()
    );
    let member = &world.members[0].1;
    assert!(api.get_user(member).await.unwrap_err().is_not_found());
    assert!(api.get_group(GROUP).await.unwrap_err().is_not_found());
    let groups_of_a = api
        .list_groups(ListGroupsParams {
            directory: Some(DIR_A.to_owned()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(groups_of_a.data.is_empty());

    // Group B has no members any more; its directory's users are as they were.
    let members_of_b = ListUsersParams {
        group: Some(GROUP_B.to_owned()),
        ..Default::default()
    };
    assert!(auto_paged_users(&client, members_of_b).await.is_empty());
    let users_of_b = ListUsersParams {
        directory: Some(DIR_B.to_owned()),
        ..Default::default()
    };
    assert_eq!(auto_paged_users(&client, users_of_b).await.len(), 3);
    assert_eq!(api.get_user(&world.user_b).await.unwrap().id, world.user_b);
    app.stop().await;
}

// ---- Keys limited to organizations ----

#[sqlx::test]
async fn a_key_limited_to_an_organization_sees_nothing_of_another(pool: PgPool) {
    let world = world(&pool).await;
    let app = app(pool, &keys()).await;
    let limited = sdk(&app, KEY_A);
    let api = limited.directory_sync();

    let directories = api
        .list_directories(ListDirectoriesParams::default())
        .await
        .unwrap();
    let ids: Vec<String> = directories.data.into_iter().map(|d| d.id).collect();
    assert_eq!(ids, [DIR_A]);
    let params = ListDirectoriesParams {
        organization_id: Some(ORG_B.to_owned()),
        ..Default::default()
    };
    assert!(api.list_directories(params).await.unwrap().data.is_empty());
    assert!(api.get_directory(DIR_B).await.unwrap_err().is_not_found());
    assert!(api
        .get_user(&world.user_b)
        .await
        .unwrap_err()
        .is_not_found());
    assert!(api.get_group(GROUP_B).await.unwrap_err().is_not_found());
    let params = ListUsersParams {
        directory: Some(DIR_B.to_owned()),
        ..Default::default()
    };
    assert!(api.list_users(params).await.unwrap().data.is_empty());
    let params = ListUsersParams {
        group: Some(GROUP_B.to_owned()),
        ..Default::default()
    };
    assert!(api.list_users(params).await.unwrap().data.is_empty());
    for params in [
        ListGroupsParams {
            directory: Some(DIR_B.to_owned()),
            ..Default::default()
        },
        ListGroupsParams {
            user: Some(world.user_b.clone()),
            ..Default::default()
        },
    ] {
        assert!(api.list_groups(params).await.unwrap().data.is_empty());
    }
    // Its own organization, whole.
    let listed = auto_paged_users(&limited, users_of_directory(PaginationOrder::Asc, 9)).await;
    assert_eq!(listed, in_order(&world.live_a, false));
    // A cursor naming another organization's object is no cursor at all.
    let mut params = users_of_directory(PaginationOrder::Desc, 10);
    params.after = Some(world.user_b.clone());
    let error = api.list_users(params).await.unwrap_err();
    assert_eq!(error.status(), Some(422));

    // The unlimited key sees both.
    let all = sdk(&app, KEY_ALL);
    assert!(all.directory_sync().get_user(&world.user_b).await.is_ok());
    app.stop().await;
}

// ---- Paging while rows change ----

#[sqlx::test]
async fn paging_is_exact_while_rows_are_inserted_and_deleted(pool: PgPool) {
    let world = world(&pool).await;
    let app = app(pool.clone(), &[]).await;
    let client = sdk(&app, "");
    let api = client.directory_sync();
    let mut events = Events {
        next: 10_000,
        list: Vec::new(),
    };
    let mut served = Vec::new();
    let mut deleted = HashSet::new();
    let mut after = None;
    let mut extra = 100u32;
    for round in 0.. {
        let mut params = users_of_directory(PaginationOrder::Desc, 4);
        params.after = after.clone();
        let page = api.list_users(params).await.unwrap();
        served.extend(page.data.iter().map(|u| u.id.clone()));
        let Some(cursor) = page.list_metadata.after else {
            break;
        };
        // Between pages: new users newer and older than the cursor, a deletion of one not
        // served yet, and of the cursor's own user.
        for created in [5_000, 1] {
            events.user(DIR_A, ORG_A, extra, Some(created + round as i64));
            extra += 1;
        }
        let unserved = world
            .users
            .iter()
            .filter(|u| {
                let id = u["id"].as_str().unwrap();
                !served.iter().any(|s| s == id) && !deleted.contains(id)
            })
            .nth(round % 3);
        for user in unserved
            .into_iter()
            .chain(world.users.iter().filter(|u| u["id"] == cursor.as_str()))
        {
            events.delete_user(user, 4000 + round as i64);
            deleted.insert(user["id"].as_str().unwrap().to_owned());
        }
        events.apply(&pool).await;
        after = Some(cursor);
        assert!(round < 100, "the walk does not end");
    }
    let unique: HashSet<&String> = served.iter().collect();
    assert_eq!(unique.len(), served.len(), "no user is served twice");
    for (_, id) in &world.live_a {
        if !deleted.contains(id) {
            assert!(
                served.contains(id),
                "{id} was live throughout and was skipped"
            );
        }
    }
    app.stop().await;
}

// ---- Hostile parameters ----

/// The tables, to compare before and after.
async fn tables(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT t::text FROM (
             SELECT id, updated_at, deleted_at FROM workos.directory_users
             UNION ALL SELECT id, updated_at, deleted_at FROM workos.directory_groups
             UNION ALL SELECT id, updated_at, deleted_at FROM workos.directories
             UNION ALL SELECT group_id || user_id, updated_at, deleted_at
                 FROM workos.directory_group_memberships) t ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

#[sqlx::test]
async fn hostile_parameters_get_workos_errors_and_change_nothing(pool: PgPool) {
    world(&pool).await;
    let before = tables(&pool).await;
    let app = app(pool.clone(), &[]).await;
    let huge = "a".repeat(60_000);
    let sql = "x'%3B%20DROP%20TABLE%20workos.directory_users%3B--";
    let users = format!("/directory_users?directory={DIR_A}");
    // (request, status, the field of the first error for a 422).
    let cases: Vec<(String, u16, Option<&str>, Option<&str>)> = vec![
        (
            format!("{users}&limit=0"),
            422,
            Some("limit"),
            Some("out_of_range"),
        ),
        (
            format!("{users}&limit=101"),
            422,
            Some("limit"),
            Some("out_of_range"),
        ),
        (
            format!("{users}&limit=-5"),
            422,
            Some("limit"),
            Some("out_of_range"),
        ),
        (
            format!("{users}&limit=ten"),
            422,
            Some("limit"),
            Some("invalid_integer"),
        ),
        (
            format!("{users}&limit=1e3"),
            422,
            Some("limit"),
            Some("invalid_integer"),
        ),
        (
            format!("{users}&limit={huge}"),
            422,
            Some("limit"),
            Some("too_long"),
        ),
        (
            format!("{users}&order=sideways"),
            422,
            Some("order"),
            Some("invalid_value"),
        ),
        (
            format!("{users}&order=DESC"),
            422,
            Some("order"),
            Some("invalid_value"),
        ),
        (
            format!("{users}&after={sql}"),
            422,
            Some("after"),
            Some("invalid_id"),
        ),
        (
            format!("{users}&after=12"),
            422,
            Some("after"),
            Some("unknown_cursor"),
        ),
        (
            format!("{users}&before=directory_user_nope"),
            422,
            Some("before"),
            Some("unknown_cursor"),
        ),
        (
            format!("{users}&before=a&after=b"),
            422,
            Some("before"),
            Some("conflict"),
        ),
        (
            format!("{users}&after=%FF%FE"),
            422,
            Some("after"),
            Some("invalid_encoding"),
        ),
        (
            format!("{users}&limit=5&limit=6"),
            422,
            Some("limit"),
            Some("duplicate"),
        ),
        (
            format!("{users}&group={GROUP}"),
            422,
            Some("group"),
            Some("conflict"),
        ),
        (
            "/directory_users".to_owned(),
            422,
            Some("directory"),
            Some("required"),
        ),
        (
            "/directory_users?limit=5".to_owned(),
            422,
            Some("directory"),
            Some("required"),
        ),
        (
            format!("/directory_users?group={GROUP}&email=a@b.c"),
            422,
            Some("email"),
            Some("requires_directory"),
        ),
        (
            format!("/directory_users?directory={sql}"),
            422,
            Some("directory"),
            Some("invalid_id"),
        ),
        (
            format!("/directory_users?directory={huge}"),
            422,
            Some("directory"),
            Some("too_long"),
        ),
        (
            "/directory_groups".to_owned(),
            422,
            Some("directory"),
            Some("required"),
        ),
        (
            format!("/directory_groups?directory={DIR_A}&user=directory_user_x"),
            422,
            Some("user"),
            Some("conflict"),
        ),
        (
            format!("/directories?organization_id={sql}"),
            422,
            Some("organization_id"),
            Some("invalid_id"),
        ),
        (
            "/directory_users/%FF".to_owned(),
            404,
            None,
            Some("entity_not_found"),
        ),
        (
            format!("/directory_users/{sql}"),
            404,
            None,
            Some("entity_not_found"),
        ),
        (
            format!("/directory_groups/{huge}"),
            404,
            None,
            Some("entity_not_found"),
        ),
        (
            "/directories/%00".to_owned(),
            404,
            None,
            Some("entity_not_found"),
        ),
        // SQL and oddities where free text is allowed: an answer, of nothing.
        (format!("/directories?search={sql}"), 200, None, None),
        (format!("{users}&email={sql}"), 200, None, None),
        (format!("{users}&idp_id=%F0%9F%92%A5"), 200, None, None),
        // Unknown parameters, however odd or large, are ignored.
        // (the http crate caps a URI at 64 KiB; hyper's own 400/431 beyond it are not JSON).
        (
            format!("{users}&{h}={h}&%FF=%FF&&=&limit=1", h = &huge[..30_000]),
            200,
            None,
            None,
        ),
    ];
    for (path, status, field, code) in &cases {
        let body = get_json(&app, path, None, *status).await;
        let shown = &path[..path.len().min(120)];
        if let Some(code) = code {
            if *status == 422 {
                assert_eq!(body["message"], "Validation failed.", "{shown}");
                assert_eq!(body["code"], "invalid_request_parameters", "{shown}");
                assert_eq!(
                    body["errors"][0]["field"].as_str(),
                    *field,
                    "{shown}: {body}"
                );
                assert_eq!(
                    body["errors"][0]["code"].as_str(),
                    Some(*code),
                    "{shown}: {body}"
                );
            } else {
                assert_eq!(body["code"].as_str(), Some(*code), "{shown}: {body}");
                assert!(body["message"].is_string());
            }
        } else {
            assert_eq!(body["object"], "list", "{shown}");
        }
    }
    // The routes take GET only, and say so in JSON.
    let response = app
        .client
        .post(format!("{}/directory_users", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 405);
    assert_eq!(response.headers()["content-type"], "application/json");
    assert_eq!(tables(&pool).await, before, "nothing changed");
    // Still answering, and counted per route and status.
    get_json(&app, &users, None, 200).await;
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("dsyncd_api_requests_total{route=\"/directory_users\",status=\"422\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("dsyncd_api_request_duration_seconds_count{route=\"/directory_users\"}")
    );
    app.stop().await;
}

// ---- Where the read API runs ----

/// `database.read_url` carries the read API's queries, and only those: with it pointing at
/// a server that is not there, the API answers 503 while deliveries are stored and applied.
#[sqlx::test]
async fn the_read_pool_serves_the_api_and_nothing_else(pool: PgPool) {
    let mut config = TestApp::config();
    config.database.read_url = Some(Secret::new("postgres://nobody@127.0.0.1:1/none"));
    config.database.timeout_ms = 300;
    let app = TestApp::spawn_with(pool.clone(), config, Role::All).await;
    let body = get_json(&app, &format!("/directories/{DIR_A}"), None, 503).await;
    assert_eq!(body["code"], "service_unavailable");
    let delivery = user_created("event_01API_READ_POOL_0001");
    assert_eq!(app.deliver(&delivery).await.status(), 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let users: i64 = sqlx::query_scalar("SELECT count(*) FROM workos.directory_users")
            .fetch_one(&pool)
            .await
            .unwrap();
        if users == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the worker did not apply the delivery"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    app.stop().await;
}

/// With `api.listen`, the read API is served there (with WorkOS-shaped 404s) and not on the
/// main address; the `api` role serves it without the webhook route.
#[sqlx::test]
async fn api_listen_moves_the_api_to_its_own_address(pool: PgPool) {
    world(&pool).await;
    // A free port, given back just before dsyncd binds it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut config: Config = TestApp::config();
    config.api.listen = Some(format!("127.0.0.1:{port}").parse().unwrap());
    let app = TestApp::spawn_with(pool.clone(), config, Role::Api).await;
    let api = TestApp {
        address: format!("http://127.0.0.1:{port}"),
        client: reqwest::Client::new(),
        shutdown: app.shutdown.clone(),
        task: tokio::spawn(async { Ok(()) }),
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let body = loop {
        match api
            .client
            .get(format!("{}/directories/{DIR_A}", api.address))
            .send()
            .await
        {
            Ok(response) => break response.json::<Value>().await.unwrap(),
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(error) => panic!("the API listener does not answer: {error}"),
        }
    };
    assert_eq!(body["id"], DIR_A);
    let unknown = get_json(&api, "/nothing_here", None, 404).await;
    assert_eq!(unknown["code"], "not_found");
    // The main address: health, no API, no webhook route.
    assert_eq!(app.get("/healthz").await.status(), 200);
    assert_eq!(
        app.get(&format!("/directories/{DIR_A}")).await.status(),
        404
    );
    assert_eq!(app.deliver(&user_created("event_x")).await.status(), 404);
    app.stop().await;
}

/// The rules for what the tables hold as `NULL` or in another shape than WorkOS's (README, "The
/// read API"), on rows written straight into the tables: each user is served with exactly these
/// values, by id and in lists.
#[sqlx::test]
async fn users_with_nulls_and_odd_json_are_served_as_the_sdks_accept(pool: PgPool) {
    sqlx::raw_sql(
        "INSERT INTO workos.directory_groups (id, directory_id, updated_at, raw_attributes, \
             last_event_id, last_event) \
         VALUES ('directory_group_odd', 'directory_odd', '2021-06-25 19:07:33.155789+00', \
             '\"text\"', 'event_odd', 'dsync.group.created'); \
         INSERT INTO workos.directory_users (id, directory_id, updated_at, email, raw_attributes, \
             custom_attributes, emails, roles, created_at, last_event_id, last_event) \
         VALUES ('directory_user_odd', 'directory_odd', '2021-06-25 19:07:33.155789+00', \
             'a\"b\\c\u{e9}@example.com', '[1, {\"a\": null}]', 'null', '{\"value\": 1}', '{}', \
             '2021-06-25 21:07:33+02', 'event_odd', 'dsync.user.created'), \
             ('directory_user_roles', 'directory_odd', '2021-06-25 19:07:33+00', NULL, \
             '{\"a\": {\"b\": null}}', '{}', '[{\"value\": null}]', '{admin,member}', NULL, \
             'event_odd', 'dsync.user.created'); \
         UPDATE workos.directory_users SET role = 'admin' WHERE id = 'directory_user_roles'; \
         INSERT INTO workos.directory_group_memberships (group_id, user_id, directory_id, \
             updated_at, last_event_id, last_event) \
         VALUES ('directory_group_odd', 'directory_user_odd', 'directory_odd', now(), \
             'event_odd', 'dsync.group.user_added');",
    )
    .execute(&pool)
    .await
    .unwrap();
    let app = app(pool, &[]).await;
    let odd = json!({"object": "directory_user", "id": "directory_user_odd",
        "directory_id": "directory_odd", "organization_id": "", "idp_id": "",
        "email": "a\"b\\c\u{e9}@example.com", "first_name": null, "last_name": null, "name": null,
        "username": null, "job_title": null, "state": "", "raw_attributes": {},
        "custom_attributes": {}, "roles": [], "created_at": "2021-06-25T19:07:33.000Z",
        "updated_at": "2021-06-25T19:07:33.155Z",
        "groups": [{"object": "directory_group", "id": "directory_group_odd", "idp_id": "",
            "directory_id": "directory_odd", "organization_id": "", "name": "",
            "raw_attributes": {}, "created_at": "1970-01-01T00:00:00.000Z",
            "updated_at": "2021-06-25T19:07:33.155Z"}]});
    let roles = json!({"object": "directory_user", "id": "directory_user_roles",
        "directory_id": "directory_odd", "organization_id": "", "idp_id": "", "email": null,
        "first_name": null, "last_name": null, "name": null, "username": null,
        "job_title": null, "emails": [{"value": null}], "state": "",
        "raw_attributes": {"a": {"b": null}}, "custom_attributes": {},
        "role": {"slug": "admin"}, "roles": [{"slug": "admin"}, {"slug": "member"}],
        "created_at": "1970-01-01T00:00:00.000Z", "updated_at": "2021-06-25T19:07:33.000Z",
        "groups": []});
    for expected in [&odd, &roles] {
        let path = format!("/directory_users/{}", expected["id"].as_str().unwrap());
        assert_eq!(&get_json(&app, &path, None, 200).await, expected);
    }
    let list = get_json(&app, "/directory_users?directory=directory_odd", None, 200).await;
    assert_eq!(list["data"], json!([odd, roles]));
    // And the SDK takes them.
    let client = sdk(&app, "");
    let user = client
        .directory_sync()
        .get_user("directory_user_odd")
        .await
        .unwrap();
    assert_eq!(user.organization_id, "");
    app.stop().await;
}
