//! The directory handler against a real Postgres: one test per rule of `docs/SCHEMA.md`, and a
//! property test that any delivery order (with duplicates, in any batch sizes) leaves the same
//! tables as applying the events in order.
//!
//! Events are built from the example bodies in `samples/`.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use dsyncd::directory::CHANGES_CHANNEL;
use dsyncd::{DirectoryHandler, Event, EventHandler, HandlerError};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};
use serde_json::{json, Value};
use sqlx::postgres::PgListener;
use sqlx::PgPool;

pub(crate) const DIRECTORY: &str = "directory_01ECAZ4NV9QMV47GW873HDCX74";
pub(crate) const USER: &str = "directory_user_01E1JG7J09H96KYP8HM9B0G5SJ";
pub(crate) const GROUP: &str = "directory_group_01E1JJS84MFPPQ3G655FHTKX6Z";

// ---- Building events ----

/// An event body, adjusted before use.
#[derive(Debug, Clone)]
pub(crate) struct Body(pub(crate) Value);

impl Body {
    /// An example body from `samples/`, e.g. `dsync.user.created`.
    pub(crate) fn example(name: &str) -> Body {
        let path = crate::helpers::sample_path(&format!("{name}.json"));
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
        Body(serde_json::from_str(&text).expect("examples are JSON"))
    }

    pub(crate) fn id(self, id: &str) -> Body {
        self.set("/id", id)
    }

    /// Sets the envelope's `created_at` and the object's `data.updated_at`.
    pub(crate) fn at(self, at: &str) -> Body {
        self.set("/created_at", at).set("/data/updated_at", at)
    }

    /// Sets a field by JSON pointer; the parent must exist.
    pub(crate) fn set(mut self, pointer: &str, value: impl Into<Value>) -> Body {
        let (parent, key) = pointer.rsplit_once('/').expect("a pointer");
        let parent = self
            .0
            .pointer_mut(parent)
            .and_then(Value::as_object_mut)
            .unwrap_or_else(|| panic!("no object at {parent}"));
        parent.insert(key.to_owned(), value.into());
        self
    }

    pub(crate) fn event(&self) -> Event {
        Event::from_payload(&self.0.to_string()).expect("an event body")
    }
}

pub(crate) fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .expect("an RFC 3339 time")
        .with_timezone(&Utc)
}

// ---- Applying events ----

/// Applies events as one batch in one transaction, as the worker does.
pub(crate) async fn apply(pool: &PgPool, events: &[Event]) -> Result<(), HandlerError> {
    let refs: Vec<&Event> = events.iter().collect();
    let mut tx = pool.begin().await?;
    DirectoryHandler::new().handle_batch(&mut tx, &refs).await?;
    tx.commit().await?;
    Ok(())
}

/// Applies events one per transaction, in the order given.
pub(crate) async fn apply_one_by_one(pool: &PgPool, events: &[Event]) -> Result<(), HandlerError> {
    for event in events {
        let mut tx = pool.begin().await?;
        DirectoryHandler::new().handle(&mut tx, event).await?;
        tx.commit().await?;
    }
    Ok(())
}

// ---- Reading the tables ----

/// The parts of a row that the rules decide.
#[derive(Debug, PartialEq)]
pub(crate) struct Decided {
    pub(crate) updated_at: DateTime<Utc>,
    pub(crate) deleted_at: Option<DateTime<Utc>>,
    pub(crate) last_event_id: String,
}

pub(crate) async fn directory(pool: &PgPool, id: &str) -> sqlx::Result<Option<Decided>> {
    sqlx::query_as!(
        Decided,
        "SELECT updated_at, deleted_at, last_event_id FROM workos.directories WHERE id = $1",
        id
    )
    .fetch_optional(pool)
    .await
}

pub(crate) async fn user(pool: &PgPool, id: &str) -> sqlx::Result<Option<Decided>> {
    sqlx::query_as!(
        Decided,
        "SELECT updated_at, deleted_at, last_event_id FROM workos.directory_users WHERE id = $1",
        id
    )
    .fetch_optional(pool)
    .await
}

pub(crate) async fn group(pool: &PgPool, id: &str) -> sqlx::Result<Option<Decided>> {
    sqlx::query_as!(
        Decided,
        "SELECT updated_at, deleted_at, last_event_id FROM workos.directory_groups WHERE id = $1",
        id
    )
    .fetch_optional(pool)
    .await
}

pub(crate) async fn membership(
    pool: &PgPool,
    group_id: &str,
    user_id: &str,
) -> sqlx::Result<Option<Decided>> {
    sqlx::query_as!(
        Decided,
        "SELECT updated_at, deleted_at, last_event_id
         FROM workos.directory_group_memberships WHERE group_id = $1 AND user_id = $2",
        group_id,
        user_id
    )
    .fetch_optional(pool)
    .await
}

/// Every row of the four tables, all columns but `synced_at`, and the tombstones.
pub(crate) async fn tables(pool: &PgPool) -> sqlx::Result<Value> {
    sqlx::query_scalar!(
        r#"
        SELECT jsonb_build_object(
            'directories', (SELECT coalesce(jsonb_agg(to_jsonb(t) - 'synced_at' ORDER BY t.id), '[]')
                            FROM workos.directories t),
            'users', (SELECT coalesce(jsonb_agg(to_jsonb(t) - 'synced_at' ORDER BY t.id), '[]')
                      FROM workos.directory_users t),
            'groups', (SELECT coalesce(jsonb_agg(to_jsonb(t) - 'synced_at' ORDER BY t.id), '[]')
                       FROM workos.directory_groups t),
            'memberships', (SELECT coalesce(jsonb_agg(to_jsonb(t) - 'synced_at'
                                                      ORDER BY t.group_id, t.user_id), '[]')
                            FROM workos.directory_group_memberships t),
            'tombstones', (SELECT coalesce(jsonb_agg(to_jsonb(t) ORDER BY t.kind, t.id), '[]')
                           FROM workos.tombstones t)
        ) AS "tables!"
        "#
    )
    .fetch_one(pool)
    .await
}

