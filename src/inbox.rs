//! All SQL for the inbox between the receiver and the worker: `workos.inbox` (each delivery as
//! received), `workos.inbox_queue` (the events not finished) and `workos.inbox_finished` (the
//! outcomes), migration 0013.
//!
//! Life of an event: the receiver inserts its delivery and its queue row in one statement; a
//! worker claims the queue row by locking it in the transaction that applies the event, and in
//! that same transaction finishes it (deletes the queue row and appends the outcome, `done` or
//! `ignored`), or updates it with a backoff, or finishes it `dead` after the last attempt. A
//! claim writes nothing: if the transaction ends without finishing the row (rollback, crash, a
//! connection Postgres closed), the row is claimable again at once. The worker never writes
//! the ~1 KB delivery itself; retention deletes it with its outcome.
//!
//! A worker's transaction starts with [`BEGIN`], which keeps the claim's plan on the claim
//! index whatever the statistics say (see there).

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{Executor, PgConnection, PgPool};

/// A verified delivery, ready to be stored.
#[derive(Debug, Clone, Default)]
pub struct NewDelivery {
    /// The event id.
    pub id: String,
    /// The event type.
    pub event: String,
    /// The body exactly as received (valid JSON, UTF-8).
    pub payload: String,
    /// How much later than its arrival its turn to be claimed comes: zero, unless its directory
    /// sends faster than its share (`ingest::Turns`).
    pub turn_delay: Duration,
}

/// Inserts deliveries and their queue rows in one statement (one commit) and returns the ids
/// that were new; the others were already stored. A statement-level trigger wakes the workers.
pub async fn insert(
    pool: &PgPool,
    deliveries: &[&NewDelivery],
) -> Result<Vec<String>, sqlx::Error> {
    let (ids, events, payloads, delays) = columns(deliveries);
    sqlx::query_scalar!(
        r#"
        WITH d AS (
            SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::int8[])
                AS d(id, event, payload, delay)
        ), stored AS (
            INSERT INTO workos.inbox (id, event, payload)
            SELECT id, event, payload FROM d
            ON CONFLICT (id) DO NOTHING
            RETURNING id
        ), queued AS (
            INSERT INTO workos.inbox_queue (id, turn_at)
            SELECT d.id, now() + d.delay * interval '1 microsecond'
            FROM d JOIN stored ON stored.id = d.id
            RETURNING id
        )
        SELECT id AS "id!" FROM queued
        "#,
        &ids as &[&str],
        &events as &[&str],
        &payloads as &[&str],
        &delays,
    )
    .fetch_all(pool)
    .await
}

/// Inserts deliveries that are all new, like [`insert`] but without its check for stored
/// ones, which costs Postgres about a sixth of the insert. If one is already stored, the
/// statement fails with a unique violation ([`crate::db::is_unique_violation`]) and stores
/// nothing.
pub(crate) async fn insert_new(
    pool: &PgPool,
    deliveries: &[&NewDelivery],
) -> Result<(), sqlx::Error> {
    let (ids, events, payloads, delays) = columns(deliveries);
    sqlx::query!(
        r#"
        WITH d AS (
            SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::int8[])
                AS d(id, event, payload, delay)
        ), stored AS (
            INSERT INTO workos.inbox (id, event, payload)
            SELECT id, event, payload FROM d
        )
        INSERT INTO workos.inbox_queue (id, turn_at)
        SELECT id, now() + delay * interval '1 microsecond' FROM d
        "#,
        &ids as &[&str],
        &events as &[&str],
        &payloads as &[&str],
        &delays,
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Inserts events that the Events API tail fetched (`source = 'events_api'`), in the caller's
/// transaction (the one that moves the cursor), and returns the ids that were new: the events
/// no webhook had delivered. An event already stored, by a webhook or an earlier page, is left
/// as it is. Their turn is their arrival (`turn_delay` is not read).
pub async fn insert_from_events_api(
    conn: &mut PgConnection,
    events: &[&NewDelivery],
) -> Result<Vec<String>, sqlx::Error> {
    let (ids, types, payloads, _) = columns(events);
    sqlx::query_scalar!(
        r#"
        WITH stored AS (
            INSERT INTO workos.inbox (id, event, payload, source)
            SELECT id, event, payload, 'events_api'
            FROM UNNEST($1::text[], $2::text[], $3::text[]) AS d(id, event, payload)
            ON CONFLICT (id) DO NOTHING
            RETURNING id
        ), queued AS (
            INSERT INTO workos.inbox_queue (id) SELECT id FROM stored RETURNING id
        )
        SELECT id AS "id!" FROM queued
        "#,
        &ids as &[&str],
        &types as &[&str],
        &payloads as &[&str],
    )
    .fetch_all(conn)
    .await
}

type Columns<'a> = (Vec<&'a str>, Vec<&'a str>, Vec<&'a str>, Vec<i64>);

