//! Deprovisioning that holds: deletions as WorkOS really sends them reach everything under
//! them, whatever order the events arrive in and however they are batched.
//!
//! WorkOS's deletion events carry the deleted object as it last was: its `updated_at` is its
//! last change, not the time of the deletion (the quick start's bodies, `tests/fixtures/seed/`,
//! have `updated_at` equal to `created_at`). Users change after their directory does, and
//! memberships are added after their user's or group's last change; the deletion must still
//! take them.

use std::borrow::Cow;

use dsyncd::app::MIGRATOR;
use dsyncd::{Event, EventHandler};
use serde_json::Value;
use sqlx::migrate::Migrator;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

use crate::directory::{
    apply, apply_one_by_one, at, directory, group, membership, tables, truncate, user, Body,
    DIRECTORY, GROUP, USER,
};

/// A body of the quick start (`tests/fixtures/seed/`), put in the directory of the samples.
fn seed(name: &str) -> Body {
    let path = crate::helpers::fixture_path(&format!("seed/{name}.json"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    let body = Body(serde_json::from_str(&text).expect("the seed's bodies are JSON"));
    match name {
        "dsync.activated" | "dsync.deleted" => body.set("/data/id", DIRECTORY),
        _ => body
            .set("/data/id", USER)
            .set("/data/directory_id", DIRECTORY),
    }
}

/// `body` with the envelope `created_at` WorkOS's current deliveries have, or without one
/// (the quick start's `wh_` deliveries).
fn recorded(body: Body, created_at: Option<&str>) -> Body {
    match created_at {
        Some(created_at) => body.set("/created_at", created_at),
        None => body,
    }
}

const CHANGED_LATER: &str = "2021-06-27T09:00:00.000Z";
const ADDED: &str = "2021-06-28T10:00:00.000Z";
const DELETED: &str = "2021-07-01T12:00:00.000Z";

/// The quick start's directory, then a user changed after it, a group, and the user added to
/// the group later still; the directory's own `updated_at` never moves.
fn a_directory_that_changed_under_it() -> Vec<Body> {
    vec![
        seed("dsync.activated").set("/created_at", "2021-06-25T19:07:33.155Z"),
        seed("dsync.user.updated")
            .id("event_user_changed")
            .at(CHANGED_LATER),
        Body::example("dsync.group.created"),
        Body::example("dsync.group.user_added")
            .id("event_added")
            .set("/created_at", ADDED),
    ]
}

fn all_permutations(count: usize) -> Vec<Vec<usize>> {
    if count == 0 {
        return vec![Vec::new()];
    }
    let mut permutations = Vec::new();
    for shorter in all_permutations(count - 1) {
        for position in 0..=shorter.len() {
            let mut permutation = shorter.clone();
            permutation.insert(position, count - 1);
            permutations.push(permutation);
        }
    }
    permutations
}

/// Every way of cutting `count` events into batches, as batch sizes.
fn all_splits(count: usize) -> Vec<Vec<usize>> {
    (0..1u32 << count.saturating_sub(1))
        .map(|cuts| {
            let mut sizes = vec![1];
            for position in 1..count {
                if cuts & (1 << (position - 1)) != 0 {
                    sizes.push(1);
                } else {
                    *sizes.last_mut().unwrap() += 1;
                }
            }
            sizes
        })
        .collect()
}

/// Applies `history` in every order, each order in every batch split if `every_split`, else in
/// one batch, one by one and one two-batch split (a different cut for successive orders), and
/// returns the tables, which must be the same every time: those of the in-order history.
async fn in_every_order(
    pool: &PgPool,
    history: &[Body],
    every_split: bool,
) -> anyhow::Result<Value> {
    // Thousands of small commits: waiting for each one's flush would be most of the time, and
    // proves nothing here.
    let options = (*pool.connect_options())
        .clone()
        .options([("synchronous_commit", "off")]);
    let pool = &PgPoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await?;
    let events: Vec<Event> = history.iter().map(Body::event).collect();
    truncate(pool).await?;
    apply_one_by_one(pool, &events).await?;
    let in_order = tables(pool).await?;

    let count = events.len();
    for (number, order) in all_permutations(count).into_iter().enumerate() {
        let arrived: Vec<Event> = order.iter().map(|&index| events[index].clone()).collect();
        let splits = if every_split {
            all_splits(count)
        } else {
            let cut = 1 + number % (count - 1);
            vec![vec![count], vec![1; count], vec![cut, count - cut]]
        };
        for sizes in splits {
            truncate(pool).await?;
            let mut rest = &arrived[..];
            for size in &sizes {
                let (batch, after) = rest.split_at(*size);
                apply(pool, batch).await?;
                rest = after;
            }
            anyhow::ensure!(
                tables(pool).await? == in_order,
                "order {order:?} in batches {sizes:?} differs from the in-order tables"
            );
        }
    }
    Ok(in_order)
}

/// The rows of one table in a dump of [`tables`] that are still live.
fn live<'a>(tables: &'a Value, table: &str) -> Vec<&'a Value> {
    tables[table]
        .as_array()
        .expect("a table")
        .iter()
        .filter(|row| row["deleted_at"].is_null())
        .collect()
}

fn deleted_at(row: &Value) -> chrono::DateTime<chrono::Utc> {
    at(row["deleted_at"].as_str().expect("a deleted row"))
}

#[sqlx::test]
async fn a_directory_deletion_takes_everything_changed_after_the_directory(
    pool: PgPool,
) -> anyhow::Result<()> {
    for created_at in [Some(DELETED), None] {
        let mut history = a_directory_that_changed_under_it();
        history.push(recorded(seed("dsync.deleted"), created_at));
        let tables = in_every_order(&pool, &history, false).await?;

        // When WorkOS recorded the deletion; without that, the directory's `updated_at`.
        let expected = at(created_at.unwrap_or("2021-06-25T19:07:33.155Z"));
        for table in ["directories", "users", "groups", "memberships"] {
            assert!(live(&tables, table).is_empty(), "{table} live: {tables}");
            for row in tables[table].as_array().unwrap() {
                assert_eq!(deleted_at(row), expected, "{table}: {row}");
            }
        }
        // The deletion does not replace what the rows last held.
        assert_eq!(
            user(&pool, USER).await?.unwrap().last_event_id,
            "event_user_changed"
        );
    }
    Ok(())
}