/// Empties the synced tables and the tombstones. (`DELETE`, not `TRUNCATE`: the tests empty
/// small tables thousands of times, and a `TRUNCATE` costs a new file and a sync per table.)
pub(crate) async fn truncate(pool: &PgPool) -> sqlx::Result<()> {
    sqlx::raw_sql(
        "DELETE FROM workos.directories; DELETE FROM workos.directory_users;
         DELETE FROM workos.directory_groups; DELETE FROM workos.directory_group_memberships;
         DELETE FROM workos.tombstones;",
    )
    .execute(pool)
    .await?;
    Ok(())
}

// ---- Snapshots: users, groups, directories ----

#[sqlx::test]
async fn an_older_event_never_overwrites_newer_data(pool: PgPool) -> anyhow::Result<()> {
    apply(&pool, &[Body::example("dsync.user.updated").event()]).await?;
    apply(&pool, &[Body::example("dsync.user.created").event()]).await?;

    let row = sqlx::query!("SELECT job_title, last_event FROM workos.directory_users")
        .fetch_one(&pool)
        .await?;
    assert_eq!(row.job_title.as_deref(), Some("Staff Engineer"));
    assert_eq!(row.last_event, "dsync.user.updated");
    assert_eq!(
        user(&pool, USER).await?.unwrap().last_event_id,
        "event_01HZ0000000000000000000003"
    );
    Ok(())
}

#[sqlx::test]
async fn a_duplicate_changes_nothing(pool: PgPool) -> anyhow::Result<()> {
    let created = Body::example("dsync.user.created");
    apply(&pool, &[created.event()]).await?;
    let first = sqlx::query!("SELECT to_jsonb(u) AS row FROM workos.directory_users u")
        .fetch_one(&pool)
        .await?;

    // A later transaction has a later now(): an unchanged `synced_at` means no write at all.
    apply(&pool, &[created.event()]).await?;
    apply(&pool, &[created.event(), created.event()]).await?;
    let again = sqlx::query!("SELECT to_jsonb(u) AS row FROM workos.directory_users u")
        .fetch_one(&pool)
        .await?;
    assert_eq!(first.row, again.row);
    Ok(())
}

#[sqlx::test]
async fn a_batch_of_new_users_holding_one_already_stored_is_applied_whole(
    pool: PgPool,
) -> anyhow::Result<()> {
    // A first sync's batch is inserted without the conflict rule; one user stored already (a
    // redelivery) sends it back through the upsert, which must still store the others.
    let created = Body::example("dsync.user.created");
    apply(&pool, &[created.event()]).await?;
    let first = user(&pool, USER).await?.unwrap();
    let new_user = |n: u32| {
        created
            .clone()
            .id(&format!("event_new_{n}"))
            .set("/data/id", format!("directory_user_new_{n}"))
            .event()
    };
    apply(&pool, &[new_user(1), created.event(), new_user(2)]).await?;
    assert_eq!(user(&pool, USER).await?.unwrap(), first);
    for n in [1, 2] {
        let row = user(&pool, &format!("directory_user_new_{n}")).await?;
        assert_eq!(
            row.map(|row| row.last_event_id),
            Some(format!("event_new_{n}"))
        );
    }
    // And a batch of new users only, inserted as they are.
    apply(&pool, &[new_user(3), new_user(4)]).await?;
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM workos.directory_users")
        .fetch_one(&pool)
        .await?;
    assert_eq!(stored, 5);
    Ok(())
}

#[sqlx::test]
async fn a_deleted_user_is_not_revived_by_an_event_that_is_not_strictly_newer(
    pool: PgPool,
) -> anyhow::Result<()> {
    let deleted = Body::example("dsync.user.deleted");
    let deleted_at = at("2021-06-30T08:00:00Z");
    apply(&pool, &[deleted.event()]).await?;

    // The same `updated_at` (rank 0 loses to the deletion's rank 2), and older ones.
    let same_time = Body::example("dsync.user.updated")
        .id("event_z_same_time")
        .at("2021-06-30T08:00:00.000Z")
        .set("/data/state", "active");
    let membership_same_time = Body::example("dsync.group.user_added")
        .id("event_z_membership")
        .set("/data/user/updated_at", "2021-06-30T08:00:00.000Z");
    let older = Body::example("dsync.user.updated");
    apply(&pool, &[same_time.event()]).await?;
    apply(&pool, &[membership_same_time.event(), older.event()]).await?;

    let row = user(&pool, USER).await?.unwrap();
    assert_eq!(row.deleted_at, Some(deleted_at));
    assert_eq!(row.last_event_id, "event_01HZ0000000000000000000008");
    let state = sqlx::query_scalar!("SELECT state FROM workos.directory_users")
        .fetch_one(&pool)
        .await?;
    assert_eq!(state.as_deref(), Some("inactive"));
    // The membership added before the deletion was stored deleted.
    assert_eq!(
        membership(&pool, GROUP, USER).await?.unwrap().deleted_at,
        Some(deleted_at)
    );
    Ok(())
}

#[sqlx::test]
async fn a_strictly_newer_event_revives_a_deleted_user(pool: PgPool) -> anyhow::Result<()> {
    apply(&pool, &[Body::example("dsync.user.deleted").event()]).await?;
    let newer = Body::example("dsync.user.updated")
        .id("event_01HZ00000000000000000000ZZ")
        .at("2021-06-30T08:00:00.001Z");
    apply(&pool, &[newer.event()]).await?;

    let row = user(&pool, USER).await?.unwrap();
    assert_eq!(row.deleted_at, None);
    assert_eq!(row.updated_at, at("2021-06-30T08:00:00.001Z"));
    Ok(())
}

#[sqlx::test]
async fn a_directory_deletion_wins_over_an_activation_of_the_same_time(
    pool: PgPool,
) -> anyhow::Result<()> {
    let deleted = Body::example("dsync.deleted");
    let activated_same_time = Body::example("dsync.activated")
        .id("event_z_after_the_deletion_by_id")
        .at("2021-07-01T10:00:00.000Z");
    apply(&pool, &[activated_same_time.event()]).await?;
    apply(&pool, &[deleted.event()]).await?;

    let row = directory(&pool, DIRECTORY).await?.unwrap();
    assert_eq!(row.deleted_at, Some(at("2021-07-01T10:00:00Z")));
    assert_eq!(row.last_event_id, "event_01HZ0000000000000000000009");
    Ok(())
}