/// The deliveries as columns: ids, types, payloads and turn delays in microseconds.
fn columns<'a>(deliveries: &[&'a NewDelivery]) -> Columns<'a> {
    let mut columns = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for delivery in deliveries {
        columns.0.push(delivery.id.as_str());
        columns.1.push(delivery.event.as_str());
        columns.2.push(delivery.payload.as_str());
        let delay = delivery.turn_delay.as_micros();
        columns.3.push(i64::try_from(delay).unwrap_or(i64::MAX));
    }
    columns
}

/// A row a worker has claimed.
#[derive(Debug, Clone)]
pub struct Claimed {
    /// Where its queue row is (`ctid`, as text): it stays put while the claim holds it, and
    /// finding it there costs no index (the queue has none on `id`).
    slot: String,
    /// The event id.
    pub id: String,
    /// The event type.
    pub event: String,
    /// The body as received.
    pub payload: String,
    /// When the receiver stored it.
    pub received_at: DateTime<Utc>,
    /// Attempts recorded before this one.
    pub attempts: i32,
}

/// How a worker's transaction starts: with sorts turned off until its claim has been planned
/// (the claim turns them back on for the rest of the batch), so that a claim is always a walk
/// along the claim index that stops at `limit` rows. Otherwise its plan depends on the
/// statistics: after a quiet spell they say that almost no row is unfinished, and the plan is
/// a bitmap scan of every unfinished row, dead index entries included, then a sort; cached by
/// the prepared statement, that plan made every claim cost more as a burst's backlog grew
/// (BENCHMARKS.md, "Scale", fairness). Sorts stay off no longer than that: the batch's other
/// statements need them (taking the directories' locks in order among them).
pub const BEGIN: &str = "BEGIN; SET LOCAL enable_sort = off";

/// Which end of the inbox a claim takes from, in turn order (`turn_at`): arrival order, except
/// that the events a directory sends beyond its share (`ingest.directory_share_per_sec`) have
/// later turns than other directories' events that arrive meanwhile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimOrder {
    /// The rows whose turn came first.
    OldestFirst,
    /// The rows whose turn comes last. A second claim loop takes from this end of a backlog,
    /// so that neither loop's claim wades through the rows the other holds locked.
    NewestFirst,
}

/// Claims up to `limit` available events (not waiting for a retry), from the `order` end, for
/// the transaction `conn` is in (begun with [`BEGIN`] by the worker): their queue rows stay
/// locked until it ends, and other workers skip them. Nothing is written. A claim takes rows whose
/// turn is still to come when nothing earlier is left: turns order the work, they never hold
/// it back.
///
/// `lease` bounds how long the transaction may then sit idle (a handler stuck outside the
/// database) before Postgres ends the session, which releases the rows to other workers, and
/// how long each of its statements may run: a batch's writes (the cascade of a user or a group
/// over all its memberships among them) may take longer than the `database.timeout_ms` that
/// bounds the receiver's, and would otherwise fail on every attempt (BENCHMARKS.md, "Scale").
pub async fn claim(
    conn: &mut PgConnection,
    limit: i64,
    lease: Duration,
    order: ClaimOrder,
) -> Result<Vec<Claimed>, sqlx::Error> {
    let lease_ms = lease.as_millis().to_string();
    // One statement, two sort orders: a checked query cannot take its `ORDER BY` direction as a
    // parameter, and a `CASE` there would lose the index's order.
    macro_rules! claim {
        ($order:literal) => {
            sqlx::query_as!(
                Claimed,
                r#"
                WITH lease AS (
                    SELECT set_config('idle_in_transaction_session_timeout', $2, true),
                           set_config('statement_timeout', $2, true),
                           -- Off for this claim's plan only (`BEGIN`).
                           set_config('enable_sort', 'on', true)
                )
                SELECT q.ctid::text AS "slot!", i.id, i.event, i.payload, i.received_at,
                       q.attempts
                FROM workos.inbox_queue AS q
                JOIN workos.inbox AS i ON i.id = q.id, lease
                WHERE q.available_at <= now()
                ORDER BY q.turn_at "#
                    + $order
                    + r#"
                LIMIT $1
                FOR UPDATE OF q SKIP LOCKED
                "#,
                limit,
                lease_ms,
            )
            .fetch_all(conn)
            .await
        };
    }
    match order {
        ClaimOrder::OldestFirst => claim!("ASC"),
        ClaimOrder::NewestFirst => claim!("DESC"),
    }
}