#[sqlx::test]
async fn a_user_deletion_takes_the_memberships_added_after_the_users_last_change(
    pool: PgPool,
) -> anyhow::Result<()> {
    for created_at in [Some(DELETED), None] {
        let history = vec![
            seed("dsync.user.created"),
            Body::example("dsync.group.created"),
            Body::example("dsync.group.user_added")
                .id("event_added")
                .set("/created_at", ADDED),
            // The user as it last was: adding it to a group did not change it.
            recorded(seed("dsync.user.deleted"), created_at),
        ];
        let tables = in_every_order(&pool, &history, true).await?;

        let expected = at(created_at.unwrap_or("2021-06-25T19:07:33.155Z"));
        assert!(live(&tables, "users").is_empty());
        assert!(live(&tables, "memberships").is_empty());
        assert_eq!(user(&pool, USER).await?.unwrap().deleted_at, Some(expected));
        assert_eq!(
            membership(&pool, GROUP, USER).await?.unwrap().deleted_at,
            Some(expected)
        );
        assert_eq!(group(&pool, GROUP).await?.unwrap().deleted_at, None);
    }
    Ok(())
}

#[sqlx::test]
async fn a_group_deletion_takes_the_memberships_added_after_the_groups_last_change(
    pool: PgPool,
) -> anyhow::Result<()> {
    for created_at in [Some(DELETED), None] {
        let group_deleted = Body::example("dsync.group.deleted")
            .set("/data/updated_at", "2021-06-25T19:07:33.155Z")
            .set("/id", "wh_group_deleted");
        let group_deleted = match created_at {
            Some(created_at) => group_deleted.set("/created_at", created_at),
            None => {
                let mut body = group_deleted;
                body.0.as_object_mut().unwrap().remove("created_at");
                body
            }
        };
        let history = vec![
            Body::example("dsync.group.created"),
            seed("dsync.user.created"),
            Body::example("dsync.group.user_added")
                .id("event_added")
                .set("/created_at", ADDED),
            group_deleted,
        ];
        let tables = in_every_order(&pool, &history, true).await?;

        let expected = at(created_at.unwrap_or("2021-06-25T19:07:33.155Z"));
        assert!(live(&tables, "groups").is_empty());
        assert!(live(&tables, "memberships").is_empty());
        assert_eq!(
            membership(&pool, GROUP, USER).await?.unwrap().deleted_at,
            Some(expected)
        );
        assert_eq!(user(&pool, USER).await?.unwrap().deleted_at, None);
    }
    Ok(())
}

#[sqlx::test]
async fn a_deleted_directory_stays_deleted_and_takes_what_arrives_later(
    pool: PgPool,
) -> anyhow::Result<()> {
    apply(
        &pool,
        &[recorded(seed("dsync.deleted"), Some(DELETED)).event()],
    )
    .await?;
    // A newer snapshot of the directory, and events about its objects newer than the deletion
    // itself (a retry of a membership event sent just before it, a user changed "after").
    apply(
        &pool,
        &[
            seed("dsync.activated")
                .id("event_late_activation")
                .at("2021-07-02T00:00:00.000Z")
                .event(),
            seed("dsync.user.updated")
                .id("event_late_user")
                .at("2021-07-03T00:00:00.000Z")
                .event(),
            Body::example("dsync.group.user_added")
                .id("event_late_add")
                .set("/created_at", "2021-07-04T00:00:00.000Z")
                .event(),
        ],
    )
    .await?;

    let deleted = Some(at(DELETED));
    assert_eq!(
        directory(&pool, DIRECTORY).await?.unwrap().deleted_at,
        deleted
    );
    let late_user = user(&pool, USER).await?.unwrap();
    assert_eq!(late_user.deleted_at, deleted);
    assert_eq!(late_user.last_event_id, "event_late_user");
    assert_eq!(group(&pool, GROUP).await?.unwrap().deleted_at, deleted);
    assert_eq!(
        membership(&pool, GROUP, USER).await?.unwrap().deleted_at,
        deleted
    );
    Ok(())
}

#[sqlx::test]
async fn of_several_deletions_of_an_object_the_earliest_time_stands(
    pool: PgPool,
) -> anyhow::Result<()> {
    let first = seed("dsync.user.deleted")
        .id("event_01_deleted")
        .set("/created_at", "2021-07-01T00:00:00.000Z");
    let second = seed("dsync.user.deleted")
        .id("event_02_deleted")
        .set("/created_at", "2021-07-05T00:00:00.000Z");
    for events in [
        vec![first.event(), second.event()],
        vec![second.event(), first.event()],
    ] {
        truncate(&pool).await?;
        apply(&pool, &[Body::example("dsync.group.user_added").event()]).await?;
        apply_one_by_one(&pool, &events).await?;
        let earliest = Some(at("2021-07-01T00:00:00.000Z"));
        assert_eq!(user(&pool, USER).await?.unwrap().deleted_at, earliest);
        assert_eq!(
            membership(&pool, GROUP, USER).await?.unwrap().deleted_at,
            earliest
        );
    }
    Ok(())
}

#[sqlx::test]
async fn a_revived_user_gets_back_only_memberships_decided_after_its_deletion(
    pool: PgPool,
) -> anyhow::Result<()> {
    let added = |id: &str, created_at: &str| {
        Body::example("dsync.group.user_added")
            .id(id)
            .set("/created_at", created_at)
            .event()
    };
    apply(&pool, &[added("event_added_before", ADDED)]).await?;
    apply(
        &pool,
        &[recorded(seed("dsync.user.deleted"), Some(DELETED)).event()],
    )
    .await?;
    // A strictly newer snapshot revives the user itself.
    apply(
        &pool,
        &[seed("dsync.user.updated")
            .id("event_revived")
            .at("2021-07-02T00:00:00.000Z")
            .event()],
    )
    .await?;
    assert_eq!(user(&pool, USER).await?.unwrap().deleted_at, None);
    assert_eq!(
        membership(&pool, GROUP, USER).await?.unwrap().deleted_at,
        Some(at(DELETED))
    );

    // A late membership event from before the deletion does not bring the membership back...
    apply(
        &pool,
        &[added("event_added_late_retry", "2021-06-30T00:00:00.000Z")],
    )
    .await?;
    assert_eq!(
        membership(&pool, GROUP, USER).await?.unwrap().deleted_at,
        Some(at(DELETED))
    );
    // ...one from after it does.
    apply(
        &pool,
        &[added("event_added_again", "2021-07-03T00:00:00.000Z")],
    )
    .await?;
    assert_eq!(
        membership(&pool, GROUP, USER).await?.unwrap().deleted_at,
        None
    );
    Ok(())
}