#[sqlx::test]
async fn the_legacy_deactivation_wins_over_an_activation_of_the_same_time(
    pool: PgPool,
) -> anyhow::Result<()> {
    // The legacy sample has the activation's `updated_at`, and a `wh_` id.
    let deactivated = Body::example("legacy.dsync.deactivated").event();
    let activated = Body::example("dsync.activated")
        .id("wh_z_sorts_after")
        .event();
    apply(&pool, &[deactivated]).await?;
    apply(&pool, &[activated]).await?;

    let row = sqlx::query!("SELECT state, deleted_at, last_event FROM workos.directories")
        .fetch_one(&pool)
        .await?;
    assert_eq!(row.state.as_deref(), Some("inactive"));
    assert_eq!(row.last_event, "dsync.deactivated");
    assert_eq!(row.deleted_at, None);
    Ok(())
}

#[sqlx::test]
async fn an_inactive_user_is_stored_as_inactive_not_deleted(pool: PgPool) -> anyhow::Result<()> {
    let deactivated = Body::example("dsync.user.updated").set("/data/state", "inactive");
    apply(&pool, &[deactivated.event()]).await?;

    let row = sqlx::query!(
        "SELECT state, deleted_at, role, roles, emails, custom_attributes
         FROM workos.directory_users WHERE id = $1",
        USER
    )
    .fetch_one(&pool)
    .await?;
    assert_eq!(row.state.as_deref(), Some("inactive"));
    assert_eq!(row.deleted_at, None);
    assert_eq!(row.role.as_deref(), Some("member"));
    assert_eq!(row.roles, Some(vec!["member".to_owned()]));
    assert_eq!(
        row.emails.unwrap()[0]["value"],
        "marcelina.davis@example.com"
    );
    assert_eq!(
        row.custom_attributes,
        Some(json!({"department": "Engineering"}))
    );
    Ok(())
}

#[sqlx::test]
async fn role_slugs_are_stored_exactly_whatever_they_contain(pool: PgPool) -> anyhow::Result<()> {
    let slugs = ["member", "a\"b", "c\\d", "{e,f}", " g ", "NULL", "", "ü,ñ"];
    let roles: Vec<Value> = slugs.iter().map(|slug| json!({"slug": slug})).collect();
    let user = |at: &str, roles: Value| {
        Body::example("dsync.user.updated")
            .at(at)
            .set("/data/roles", roles)
            .event()
    };
    let stored = || async {
        sqlx::query_scalar::<_, Option<Vec<String>>>(
            "SELECT roles FROM workos.directory_users WHERE id = $1",
        )
        .bind(USER)
        .fetch_one(&pool)
        .await
    };
    apply(&pool, &[user("2030-01-01T00:00:01.000Z", json!(roles))]).await?;
    assert_eq!(stored().await?, Some(slugs.map(str::to_owned).to_vec()));

    // An empty list stays an empty list; no list is NULL.
    apply(&pool, &[user("2030-01-01T00:00:02.000Z", json!([]))]).await?;
    assert_eq!(stored().await?, Some(Vec::new()));
    apply(&pool, &[user("2030-01-01T00:00:03.000Z", Value::Null)]).await?;
    assert_eq!(stored().await?, None);
    Ok(())
}

// ---- Memberships ----

#[sqlx::test]
async fn a_membership_may_arrive_before_its_user_and_group(pool: PgPool) -> anyhow::Result<()> {
    apply(&pool, &[Body::example("dsync.group.user_added").event()]).await?;
    let row = membership(&pool, GROUP, USER).await?.unwrap();
    assert_eq!(row.deleted_at, None);
    assert_eq!(row.updated_at, at("2021-06-25T19:08:00Z"));
    // Its snapshots are stored too, and the created events that follow fit in.
    assert!(user(&pool, USER).await?.is_some());
    assert!(group(&pool, GROUP).await?.is_some());

    apply(
        &pool,
        &[
            Body::example("dsync.user.created").event(),
            Body::example("dsync.group.created").event(),
        ],
    )
    .await?;
    let users = sqlx::query!("SELECT email, deleted_at FROM workos.directory_users")
        .fetch_all(&pool)
        .await?;
    assert_eq!(users.len(), 1);
    assert_eq!(
        users[0].email.as_deref(),
        Some("marcelina.davis@example.com")
    );
    assert_eq!(users[0].deleted_at, None);
    assert_eq!(
        membership(&pool, GROUP, USER).await?.unwrap().deleted_at,
        None
    );
    Ok(())
}

#[sqlx::test]
async fn a_membership_is_decided_by_its_newest_event(pool: PgPool) -> anyhow::Result<()> {
    let removed_at = at("2021-06-28T08:00:00Z");
    apply(&pool, &[Body::example("dsync.group.user_removed").event()]).await?;
    apply(&pool, &[Body::example("dsync.group.user_added").event()]).await?;
    let row = membership(&pool, GROUP, USER).await?.unwrap();
    assert_eq!(row.deleted_at, Some(removed_at));
    assert_eq!(row.updated_at, removed_at);
    assert_eq!(row.last_event_id, "event_01HZ000000000000000000000A");

    // Added again later: live again.
    let added_again = Body::example("dsync.group.user_added")
        .id("event_01HZ000000000000000000000Z")
        .set("/created_at", "2021-06-28T09:00:00.000Z")
        .event();
    apply(&pool, &[added_again]).await?;
    let row = membership(&pool, GROUP, USER).await?.unwrap();
    assert_eq!(row.deleted_at, None);
    assert_eq!(row.updated_at, at("2021-06-28T09:00:00Z"));
    Ok(())
}

// ---- Cascades ----