/// How an applied row ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// A handler applied it.
    Done,
    /// No handler wanted it.
    Ignored,
}

impl Finish {
    fn as_str(self) -> &'static str {
        match self {
            Finish::Done => "done",
            Finish::Ignored => "ignored",
        }
    }
}

/// Finishes claimed rows, in the transaction that claimed and applied them, and at its top
/// level, not in a savepoint (a row locked by a transaction and deleted by a subtransaction of
/// it gets a MultiXact, see `worker`): their queue rows go, their outcomes are appended.
pub async fn finish(
    conn: &mut PgConnection,
    rows: &[(&Claimed, Finish)],
) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let slots: Vec<&str> = rows.iter().map(|(row, _)| row.slot.as_str()).collect();
    let statuses: Vec<&str> = rows.iter().map(|(_, finish)| finish.as_str()).collect();
    sqlx::query!(
        r#"
        WITH f AS (
            SELECT slot::tid AS slot, status FROM UNNEST($1::text[], $2::text[]) AS f(slot, status)
        ), gone AS (
            DELETE FROM workos.inbox_queue
            WHERE ctid = ANY (ARRAY(SELECT slot FROM f))
            RETURNING ctid AS slot, id, attempts
        )
        INSERT INTO workos.inbox_finished (id, status, attempts)
        SELECT gone.id, f.status, gone.attempts + 1 FROM gone JOIN f ON f.slot = gone.slot
        "#,
        &slots as &[&str],
        &statuses as &[&str],
    )
    // Planned for each batch: a generic plan cached while the queue was small would read the
    // whole queue for the batch's rows, where this one goes to each by its address.
    .persistent(false)
    .execute(conn)
    .await?;
    Ok(())
}

/// Removes the queue rows that finished events left behind, and their index entries, so that a
/// claim does not walk past them ([`claim`] starts at the oldest turn; a dead entry there costs
/// every claim until a vacuum removes it). Autovacuum comes at most once a minute, and a busy
/// queue leaves tens of thousands a second. Skipped if another vacuum of the queue is under way.
pub async fn vacuum_queue(pool: &PgPool) -> Result<(), sqlx::Error> {
    let mut conn = pool.acquire().await?;
    let conn: &mut PgConnection = &mut conn;
    // A skip is expected (another worker's vacuum, or autovacuum's), and Postgres reports it
    // as a WARNING, which sqlx would log as one: not for the operators' logs. Utility
    // statements, each on its own (`VACUUM` cannot share a transaction with the `SET`).
    conn.execute("SET client_min_messages = error").await?;
    let vacuumed = conn
        .execute("VACUUM (SKIP_LOCKED) workos.inbox_queue")
        .await;
    conn.execute("RESET client_min_messages").await?;
    vacuumed?;
    Ok(())
}

/// Records a failed attempt at a claimed row, in the transaction that claimed it: still
/// pending until `retry_at` (its turn then), or finished `dead` when `retry_at` is `None`.
pub async fn fail(
    conn: &mut PgConnection,
    row: &Claimed,
    error: &str,
    retry_at: Option<DateTime<Utc>>,
) -> Result<(), sqlx::Error> {
    match retry_at {
        Some(retry_at) => {
            sqlx::query!(
                r#"
            UPDATE workos.inbox_queue
            SET attempts = attempts + 1, available_at = $2, turn_at = $2, last_error = $3
            WHERE ctid = $1::text::tid
            "#,
                row.slot,
                retry_at,
                error,
            )
            .execute(conn)
            .await?
        }
        None => {
            sqlx::query!(
                r#"
            WITH gone AS (
                DELETE FROM workos.inbox_queue WHERE ctid = $1::text::tid RETURNING id, attempts
            )
            INSERT INTO workos.inbox_finished (id, status, attempts, last_error)
            SELECT id, 'dead', attempts + 1, $2 FROM gone
            "#,
                row.slot,
                error,
            )
            .execute(conn)
            .await?
        }
    };
    Ok(())
}

