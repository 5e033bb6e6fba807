//! Reconciliation against a stand-in WorkOS (`fake_workos`): the Events API tail recovers
//! what webhooks missed, snapshot reconciliation repairs the synced tables, and the API
//! client copes with rate limits, failures and a bad key while webhooks keep working.

use std::time::{Duration, Instant};

use dsyncd::config::{Config, Secret};
use dsyncd::inbox::{self, NewDelivery};
use dsyncd::metrics::Metrics;
use dsyncd::reconcile::{snapshot, Options, Reconciler, Restart, RunnerLock, Step, Tail};
use dsyncd::workos_api::ApiError;
use dsyncd::{Role, Service};
use serde_json::Value;
use sqlx::PgPool;

use crate::fake_workos::*;
use crate::helpers::*;

/// The test configuration, pointed at `fake` with its key; quick retries and polls.
fn config(fake: &FakeWorkos) -> Config {
    let mut config = TestApp::config();
    config.workos.api_key = Some(Secret::new(API_KEY));
    config.workos.base_url = fake.url.clone();
    config.workos.backoff_base_ms = 20;
    config.workos.timeout_ms = 2_000;
    config.reconcile.events_interval_secs = 1;
    config.worker.poll_interval_ms = 100;
    config
}

fn reconciler(pool: &PgPool, config: &Config) -> Reconciler {
    Reconciler::new(config, pool.clone(), Metrics::new())
        .expect("an API key is set")
        .unwrap()
}

fn tail(pool: &PgPool, config: &Config) -> Tail {
    reconciler(pool, config).tail()
}

async fn apply_all(pool: &PgPool) {
    Service::with_pool(TestApp::config(), pool.clone())
        .unwrap()
        .worker()
        .run_until_empty()
        .await
        .unwrap();
}

/// Stores `bodies` as webhook deliveries would be, and applies them.
async fn delivered(pool: &PgPool, bodies: &[String]) {
    let deliveries: Vec<NewDelivery> = bodies
        .iter()
        .map(|body| {
            let value: Value = serde_json::from_str(body).unwrap();
            NewDelivery {
                id: value["id"].as_str().unwrap().to_owned(),
                event: value["event"].as_str().unwrap().to_owned(),
                payload: body.clone(),
                ..NewDelivery::default()
            }
        })
        .collect();
    let refs: Vec<&NewDelivery> = deliveries.iter().collect();
    inbox::insert(pool, &refs).await.unwrap();
    apply_all(pool).await;
}

/// (id, source, payload) of every inbox row.
async fn sources(pool: &PgPool) -> Vec<(String, String, String)> {
    sqlx::query_as("SELECT id, source, payload FROM workos.inbox ORDER BY id")
        .fetch_all(pool)
        .await
        .unwrap()
}

/// Live users as (id, email), live memberships as (group, user), live groups, live directories.
#[derive(Debug, PartialEq)]
struct Tables {
    directories: Vec<String>,
    users: Vec<(String, Option<String>)>,
    groups: Vec<(String, Option<String>)>,
    memberships: Vec<(String, String)>,
}

async fn tables(pool: &PgPool) -> Tables {
    Tables {
        directories: sqlx::query_scalar(
            "SELECT id FROM workos.directories WHERE deleted_at IS NULL ORDER BY id",
        )
        .fetch_all(pool)
        .await
        .unwrap(),
        users: sqlx::query_as(
            "SELECT id, email FROM workos.directory_users WHERE deleted_at IS NULL ORDER BY id",
        )
        .fetch_all(pool)
        .await
        .unwrap(),
        groups: sqlx::query_as(
            "SELECT id, name FROM workos.directory_groups WHERE deleted_at IS NULL ORDER BY id",
        )
        .fetch_all(pool)
        .await
        .unwrap(),
        memberships: sqlx::query_as(
            "SELECT group_id, user_id FROM workos.directory_group_memberships
             WHERE deleted_at IS NULL ORDER BY group_id, user_id",
        )
        .fetch_all(pool)
        .await
        .unwrap(),
    }
}