#[sqlx::test]
async fn a_deletion_that_is_already_recorded_announces_nothing_again(
    pool: PgPool,
) -> anyhow::Result<()> {
    let deleted = recorded(seed("dsync.user.deleted"), Some(DELETED));
    apply(&pool, &[Body::example("dsync.group.user_added").event()]).await?;
    apply(&pool, &[deleted.event()]).await?;
    let before = tables(&pool).await?;

    let mut listener = sqlx::postgres::PgListener::connect_with(&pool).await?;
    listener.listen(dsyncd::directory::CHANGES_CHANNEL).await?;
    // The same deletion again, as a retry with another id: nothing changes, nothing is sent.
    apply(&pool, &[deleted.id("event_deleted_again").event()]).await?;
    assert_eq!(tables(&pool).await?["memberships"], before["memberships"]);
    apply(
        &pool,
        &[Body::example("dsync.group.created")
            .id("event_marker")
            .at("2021-08-01T00:00:00.000Z")
            .event()],
    )
    .await?;
    let next = listener.recv().await?;
    let payload: Value = serde_json::from_str(next.payload())?;
    assert_eq!(payload["table"], "directory_groups", "{payload}");
    Ok(())
}

/// The next `count` notifications on the change channel, as sent.
async fn next_notifications(
    listener: &mut sqlx::postgres::PgListener,
    count: usize,
) -> anyhow::Result<Vec<String>> {
    let mut payloads = Vec::new();
    for _ in 0..count {
        let next = tokio::time::timeout(std::time::Duration::from_secs(10), listener.recv())
            .await
            .map_err(|_| anyhow::anyhow!("no notification after {payloads:?}"))??;
        payloads.push(next.payload().to_owned());
    }
    payloads.sort();
    Ok(payloads)
}

#[sqlx::test]
async fn a_row_two_deletions_of_a_batch_reach_is_announced_once_as_the_handler_words_it(
    pool: PgPool,
) -> anyhow::Result<()> {
    apply(
        &pool,
        &a_directory_that_changed_under_it()
            .iter()
            .map(Body::event)
            .collect::<Vec<_>>(),
    )
    .await?;
    let mut listener = sqlx::postgres::PgListener::connect_with(&pool).await?;
    listener.listen(dsyncd::directory::CHANGES_CHANNEL).await?;

    // The user's deletion and its directory's, in one batch: both reach the user and its
    // membership, and the cascades that delete them run in Postgres.
    apply(
        &pool,
        &[
            recorded(seed("dsync.deleted"), Some(DELETED)).event(),
            recorded(seed("dsync.user.deleted"), Some(CHANGED_LATER))
                .id("event_user_deleted")
                .event(),
        ],
    )
    .await?;
    // A marker in another directory: nothing of the batch may come after the four rows.
    apply(
        &pool,
        &[Body::example("dsync.group.created")
            .id("event_marker")
            .set("/data/directory_id", "directory_marker")
            .event()],
    )
    .await?;

    // Each payload is the text serde_json gives (keys sorted, no spaces), as the upserts'
    // are, so Postgres drops a repeated one.
    let text = |value: Value| serde_json::to_string(&value).unwrap();
    let mut expected = vec![
        text(serde_json::json!({"table": "directories", "id": DIRECTORY,
                                "directory_id": DIRECTORY, "op": "delete"})),
        text(serde_json::json!({"table": "directory_users", "id": USER,
                                "directory_id": DIRECTORY, "op": "delete"})),
        text(serde_json::json!({"table": "directory_groups", "id": GROUP,
                                "directory_id": DIRECTORY, "op": "delete"})),
        text(
            serde_json::json!({"table": "directory_group_memberships", "group_id": GROUP,
                                "user_id": USER, "directory_id": DIRECTORY, "op": "delete"}),
        ),
    ];
    expected.sort();
    assert_eq!(next_notifications(&mut listener, 4).await?, expected);
    let marker: Value = serde_json::from_str(&next_notifications(&mut listener, 1).await?[0])?;
    assert_eq!(marker["directory_id"], "directory_marker", "{marker}");
    Ok(())
}

#[sqlx::test]
async fn a_directory_deletion_rewrites_its_users_and_memberships_without_touching_an_index(
    pool: PgPool,
) -> anyhow::Result<()> {
    // 40 users, each in both of two groups.
    let mut events = vec![seed("dsync.activated").event()];
    for group in ["directory_group_a", "directory_group_b"] {
        events.push(
            Body::example("dsync.group.created")
                .id(&format!("event_{group}"))
                .set("/data/id", group)
                .set("/data/directory_id", DIRECTORY)
                .event(),
        );
    }
    for n in 0..40 {
        let user = format!("directory_user_{n}");
        events.push(
            Body::example("dsync.user.created")
                .id(&format!("event_created_{n}"))
                .set("/data/id", user.as_str())
                .set("/data/directory_id", DIRECTORY)
                .event(),
        );
        for group in ["directory_group_a", "directory_group_b"] {
            events.push(
                Body::example("dsync.group.user_added")
                    .id(&format!("event_added_{n}_{group}"))
                    .set("/data/directory_id", DIRECTORY)
                    .set("/data/user/id", user.as_str())
                    .set("/data/user/directory_id", DIRECTORY)
                    .set("/data/group/id", group)
                    .set("/data/group/directory_id", DIRECTORY)
                    .event(),
            );
        }
    }
    apply(&pool, &events).await?;

    let mut tx = pool.begin().await?;
    let deleted = recorded(seed("dsync.deleted"), Some(DELETED)).event();
    dsyncd::directory::DirectoryHandler::new()
        .handle_batch(&mut tx, &[&deleted])
        .await?;
    // This transaction's own counts: every row rewritten, and every rewrite a HOT update
    // (the new version on the row's page, no index entry), which is what makes deleting a
    // directory of 100,000 users take seconds (BENCHMARKS.md, "Scale").
    let updates: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT relname::text, n_tup_upd, n_tup_hot_upd FROM pg_stat_xact_user_tables
         WHERE schemaname = 'workos'
           AND relname IN ('directory_users', 'directory_group_memberships')
         ORDER BY relname",
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    assert_eq!(
        updates,
        [
            ("directory_group_memberships".to_owned(), 80, 80),
            ("directory_users".to_owned(), 40, 40),
        ]
    );
    let tables = tables(&pool).await?;
    assert!(live(&tables, "users").is_empty() && live(&tables, "memberships").is_empty());
    Ok(())
}

// ---- A large directory's deletion, in steps ----

/// The rows a deletion step walks at most.
const STEP: i64 = dsyncd::directory::DELETION_STEP_ROWS;