/// What is waiting in the inbox.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Backlog {
    /// Rows waiting for a first attempt or a retry, or being applied.
    pub pending: i64,
    /// Rows that failed for good.
    pub dead: i64,
    /// Age of the oldest pending row, 0 if none.
    pub oldest_pending_seconds: f64,
}

/// Counts the rows that are not finished, and the dead ones (cheap: the queue holds only the
/// first, a partial index the second).
pub async fn backlog(pool: &PgPool) -> Result<Backlog, sqlx::Error> {
    let row = sqlx::query!(
        r#"
        SELECT
            count(*) AS "pending!",
            (SELECT count(*) FROM workos.inbox_finished WHERE status = 'dead') AS "dead!",
            COALESCE(extract(epoch FROM now() - min(received_at)), 0)::float8 AS "oldest!"
        FROM workos.inbox_queue
        "#
    )
    .fetch_one(pool)
    .await?;
    Ok(Backlog {
        pending: row.pending,
        dead: row.dead,
        oldest_pending_seconds: row.oldest,
    })
}

/// One status's share of the inbox, from one source.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusCount {
    /// The status.
    pub status: String,
    /// `webhook` or `events_api` (recovered by the Events API tail).
    pub source: String,
    /// Rows with it.
    pub count: i64,
    /// When the oldest of them arrived.
    pub oldest: Option<DateTime<Utc>>,
}

/// Rows per status and source (a full count: for operators, not for every scrape).
pub async fn stats(pool: &PgPool) -> Result<Vec<StatusCount>, sqlx::Error> {
    sqlx::query_as!(
        StatusCount,
        r#"
        SELECT status AS "status!", source AS "source!", count(*) AS "count!",
               min(received_at) AS oldest
        FROM workos.inbox_status GROUP BY status, source ORDER BY status, source
        "#
    )
    .fetch_all(pool)
    .await
}

/// An inbox row without its payload.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// The event id.
    pub id: String,
    /// The event type.
    pub event: String,
    /// `pending`, `done`, `ignored` or `dead`.
    pub status: String,
    /// `webhook`, or `events_api` when the Events API tail stored it first.
    pub source: String,
    /// Attempts recorded so far (applied, or failed).
    pub attempts: i32,
    /// When the receiver stored it.
    pub received_at: DateTime<Utc>,
    /// The last failure, if any.
    pub last_error: Option<String>,
}

/// The newest rows, optionally of one status and one event type.
pub async fn list(
    pool: &PgPool,
    status: Option<&str>,
    event: Option<&str>,
    limit: i64,
) -> Result<Vec<Summary>, sqlx::Error> {
    sqlx::query_as!(
        Summary,
        r#"
        SELECT id AS "id!", event AS "event!", status AS "status!", source AS "source!",
               attempts AS "attempts!", received_at AS "received_at!", last_error
        FROM workos.inbox_status
        WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR event = $2)
        ORDER BY received_at DESC, id
        LIMIT $3
        "#,
        status,
        event,
        limit,
    )
    .fetch_all(pool)
    .await
}

/// A whole inbox row.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Everything but the payload.
    pub summary: Summary,
    /// The body as received.
    pub payload: String,
    /// While pending: when it may next be claimed (a retry's backoff).
    pub available_at: Option<DateTime<Utc>>,
    /// While pending: its place in the claim order (later than its arrival if its directory
    /// sent faster than its share).
    pub turn_at: Option<DateTime<Utc>>,
    /// When it reached done, ignored or dead.
    pub finished_at: Option<DateTime<Utc>>,
}

/// One row by event id.
pub async fn get(pool: &PgPool, id: &str) -> Result<Option<Row>, sqlx::Error> {
    let row = sqlx::query!(
        r#"
        SELECT s.id AS "id!", s.event AS "event!", s.status AS "status!",
               s.source AS "source!", s.attempts AS "attempts!",
               s.received_at AS "received_at!", s.last_error, i.payload, s.available_at,
               s.turn_at, s.finished_at
        FROM workos.inbox_status AS s JOIN workos.inbox AS i ON i.id = s.id
        WHERE s.id = $1
        "#,
        id
    )
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|row| Row {
        summary: Summary {
            id: row.id,
            event: row.event,
            status: row.status,
            source: row.source,
            attempts: row.attempts,
            received_at: row.received_at,
            last_error: row.last_error,
        },
        payload: row.payload,
        available_at: row.available_at,
        turn_at: row.turn_at,
        finished_at: row.finished_at,
    }))
}