/// What the tables should hold: WorkOS's state.
fn expected(fake: &FakeWorkos) -> Tables {
    let workos = fake.lock();
    let text = |value: &Value| value.as_str().map(str::to_owned);
    let mut directories: Vec<String> = workos
        .directories
        .iter()
        .map(|d| text(&d["id"]).unwrap())
        .collect();
    directories.sort();
    let mut users: Vec<(String, Option<String>)> = workos
        .users
        .iter()
        .map(|u| (text(&u["id"]).unwrap(), text(&u["email"])))
        .collect();
    users.sort();
    let mut groups: Vec<(String, Option<String>)> = workos
        .groups
        .iter()
        .map(|g| (text(&g["id"]).unwrap(), text(&g["name"])))
        .collect();
    groups.sort();
    let mut memberships = workos.memberships.clone();
    memberships.sort();
    Tables {
        directories,
        users,
        groups,
        memberships,
    }
}

fn t(second: u32) -> String {
    format!("2026-03-01T00:00:{second:02}.000Z")
}

#[sqlx::test]
async fn the_tail_recovers_lost_webhooks_and_stores_each_event_once(pool: PgPool) {
    let fake = FakeWorkos::start().await;
    let config = config(&fake);
    // A first start: no cursor, so a snapshot first, then the tail from its start.
    let tail = tail(&pool, &config);
    assert_eq!(
        tail.step().await.unwrap(),
        Step::NeedsSnapshot(Restart::NoCursor)
    );
    let report = reconciler(&pool, &config).restart().await.unwrap();
    assert!(report.drift.is_empty());
    let events = fake.seen("/events");
    assert!(events.is_empty(), "the snapshot comes first");

    let (directory, lost, by_webhook, later) = {
        let mut workos = fake.lock();
        let directory = workos.put_directory(directory("directory_1", &t(1)));
        let lost = workos.put_user(
            user("directory_user_1", "directory_1", "ada@example.com", &t(2)),
            true,
        );
        let by_webhook = workos.put_user(
            user("directory_user_2", "directory_1", "bob@example.com", &t(3)),
            true,
        );
        let later = workos.put_user(
            user("directory_user_3", "directory_1", "cy@example.com", &t(4)),
            true,
        );
        (directory, lost, by_webhook, later)
    };
    // One came by webhook before the tail looked.
    let app = TestApp::receiver(pool.clone()).await;
    assert_eq!(app.deliver(&by_webhook).await.status(), 200);

    let step = tail.step().await.unwrap();
    assert_eq!(
        step,
        Step::Stored {
            events: 4,
            recovered: 3,
            full: false
        }
    );
    let request = &fake.seen("/events")[0];
    assert_eq!(request.query["order"], "asc");
    assert_eq!(request.query["limit"], "100");
    assert_eq!(
        request.query["range_start"],
        report
            .started_at
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    );
    assert!(request.query["events"]
        .split(',')
        .any(|e| e == "dsync.group.user_added"));
    assert!(request.query["events"]
        .split(',')
        .all(|e| e.starts_with("dsync.")));

    // The same event by webhook after the tail: stored once, the source says who came first.
    let response = app.deliver(&later).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.json::<Value>().await.unwrap()["status"],
        "duplicate"
    );
    app.stop().await;

    let id = |body: &String| {
        serde_json::from_str::<Value>(body).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let mut expected_rows = vec![
        (id(&directory), "events_api".to_owned(), directory.clone()),
        (id(&lost), "events_api".to_owned(), lost.clone()),
        (id(&by_webhook), "webhook".to_owned(), by_webhook.clone()),
        (id(&later), "events_api".to_owned(), later.clone()),
    ];
    expected_rows.sort();
    // Each payload is the event exactly as served, `context` and field order included.
    assert_eq!(sources(&pool).await, expected_rows);

    apply_all(&pool).await;
    assert_eq!(tables(&pool).await, expected(&fake));

    // The operator commands show where each event came from.
    let (ok, stdout, _) = dsyncd(&pool, &["inbox", "list"], &[]).await;
    assert!(ok);
    let source_of = |id: &str| {
        let line = stdout.lines().find(|line| line.starts_with(id)).unwrap();
        line.split_whitespace().nth(3).unwrap().to_owned()
    };
    assert_eq!(source_of(&expected_rows[0].0), expected_rows[0].1);
    assert_eq!(source_of(&id(&by_webhook)), "webhook");
    assert_eq!(source_of(&id(&lost)), "events_api");
    let (ok, stdout, _) = dsyncd(&pool, &["inbox", "stats"], &[]).await;
    assert!(ok);
    let counts: Vec<Vec<&str>> = stdout
        .lines()
        .skip(1)
        .map(|line| line.split_whitespace().take(3).collect())
        .collect();
    assert_eq!(
        counts,
        [["done", "3", "events_api"], ["done", "1", "webhook"]]
    );

    // Nothing new: the next poll stores nothing and keeps the cursor.
    let step = tail.step().await.unwrap();
    assert_eq!(
        step,
        Step::Stored {
            events: 0,
            recovered: 0,
            full: false
        }
    );
    assert_eq!(fake.seen("/events")[1].query["after"], id(&later));
}