#[sqlx::test]
async fn deleting_a_user_deletes_its_memberships(pool: PgPool) -> anyhow::Result<()> {
    let other_user = "directory_user_other";
    apply(
        &pool,
        &[
            Body::example("dsync.group.user_added").event(),
            Body::example("dsync.group.user_added")
                .id("event_other_user")
                .set("/data/user/id", other_user)
                .event(),
        ],
    )
    .await?;
    apply(&pool, &[Body::example("dsync.user.deleted").event()]).await?;

    let deleted_at = Some(at("2021-06-30T08:00:00Z"));
    assert_eq!(user(&pool, USER).await?.unwrap().deleted_at, deleted_at);
    assert_eq!(
        membership(&pool, GROUP, USER).await?.unwrap().deleted_at,
        deleted_at
    );
    assert_eq!(
        membership(&pool, GROUP, other_user)
            .await?
            .unwrap()
            .deleted_at,
        None
    );
    assert_eq!(group(&pool, GROUP).await?.unwrap().deleted_at, None);
    Ok(())
}

#[sqlx::test]
async fn deleting_a_group_deletes_its_memberships(pool: PgPool) -> anyhow::Result<()> {
    let other_group = "directory_group_other";
    apply(
        &pool,
        &[
            Body::example("dsync.group.user_added").event(),
            Body::example("dsync.group.user_added")
                .id("event_other_group")
                .set("/data/group/id", other_group)
                .event(),
        ],
    )
    .await?;
    apply(&pool, &[Body::example("dsync.group.deleted").event()]).await?;

    let deleted_at = Some(at("2021-06-29T08:00:00Z"));
    assert_eq!(group(&pool, GROUP).await?.unwrap().deleted_at, deleted_at);
    assert_eq!(
        membership(&pool, GROUP, USER).await?.unwrap().deleted_at,
        deleted_at
    );
    assert_eq!(
        membership(&pool, other_group, USER)
            .await?
            .unwrap()
            .deleted_at,
        None
    );
    assert_eq!(user(&pool, USER).await?.unwrap().deleted_at, None);
    Ok(())
}

/// Everything about the example directory, except its deletion, in event order.
fn directory_history() -> Vec<Event> {
    [
        "dsync.activated",
        "dsync.user.created",
        "dsync.user.updated",
        "dsync.group.created",
        "dsync.group.user_added",
        "dsync.group.updated",
        "dsync.group.user_removed",
    ]
    .into_iter()
    .map(|name| Body::example(name).event())
    .collect()
}

/// A user and a group with a membership in another directory, which a deletion must not touch.
fn another_directory() -> Vec<Event> {
    vec![Body::example("dsync.group.user_added")
        .id("event_elsewhere")
        .set("/data/directory_id", "directory_other")
        .set("/data/user/id", "directory_user_elsewhere")
        .set("/data/user/directory_id", "directory_other")
        .set("/data/group/id", "directory_group_elsewhere")
        .set("/data/group/directory_id", "directory_other")
        .event()]
}

#[sqlx::test]
async fn deleting_a_directory_deletes_everything_in_it(pool: PgPool) -> anyhow::Result<()> {
    apply(&pool, &another_directory()).await?;
    apply_one_by_one(&pool, &directory_history()).await?;
    // Removed before the deletion: the cascade keeps the earlier time.
    let removed_at = Some(at("2021-06-28T08:00:00Z"));
    assert_eq!(
        membership(&pool, GROUP, USER).await?.unwrap().deleted_at,
        removed_at
    );

    apply(&pool, &[Body::example("dsync.deleted").event()]).await?;

    let deleted_at = Some(at("2021-07-01T10:00:00Z"));
    assert_eq!(
        directory(&pool, DIRECTORY).await?.unwrap().deleted_at,
        deleted_at
    );
    assert_eq!(user(&pool, USER).await?.unwrap().deleted_at, deleted_at);
    assert_eq!(group(&pool, GROUP).await?.unwrap().deleted_at, deleted_at);
    assert_eq!(
        membership(&pool, GROUP, USER).await?.unwrap().deleted_at,
        removed_at
    );
    // The deletion does not replace the snapshots of users and groups.
    assert_eq!(
        user(&pool, USER).await?.unwrap().last_event_id,
        "event_01HZ000000000000000000000A"
    );

    let live_elsewhere = sqlx::query_scalar!(
        r#"SELECT
            (SELECT count(*) FROM workos.directory_users WHERE deleted_at IS NULL)
          + (SELECT count(*) FROM workos.directory_groups WHERE deleted_at IS NULL)
          + (SELECT count(*) FROM workos.directory_group_memberships WHERE deleted_at IS NULL)
          AS "live!""#
    )
    .fetch_one(&pool)
    .await?;
    assert_eq!(live_elsewhere, 3);
    Ok(())
}

#[sqlx::test]
async fn late_older_events_after_the_directory_is_deleted_keep_everything_deleted(
    pool: PgPool,
) -> anyhow::Result<()> {
    apply(&pool, &[Body::example("dsync.deleted").event()]).await?;
    // Retries of older events arrive after the deletion, one by one and as a batch.
    let mut history = directory_history();
    history.reverse();
    let (first, rest) = history.split_at(3);
    apply_one_by_one(&pool, first).await?;
    apply(&pool, rest).await?;

    let deleted_at = Some(at("2021-07-01T10:00:00Z"));
    assert_eq!(
        directory(&pool, DIRECTORY).await?.unwrap().deleted_at,
        deleted_at
    );
    assert_eq!(user(&pool, USER).await?.unwrap().deleted_at, deleted_at);
    assert_eq!(group(&pool, GROUP).await?.unwrap().deleted_at, deleted_at);
    assert!(membership(&pool, GROUP, USER).await?.unwrap().deleted_at <= deleted_at);

    // And the tables equal those of the in-order delivery.
    let late = tables(&pool).await?;
    truncate(&pool).await?;
    apply_one_by_one(&pool, &directory_history()).await?;
    apply(&pool, &[Body::example("dsync.deleted").event()]).await?;
    assert_eq!(late, tables(&pool).await?);
    Ok(())
}

// ---- Batches ----