/// Users in the directory of the samples: two and a half deletion steps, not a multiple of one,
/// each a member of two of `LARGE_GROUPS` groups.
const LARGE_USERS: i64 = STEP * 5 / 2 - 1;
const LARGE_GROUPS: i64 = 50;

/// Fills the directory of the samples with `LARGE_USERS` users and their memberships, written
/// straight into the tables as the rules would have left them, plus `user_late`, deleted after
/// the directory will be, and `user_early`, deleted before it.
async fn fill_a_large_directory(pool: &PgPool) -> anyhow::Result<()> {
    apply(pool, &[seed("dsync.activated").event()]).await?;
    sqlx::query(
        "INSERT INTO workos.directory_users (id, directory_id, email, created_at, updated_at,
                                             last_event_id, last_event)
         SELECT 'user_' || lpad(n::text, 5, '0'), $1, 'user' || n || '@example.com',
                -- some without created_at, which walk as created at the epoch
                CASE WHEN n % 7 = 0 THEN NULL ELSE '2021-06-25T00:00:00Z'::timestamptz
                     + n * interval '1 second' END,
                '2021-06-26T00:00:00Z', 'event_user_' || n, 'dsync.user.created'
         FROM generate_series(1, $2) AS n;
         ",
    )
    .bind(DIRECTORY)
    .bind(LARGE_USERS)
    .execute(pool)
    .await?;
    sqlx::query(
        "INSERT INTO workos.directory_groups (id, directory_id, name, updated_at, last_event_id,
                                              last_event)
         SELECT 'group_' || g, $1, 'Group ' || g, '2021-06-26T00:00:00Z', 'event_group_' || g,
                'dsync.group.created'
         FROM generate_series(0, $2 - 1) AS g",
    )
    .bind(DIRECTORY)
    .bind(LARGE_GROUPS)
    .execute(pool)
    .await?;
    sqlx::query(
        "INSERT INTO workos.directory_group_memberships (group_id, user_id, directory_id,
                                                         updated_at, last_event_id, last_event)
         SELECT 'group_' || ((n * 2 + k) % $3), 'user_' || lpad(n::text, 5, '0'), $1,
                '2021-06-27T00:00:00Z', 'event_added_' || n || '_' || k, 'dsync.group.user_added'
         FROM generate_series(1, $2) AS n, generate_series(0, 1) AS k",
    )
    .bind(DIRECTORY)
    .bind(LARGE_USERS)
    .bind(LARGE_GROUPS)
    .execute(pool)
    .await?;
    sqlx::query(
        "UPDATE workos.directory_users SET deleted_at = CASE id
             WHEN 'user_00002' THEN '2021-08-01T00:00:00Z'::timestamptz
             ELSE '2021-06-30T00:00:00Z'::timestamptz END
         WHERE id IN ('user_00002', 'user_00003')",
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Rows of the directory of the samples per table and deletion time (`live` for none).
async fn deletion_census(pool: &PgPool) -> anyhow::Result<Vec<(String, String, i64)>> {
    Ok(sqlx::query_as(
        "SELECT t, coalesce(to_char(deleted_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI'), 'live'),
                count(*)
         FROM (SELECT 'users' AS t, deleted_at FROM workos.directory_users WHERE directory_id = $1
               UNION ALL
               SELECT 'groups', deleted_at FROM workos.directory_groups WHERE directory_id = $1
               UNION ALL
               SELECT 'memberships', deleted_at FROM workos.directory_group_memberships
               WHERE directory_id = $1) AS rows
         GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .bind(DIRECTORY)
    .fetch_all(pool)
    .await?)
}

/// The census of the large directory once deleted at `at`: every group and membership, `users`
/// users, and `early_users` still at the earlier deletion of 2021-06-30.
fn all_deleted_at(at: &str, users: i64, early_users: i64) -> Vec<(String, String, i64)> {
    let mut census = vec![
        ("groups".to_owned(), at.to_owned(), LARGE_GROUPS),
        ("memberships".to_owned(), at.to_owned(), LARGE_USERS * 2),
    ];
    if early_users > 0 {
        census.push((
            "users".to_owned(),
            "2021-06-30 00:00".to_owned(),
            early_users,
        ));
    }
    census.push(("users".to_owned(), at.to_owned(), users));
    census
}

/// How many directory deletions are under way.
async fn deletions_under_way(pool: &PgPool) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT count(*) FROM workos.directory_deletions")
        .fetch_one(pool)
        .await
}

/// Rows this transaction wrote so far, per synced table (the row versions it created; the
/// statistics views also count a connection's earlier transactions until they are flushed).
async fn updated_in(tx: &mut sqlx::PgConnection) -> anyhow::Result<Vec<(String, i64)>> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "WITH me AS (SELECT pg_current_xact_id_if_assigned()::text::xid AS xid)
         SELECT t, n FROM (
             SELECT 'directory_group_memberships' AS t,
                    (SELECT count(*) FROM workos.directory_group_memberships, me WHERE xmin = me.xid) AS n
             UNION ALL
             SELECT 'directory_groups', (SELECT count(*) FROM workos.directory_groups, me WHERE xmin = me.xid)
             UNION ALL
             SELECT 'directory_users', (SELECT count(*) FROM workos.directory_users, me WHERE xmin = me.xid)
         ) AS counts WHERE n > 0 ORDER BY t",
    )
    .fetch_all(tx)
    .await?;
    Ok(rows)
}

/// Runs the handler's steps, each in a transaction of its own as the worker does, until it
/// finds no work; returns the rows each step's transaction updated.
async fn step_until_done(pool: &PgPool) -> anyhow::Result<Vec<Vec<(String, i64)>>> {
    let mut steps = Vec::new();
    loop {
        let mut tx = pool.begin().await?;
        let found = dsyncd::directory::DirectoryHandler::new()
            .step(&mut tx)
            .await?;
        let updated = updated_in(&mut tx).await?;
        tx.commit().await?;
        if !found {
            assert!(
                updated.is_empty(),
                "a step that found nothing updated {updated:?}"
            );
            return Ok(steps);
        }
        steps.push(updated);
        assert!(steps.len() < 100, "the deletion does not end: {steps:?}");
    }
}

/// Runs one of the handler's steps, which must find work, and rolls it back, as when a step
/// fails.
async fn roll_back_a_step(pool: &PgPool) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    assert!(
        dsyncd::directory::DirectoryHandler::new()
            .step(&mut tx)
            .await?
    );
    tx.rollback().await?;
    Ok(())
}