#[sqlx::test]
async fn the_cursor_survives_a_restart_and_a_kill_without_skipping_or_restoring(pool: PgPool) {
    let fake = FakeWorkos::start().await;
    let config = config(&fake);
    reconciler(&pool, &config).restart().await.unwrap();
    {
        let mut workos = fake.lock();
        workos.put_directory(directory("directory_1", &t(1)));
        for n in 0..249 {
            let id = format!("directory_user_{n:03}");
            workos.put_user(
                user(&id, "directory_1", &format!("{id}@example.com"), &t(2)),
                true,
            );
        }
    }
    let all: Vec<String> = fake.lock().events.iter().map(|e| e.id.clone()).collect();

    // A first process stores one page and stops.
    let first = tail(&pool, &config).step().await.unwrap();
    assert_eq!(
        first,
        Step::Stored {
            events: 100,
            recovered: 100,
            full: true
        }
    );

    // A second one is killed while its request is in flight.
    fake.lock()
        .fail("/events", Failure::Slow(Duration::from_secs(5)));
    let killed = tokio::spawn({
        let tail = tail(&pool, &config);
        async move { tail.step().await }
    });
    assert!(
        eventually(Duration::from_secs(5), || async {
            fake.seen("/events").len() == 2
        })
        .await
    );
    killed.abort();
    let _ = killed.await;

    // A third one goes on from the cursor the first one committed.
    let tail = tail(&pool, &config);
    let mut steps = Vec::new();
    loop {
        let step = tail.step().await.unwrap();
        let full = matches!(step, Step::Stored { full: true, .. });
        steps.push(step);
        if !full {
            break;
        }
    }
    assert_eq!(
        steps,
        [
            Step::Stored {
                events: 100,
                recovered: 100,
                full: true
            },
            Step::Stored {
                events: 50,
                recovered: 50,
                full: false
            },
        ]
    );
    let afters: Vec<Option<String>> = fake
        .seen("/events")
        .iter()
        .map(|seen| seen.query.get("after").cloned())
        .collect();
    assert_eq!(
        afters,
        [
            None,
            Some(all[99].clone()),
            Some(all[99].clone()),
            Some(all[199].clone())
        ]
    );
    let stored: i64 =
        sqlx::query_scalar("SELECT count(*) FROM workos.inbox WHERE source = 'events_api'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(stored, 250);
}

#[sqlx::test]
async fn the_cursor_is_the_last_event_as_served_not_the_newest(pool: PgPool) {
    let fake = FakeWorkos::start().await;
    let config = config(&fake);
    reconciler(&pool, &config).restart().await.unwrap();
    let (newest, last_served) = {
        let mut workos = fake.lock();
        let newest = workos.emit_at(
            "dsync.group.created",
            group("directory_group_1", "directory_1", "A", &t(1)),
            &timestamp(5_000),
        );
        let last = workos.emit_at(
            "dsync.group.created",
            group("directory_group_2", "directory_1", "B", &t(1)),
            &timestamp(1_000),
        );
        (newest, last)
    };
    let _ = newest;
    tail(&pool, &config).step().await.unwrap();
    tail(&pool, &config).step().await.unwrap();
    let last_id = serde_json::from_str::<Value>(&last_served).unwrap()["id"].clone();
    assert_eq!(
        fake.seen("/events")[1].query["after"],
        last_id.as_str().unwrap()
    );
}

#[sqlx::test]
async fn an_old_or_refused_cursor_leads_to_a_snapshot_and_a_restart(pool: PgPool) {
    let fake = FakeWorkos::start().await;
    let config = config(&fake);
    let reconciler = reconciler(&pool, &config);
    reconciler.restart().await.unwrap();
    let tail = reconciler.tail();
    fake.lock().put_directory(directory("directory_1", &t(1)));
    tail.step().await.unwrap();

    // The next event is 26 days old: past reconcile.cursor_max_age_days once it is the cursor.
    fake.lock().emit_at(
        "dsync.group.created",
        group("directory_group_1", "directory_1", "A", &t(1)),
        &timestamp(-26 * 86_400_000),
    );
    tail.step().await.unwrap();
    let requests = fake.seen("/events").len();
    assert_eq!(
        tail.step().await.unwrap(),
        Step::NeedsSnapshot(Restart::TooOld { age_days: 26 })
    );
    assert_eq!(
        fake.seen("/events").len(),
        requests,
        "the old cursor is not sent"
    );
    let report = reconciler.restart().await.unwrap();
    tail.step().await.unwrap();
    let last = fake.seen("/events").last().unwrap().clone();
    assert!(!last.query.contains_key("after"));
    assert_eq!(
        last.query["range_start"],
        report
            .started_at
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    );

    // WorkOS no longer knows the cursor's event (expired).
    fake.lock().put_directory(directory("directory_2", &t(1)));
    assert!(matches!(
        tail.step().await.unwrap(),
        Step::Stored { events: 1, .. }
    ));
    fake.lock().expire_events(3);
    assert_eq!(
        tail.step().await.unwrap(),
        Step::NeedsSnapshot(Restart::Refused { status: 400 })
    );
}

#[sqlx::test]
async fn one_process_tails_at_a_time_and_another_takes_over_when_it_dies(pool: PgPool) {
    let first = RunnerLock::try_acquire(&pool).await.unwrap().expect("free");
    assert!(RunnerLock::try_acquire(&pool).await.unwrap().is_none());
    drop(first);
    assert!(
        eventually(Duration::from_secs(5), || async {
            RunnerLock::try_acquire(&pool).await.unwrap().is_some()
        })
        .await
    );

    // Two replicas with different keys: only one of them ever polls, until it dies.
    let fake = FakeWorkos::start().await;
    fake.lock().other_keys.push("sk_test_replica_b".to_owned());
    let config_a = config(&fake);
    let mut config_b = config(&fake);
    config_b.workos.api_key = Some(Secret::new("sk_test_replica_b"));
    let a = TestApp::spawn_with(pool.clone(), config_a, Role::Worker).await;
    let b = TestApp::spawn_with(pool.clone(), config_b, Role::Worker).await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            fake.seen("/events").len() >= 3
        })
        .await
    );
    let keys: Vec<Option<String>> = fake.seen("/events").iter().map(|s| s.key.clone()).collect();
    assert!(keys.iter().all(|key| *key == keys[0]), "{keys:?}");
    let (survivor, stopped, survivor_key) = if keys[0].as_deref() == Some(API_KEY) {
        (b, a, "sk_test_replica_b")
    } else {
        (a, b, API_KEY)
    };
    stopped.stop().await;
    assert!(
        eventually(Duration::from_secs(15), || async {
            fake.seen("/events")
                .iter()
                .any(|s| s.key.as_deref() == Some(survivor_key))
        })
        .await
    );
    survivor.stop().await;
}

