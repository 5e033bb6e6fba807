//! All SQL for `workos.inbox`, the table between the receiver and the worker.
//!
//! Life of a row: the receiver inserts it `pending`; a worker claims it by locking it in the
//! transaction that applies it, and in that same transaction finishes it `done` or `ignored`,
//! or puts it back `pending` with a backoff, or `dead` after the last attempt. A claim writes
//! nothing: if the transaction ends without finishing the row (rollback, crash, a connection
//! Postgres closed), the row is claimable again at once. Each event is thus written once by
//! the worker, not twice (claimed, then finished).
//!
//! A worker's transaction starts with [`BEGIN`], which keeps the claim's plan on the claim
//! index whatever the statistics say (see there).

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};

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

/// Inserts deliveries in one statement (one commit) and returns the ids that were new; the
/// others were already stored. A statement-level trigger wakes the workers.
pub async fn insert(
    pool: &PgPool,
    deliveries: &[&NewDelivery],
) -> Result<Vec<String>, sqlx::Error> {
    let (ids, events, payloads, delays) = columns(deliveries);
    sqlx::query_scalar!(
        r#"
        INSERT INTO workos.inbox (id, event, payload, turn_at)
        SELECT id, event, payload, now() + delay * interval '1 microsecond'
        FROM UNNEST($1::text[], $2::text[], $3::text[], $4::int8[]) AS d(id, event, payload, delay)
        ON CONFLICT (id) DO NOTHING
        RETURNING id
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
/// statement fails with a unique violation ([`is_duplicate`]) and stores nothing.
pub(crate) async fn insert_new(
    pool: &PgPool,
    deliveries: &[&NewDelivery],
) -> Result<(), sqlx::Error> {
    let (ids, events, payloads, delays) = columns(deliveries);
    sqlx::query!(
        r#"
        INSERT INTO workos.inbox (id, event, payload, turn_at)
        SELECT id, event, payload, now() + delay * interval '1 microsecond'
        FROM UNNEST($1::text[], $2::text[], $3::text[], $4::int8[]) AS d(id, event, payload, delay)
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
        INSERT INTO workos.inbox (id, event, payload, source)
        SELECT id, event, payload, 'events_api'
        FROM UNNEST($1::text[], $2::text[], $3::text[]) AS d(id, event, payload)
        ON CONFLICT (id) DO NOTHING
        RETURNING id
        "#,
        &ids as &[&str],
        &types as &[&str],
        &payloads as &[&str],
    )
    .fetch_all(conn)
    .await
}

/// Whether `error` is [`insert_new`] finding a delivery already stored.
pub(crate) fn is_duplicate(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .is_some_and(|error| error.is_unique_violation())
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

/// Claims up to `limit` available rows (not waiting for a retry), from the `order` end, for
/// the transaction `conn` is in (begun with [`BEGIN`] by the worker): the rows stay locked
/// until it ends, and other workers skip them. Nothing is written. A claim takes rows whose
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
                SELECT i.id, i.event, i.payload, i.received_at, i.attempts
                FROM workos.inbox AS i, lease
                WHERE i.finished_at IS NULL AND i.available_at <= now()
                ORDER BY i.turn_at "#
                    + $order
                    + r#"
                LIMIT $1
                FOR UPDATE OF i SKIP LOCKED
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
/// level, not in a savepoint: a row locked by a transaction and updated by a subtransaction
/// of it gets a MultiXact (see `worker`).
pub async fn finish(
    conn: &mut PgConnection,
    rows: &[(&Claimed, Finish)],
) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let ids: Vec<&str> = rows.iter().map(|(row, _)| row.id.as_str()).collect();
    let statuses: Vec<&str> = rows.iter().map(|(_, finish)| finish.as_str()).collect();
    sqlx::query!(
        r#"
        UPDATE workos.inbox AS i
        SET status = f.status, attempts = i.attempts + 1, finished_at = now(), last_error = NULL
        FROM UNNEST($1::text[], $2::text[]) AS f(id, status)
        WHERE i.id = f.id
        "#,
        &ids as &[&str],
        &statuses as &[&str],
    )
    // Planned for each batch: a plan cached while the inbox was small joined a batch's ids to
    // the whole inbox, where this one looks each up by its key.
    .persistent(false)
    .execute(conn)
    .await?;
    Ok(())
}

/// Records a failed attempt at a claimed row, in the transaction that claimed it: back to
/// `pending` until `retry_at` (its turn then), or `dead` when `retry_at` is `None`.
pub async fn fail(
    conn: &mut PgConnection,
    row: &Claimed,
    error: &str,
    retry_at: Option<DateTime<Utc>>,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        r#"
        UPDATE workos.inbox
        SET status = CASE WHEN $2::timestamptz IS NULL THEN 'dead' ELSE 'pending' END,
            attempts = attempts + 1,
            available_at = COALESCE($2, available_at),
            turn_at = COALESCE($2, turn_at),
            finished_at = CASE WHEN $2 IS NULL THEN now() END,
            last_error = $3
        WHERE id = $1
        "#,
        row.id,
        retry_at,
        error,
    )
    .execute(conn)
    .await?;
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

/// Counts the rows that are not finished, and the dead ones (cheap: partial indexes cover
/// them).
pub async fn backlog(pool: &PgPool) -> Result<Backlog, sqlx::Error> {
    let row = sqlx::query!(
        r#"
        SELECT
            count(*) FILTER (WHERE status = 'pending') AS "pending!",
            (SELECT count(*) FROM workos.inbox
             WHERE last_error IS NOT NULL AND status = 'dead') AS "dead!",
            COALESCE(extract(epoch FROM now() - min(received_at)), 0)::float8 AS "oldest!"
        FROM workos.inbox
        WHERE finished_at IS NULL
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
        FROM workos.inbox GROUP BY status, source ORDER BY status, source
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
        SELECT id, event, status, source, attempts, received_at, last_error
        FROM workos.inbox
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
    /// When the row may next be claimed (a retry's backoff).
    pub available_at: DateTime<Utc>,
    /// Its place in the claim order (later than its arrival if its directory sent faster than
    /// its share).
    pub turn_at: DateTime<Utc>,
    /// When it reached done, ignored or dead.
    pub finished_at: Option<DateTime<Utc>>,
}

/// One row by event id.
pub async fn get(pool: &PgPool, id: &str) -> Result<Option<Row>, sqlx::Error> {
    let row = sqlx::query!(
        r#"
        SELECT id, event, status, source, attempts, received_at, last_error,
               payload, available_at, turn_at, finished_at
        FROM workos.inbox WHERE id = $1
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

/// Puts the selected finished rows back to `pending` with a fresh count of attempts, and
/// wakes the workers. A row a worker is applying is requeued once that worker commits, if it
/// still matches. Returns how many were requeued.
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
        WITH requeued AS (
            UPDATE workos.inbox
            SET status = 'pending', attempts = 0, available_at = now(), turn_at = now(),
                finished_at = NULL, last_error = NULL
            WHERE status = ANY($1::text[])
              AND (cardinality($2::text[]) = 0 OR id = ANY($2))
              AND ($3::timestamptz IS NULL OR received_at >= $3)
              AND ($4::timestamptz IS NULL OR received_at < $4)
              AND ($5::text IS NULL OR payload::json -> 'data' ->> 'directory_id' = $5
                   OR (event IN ('dsync.activated', 'dsync.deactivated', 'dsync.deleted')
                       AND payload::json -> 'data' ->> 'id' = $5))
              AND ($6::text IS NULL OR event = $6)
            RETURNING 1
        )
        SELECT count(*) AS "count!", pg_notify('workos_inbox', '')::text AS wake FROM requeued
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

/// Deletes up to `limit` `done` or `ignored` rows finished before `before`; returns how many.
/// `dead` rows stay until an operator handles them.
pub async fn purge_finished(
    pool: &PgPool,
    before: DateTime<Utc>,
    limit: i64,
) -> Result<u64, sqlx::Error> {
    let result = sqlx::query!(
        r#"
        DELETE FROM workos.inbox
        -- By the rows' addresses, which stay put while the rows are locked: a lookup by id
        -- walked the primary key for every row, a quarter of the sweep's time.
        WHERE ctid = ANY (ARRAY(
            SELECT ctid FROM workos.inbox
            WHERE status IN ('done', 'ignored') AND finished_at < $1
            -- Along the finished rows' index: without an order, the generic plan of this
            -- prepared statement scanned the whole table (seconds on a million rows).
            ORDER BY finished_at
            LIMIT $2
            FOR UPDATE SKIP LOCKED
        ))
        "#,
        before,
        limit,
    )
    .execute(pool)
    .await?;
    Ok(result.rows_affected())
}