/// Runs `count` of the handler's steps, each in a transaction of its own.
async fn take_steps(pool: &PgPool, count: usize) -> anyhow::Result<()> {
    for _ in 0..count {
        let mut tx = pool.begin().await?;
        dsyncd::directory::DirectoryHandler::new()
            .step(&mut tx)
            .await?;
        tx.commit().await?;
    }
    Ok(())
}

#[sqlx::test]
async fn a_large_directory_is_deleted_in_steps_of_bounded_transactions(
    pool: PgPool,
) -> anyhow::Result<()> {
    fill_a_large_directory(&pool).await?;

    // The batch deletes the directory's own row, and of its users at most one step's worth.
    let mut tx = pool.begin().await?;
    let deleted = recorded(seed("dsync.deleted"), Some(DELETED)).event();
    dsyncd::directory::DirectoryHandler::new()
        .handle_batch(&mut tx, &[&deleted])
        .await?;
    let in_batch = updated_in(&mut tx).await?;
    tx.commit().await?;
    assert!(
        matches!(&in_batch[..], [(table, n)] if table == "directory_users" && *n <= STEP),
        "the batch's own writes to the directory's rows: {in_batch:?}"
    );
    let tables = tables(&pool).await?;
    assert!(tables["directories"][0]["deleted_at"].is_string());
    let pending: Vec<(String, String)> =
        sqlx::query_as("SELECT directory_id, phase FROM workos.directory_deletions")
            .fetch_all(&pool)
            .await?;
    assert_eq!(pending, [(DIRECTORY.to_owned(), "users".to_owned())]);

    // A user event for the directory while its deletion is under way is written deleted.
    apply(
        &pool,
        &[Body::example("dsync.user.created")
            .id("event_created_during")
            .set("/data/id", "user_during")
            .set("/data/directory_id", DIRECTORY)
            .event()],
    )
    .await?;

    // A step that fails (rolled back here) leaves the walk where it was.
    roll_back_a_step(&pool).await?;

    let steps = step_until_done(&pool).await?;
    for step in &steps {
        assert_eq!(step.len(), 1, "one table a step: {steps:?}");
        assert!(
            step[0].1 <= STEP,
            "a step wrote more than {STEP} rows: {steps:?}"
        );
    }
    // Every row once, in the batch or a step: the users but the one deleted before the
    // directory and the one written deleted meanwhile, every group and membership.
    let mut total = std::collections::BTreeMap::new();
    for (table, n) in in_batch.iter().chain(steps.iter().flatten()) {
        *total.entry(table.as_str()).or_insert(0) += n;
    }
    assert_eq!(
        total.into_iter().collect::<Vec<_>>(),
        [
            ("directory_group_memberships", LARGE_USERS * 2),
            ("directory_groups", LARGE_GROUPS),
            ("directory_users", LARGE_USERS - 1),
        ]
    );
    // Users in three walks of a step at most, the batch's and two (two and a half steps with
    // the one created meanwhile), and memberships in five; groups in one.
    assert_eq!(steps.len(), 2 + 1 + 5, "{steps:?}");
    // Everything at the directory's deletion time, except the user deleted before it; the
    // one deleted after it moved to it.
    // (The user created during the deletion makes up for the one deleted before it.)
    assert_eq!(
        deletion_census(&pool).await?,
        all_deleted_at("2021-07-01 12:00", LARGE_USERS, 1)
    );
    assert_eq!(deletions_under_way(&pool).await?, 0);
    Ok(())
}

/// The time of a second deletion of the large directory or group, earlier than the first.
const EARLIER: &str = "2021-06-29T08:00:00.000Z";

/// Another delivery of the directory's deletion, dated [`EARLIER`].
fn the_directory_deleted_earlier() -> Event {
    recorded(seed("dsync.deleted"), Some(EARLIER))
        .id("event_deleted_earlier")
        .event()
}

/// The large directory, deleted at [`DELETED`] by a batch: the rest is left to steps.
async fn a_large_directory_being_deleted(pool: &PgPool) -> anyhow::Result<()> {
    fill_a_large_directory(pool).await?;
    apply(
        pool,
        &[recorded(seed("dsync.deleted"), Some(DELETED)).event()],
    )
    .await?;
    Ok(())
}

/// Every row of the large directory moved to [`EARLIER`], and no deletion left under way.
async fn assert_the_directory_deleted_earlier(pool: &PgPool) -> anyhow::Result<()> {
    assert_eq!(
        deletion_census(pool).await?,
        all_deleted_at("2021-06-29 08:00", LARGE_USERS, 0)
    );
    assert_eq!(deletions_under_way(pool).await?, 0);
    Ok(())
}

#[sqlx::test]
async fn an_earlier_deletion_of_a_directory_being_deleted_walks_it_again_from_the_start(
    pool: PgPool,
) -> anyhow::Result<()> {
    a_large_directory_being_deleted(&pool).await?;
    // Two steps: the walk is in the users' last half step.
    take_steps(&pool, 2).await?;
    // Another delivery of the deletion, dated earlier: every row moves to its time.
    apply(&pool, &[the_directory_deleted_earlier()]).await?;
    step_until_done(&pool).await?;
    assert_the_directory_deleted_earlier(&pool).await
}

#[sqlx::test]
async fn the_worker_finishes_a_large_directorys_deletion_by_itself(
    pool: PgPool,
) -> anyhow::Result<()> {
    fill_a_large_directory(&pool).await?;
    let deleted = recorded(seed("dsync.deleted"), Some(DELETED));
    let delivery = dsyncd::inbox::NewDelivery {
        id: "event_deleted".to_owned(),
        event: "dsync.deleted".to_owned(),
        payload: deleted.0.to_string(),
        ..dsyncd::inbox::NewDelivery::default()
    };
    dsyncd::inbox::insert(&pool, &[&delivery]).await?;
    // The running loop, which then has nothing to claim: it goes on stepping regardless.
    let worker = dsyncd::worker::Worker::new(pool.clone(), dsyncd::config::WorkerConfig::default())
        .with_handler(dsyncd::directory::DirectoryHandler::new());
    let shutdown = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(worker.run(shutdown.clone()));
    let all_deleted = crate::helpers::eventually(std::time::Duration::from_secs(30), || async {
        let census = deletion_census(&pool).await.unwrap();
        census.iter().all(|(_, at, _)| at != "live")
    })
    .await;
    shutdown.cancel();
    running.await?;
    assert!(
        all_deleted,
        "rows left live: {:?}",
        deletion_census(&pool).await?
    );
    assert_eq!(deletions_under_way(&pool).await?, 0);
    Ok(())
}