/// WorkOS's state, the same as delivered by webhook: one directory, three users, two groups.
fn initial_state(fake: &FakeWorkos) -> Vec<String> {
    let mut workos = fake.lock();
    vec![
        workos.put_directory(directory("directory_1", &t(1))),
        workos.put_user(
            user("directory_user_1", "directory_1", "ada@example.com", &t(1)),
            true,
        ),
        workos.put_user(
            user("directory_user_2", "directory_1", "bob@example.com", &t(1)),
            true,
        ),
        workos.put_user(
            user("directory_user_3", "directory_1", "cy@example.com", &t(1)),
            true,
        ),
        workos.put_group(
            group("directory_group_1", "directory_1", "Eng", &t(1)),
            true,
        ),
        workos.put_group(
            group("directory_group_2", "directory_1", "Ops", &t(1)),
            true,
        ),
        workos.add_member("directory_group_1", "directory_user_1"),
        workos.add_member("directory_group_1", "directory_user_2"),
        workos.add_member("directory_group_2", "directory_user_3"),
    ]
}

/// Changes at WorkOS whose webhooks were lost.
fn lost_changes(fake: &FakeWorkos) {
    let mut workos = fake.lock();
    workos.put_user(
        user(
            "directory_user_1",
            "directory_1",
            "ada@new.example.com",
            &t(5),
        ),
        false,
    );
    workos.put_user(
        user("directory_user_4", "directory_1", "dee@example.com", &t(5)),
        true,
    );
    workos.delete_user("directory_user_3");
    workos.put_group(
        group("directory_group_3", "directory_1", "Sales", &t(5)),
        true,
    );
    workos.remove_member("directory_group_1", "directory_user_2");
    workos.add_member("directory_group_2", "directory_user_1");
    workos.put_directory(directory("directory_2", &t(5)));
    workos.put_user(
        user("directory_user_5", "directory_2", "eve@example.com", &t(5)),
        true,
    );
}

