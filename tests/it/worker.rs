//! The worker over a real inbox: dispatch, failures and retries, claims, several workers,
//! wake-ups and shutdown. A recording handler stands in for the application's handlers.

use std::time::Duration;

use dsyncd::config::WorkerConfig;
use dsyncd::inbox::{self, ClaimOrder};
use dsyncd::worker::Worker;
use dsyncd::{Event, EventHandler, HandlerError, Role};
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::helpers::*;

/// Records every `dsync.user.*` event it applies in `applied`; fails on ids starting with
/// `fail_`, rejects ids starting with `reject_`.
struct Recorder;

#[async_trait::async_trait]
impl EventHandler for Recorder {
    fn name(&self) -> &'static str {
        "recorder"
    }

    fn handles(&self, event_type: &str) -> bool {
        event_type.starts_with("dsync.user.")
    }

    async fn handle(&self, conn: &mut PgConnection, event: &Event) -> Result<(), HandlerError> {
        if event.id.starts_with("reject_") {
            return Err(HandlerError::Rejected(
                "this event cannot be applied".to_owned(),
            ));
        }
        sqlx::query("INSERT INTO applied (event_id) VALUES ($1)")
            .bind(&event.id)
            .execute(&mut *conn)
            .await?;
        if event.id.starts_with("fail_") {
            return Err(HandlerError::Other("the downstream service is down".into()));
        }
        Ok(())
    }
}

async fn prepare(pool: &PgPool) {
    sqlx::query("CREATE TABLE applied (event_id text NOT NULL)")
        .execute(pool)
        .await
        .unwrap();
}

fn config() -> WorkerConfig {
    WorkerConfig {
        batch_size: 50,
        max_attempts: 3,
        backoff_base_ms: 60_000,
        ..WorkerConfig::default()
    }
}