#[sqlx::test]
async fn run_until_empty_also_finishes_the_deletions_under_way(pool: PgPool) -> anyhow::Result<()> {
    a_large_directory_being_deleted(&pool).await?;
    let worker = dsyncd::worker::Worker::new(pool.clone(), dsyncd::config::WorkerConfig::default())
        .with_handler(dsyncd::directory::DirectoryHandler::new());
    worker.run_until_empty().await?;
    let census = deletion_census(&pool).await?;
    assert!(
        census.iter().all(|(_, at, _)| at != "live"),
        "rows left live: {census:?}"
    );
    Ok(())
}

/// Members of the large group: two and a half deletion steps.
const LARGE_GROUP_MEMBERS: i64 = STEP * 5 / 2 - 1;

/// The group of the samples with `LARGE_GROUP_MEMBERS` members, written straight into the
/// table as their `user_added` events of 2021-06-27 would have left them, but for `user_00002`,
/// removed on 2021-06-30, and `user_00003`, added on 2021-07-02 (after the group's deletion
/// will be dated); and another group, whose one member the deletion must not touch.
async fn fill_a_large_group(pool: &PgPool) -> anyhow::Result<()> {
    apply(pool, &[Body::example("dsync.group.created").event()]).await?;
    sqlx::query(
        "INSERT INTO workos.directory_group_memberships (group_id, user_id, directory_id,
                                                         updated_at, deleted_at, last_event_id,
                                                         last_event)
         SELECT $1, 'user_' || lpad(n::text, 5, '0'), $2,
                CASE n WHEN 2 THEN '2021-06-30T00:00:00Z' WHEN 3 THEN '2021-07-02T00:00:00Z'
                       ELSE '2021-06-27T00:00:00Z' END::timestamptz,
                CASE n WHEN 2 THEN '2021-06-30T00:00:00Z'::timestamptz END,
                'event_member_' || n,
                CASE n WHEN 2 THEN 'dsync.group.user_removed' ELSE 'dsync.group.user_added' END
         FROM generate_series(1, $3) AS n
         UNION ALL
         SELECT 'group_other', 'user_00001', $2, '2021-06-27T00:00:00Z', NULL, 'event_other',
                'dsync.group.user_added'",
    )
    .bind(GROUP)
    .bind(DIRECTORY)
    .bind(LARGE_GROUP_MEMBERS)
    .execute(pool)
    .await?;
    Ok(())
}