/// Every example, the ones the handler leaves alone included, in the order WorkOS sent them.
fn every_example() -> Vec<Event> {
    [
        "legacy.dsync.deactivated",
        "dsync.activated",
        "dsync.token.created",
        "unknown.connection.activated",
        "dsync.user.created",
        "dsync.group.created",
        "dsync.group.user_added",
        "dsync.user.updated",
        "dsync.group.updated",
        "dsync.group.user_removed",
        "dsync.group.deleted",
        "dsync.user.deleted",
        "dsync.deleted",
    ]
    .into_iter()
    .map(|name| Body::example(name).event())
    .collect()
}

#[sqlx::test]
async fn one_batch_gives_the_same_tables_as_one_event_per_transaction(
    pool: PgPool,
) -> anyhow::Result<()> {
    for length in [7, 11, 13] {
        let events = &every_example()[..length];
        truncate(&pool).await?;
        apply_one_by_one(&pool, events).await?;
        let one_by_one = tables(&pool).await?;

        truncate(&pool).await?;
        let mut reversed = events.to_vec();
        reversed.reverse();
        apply(&pool, &reversed).await?;
        assert_eq!(
            one_by_one,
            tables(&pool).await?,
            "the first {length} examples"
        );
    }
    Ok(())
}

#[sqlx::test]
async fn events_of_other_types_change_nothing(pool: PgPool) -> anyhow::Result<()> {
    let events = [
        Body::example("dsync.token.created").event(),
        Body::example("unknown.connection.activated").event(),
    ];
    apply(&pool, &events).await?;
    apply_one_by_one(&pool, &events).await?;
    let empty = json!({"directories": [], "users": [], "groups": [], "memberships": [],
                       "tombstones": []});
    assert_eq!(tables(&pool).await?, empty);
    Ok(())
}

#[sqlx::test]
async fn an_event_missing_its_updated_at_is_rejected(pool: PgPool) -> anyhow::Result<()> {
    let mut broken = Body::example("dsync.group.created");
    broken.0["data"]
        .as_object_mut()
        .unwrap()
        .remove("updated_at");
    let good = Body::example("dsync.user.created").event();
    match apply(&pool, &[good, broken.event()]).await {
        Err(HandlerError::Rejected(message)) => assert_eq!(
            message,
            "`data.updated_at` of dsync.group.created is missing"
        ),
        other => panic!("expected a rejection, got {other:?}"),
    }
    Ok(())
}

#[sqlx::test]
async fn the_sql_event_rank_orders_like_the_spec(pool: PgPool) -> anyhow::Result<()> {
    let expected = [
        ("dsync.activated", 0),
        ("dsync.deactivated", 1),
        ("dsync.deleted", 2),
        ("dsync.user.created", 0),
        ("dsync.user.updated", 0),
        ("dsync.user.deleted", 2),
        ("dsync.group.created", 0),
        ("dsync.group.updated", 0),
        ("dsync.group.deleted", 2),
        ("dsync.group.user_added", 0),
        ("dsync.group.user_removed", 0),
    ];
    for (event_type, rank) in expected {
        let sql_rank =
            sqlx::query_scalar!(r#"SELECT workos.event_rank($1) AS "rank!""#, event_type)
                .fetch_one(&pool)
                .await?;
        assert_eq!(sql_rank, rank, "{event_type}");
    }
    Ok(())
}

// ---- Concurrency ----

/// Waits until some transaction waits for an advisory lock: the directory locks at work.
async fn until_a_batch_waits_for_a_directory_lock(pool: &PgPool) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let waiting = sqlx::query_scalar!(
            r#"SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND NOT granted)
               AS "waiting!""#
        )
        .fetch_one(pool)
        .await?;
        if waiting {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "no batch waited for a directory lock"
        );
        tokio::task::yield_now().await;
    }
}

#[sqlx::test]
async fn a_directory_deletion_waits_for_a_concurrent_batch_in_that_directory(
    pool: PgPool,
) -> anyhow::Result<()> {
    let mut upserting = pool.begin().await?;
    let created = Body::example("dsync.user.created").event();
    DirectoryHandler::new()
        .handle_batch(&mut upserting, &[&created])
        .await?;

    let deletion = tokio::spawn({
        let pool = pool.clone();
        async move { apply(&pool, &[Body::example("dsync.deleted").event()]).await }
    });
    until_a_batch_waits_for_a_directory_lock(&pool).await?;
    upserting.commit().await?;
    deletion.await??;

    assert_eq!(
        user(&pool, USER).await?.unwrap().deleted_at,
        Some(at("2021-07-01T10:00:00Z"))
    );
    Ok(())
}

#[sqlx::test]
async fn a_batch_waits_for_a_concurrent_deletion_in_its_directory(
    pool: PgPool,
) -> anyhow::Result<()> {
    let mut deleting = pool.begin().await?;
    let deleted = Body::example("dsync.deleted").event();
    DirectoryHandler::new()
        .handle_batch(&mut deleting, &[&deleted])
        .await?;

    let upsert = tokio::spawn({
        let pool = pool.clone();
        async move { apply(&pool, &[Body::example("dsync.group.user_added").event()]).await }
    });
    until_a_batch_waits_for_a_directory_lock(&pool).await?;
    deleting.commit().await?;
    upsert.await??;

    let deleted_at = Some(at("2021-07-01T10:00:00Z"));
    assert_eq!(user(&pool, USER).await?.unwrap().deleted_at, deleted_at);
    assert_eq!(
        membership(&pool, GROUP, USER).await?.unwrap().deleted_at,
        deleted_at
    );
    Ok(())
}

// ---- Notifications ----

async fn next_payloads(listener: &mut PgListener, count: usize) -> anyhow::Result<Vec<Value>> {
    let mut payloads = Vec::new();
    for _ in 0..count {
        let notification = tokio::time::timeout(Duration::from_secs(10), listener.recv())
            .await
            .map_err(|_| anyhow::anyhow!("no notification after {payloads:?}"))??;
        assert_eq!(notification.channel(), CHANGES_CHANNEL);
        assert!(notification.payload().len() < 8000);
        payloads.push(serde_json::from_str(notification.payload())?);
    }
    payloads.sort_by_key(Value::to_string);
    Ok(payloads)
}

fn sorted(mut payloads: Vec<Value>) -> Vec<Value> {
    payloads.sort_by_key(Value::to_string);
    payloads
}