async fn dump(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT t::text FROM (
            SELECT to_jsonb(d) AS t FROM workos.directories d
            UNION ALL SELECT to_jsonb(u) FROM workos.directory_users u
            UNION ALL SELECT to_jsonb(g) FROM workos.directory_groups g
            UNION ALL SELECT to_jsonb(m) FROM workos.directory_group_memberships m) AS rows
         ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

#[sqlx::test]
async fn a_snapshot_repairs_missing_stale_and_extra_rows_memberships_included(pool: PgPool) {
    let fake = FakeWorkos::start().await;
    let config = config(&fake);
    delivered(&pool, &initial_state(&fake)).await;
    assert_eq!(tables(&pool).await, expected(&fake));
    lost_changes(&fake);
    assert_ne!(tables(&pool).await, expected(&fake));

    // The command's dry run shows the drift and changes nothing.
    let before = dump(&pool).await;
    let env = [
        ("WORKOS_API_KEY", API_KEY),
        ("WORKOS_BASE_URL", fake.url.as_str()),
    ];
    let (ok, stdout, stderr) = dsyncd(&pool, &["reconcile", "--dry-run"], &env).await;
    assert!(ok, "{stderr}");
    assert!(stdout.contains("dry run: nothing was changed"), "{stdout}");
    let line = |table: &str| {
        stdout
            .lines()
            .find(|line| line.starts_with(table))
            .unwrap()
            .split_whitespace()
            .skip(1)
            .map(|n| n.parse::<u64>().unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(line("directories"), [1, 0, 0]);
    assert_eq!(line("users"), [2, 1, 1]);
    assert_eq!(line("groups"), [1, 0, 0]);
    // (group 1, user 2) removed, and (group 2, user 3) of the deleted user.
    assert_eq!(line("memberships"), [1, 0, 2]);
    assert_eq!(dump(&pool).await, before);
    assert!(!stderr.contains(API_KEY) && !stdout.contains(API_KEY));

    // The real run repairs it, through the handler's rules.
    let mut changes = sqlx::postgres::PgListener::connect_with(&pool)
        .await
        .unwrap();
    changes
        .listen(dsyncd::directory::CHANGES_CHANNEL)
        .await
        .unwrap();
    let report = snapshot::run(&pool, &client(&config), &Options::default())
        .await
        .unwrap();
    let counts = |missing, stale, deleted| snapshot::Counts {
        missing,
        stale,
        deleted,
    };
    assert_eq!(report.drift.directories, counts(1, 0, 0));
    assert_eq!(report.drift.users, counts(2, 1, 1));
    assert_eq!(report.drift.groups, counts(1, 0, 0));
    // The deleted user's membership went with the user's deletion (a cascade), before the
    // memberships were compared.
    assert_eq!(report.drift.memberships, counts(1, 0, 1));
    assert_eq!(tables(&pool).await, expected(&fake));
    // Listeners hear about the repairs like about any change.
    let notification = tokio::time::timeout(Duration::from_secs(5), changes.recv()).await;
    assert!(notification.is_ok());

    // A row deleted by a snapshot keeps its attributes and says what deleted it.
    let (email, deleted, last_event_id, last_event): (Option<String>, bool, String, String) =
        sqlx::query_as(
            "SELECT email, deleted_at IS NOT NULL, last_event_id, last_event
             FROM workos.directory_users WHERE id = 'directory_user_3'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
    let run_id = format!("dsyncd_snapshot_{}", report.started_at.timestamp_millis());
    assert_eq!(
        (
            email.as_deref(),
            deleted,
            last_event_id.as_str(),
            last_event.as_str()
        ),
        (
            Some("cy@example.com"),
            true,
            run_id.as_str(),
            "dsync.user.deleted"
        )
    );
    let custom: Value = sqlx::query_scalar(
        "SELECT custom_attributes FROM workos.directory_users WHERE id = 'directory_user_3'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(custom["department"], "R&D");

    // Nothing left: a second run finds no drift and changes nothing.
    let after = dump(&pool).await;
    let again = snapshot::run(&pool, &client(&config), &Options::default())
        .await
        .unwrap();
    assert!(again.drift.is_empty(), "{:?}", again.drift);
    assert_eq!(dump(&pool).await, after);
}

/// What Postgres believes `workos.reconcile_listed` holds (`-1` before anything sampled it).
async fn staged_rows_believed(pool: &PgPool) -> f32 {
    sqlx::query_scalar(
        "SELECT reltuples FROM pg_class WHERE oid = 'workos.reconcile_listed'::regclass",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

#[sqlx::test]
async fn a_large_listing_is_sampled_for_the_planner_before_it_is_compared(pool: PgPool) {
    // Without statistics, Postgres took the staging table for a small one and compared each
    // stored row with every staged one: the second snapshot of 100,000 users ran past any
    // timeout (BENCHMARKS.md, "Scale"). Any listing of 1,000 rows or more is sampled first.
    let fake = FakeWorkos::start().await;
    let config = config(&fake);
    {
        let mut workos = fake.lock();
        workos.put_directory(directory("directory_big", "2026-01-01T00:00:00.000Z"));
        for n in 0..1_200 {
            workos.put_user(
                user(
                    &format!("directory_user_{n:05}"),
                    "directory_big",
                    &format!("user{n}@example.com"),
                    "2026-01-01T00:00:00.000Z",
                ),
                true,
            );
        }
    }
    assert_eq!(staged_rows_believed(&pool).await, -1.0);
    let first = snapshot::run(&pool, &client(&config), &Options::default())
        .await
        .unwrap();
    assert_eq!(first.drift.users.missing, 1_200);
    assert!(staged_rows_believed(&pool).await >= 1_200.0);
    // Nothing to repair the second time: every stored row is compared with the listing.
    let again = snapshot::run(&pool, &client(&config), &Options::default())
        .await
        .unwrap();
    assert!(again.drift.is_empty(), "{:?}", again.drift);
}

fn client(config: &Config) -> dsyncd::workos_api::Client {
    dsyncd::workos_api::Client::new(&config.workos, config.workos.api_key.clone().unwrap()).unwrap()
}

#[sqlx::test]
async fn a_snapshot_never_undoes_an_event_that_arrived_during_the_listing(pool: PgPool) {
    let fake = FakeWorkos::start().await;
    let mut config = config(&fake);
    config.workos.timeout_ms = 60_000;
    delivered(&pool, &initial_state(&fake)).await;
    // WorkOS lists user 1 as changed at t(5); the listing of users is answered only once the
    // test has applied the webhooks below.
    fake.lock().put_user(
        user(
            "directory_user_1",
            "directory_1",
            "ada@listed.example.com",
            &t(5),
        ),
        false,
    );
    let release = std::sync::Arc::new(tokio::sync::Notify::new());
    fake.lock()
        .fail("/directory_users", Failure::Hold(release.clone()));
    let run = tokio::spawn({
        let pool = pool.clone();
        let client = client(&config);
        async move { snapshot::run(&pool, &client, &Options::default()).await }
    });
    assert!(
        eventually(Duration::from_secs(5), || async {
            !fake.seen("/directory_users").is_empty()
        })
        .await
    );
    // Meanwhile webhooks bring a newer change of user 1, a new user and a new membership that the
    // listing (made before them) does not show.
    let newer = fake.lock().emit(
        "dsync.user.updated",
        user(
            "directory_user_1",
            "directory_1",
            "ada@newest.example.com",
            &t(9),
        ),
    );
    let new_user = fake.lock().emit(
        "dsync.user.created",
        user("directory_user_9", "directory_1", "new@example.com", &t(9)),
    );
    delivered(&pool, &[newer, new_user]).await;
    release.notify_one();
    let report = run.await.unwrap().unwrap();
    assert_eq!(report.drift.users.stale, 0, "{:?}", report.drift);
    assert_eq!(report.drift.users.deleted, 0, "{:?}", report.drift);
    let users = tables(&pool).await.users;
    assert!(users.contains(&(
        "directory_user_1".into(),
        Some("ada@newest.example.com".into())
    )));
    assert!(users.contains(&("directory_user_9".into(), Some("new@example.com".into()))));
}

#[sqlx::test]
async fn rate_limits_failures_and_timeouts_are_retried(pool: PgPool) {
    let fake = FakeWorkos::start().await;
    let mut config = config(&fake);
    config.workos.timeout_ms = 300;
    reconciler(&pool, &config).restart().await.unwrap();
    fake.lock().put_directory(directory("directory_1", &t(1)));
    {
        let mut workos = fake.lock();
        workos.fail("/events", Failure::RateLimited(1));
        workos.fail("/events", Failure::Status(500));
        workos.fail("/events", Failure::Status(503));
        workos.fail("/events", Failure::Slow(Duration::from_secs(2)));
    }
    let step = tail(&pool, &config).step().await.unwrap();
    assert_eq!(
        step,
        Step::Stored {
            events: 1,
            recovered: 1,
            full: false
        }
    );
    let seen = fake.seen("/events");
    let statuses: Vec<u16> = seen.iter().map(|s| s.status).collect();
    assert_eq!(statuses, [429, 500, 503, 200, 200]);
    // Retry-After: 1 was honoured; the 5xx retries backed off briefly.
    assert!(seen[1].at - seen[0].at >= Duration::from_secs(1));
    assert!(seen[2].at - seen[1].at < Duration::from_secs(1));

    // Past workos.max_attempts the poll fails, and says why without a body.
    config.workos.max_attempts = 2;
    for _ in 0..2 {
        fake.lock().fail("/events", Failure::Status(500));
    }
    let error = tail(&pool, &config).step().await.unwrap_err().to_string();
    assert!(
        error.contains("after 2 attempts") && error.contains("500"),
        "{error}"
    );
    assert!(!error.contains("Internal error"), "{error}");
}

#[sqlx::test]
async fn a_bad_key_stops_reconciliation_with_a_clear_error_while_webhooks_work(pool: PgPool) {
    let fake = FakeWorkos::start().await;
    let mut config = config(&fake);
    config.workos.api_key = Some(Secret::new("sk_test_wrong_key_8812"));
    let error = snapshot::run(&pool, &client(&config), &Options::default())
        .await
        .unwrap_err();
    assert!(matches!(
        error,
        dsyncd::reconcile::ReconcileError::Api(ApiError::Unauthorized)
    ));
    let message = error.to_string();
    assert!(
        message.contains("WORKOS_API_KEY") && !message.contains("sk_test_wrong"),
        "{message}"
    );

    // The command fails with that message.
    let env = [
        ("WORKOS_API_KEY", "sk_test_wrong_key_8812"),
        ("WORKOS_BASE_URL", fake.url.as_str()),
    ];
    let (ok, _, stderr) = dsyncd(&pool, &["reconcile"], &env).await;
    assert!(!ok);
    assert!(
        stderr.contains("WORKOS_API_KEY") && !stderr.contains("sk_test_wrong"),
        "{stderr}"
    );

    // The service keeps receiving and applying webhooks.
    let app = TestApp::spawn_with(pool.clone(), config, Role::All).await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            fake.seen("/directories").iter().any(|s| s.status == 401)
        })
        .await
    );
    let body = fake.lock().put_directory(directory("directory_1", &t(1)));
    assert_eq!(app.deliver(&body).await.status(), 200);
    assert!(
        eventually(Duration::from_secs(10), || async {
            tables(&pool).await.directories == ["directory_1"]
        })
        .await
    );
    app.stop().await;
}

/// "Done when": a dsyncd that missed deliveries converges to WorkOS's state by itself within a
/// minute of starting, and its metrics say what happened.
#[sqlx::test]
async fn a_dsyncd_that_missed_deliveries_converges_by_itself_within_a_minute(pool: PgPool) {
    let fake = FakeWorkos::start().await;
    let config = config(&fake);
    // A first start with the key: it snapshots (nothing there yet), then tails; the initial
    // state arrives by webhook.
    let app = TestApp::spawn_with(pool.clone(), config.clone(), Role::All).await;
    assert!(
        eventually(Duration::from_secs(20), || async {
            !fake.seen("/events").is_empty()
        })
        .await
    );
    for body in initial_state(&fake) {
        assert_eq!(app.deliver(&body).await.status(), 200);
    }
    assert!(
        eventually(Duration::from_secs(20), || async {
            tables(&pool).await == expected(&fake)
        })
        .await
    );
    app.stop().await;

    // Down while WorkOS changed; it gave up on the deliveries.
    lost_changes(&fake);
    let env = [
        ("WORKOS_API_KEY", API_KEY),
        ("WORKOS_BASE_URL", fake.url.as_str()),
    ];
    let (ok, stdout, stderr) = dsyncd(&pool, &["reconcile", "--dry-run"], &env).await;
    assert!(ok, "{stderr}");
    assert!(stdout.contains("users"), "{stdout}");
    assert_ne!(tables(&pool).await, expected(&fake));

    let started = Instant::now();
    let app = TestApp::spawn_with(pool.clone(), config, Role::All).await;
    assert!(
        eventually(Duration::from_secs(60), || async {
            tables(&pool).await == expected(&fake)
        })
        .await,
        "{:?} != {:?}",
        tables(&pool).await,
        expected(&fake)
    );
    let took = started.elapsed();
    assert!(took < Duration::from_secs(60), "{took:?}");
    let metrics = app.get("/metrics").await.text().await.unwrap();
    let recovered = metrics
        .lines()
        .find(|line| line.starts_with("dsyncd_events_recovered_total"))
        .unwrap();
    assert!(!recovered.ends_with(" 0"), "{recovered}");
    assert!(
        metrics.contains("dsyncd_events_cursor_age_seconds"),
        "{metrics}"
    );
    assert!(
        metrics.contains("dsyncd_reconcile_last_success_timestamp_seconds"),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"dsyncd_reconcile_drift{table="users",kind="missing"}"#),
        "{metrics}"
    );
    app.stop().await;
    let webhook_sources: i64 =
        sqlx::query_scalar("SELECT count(*) FROM workos.inbox WHERE source = 'events_api'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(webhook_sources > 0);
}

#[sqlx::test]
async fn a_snapshot_of_one_directory_leaves_the_others_alone(pool: PgPool) {
    let fake = FakeWorkos::start().await;
    delivered(&pool, &initial_state(&fake)).await;
    lost_changes(&fake);
    let before = tables(&pool).await;

    let env = [
        ("WORKOS_API_KEY", API_KEY),
        ("WORKOS_BASE_URL", fake.url.as_str()),
    ];
    let (ok, stdout, stderr) =
        dsyncd(&pool, &["reconcile", "--directory", "directory_2"], &env).await;
    assert!(ok, "{stderr}");
    assert!(stdout.contains("repaired"), "{stdout}");
    let after = tables(&pool).await;
    assert_eq!(after.directories, ["directory_1", "directory_2"]);
    let mut users = before.users.clone();
    users.push(("directory_user_5".into(), Some("eve@example.com".into())));
    assert_eq!(after.users, users, "only directory_2's user is added");
    assert_eq!(after.groups, before.groups);
    assert_eq!(after.memberships, before.memberships);
    // Only the one directory's users and groups were listed.
    let listed: Vec<String> = fake
        .seen("/directory_users")
        .iter()
        .chain(fake.seen("/directory_groups").iter())
        .filter_map(|seen| seen.query.get("directory").cloned())
        .collect();
    assert!(
        !listed.is_empty() && listed.iter().all(|d| d == "directory_2"),
        "{listed:?}"
    );
}