/// Which stored events to requeue.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// These ids.
    pub ids: Vec<String>,
    /// Received at or after.
    pub since: Option<DateTime<Utc>>,
    /// Received before.
    pub until: Option<DateTime<Utc>>,
    /// About this directory (its own events, and its users', groups' and memberships').
    pub directory: Option<String>,
    /// Of this type.
    pub event: Option<String>,
    /// Of these statuses (empty: done, ignored and dead).
    pub statuses: Vec<String>,
}

/// Puts the selected finished events back in the queue, and makes the selected pending ones
/// available now, with a fresh count of attempts; wakes the workers. An event a worker is
/// applying is left to it. Returns how many were requeued.
///
/// Applying is idempotent, so requeueing `done` rows re-applies them without changing the
/// synced tables unless they had drifted.
pub async fn requeue(pool: &PgPool, selection: &Selection) -> Result<u64, sqlx::Error> {
    let statuses: Vec<String> = if selection.statuses.is_empty() {
        ["done", "ignored", "dead"].map(str::to_owned).to_vec()
    } else {
        selection.statuses.clone()
    };
    let result = sqlx::query!(
        r#"
        WITH chosen AS (
            SELECT id, received_at FROM workos.inbox
            WHERE (cardinality($2::text[]) = 0 OR id = ANY($2))
              AND ($3::timestamptz IS NULL OR received_at >= $3)
              AND ($4::timestamptz IS NULL OR received_at < $4)
              AND ($5::text IS NULL OR payload::json -> 'data' ->> 'directory_id' = $5
                   OR (event IN ('dsync.activated', 'dsync.deactivated', 'dsync.deleted')
                       AND payload::json -> 'data' ->> 'id' = $5))
              AND ($6::text IS NULL OR event = $6)
        ), unfinished AS (
            DELETE FROM workos.inbox_finished AS f USING chosen
            WHERE f.id = chosen.id AND f.status = ANY($1::text[])
            RETURNING f.id, chosen.received_at
        ), queued AS (
            INSERT INTO workos.inbox_queue (id, received_at)
            SELECT id, received_at FROM unfinished
            RETURNING 1
        ), hurried AS (
            UPDATE workos.inbox_queue AS q
            SET attempts = 0, available_at = now(), turn_at = now(), last_error = NULL
            FROM chosen
            WHERE q.id = chosen.id AND 'pending' = ANY($1::text[])
            RETURNING 1
        )
        SELECT (SELECT count(*) FROM queued) + (SELECT count(*) FROM hurried) AS "count!",
               pg_notify('workos_inbox', '')::text AS wake
        "#,
        &statuses,
        &selection.ids,
        selection.since,
        selection.until,
        selection.directory,
        selection.event,
    )
    .fetch_one(pool)
    .await?;
    Ok(result.count as u64)
}

/// Deletes up to `limit` events finished `done` or `ignored` before `before`, their deliveries
/// and their outcomes; returns how many. `dead` ones stay until an operator handles them.
pub async fn purge_finished(
    pool: &PgPool,
    before: DateTime<Utc>,
    limit: i64,
) -> Result<u64, sqlx::Error> {
    let deleted = sqlx::query_scalar!(
        r#"
        WITH expired AS (
            DELETE FROM workos.inbox_finished
            -- By the rows' addresses, which stay put while the rows are locked.
            WHERE ctid = ANY (ARRAY(
                SELECT ctid FROM workos.inbox_finished
                WHERE status IN ('done', 'ignored') AND finished_at < $1
                -- Along the index of `finished_at`: without an order, the generic plan of
                -- this prepared statement scanned the whole table (seconds on a million rows).
                ORDER BY finished_at
                LIMIT $2
                FOR UPDATE SKIP LOCKED
            ))
            RETURNING id
        ), deliveries AS (
            DELETE FROM workos.inbox WHERE id = ANY (ARRAY(SELECT id FROM expired))
        )
        SELECT count(*) AS "count!" FROM expired
        "#,
        before,
        limit,
    )
    .fetch_one(pool)
    .await?;
    Ok(deleted as u64)
}