/// Memberships per group and deletion time (`live` for none).
async fn membership_census(pool: &PgPool) -> anyhow::Result<Vec<(String, String, i64)>> {
    Ok(sqlx::query_as(
        "SELECT group_id,
                coalesce(to_char(deleted_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI'), 'live'),
                count(*)
         FROM workos.directory_group_memberships GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .fetch_all(pool)
    .await?)
}

/// The group deletions under way.
async fn group_deletions_under_way(pool: &PgPool) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar("SELECT group_id FROM workos.group_deletions")
        .fetch_all(pool)
        .await
}

/// A `user_added` of `user_id` to the group of the samples, recorded at `created_at`.
fn added(user_id: &str, created_at: &str) -> Event {
    Body::example("dsync.group.user_added")
        .id(&format!("event_added_{user_id}"))
        .set("/created_at", created_at)
        .set("/data/user/id", user_id)
        .event()
}

#[sqlx::test]
async fn a_large_group_is_deleted_in_steps_of_bounded_transactions(
    pool: PgPool,
) -> anyhow::Result<()> {
    fill_a_large_group(&pool).await?;

    // The batch deletes the group's own row and records the deletion of its memberships.
    let mut tx = pool.begin().await?;
    let deleted = recorded(Body::example("dsync.group.deleted"), Some(DELETED)).event();
    dsyncd::directory::DirectoryHandler::new()
        .handle_batch(&mut tx, &[&deleted])
        .await?;
    let in_batch = updated_in(&mut tx).await?;
    tx.commit().await?;
    assert_eq!(in_batch, [("directory_groups".to_owned(), 1)]);
    assert_eq!(
        group(&pool, GROUP).await?.unwrap().deleted_at,
        Some(at(DELETED))
    );
    assert_eq!(group_deletions_under_way(&pool).await?, [GROUP]);

    // Meanwhile a membership added before the deletion is written deleted; one added after it
    // is live.
    apply(
        &pool,
        &[
            added("user_during", ADDED),
            added("user_after", "2021-07-03T00:00:00.000Z"),
        ],
    )
    .await?;

    // A step that fails (rolled back here) leaves the walk where it was.
    roll_back_a_step(&pool).await?;

    let steps = step_until_done(&pool).await?;
    // Two and a half steps of memberships, in three walks; each step rewrote only those it deletes:
    // all but the one removed earlier, the two added after the deletion and the one written
    // deleted meanwhile.
    assert_eq!(steps.len(), 3, "{steps:?}");
    let mut rewritten = 0;
    for step in &steps {
        assert!(
            matches!(&step[..], [(table, n)] if table == "directory_group_memberships" && *n <= STEP),
            "a step wrote more than {STEP} memberships, or another table: {steps:?}"
        );
        rewritten += step[0].1;
    }
    assert_eq!(rewritten, LARGE_GROUP_MEMBERS - 2);
    assert_eq!(
        membership_census(&pool).await?,
        [
            (GROUP.to_owned(), "2021-06-30 00:00".to_owned(), 1),
            (
                GROUP.to_owned(),
                "2021-07-01 12:00".to_owned(),
                LARGE_GROUP_MEMBERS - 1
            ),
            (GROUP.to_owned(), "live".to_owned(), 2),
            ("group_other".to_owned(), "live".to_owned(), 1),
        ]
    );
    assert!(group_deletions_under_way(&pool).await?.is_empty());
    Ok(())
}

/// Another delivery of the group's deletion, dated [`EARLIER`].
fn the_group_deleted_earlier() -> Event {
    recorded(Body::example("dsync.group.deleted"), Some(EARLIER))
        .id("event_deleted_earlier")
        .event()
}

/// The large group, deleted at [`DELETED`] by a batch: its memberships are left to steps.
async fn a_large_group_being_deleted(pool: &PgPool) -> anyhow::Result<()> {
    fill_a_large_group(pool).await?;
    let deleted = recorded(Body::example("dsync.group.deleted"), Some(DELETED));
    apply(pool, &[deleted.event()]).await?;
    Ok(())
}

/// Every membership of the large group that its deletion covers moved to [`EARLIER`], the one
/// removed on 2021-06-30 too; the reach stays the later deletion's, so the member added on
/// 2021-07-02 stays; the other group is untouched, and no deletion is left under way.
async fn assert_the_group_deleted_earlier(pool: &PgPool) -> anyhow::Result<()> {
    assert_eq!(
        membership_census(pool).await?,
        [
            (
                GROUP.to_owned(),
                "2021-06-29 08:00".to_owned(),
                LARGE_GROUP_MEMBERS - 1
            ),
            (GROUP.to_owned(), "live".to_owned(), 1),
            ("group_other".to_owned(), "live".to_owned(), 1),
        ]
    );
    assert!(group_deletions_under_way(pool).await?.is_empty());
    Ok(())
}

#[sqlx::test]
async fn an_earlier_deletion_of_a_group_being_deleted_walks_it_again_from_the_start(
    pool: PgPool,
) -> anyhow::Result<()> {
    a_large_group_being_deleted(&pool).await?;
    // Two steps: the walk is in the group's last half step.
    take_steps(&pool, 2).await?;
    // Another delivery of the deletion, dated earlier.
    apply(&pool, &[the_group_deleted_earlier()]).await?;
    step_until_done(&pool).await?;
    assert_the_group_deleted_earlier(&pool).await
}

/// A step that starts while a batch holds rows of its range, and the same batch's transaction
/// then recording another deletion of what the step walks: the cycle a step could close by
/// locking its deletion's row first and the rows after. `first` is applied in the batch's
/// transaction, the step waits for it, then `again` is applied in that transaction, which
/// commits; the step must then go on, and what remains is stepped to the end.
async fn a_step_beside_a_batch_that_deletes_again(
    pool: &PgPool,
    first: Event,
    again: Event,
) -> anyhow::Result<()> {
    let handler = dsyncd::directory::DirectoryHandler::new();
    let mut batch = pool.begin().await?;
    handler.handle_batch(&mut batch, &[&first]).await?;

    let mut step = pool.begin().await?;
    let step_pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut *step)
        .await?;
    let stepping = tokio::spawn(async move {
        let found = dsyncd::directory::DirectoryHandler::new()
            .step(&mut step)
            .await;
        (found, step)
    });
    let waits = crate::helpers::eventually(std::time::Duration::from_secs(10), || async {
        let waiting: Option<String> =
            sqlx::query_scalar("SELECT wait_event_type FROM pg_stat_activity WHERE pid = $1")
                .bind(step_pid)
                .fetch_one(pool)
                .await
                .unwrap();
        waiting.as_deref() == Some("Lock")
    })
    .await;
    assert!(waits, "the step did not wait for the batch");

    handler.handle_batch(&mut batch, &[&again]).await?;
    batch.commit().await?;
    let (found, step) = stepping.await?;
    assert!(
        matches!(found, Ok(true)),
        "the step beside the batch: {found:?}"
    );
    step.commit().await?;
    step_until_done(pool).await?;
    Ok(())
}

#[sqlx::test]
async fn a_step_and_a_batch_that_deletes_the_group_again_never_wait_for_each_other(
    pool: PgPool,
) -> anyhow::Result<()> {
    a_large_group_being_deleted(&pool).await?;
    // The batch adds a member of the step's first range again, then deletes the group earlier.
    a_step_beside_a_batch_that_deletes_again(
        &pool,
        added("user_00010", ADDED),
        the_group_deleted_earlier(),
    )
    .await?;
    assert_the_group_deleted_earlier(&pool).await
}

#[sqlx::test]
async fn a_step_and_a_batch_that_deletes_the_directory_again_never_wait_for_each_other(
    pool: PgPool,
) -> anyhow::Result<()> {
    a_large_directory_being_deleted(&pool).await?;
    // The batch took the users' first step in the walk's order (those without `created_at`
    // first, then by `created_at`); the batch changes one of the next step's, then deletes the
    // directory earlier.
    let next_steps_user: String = sqlx::query_scalar(
        r#"SELECT id FROM workos.directory_users
           ORDER BY COALESCE(created_at, 'epoch'), id COLLATE "C" OFFSET $1 LIMIT 1"#,
    )
    .bind(STEP)
    .fetch_one(&pool)
    .await?;
    a_step_beside_a_batch_that_deletes_again(
        &pool,
        Body::example("dsync.user.updated")
            .id("event_user_changed_during")
            .set("/data/id", next_steps_user)
            .set("/data/directory_id", DIRECTORY)
            .at(ADDED)
            .event(),
        the_directory_deleted_earlier(),
    )
    .await?;
    assert_the_directory_deleted_earlier(&pool).await
}

// ---- The repair of databases written by the old rules ----

/// The migrations before the repair (0005).
fn migrator_before_the_repair() -> Migrator {
    Migrator {
        migrations: Cow::Owned(
            MIGRATOR
                .iter()
                .filter(|migration| migration.version < 5)
                .cloned()
                .collect(),
        ),
        ..Migrator::DEFAULT
    }
}

/// What the old rules left: deletions dated by `data.updated_at`, and rows changed after the
/// deleted object left live.
const WRITTEN_BY_THE_OLD_RULES: &str = r#"
INSERT INTO workos.directories (id, name, updated_at, deleted_at, last_event_id, last_event) VALUES
    ('directory_gone', 'Gone', '2021-01-01', '2021-01-01', 'wh_directory_deleted', 'dsync.deleted'),
    ('directory_kept', 'Kept', '2021-01-01', NULL, 'event_kept', 'dsync.activated');

INSERT INTO workos.directory_users (id, directory_id, email, updated_at, deleted_at, last_event_id, last_event) VALUES
    -- in the deleted directory: changed after it (left live), and not (deleted by the cascade)
    ('user_changed_later', 'directory_gone', 'a@x', '2021-02-01', NULL, 'event_u1', 'dsync.user.updated'),
    ('user_unchanged', 'directory_gone', 'b@x', '2021-01-01', '2021-01-01', 'event_u2', 'dsync.user.created'),
    -- deleted users of the kept directory: one whose deletion event is still in the inbox,
    -- one whose is not
    ('user_deleted', 'directory_kept', 'c@x', '2021-02-01', '2021-02-01', 'event_user_deleted', 'dsync.user.deleted'),
    ('user_deleted_long_ago', 'directory_kept', 'd@x', '2021-02-01', '2021-02-01', 'wh_user_deleted', 'dsync.user.deleted'),
    ('user_live', 'directory_kept', 'e@x', '2021-02-01', NULL, 'event_u5', 'dsync.user.created');

INSERT INTO workos.directory_groups (id, directory_id, name, updated_at, deleted_at, last_event_id, last_event) VALUES
    ('group_in_gone', 'directory_gone', 'G', '2021-02-01', NULL, 'event_g1', 'dsync.group.created'),
    ('group_kept', 'directory_kept', 'K', '2021-01-01', NULL, 'event_g2', 'dsync.group.created'),
    ('group_deleted', 'directory_kept', 'D', '2021-01-01', '2021-01-01', 'event_group_deleted', 'dsync.group.deleted');

INSERT INTO workos.directory_group_memberships (group_id, user_id, directory_id, updated_at, deleted_at, last_event_id, last_event) VALUES
    ('group_in_gone', 'user_changed_later', 'directory_gone', '2021-03-01', NULL, 'event_m1', 'dsync.group.user_added'),
    ('group_kept', 'user_deleted', 'directory_kept', '2021-03-01', NULL, 'event_m2', 'dsync.group.user_added'),
    ('group_kept', 'user_deleted_long_ago', 'directory_kept', '2021-03-01', NULL, 'event_m3', 'dsync.group.user_added'),
    ('group_kept', 'user_live', 'directory_kept', '2021-03-01', NULL, 'event_m4', 'dsync.group.user_added'),
    -- a membership decided before the group's deletion, and one (oddly) after it
    ('group_deleted', 'user_live', 'directory_kept', '2021-03-01', NULL, 'event_m5', 'dsync.group.user_added'),
    ('group_deleted', 'user_changed_later', 'directory_kept', '2021-05-01', NULL, 'event_m6', 'dsync.group.user_added');

-- The deletion events the inbox still holds: WorkOS recorded them long after the objects'
-- last change.
INSERT INTO workos.inbox (id, event, payload, status) VALUES
    ('event_user_deleted', 'dsync.user.deleted',
     '{"id":"event_user_deleted","event":"dsync.user.deleted","data":{},"created_at":"2021-04-01T00:00:00.000Z"}', 'done'),
    ('event_group_deleted', 'dsync.group.deleted',
     '{"id":"event_group_deleted","event":"dsync.group.deleted","data":{},"created_at":"2021-04-01T00:00:00.000Z"}', 'done');
"#;

/// Each row's key and `deleted_at` (`None`: live), for the four tables.
async fn deletion_times(pool: &PgPool) -> anyhow::Result<Vec<(String, Option<String>)>> {
    Ok(sqlx::query_as(
        r#"
        SELECT id, to_char(deleted_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')
        FROM workos.directories
        UNION ALL SELECT id, to_char(deleted_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')
        FROM workos.directory_users
        UNION ALL SELECT id, to_char(deleted_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')
        FROM workos.directory_groups
        UNION ALL SELECT group_id || '/' || user_id,
                         to_char(deleted_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')
        FROM workos.directory_group_memberships
        ORDER BY 1
        "#,
    )
    .fetch_all(pool)
    .await?)
}

#[sqlx::test(migrations = false)]
async fn the_repair_deletes_what_the_old_rules_left_live_and_changes_nothing_when_run_again(
    pool: PgPool,
) -> anyhow::Result<()> {
    migrator_before_the_repair().run(&pool).await?;
    sqlx::raw_sql(WRITTEN_BY_THE_OLD_RULES)
        .execute(&pool)
        .await?;

    MIGRATOR.run(&pool).await?;

    let at = |day: &str| Some(day.to_owned());
    let expected: Vec<(String, Option<String>)> = [
        ("directory_gone", at("2021-01-01")),
        ("directory_kept", None),
        // Taken by the deleted directory.
        ("group_deleted", at("2021-01-01")),
        ("group_deleted/user_changed_later", None),
        // Decided before the group's recorded deletion (2021-04-01): taken at its time.
        ("group_deleted/user_live", at("2021-01-01")),
        ("group_in_gone", at("2021-01-01")),
        ("group_in_gone/user_changed_later", at("2021-01-01")),
        ("group_kept", None),
        ("group_kept/user_deleted", at("2021-02-01")),
        // Its deletion event is gone from the inbox: the deletion takes every membership.
        ("group_kept/user_deleted_long_ago", at("2021-02-01")),
        ("group_kept/user_live", None),
        ("user_changed_later", at("2021-01-01")),
        ("user_deleted", at("2021-02-01")),
        ("user_deleted_long_ago", at("2021-02-01")),
        ("user_live", None),
        ("user_unchanged", at("2021-01-01")),
    ]
    .into_iter()
    .map(|(key, deleted_at)| (key.to_owned(), deleted_at))
    .collect();
    assert_eq!(deletion_times(&pool).await?, expected);

    // Run again, by hand: nothing changes, not even `synced_at`.
    let everything = r#"
        SELECT jsonb_build_object(
            'rows', (SELECT jsonb_agg(to_jsonb(t) ORDER BY t.id) FROM workos.directory_users t),
            'groups', (SELECT jsonb_agg(to_jsonb(t) ORDER BY t.id) FROM workos.directory_groups t),
            'memberships', (SELECT jsonb_agg(to_jsonb(t) ORDER BY t.group_id, t.user_id)
                            FROM workos.directory_group_memberships t),
            'directories', (SELECT jsonb_agg(to_jsonb(t) ORDER BY t.id) FROM workos.directories t),
            'tombstones', (SELECT jsonb_agg(to_jsonb(t) ORDER BY t.kind, t.id) FROM workos.tombstones t))
    "#;
    let repaired: Value = sqlx::query_scalar(everything).fetch_one(&pool).await?;
    let repair = MIGRATOR
        .iter()
        .find(|migration| migration.version == 5)
        .expect("the repair migration");
    sqlx::raw_sql(&repair.sql).execute(&pool).await?;
    let again: Value = sqlx::query_scalar(everything).fetch_one(&pool).await?;
    assert_eq!(again, repaired);

    // And events applied afterwards follow the new rules on the repaired rows.
    apply(
        &pool,
        &[Body::example("dsync.group.user_added")
            .id("event_after_the_repair")
            .set("/data/directory_id", "directory_gone")
            .set("/data/user/id", "user_unchanged")
            .set("/data/user/directory_id", "directory_gone")
            .set("/data/group/id", "group_in_gone")
            .set("/data/group/directory_id", "directory_gone")
            .event()],
    )
    .await?;
    assert_eq!(
        membership(&pool, "group_in_gone", "user_unchanged")
            .await?
            .unwrap()
            .deleted_at,
        Some(crate::directory::at("2021-01-01T00:00:00Z"))
    );
    Ok(())
}