#[sqlx::test]
async fn changed_rows_are_announced_once_each_on_commit(pool: PgPool) -> anyhow::Result<()> {
    let mut listener = PgListener::connect_with(&pool).await?;
    listener.listen(CHANGES_CHANNEL).await?;

    let created = Body::example("dsync.user.created");
    apply(&pool, &[created.event()]).await?;
    assert_eq!(
        next_payloads(&mut listener, 1).await?,
        [
            json!({"table": "directory_users", "id": USER, "directory_id": DIRECTORY, "op": "upsert"})
        ]
    );

    // A duplicate changes no row and announces nothing: the next notification is the next change.
    apply(&pool, &[created.event()]).await?;
    // Not committed: announces nothing either.
    let mut rolled_back = pool.begin().await?;
    let group_created = Body::example("dsync.group.created").event();
    DirectoryHandler::new()
        .handle_batch(&mut rolled_back, &[&group_created])
        .await?;
    rolled_back.rollback().await?;

    apply(&pool, &[Body::example("dsync.group.user_added").event()]).await?;
    assert_eq!(
        next_payloads(&mut listener, 3).await?,
        sorted(vec![
            json!({"table": "directory_users", "id": USER, "directory_id": DIRECTORY, "op": "upsert"}),
            json!({"table": "directory_groups", "id": GROUP, "directory_id": DIRECTORY, "op": "upsert"}),
            json!({"table": "directory_group_memberships", "group_id": GROUP, "user_id": USER,
                   "directory_id": DIRECTORY, "op": "upsert"}),
        ])
    );

    apply(&pool, &[Body::example("dsync.deleted").event()]).await?;
    assert_eq!(
        next_payloads(&mut listener, 4).await?,
        sorted(vec![
            json!({"table": "directories", "id": DIRECTORY, "directory_id": DIRECTORY, "op": "delete"}),
            json!({"table": "directory_users", "id": USER, "directory_id": DIRECTORY, "op": "delete"}),
            json!({"table": "directory_groups", "id": GROUP, "directory_id": DIRECTORY, "op": "delete"}),
            json!({"table": "directory_group_memberships", "group_id": GROUP, "user_id": USER,
                   "directory_id": DIRECTORY, "op": "delete"}),
        ])
    );
    assert!(listener.next_buffered().is_none());
    Ok(())
}

// ---- Any order converges ----

/// One step of a generated directory history; steps that make no sense at that point (updating
/// a user that was deleted, removing a user who is not a member) are skipped.
#[derive(Debug, Clone)]
pub(crate) enum Step {
    /// Creates the user, or updates it (`inactive` or not).
    UpsertUser {
        user: usize,
        inactive: bool,
    },
    /// Deletes the user as WorkOS does: the event carries the user as it last was, and
    /// `legacy` omits the envelope `created_at` (old `wh_` deliveries).
    DeleteUser {
        user: usize,
        legacy: bool,
    },
    UpsertGroup {
        group: usize,
    },
    /// Deletes the group, like [`Step::DeleteUser`].
    DeleteGroup {
        group: usize,
        legacy: bool,
    },
    /// Adds or removes a live user to or from a live group; `legacy` omits `created_at`.
    ToggleMembership {
        group: usize,
        user: usize,
        legacy: bool,
    },
    /// A newer `dsync.activated`.
    UpdateDirectory,
    /// The legacy `dsync.deactivated`, with the current `updated_at` and no `created_at`.
    DeactivateDirectory,
}

// Few objects, so that steps often meet the same ones.
const USERS: usize = 2;
const GROUPS: usize = 2;

/// How often each kind of step comes, relative to the others.
pub(crate) struct StepWeights {
    pub(crate) upsert_user: u32,
    pub(crate) delete_user: u32,
    pub(crate) upsert_group: u32,
    pub(crate) delete_group: u32,
    pub(crate) toggle_membership: u32,
    pub(crate) update_directory: u32,
    pub(crate) deactivate_directory: u32,
}