async fn store(pool: &PgPool, ids: &[&str], event: &str) {
    let deliveries: Vec<inbox::NewDelivery> = ids
        .iter()
        .map(|id| inbox::NewDelivery {
            id: (*id).to_owned(),
            event: event.to_owned(),
            payload: format!(r#"{{"id":"{id}","event":"{event}","data":{{}}}}"#),
            ..inbox::NewDelivery::default()
        })
        .collect();
    let deliveries: Vec<&inbox::NewDelivery> = deliveries.iter().collect();
    inbox::insert(pool, &deliveries).await.unwrap();
}

async fn status(pool: &PgPool, id: &str) -> (String, i32, Option<String>) {
    sqlx::query_as("SELECT status, attempts, last_error FROM workos.inbox_status WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn applied(pool: &PgPool) -> Vec<(String, i64)> {
    sqlx::query_as("SELECT event_id, count(*) FROM applied GROUP BY event_id ORDER BY event_id")
        .fetch_all(pool)
        .await
        .unwrap()
}

#[sqlx::test]
async fn handled_events_end_done_and_the_rest_ignored(pool: PgPool) {
    prepare(&pool).await;
    store(&pool, &["e1", "e2"], "dsync.user.created").await;
    store(&pool, &["t1"], "dsync.token.created").await;
    store(&pool, &["c1"], "connection.activated").await;
    let worker = Worker::new(pool.clone(), config()).with_handler(Recorder);
    let report = worker.run_until_empty().await.unwrap();
    assert_eq!((report.claimed, report.finished, report.failed), (4, 4, 0));
    assert_eq!(status(&pool, "e1").await.0, "done");
    assert_eq!(status(&pool, "e2").await.0, "done");
    assert_eq!(status(&pool, "t1").await.0, "ignored");
    assert_eq!(status(&pool, "c1").await.0, "ignored");
    assert_eq!(
        applied(&pool).await,
        vec![("e1".to_owned(), 1), ("e2".to_owned(), 1)]
    );
}

#[sqlx::test]
async fn vacuuming_the_queue_removes_what_finished_events_left(pool: PgPool) {
    let ids: Vec<String> = (0..500).map(|n| format!("e{n:03}")).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    store(&pool, &ids, "dsync.user.created").await;
    let worker = Worker::new(pool.clone(), config());
    assert_eq!(worker.run_until_empty().await.unwrap().finished, 500);
    // The 500 finished events left 500 dead queue rows; the vacuum takes them all.
    inbox::vacuum_queue(&pool).await.unwrap();
    let (vacuums, dead): (i64, i64) = sqlx::query_as(
        "SELECT vacuum_count, n_dead_tup FROM pg_stat_user_tables
         WHERE schemaname = 'workos' AND relname = 'inbox_queue'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((vacuums, dead), (1, 0));
}

#[sqlx::test]
async fn a_vacuum_of_the_queue_skipped_for_another_logs_nothing(pool: PgPool) {
    // Another worker's vacuum (or autovacuum) holds the queue: this one is skipped, quietly.
    let mut other = pool.acquire().await.unwrap();
    sqlx::raw_sql("BEGIN; LOCK TABLE workos.inbox_queue IN SHARE UPDATE EXCLUSIVE MODE")
        .execute(&mut *other)
        .await
        .unwrap();
    let (captured, _logging) = capture_logs();
    inbox::vacuum_queue(&pool).await.unwrap();
    sqlx::raw_sql("ROLLBACK")
        .execute(&mut *other)
        .await
        .unwrap();
    let logs = captured.text();
    assert!(
        !logs.contains("WARN") && !logs.contains("skipping"),
        "{logs}"
    );
    // The connection goes back to the pool with Postgres's notices as before.
    let level: String = sqlx::query_scalar("SHOW client_min_messages")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(level, "notice");
}

#[sqlx::test]
async fn a_redelivery_of_a_finished_event_is_not_applied_again(pool: PgPool) {
    prepare(&pool).await;
    store(&pool, &["e1"], "dsync.user.created").await;
    let worker = Worker::new(pool.clone(), config()).with_handler(Recorder);
    assert_eq!(worker.run_until_empty().await.unwrap().finished, 1);
    // WorkOS retries a delivery whose answer it did not see, however late.
    store(&pool, &["e1"], "dsync.user.created").await;
    assert_eq!(worker.run_until_empty().await.unwrap().claimed, 0);
    assert_eq!(status(&pool, "e1").await, ("done".to_owned(), 1, None));
    assert_eq!(applied(&pool).await, vec![("e1".to_owned(), 1)]);
}

#[sqlx::test]
async fn one_failing_event_holds_back_nothing_and_keeps_none_of_its_effects(pool: PgPool) {
    prepare(&pool).await;
    store(&pool, &["e1", "fail_1", "e2"], "dsync.user.updated").await;
    let worker = Worker::new(pool.clone(), config()).with_handler(Recorder);
    let report = worker.run_until_empty().await.unwrap();
    assert_eq!((report.finished, report.failed), (2, 1));
    assert_eq!(
        applied(&pool).await,
        vec![("e1".to_owned(), 1), ("e2".to_owned(), 1)]
    );
    let (state, attempts, error) = status(&pool, "fail_1").await;
    assert_eq!((state.as_str(), attempts), ("pending", 1));
    assert_eq!(error.as_deref(), Some("the downstream service is down"));
    let retry_in: f64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM available_at - now())::float8 FROM workos.inbox_queue WHERE id = 'fail_1'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(
        (20.0..=61.0).contains(&retry_in),
        "first retry in {retry_in}s (base 60 s, jitter 0.5-1)"
    );
}

#[sqlx::test]
async fn failures_retry_until_max_attempts_then_are_dead_with_the_last_error(pool: PgPool) {
    prepare(&pool).await;
    store(&pool, &["fail_1"], "dsync.user.updated").await;
    let worker = Worker::new(
        pool.clone(),
        WorkerConfig {
            backoff_base_ms: 0,
            ..config()
        },
    )
    .with_handler(Recorder);
    // With no backoff, each pass of run_until_empty claims the retry at once.
    worker.run_until_empty().await.unwrap();
    let (state, attempts, error) = status(&pool, "fail_1").await;
    assert_eq!((state.as_str(), attempts), ("dead", 3));
    assert_eq!(error.as_deref(), Some("the downstream service is down"));
    assert!(applied(&pool).await.is_empty());
}

#[sqlx::test]
async fn a_rejected_event_is_dead_at_once(pool: PgPool) {
    prepare(&pool).await;
    store(&pool, &["reject_1", "e1"], "dsync.user.created").await;
    let worker = Worker::new(pool.clone(), config()).with_handler(Recorder);
    worker.run_until_empty().await.unwrap();
    let (state, attempts, error) = status(&pool, "reject_1").await;
    assert_eq!((state.as_str(), attempts), ("dead", 1));
    assert_eq!(error.as_deref(), Some("this event cannot be applied"));
    assert_eq!(status(&pool, "e1").await.0, "done");
}

/// A session of its own, as another worker process has, and its backend's pid.
async fn own_session(pool: &PgPool) -> (PgConnection, i32) {
    let mut conn = pool.acquire().await.unwrap().detach();
    let pid = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    (conn, pid)
}

/// Ends the session `pid` and waits until it is gone, as Postgres does when a worker's process
/// dies or its lease runs out.
async fn end_session(pool: &PgPool, pid: i32) {
    let ended: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1, 10000)")
        .bind(pid)
        .fetch_one(pool)
        .await
        .unwrap();
    assert!(ended, "session {pid} did not end within 10 s");
}

#[sqlx::test]
async fn a_claim_holds_its_events_until_its_transaction_ends(pool: PgPool) {
    prepare(&pool).await;
    store(&pool, &["e1", "e2"], "dsync.user.created").await;
    // A worker claims and dies mid-batch: while its session lives, nobody else takes the events.
    let (mut conn, pid) = own_session(&pool).await;
    let mut tx = conn.begin().await.unwrap();
    let claimed = inbox::claim(
        &mut tx,
        10,
        Duration::from_secs(600),
        ClaimOrder::OldestFirst,
    )
    .await
    .unwrap();
    assert_eq!(claimed.len(), 2);
    let worker = Worker::new(pool.clone(), config()).with_handler(Recorder);
    assert_eq!(worker.run_until_empty().await.unwrap().claimed, 0);

    // Its session ends: the claim wrote nothing, and the events are due at once.
    end_session(&pool, pid).await;
    let report = worker.run_until_empty().await.unwrap();
    assert_eq!((report.claimed, report.finished), (2, 2));
    assert_eq!(status(&pool, "e1").await, ("done".to_owned(), 1, None));
    assert_eq!(applied(&pool).await.len(), 2);
}

#[sqlx::test]
async fn claims_take_from_the_end_they_are_asked_for_and_skip_each_others_rows(pool: PgPool) {
    store(&pool, &["e1", "e2", "e3"], "dsync.user.created").await;
    // Turns one second apart, e1 first.
    sqlx::query(
        "UPDATE workos.inbox_queue
         SET turn_at = now() - interval '1 minute' + substr(id, 2)::int * interval '1 second'",
    )
    .execute(&pool)
    .await
    .unwrap();
    let lease = Duration::from_secs(60);
    let mut oldest = pool.begin().await.unwrap();
    let mut newest = pool.begin().await.unwrap();
    let first = inbox::claim(&mut oldest, 1, lease, ClaimOrder::OldestFirst)
        .await
        .unwrap();
    let last = inbox::claim(&mut newest, 1, lease, ClaimOrder::NewestFirst)
        .await
        .unwrap();
    assert_eq!((first[0].id.as_str(), last[0].id.as_str()), ("e1", "e3"));
    // A third claim skips what the two hold, from either end.
    let mut third = pool.begin().await.unwrap();
    let rest = inbox::claim(&mut third, 10, lease, ClaimOrder::NewestFirst)
        .await
        .unwrap();
    assert_eq!(
        rest.iter().map(|row| row.id.as_str()).collect::<Vec<_>>(),
        ["e2"]
    );
}

#[sqlx::test]
async fn a_claim_left_idle_longer_than_its_lease_is_ended_by_postgres(pool: PgPool) {
    store(&pool, &["e1"], "dsync.user.created").await;
    // A worker claims, then hangs outside the database (a handler waiting on another service).
    let (mut conn, pid) = own_session(&pool).await;
    let mut tx = conn.begin().await.unwrap();
    let claimed = inbox::claim(
        &mut tx,
        10,
        Duration::from_millis(200),
        ClaimOrder::NewestFirst,
    )
    .await
    .unwrap();
    assert_eq!(claimed.len(), 1);

    // Postgres ends the idle session after the lease; waited for, with a bound.
    let gone = async {
        loop {
            let alive: bool =
                sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1)")
                    .bind(pid)
                    .fetch_one(&pool)
                    .await
                    .unwrap();
            if !alive {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), gone)
        .await
        .expect("Postgres ended the session idle past its lease");
    let worker = Worker::new(pool.clone(), config());
    let report = worker.run_until_empty().await.unwrap();
    assert_eq!((report.claimed, report.finished), (1, 1));
    assert!(
        tx.commit().await.is_err(),
        "the hung worker's claim is gone"
    );
}

#[sqlx::test]
async fn two_workers_draining_one_inbox_apply_each_event_once(pool: PgPool) {
    prepare(&pool).await;
    let ids: Vec<String> = (0..2000).map(|n| format!("e{n:05}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    store(&pool, &refs, "dsync.user.created").await;
    let worker = Worker::new(pool.clone(), config()).with_handler(Recorder);
    let other = worker.clone();
    let (a, b) = tokio::join!(worker.run_until_empty(), other.run_until_empty());
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.finished + b.finished, 2000);
    assert!(
        a.finished > 0 && b.finished > 0,
        "both workers took part: {a:?} {b:?}"
    );
    let counts = applied(&pool).await;
    assert_eq!(counts.len(), 2000);
    assert!(counts.iter().all(|(_, count)| *count == 1));
}

#[sqlx::test]
async fn a_delivery_wakes_a_waiting_worker_without_polling(pool: PgPool) {
    prepare(&pool).await;
    let mut config = TestApp::config();
    // Polling alone would take an hour: only the notification can wake the worker.
    config.worker.poll_interval_ms = 3_600_000;
    let service = dsyncd::Service::with_pool(config, pool.clone())
        .unwrap()
        .with_handler(Recorder);
    let app = TestApp::spawn_service(service, Role::All).await;
    let mut listener = sqlx::postgres::PgListener::connect_with(&pool)
        .await
        .unwrap();
    listener.listen("test_applied").await.unwrap();
    sqlx::query(
        "CREATE FUNCTION notify_applied() RETURNS trigger LANGUAGE plpgsql AS
         $$ BEGIN PERFORM pg_notify('test_applied', NEW.event_id); RETURN NULL; END $$;
         ",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("CREATE TRIGGER applied_notify AFTER INSERT ON applied FOR EACH ROW EXECUTE FUNCTION notify_applied()")
        .execute(&pool)
        .await
        .unwrap();
    // Let the worker reach its idle wait first: its first pass finds the inbox empty.
    assert_eq!(app.get("/readyz").await.status(), 200);

    assert_eq!(app.deliver(&user_created("event_wake")).await.status(), 200);
    let notification = tokio::time::timeout(Duration::from_secs(10), listener.recv())
        .await
        .expect("the worker applied the event well before the polling interval")
        .unwrap();
    assert_eq!(notification.payload(), "event_wake");
    app.stop().await;
}

/// Blocks in `handle` until released, to hold a batch in flight.
struct Gate {
    entered: mpsc::Sender<()>,
    release: tokio::sync::Mutex<mpsc::Receiver<()>>,
}

#[async_trait::async_trait]
impl EventHandler for Gate {
    fn name(&self) -> &'static str {
        "gate"
    }

    fn handles(&self, _: &str) -> bool {
        true
    }

    async fn handle(&self, _: &mut PgConnection, _: &Event) -> Result<(), HandlerError> {
        self.entered.send(()).await.unwrap();
        self.release.lock().await.recv().await;
        Ok(())
    }
}

#[sqlx::test]
async fn shutdown_stops_claiming_and_lets_the_batch_in_flight_finish(pool: PgPool) {
    store(&pool, &["e1"], "dsync.user.created").await;
    let (entered_tx, mut entered) = mpsc::channel(1);
    let (release, release_rx) = mpsc::channel(1);
    let gate = Gate {
        entered: entered_tx,
        release: tokio::sync::Mutex::new(release_rx),
    };
    // One claim loop, so that the only loop there is holds e1 when shutdown starts.
    let config = WorkerConfig {
        concurrency: 1,
        ..config()
    };
    let worker = Worker::new(pool.clone(), config).with_handler(gate);
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(worker.run(shutdown.clone()));
    entered.recv().await.unwrap();

    shutdown.cancel();
    store(&pool, &["e2"], "dsync.user.created").await;
    release.send(()).await.unwrap();
    running.await.unwrap();
    assert_eq!(
        status(&pool, "e1").await.0,
        "done",
        "the batch in flight finished"
    );
    assert_eq!(
        status(&pool, "e2").await.0,
        "pending",
        "nothing was claimed after shutdown"
    );
}

#[sqlx::test]
async fn a_claim_waits_for_one_batch_of_retention_deletes_at_most(pool: PgPool) {
    // 2,500 expired rows: a sweep of three batches.
    let expired: Vec<String> = (0..2500).map(|n| format!("expired_{n:04}")).collect();
    let ids: Vec<&str> = expired.iter().map(String::as_str).collect();
    store(&pool, &ids, "dsync.user.created").await;
    sqlx::query(
        "WITH gone AS (DELETE FROM workos.inbox_queue RETURNING id)
         INSERT INTO workos.inbox_finished (id, status, attempts, finished_at)
         SELECT id, 'done', 1, now() - interval '40 days' FROM gone",
    )
    .execute(&pool)
    .await
    .unwrap();
    // Postgres logs, in the order they ran, retention's deletes (one line a statement) and
    // the rows finished.
    for statement in [
        "CREATE TABLE log (seq bigserial, what text NOT NULL)",
        "CREATE FUNCTION log_deletes() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN INSERT INTO log (what) VALUES ('delete'); RETURN NULL; END $$",
        "CREATE TRIGGER log_deletes AFTER DELETE ON workos.inbox
         FOR EACH STATEMENT EXECUTE FUNCTION log_deletes()",
        "CREATE FUNCTION log_finishes() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN INSERT INTO log (what) VALUES ('finish ' || NEW.id); RETURN NULL; END $$",
        "CREATE TRIGGER log_finishes AFTER INSERT ON workos.inbox_finished FOR EACH ROW
         EXECUTE FUNCTION log_finishes()",
    ] {
        sqlx::query(statement).execute(&pool).await.unwrap();
    }
    store(&pool, &["e1"], "dsync.user.created").await;

    // One claim loop, the one that sweeps.
    let config = WorkerConfig {
        concurrency: 1,
        ..config()
    };
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(Worker::new(pool.clone(), config).run(shutdown.clone()));
    let swept = eventually(Duration::from_secs(20), || async {
        sqlx::query_scalar::<_, bool>(
            "SELECT NOT EXISTS (SELECT FROM workos.inbox WHERE id LIKE 'expired%')
                AND (SELECT status FROM workos.inbox_status WHERE id = 'e1') = 'ignored'",
        )
        .fetch_one(&pool)
        .await
        .unwrap()
    })
    .await;
    shutdown.cancel();
    running.await.unwrap();
    assert!(
        swept,
        "the sweep deleted every expired row and e1 was claimed"
    );
    let log: Vec<String> = sqlx::query_scalar("SELECT what FROM log ORDER BY seq")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(
        log,
        ["delete", "finish e1", "delete", "delete"],
        "e1's claim came after the sweep's first thousand, the rest of the sweep after it"
    );
}

#[sqlx::test]
async fn retention_deletes_the_oldest_expired_rows_first(pool: PgPool) {
    // Stored in this order: the more recently finished expired rows lie first in the table.
    let numbered =
        |prefix: &str| -> Vec<String> { (0..30).map(|n| format!("{prefix}_{n:02}")).collect() };
    let (newer, older) = (numbered("newer"), numbered("older"));
    for ids in [&newer, &older] {
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        store(&pool, &ids, "dsync.user.created").await;
    }
    sqlx::query(
        "WITH gone AS (DELETE FROM workos.inbox_queue RETURNING id)
         INSERT INTO workos.inbox_finished (id, status, attempts, finished_at)
         SELECT id, 'done', 1,
                now() - CASE WHEN id LIKE 'older%' THEN interval '50 days'
                             ELSE interval '40 days' END
         FROM gone ORDER BY id LIKE 'older%'",
    )
    .execute(&pool)
    .await
    .unwrap();
    let before = chrono::Utc::now() - chrono::Duration::days(30);
    assert_eq!(inbox::purge_finished(&pool, before, 30).await.unwrap(), 30);
    let left: Vec<String> = sqlx::query_scalar("SELECT id FROM workos.inbox ORDER BY id")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(left, newer);
}

/// Applies each `dsync.user.*` event with a statement that runs for `0.5` s.
struct Slow;

#[async_trait::async_trait]
impl EventHandler for Slow {
    fn name(&self) -> &'static str {
        "slow"
    }

    fn handles(&self, event_type: &str) -> bool {
        event_type.starts_with("dsync.user.")
    }

    async fn handle(&self, conn: &mut PgConnection, _event: &Event) -> Result<(), HandlerError> {
        sqlx::query("SELECT pg_sleep(0.5)")
            .execute(&mut *conn)
            .await?;
        Ok(())
    }
}

#[sqlx::test]
async fn a_batch_statement_may_outlast_the_receivers_statement_timeout(pool: PgPool) {
    // The pool's sessions stop statements after 200 ms, as database.timeout_ms does for the
    // receiver; a batch's statements (a large directory's cascade) get the lease instead.
    let options = pool
        .connect_options()
        .as_ref()
        .clone()
        .options([("statement_timeout", "200")]);
    let strict = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect_with(options)
        .await
        .unwrap();
    let too_slow = sqlx::query("SELECT pg_sleep(0.5)").execute(&strict).await;
    assert!(
        too_slow.is_err(),
        "the pool's own timeout applies outside batches"
    );
    store(&strict, &["e1"], "dsync.user.created").await;
    let worker = Worker::new(strict.clone(), config()).with_handler(Slow);
    let report = worker.run_until_empty().await.unwrap();
    assert_eq!((report.finished, report.failed), (1, 0));
    assert_eq!(status(&strict, "e1").await.0, "done");
}

#[sqlx::test]
async fn a_directory_sending_past_its_share_is_claimed_after_what_others_send_meanwhile(
    pool: PgPool,
) {
    // One delivery a second is directory A's share: 40 sent at once are 39 beyond it.
    let mut config = TestApp::config();
    config.ingest.directory_share_per_sec = 1;
    let app = TestApp::spawn_with(pool.clone(), config, Role::Receiver).await;
    let of = |directory: &str, id: String| {
        user_created(&id).replace("directory_01ECAZ4NV9QMV47GW873HDCX74", directory)
    };
    for n in 0..40 {
        let response = app.deliver(&of("directory_a", format!("a{n:02}"))).await;
        assert_eq!(response.status(), 200);
    }
    let response = app.deliver(&of("directory_b", "b".to_owned())).await;
    assert_eq!(response.status(), 200);
    app.stop().await;

    // B arrived last and is claimed among the first: only A's deliveries within its share (one
    // per second the 40 took to send) come before it. A's later turns are still due now.
    let mut tx = pool.begin().await.unwrap();
    let claimed = inbox::claim(
        &mut tx,
        100,
        Duration::from_secs(60),
        ClaimOrder::OldestFirst,
    )
    .await
    .unwrap();
    let order: Vec<&str> = claimed.iter().map(|row| row.id.as_str()).collect();
    assert_eq!(order.len(), 41);
    let b = order.iter().position(|id| *id == "b").unwrap();
    assert!(b <= 5, "B claimed at {b}: {order:?}");
    // A's own deliveries keep their order.
    let a: Vec<&str> = order.iter().copied().filter(|id| *id != "b").collect();
    let mut sorted = a.clone();
    sorted.sort_unstable();
    assert_eq!(a, sorted);
}

#[sqlx::test]
async fn a_claim_walks_the_claim_index_even_when_statistics_say_the_inbox_is_empty(pool: PgPool) {
    // Statistics taken while the inbox was empty (a new deployment), then a burst.
    sqlx::query("ANALYZE workos.inbox, workos.inbox_queue")
        .execute(&pool)
        .await
        .unwrap();
    let ids: Vec<String> = (0..3000).map(|n| format!("e{n:04}")).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    store(&pool, &ids, "dsync.user.created").await;

    // A worker's claim of 1,000 reads 1,000 rows, not the whole burst (a bitmap scan of every
    // unfinished row, then a sort, as the statistics would have it).
    let mut tx = pool.begin_with(inbox::BEGIN).await.unwrap();
    let claimed = inbox::claim(
        &mut tx,
        1000,
        Duration::from_secs(60),
        ClaimOrder::OldestFirst,
    )
    .await
    .unwrap();
    assert_eq!(claimed.len(), 1000);
    let fetched: i64 = sqlx::query_scalar(
        "SELECT idx_tup_fetch + seq_tup_read FROM pg_stat_xact_user_tables
         WHERE schemaname = 'workos' AND relname = 'inbox_queue'",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    assert!(fetched <= 1100, "the claim read {fetched} rows");
    // The batch's own statements may sort again.
    let sorts: String = sqlx::query_scalar("SELECT current_setting('enable_sort')")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(sorts, "on");
}

/// Row versions of the inbox's queue whose `xmax` is a MultiXact (read from its pages).
async fn multixact_versions(pool: &PgPool) -> i64 {
    sqlx::query("CREATE EXTENSION IF NOT EXISTS pageinspect")
        .execute(pool)
        .await
        .unwrap();
    sqlx::query_scalar(
        "SELECT count(*) FROM generate_series(0, pg_relation_size('workos.inbox_queue') / 8192 - 1) AS page,
             heap_page_items(get_raw_page('workos.inbox_queue', page::int))
         WHERE t_infomask & 4096 <> 0", // HEAP_XMAX_IS_MULTI
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

#[sqlx::test]
async fn finishing_events_leaves_no_multixact_on_their_rows(pool: PgPool) {
    // A queue row locked by the claim and deleted in a savepoint, or after a rollback to one
    // (which leaves it open), gets a MultiXact for its `xmax`: one more to freeze, and a dead
    // version that index scans cannot tell is dead, so that every claim walks past its entry in
    // the claim index again (BENCHMARKS.md, "Scale").
    prepare(&pool).await;
    store(&pool, &["e1", "e2"], "dsync.user.created").await;
    let worker = Worker::new(pool.clone(), config()).with_handler(Recorder);
    worker.run_until_empty().await.unwrap();
    // A batch that fails is applied event by event; its rows are finished the same way.
    store(&pool, &["e3", "fail_1", "e4"], "dsync.user.updated").await;
    worker.run_until_empty().await.unwrap();
    assert_eq!(status(&pool, "e4").await.0, "done");
    assert_eq!(status(&pool, "fail_1").await.0, "pending");
    assert_eq!(multixact_versions(&pool).await, 0);
}