/// Steps over `users` users and `groups` groups, in the proportions of `weights`.
pub(crate) fn steps(users: usize, groups: usize, w: StepWeights) -> impl Strategy<Value = Step> {
    prop_oneof![
        w.upsert_user => (0..users, prop::bool::weighted(0.2))
            .prop_map(|(user, inactive)| Step::UpsertUser { user, inactive }),
        w.delete_user => (0..users, prop::bool::weighted(0.3))
            .prop_map(|(user, legacy)| Step::DeleteUser { user, legacy }),
        w.upsert_group => (0..groups).prop_map(|group| Step::UpsertGroup { group }),
        w.delete_group => (0..groups, prop::bool::weighted(0.3))
            .prop_map(|(group, legacy)| Step::DeleteGroup { group, legacy }),
        w.toggle_membership => (0..groups, 0..users, prop::bool::weighted(0.2))
            .prop_map(|(group, user, legacy)| Step::ToggleMembership { group, user, legacy }),
        w.update_directory => Just(Step::UpdateDirectory),
        w.deactivate_directory => Just(Step::DeactivateDirectory),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    steps(
        USERS,
        GROUPS,
        StepWeights {
            upsert_user: 3,
            delete_user: 1,
            upsert_group: 2,
            delete_group: 1,
            toggle_membership: 5,
            update_directory: 1,
            deactivate_directory: 1,
        },
    )
}

/// Turns steps into the event bodies WorkOS would send, in order.
pub(crate) struct History {
    pub(crate) bodies: Vec<Value>,
    clock: DateTime<Utc>,
    directory_updated_at: DateTime<Utc>,
    pub(crate) users: Vec<Option<Value>>,
    pub(crate) users_deleted: Vec<bool>,
    pub(crate) groups: Vec<Option<Value>>,
    pub(crate) groups_deleted: Vec<bool>,
    members: std::collections::BTreeSet<(usize, usize)>,
    /// Whether a membership event without `created_at` was sent: such an event is dated by
    /// its snapshots, so it may not order as it was sent.
    legacy_memberships: bool,
    directory_deleted: bool,
}

impl History {
    /// A history that starts with the first sync of a directory with `users` users and
    /// `groups` groups: the directory, then every user and group.
    pub(crate) fn first_sync(users: usize, groups: usize) -> History {
        let start = at("2024-01-01T00:00:00Z");
        let mut history = History {
            bodies: Vec::new(),
            clock: start,
            directory_updated_at: start,
            users: vec![None; users],
            users_deleted: vec![false; users],
            groups: vec![None; groups],
            groups_deleted: vec![false; groups],
            members: Default::default(),
            legacy_memberships: false,
            directory_deleted: false,
        };
        history.activate();
        for user in 0..users {
            history.step(&Step::UpsertUser {
                user,
                inactive: false,
            });
        }
        for group in 0..groups {
            history.step(&Step::UpsertGroup { group });
        }
        history
    }

    fn tick(&mut self) -> String {
        self.clock += chrono::Duration::milliseconds(1500);
        self.clock.to_rfc3339()
    }

    fn send(&mut self, event_type: &str, data: Value, created_at: Option<&str>) {
        let number = self.bodies.len();
        let mut body = json!({"object": "event", "event": event_type, "data": data});
        match created_at {
            Some(created_at) => {
                body["id"] = format!("event_{number:04}").into();
                body["created_at"] = created_at.into();
            }
            None => body["id"] = format!("wh_{number:04}").into(),
        }
        self.bodies.push(body);
    }

    fn activate(&mut self) {
        let now = self.tick();
        self.directory_updated_at = at(&now);
        let mut data = Body::example("dsync.activated").0["data"].clone();
        data["updated_at"] = now.clone().into();
        data["name"] = format!("Directory as of {now}").into();
        self.send("dsync.activated", data, Some(&now));
    }

    pub(crate) fn step(&mut self, step: &Step) {
        match *step {
            Step::UpsertUser { user, inactive } if !self.users_deleted[user] => {
                let now = self.tick();
                let mut data = Body::example("dsync.user.created").0["data"].clone();
                data["id"] = format!("directory_user_{user}").into();
                data["updated_at"] = now.clone().into();
                data["job_title"] = format!("Title as of {now}").into();
                data["state"] = if inactive { "inactive" } else { "active" }.into();
                let event_type = if self.users[user].is_some() {
                    "dsync.user.updated"
                } else {
                    "dsync.user.created"
                };
                self.users[user] = Some(data.clone());
                self.send(event_type, data, Some(&now));
            }
            Step::DeleteUser { user, legacy } if !self.users_deleted[user] => {
                // As the quick start shows it: the user as it last was (its `updated_at` is
                // its last change, not the deletion), `state` inactive.
                if let Some(mut data) = self.users[user].clone() {
                    let now = self.tick();
                    data["state"] = "inactive".into();
                    self.users_deleted[user] = true;
                    self.members.retain(|&(_, member)| member != user);
                    self.send(
                        "dsync.user.deleted",
                        data,
                        (!legacy).then_some(now.as_str()),
                    );
                }
            }
            Step::UpsertGroup { group } if !self.groups_deleted[group] => {
                let now = self.tick();
                let mut data = Body::example("dsync.group.created").0["data"].clone();
                data["id"] = format!("directory_group_{group}").into();
                data["updated_at"] = now.clone().into();
                data["name"] = format!("Group as of {now}").into();
                let event_type = if self.groups[group].is_some() {
                    "dsync.group.updated"
                } else {
                    "dsync.group.created"
                };
                self.groups[group] = Some(data.clone());
                self.send(event_type, data, Some(&now));
            }
            Step::DeleteGroup { group, legacy } if !self.groups_deleted[group] => {
                if let Some(data) = self.groups[group].clone() {
                    let now = self.tick();
                    self.groups_deleted[group] = true;
                    self.members.retain(|&(member_of, _)| member_of != group);
                    self.send(
                        "dsync.group.deleted",
                        data,
                        (!legacy).then_some(now.as_str()),
                    );
                }
            }
            Step::ToggleMembership {
                group,
                user,
                legacy,
            } if !self.users_deleted[user] && !self.groups_deleted[group] => {
                let (Some(user_data), Some(group_data)) =
                    (self.users[user].clone(), self.groups[group].clone())
                else {
                    return;
                };
                let now = self.tick();
                let event_type = if self.members.remove(&(group, user)) {
                    "dsync.group.user_removed"
                } else {
                    self.members.insert((group, user));
                    "dsync.group.user_added"
                };
                let data =
                    json!({"directory_id": DIRECTORY, "user": user_data, "group": group_data});
                self.legacy_memberships |= legacy;
                self.send(event_type, data, (!legacy).then_some(now.as_str()));
            }
            Step::UpdateDirectory => self.activate(),
            Step::DeactivateDirectory => {
                let mut data = Body::example("legacy.dsync.deactivated").0["data"].clone();
                data["updated_at"] = self.directory_updated_at.to_rfc3339().into();
                self.send("dsync.deactivated", data, None);
            }
            _ => {}
        }
    }

    /// Deletes the directory as WorkOS does: its `updated_at` is its last change, long before
    /// its users' and groups' (directories rarely change); `legacy` omits `created_at`.
    pub(crate) fn delete_directory(&mut self, legacy: bool) {
        let now = self.tick();
        let mut data = Body::example("dsync.deleted").0["data"].clone();
        data["updated_at"] = self.directory_updated_at.to_rfc3339().into();
        self.directory_deleted = true;
        self.send("dsync.deleted", data, (!legacy).then_some(now.as_str()));
    }

    /// What the history says is live now.
    pub(crate) fn current(&self) -> Current {
        let standing = |objects: &[Option<Value>], deleted: &[bool]| {
            (0..objects.len())
                .filter(|&index| objects[index].is_some() && !deleted[index])
                .collect()
        };
        Current {
            directory_deleted: self.directory_deleted,
            users: standing(&self.users, &self.users_deleted),
            users_deleted: self.users_deleted.clone(),
            groups: standing(&self.groups, &self.groups_deleted),
            groups_deleted: self.groups_deleted.clone(),
            members: (!self.legacy_memberships).then(|| self.members.clone()),
        }
    }
}

/// What a history says is live at its end, to check the tables against independently of how
/// dsyncd orders events.
#[derive(Debug, Clone)]
pub(crate) struct Current {
    directory_deleted: bool,
    users: BTreeSet<usize>,
    users_deleted: Vec<bool>,
    groups: BTreeSet<usize>,
    groups_deleted: Vec<bool>,
    /// The current memberships, unless a membership event had no `created_at`: such an event is
    /// dated by its snapshots, so it may not order as it was sent.
    members: Option<BTreeSet<(usize, usize)>>,
}

impl Current {
    /// Exactly the users and groups created and not deleted are live, nothing in a deleted
    /// directory, no membership of a deleted user or group, and (see `members`) exactly the
    /// current memberships.
    pub(crate) fn check(&self, tables: &Value) -> Result<(), String> {
        let live = |table: &str| -> Vec<&Value> {
            tables[table]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|row| row["deleted_at"].is_null())
                .collect()
        };
        let number = |id: &Value, prefix: &str| -> usize {
            id.as_str()
                .and_then(|id| id.strip_prefix(prefix))
                .and_then(|number| number.parse().ok())
                .unwrap_or_else(|| panic!("a generated id: {id}"))
        };
        let ids = |table: &str, prefix: &str| -> BTreeSet<usize> {
            live(table)
                .iter()
                .map(|row| number(&row["id"], prefix))
                .collect()
        };
        let nothing = BTreeSet::new();
        let standing = |objects| {
            if self.directory_deleted {
                &nothing
            } else {
                objects
            }
        };
        let users = ids("users", "directory_user_");
        if &users != standing(&self.users) {
            return Err(format!("live users {users:?}, expected {:?}", self.users));
        }
        let groups = ids("groups", "directory_group_");
        if &groups != standing(&self.groups) {
            return Err(format!(
                "live groups {groups:?}, expected {:?}",
                self.groups
            ));
        }
        if self.directory_deleted && !live("directories").is_empty() {
            return Err("the deleted directory is live".into());
        }
        let memberships: BTreeSet<(usize, usize)> = live("memberships")
            .iter()
            .map(|row| {
                (
                    number(&row["group_id"], "directory_group_"),
                    number(&row["user_id"], "directory_user_"),
                )
            })
            .collect();
        for &(group, user) in &memberships {
            if self.directory_deleted || self.groups_deleted[group] || self.users_deleted[user] {
                return Err(format!(
                    "membership {group}/{user} live under a deleted object"
                ));
            }
        }
        match &self.members {
            Some(members) if !self.directory_deleted && &memberships != members => Err(format!(
                "live memberships {memberships:?}, expected {members:?}"
            )),
            _ => Ok(()),
        }
    }
}

/// A history, and a way of delivering it: shuffled, some events twice, in batches.
#[derive(Debug, Clone)]
struct Delivery {
    in_order: Vec<Value>,
    delivered: Vec<Value>,
    batch_sizes: Vec<usize>,
    current: Current,
}

fn delivery() -> impl Strategy<Value = Delivery> {
    (
        prop::collection::vec(step(), 1..24),
        prop::option::of(any::<bool>()),
    )
        .prop_map(|(steps, delete_directory)| {
            let mut history = History::first_sync(USERS, GROUPS);
            for step in &steps {
                history.step(step);
            }
            if let Some(legacy) = delete_directory {
                history.delete_directory(legacy);
            }
            (history.bodies.clone(), history.current())
        })
        .prop_flat_map(|(in_order, current)| {
            let count = in_order.len();
            (
                Just(in_order.clone()).prop_shuffle(),
                prop::collection::vec((0..count, 0..=count), 0..5),
                prop::collection::vec(1..6usize, 1..=count),
            )
                .prop_map(move |(mut delivered, duplicates, batch_sizes)| {
                    for (original, position) in duplicates {
                        delivered.insert(position.min(delivered.len()), in_order[original].clone());
                    }
                    Delivery {
                        in_order: in_order.clone(),
                        delivered,
                        batch_sizes,
                        current: current.clone(),
                    }
                })
        })
}

pub(crate) fn events(bodies: &[Value]) -> Vec<Event> {
    bodies
        .iter()
        .map(|body| Event::from_payload(&body.to_string()).expect("a generated event"))
        .collect()
}

async fn delivered_in_any_order_equals_in_order(
    pool: &PgPool,
    delivery: Delivery,
) -> Result<(), TestCaseError> {
    let failed = |error: &dyn std::fmt::Display| TestCaseError::fail(error.to_string());

    truncate(pool).await.map_err(|e| failed(&e))?;
    apply_one_by_one(pool, &events(&delivery.in_order))
        .await
        .map_err(|e| failed(&e))?;
    let in_order = tables(pool).await.map_err(|e| failed(&e))?;

    truncate(pool).await.map_err(|e| failed(&e))?;
    let delivered = events(&delivery.delivered);
    let mut rest = &delivered[..];
    for size in delivery.batch_sizes.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (batch, after) = rest.split_at((*size).min(rest.len()));
        apply(pool, batch).await.map_err(|e| failed(&e))?;
        rest = after;
    }
    let shuffled = tables(pool).await.map_err(|e| failed(&e))?;
    prop_assert_eq!(&in_order, &shuffled);
    // The in-order tables themselves say what the history says is live.
    delivery
        .current
        .check(&in_order)
        .map_err(TestCaseError::fail)?;
    Ok(())
}

#[sqlx::test]
async fn any_delivery_order_gives_the_tables_of_in_order_delivery(pool: PgPool) {
    // Proptest runs the cases synchronously; they block on this test's runtime from a blocking
    // thread while the test itself awaits them, which keeps that runtime's I/O going.
    let runtime = tokio::runtime::Handle::current();
    let result = tokio::task::spawn_blocking(move || {
        let mut runner = TestRunner::new(ProptestConfig {
            cases: 32,
            failure_persistence: None,
            ..ProptestConfig::default()
        });
        runner
            .run(&delivery(), |delivery| {
                runtime.block_on(delivered_in_any_order_equals_in_order(&pool, delivery))
            })
            .map_err(|error| error.to_string())
    })
    .await
    .expect("the property test ran");
    if let Err(failure) = result {
        panic!("{failure}");
    }
}
