//! All SQL for `workos.inbox`, the table between the receiver and the worker.
//!
//! Life of a row: the receiver inserts it `pending`; a worker claims it (`processing`, with a
//! lease in `locked_until`), then finishes it `done` or `ignored` in the transaction that
//! applied it, or puts it back `pending` with a backoff, or `dead` after the last attempt.
//! A row whose lease ran out (its worker died) is claimable again.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};

/// A verified delivery, ready to be stored.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    /// The event id.
    pub id: String,
    /// The event type.
    pub event: String,
    /// The body exactly as received (valid JSON, UTF-8).
    pub payload: String,
}

/// Inserts deliveries in one statement (one commit) and returns the ids that were new; the
/// others were already stored. A statement-level trigger wakes the workers.
pub async fn insert<'a>(
    pool: &PgPool,
    deliveries: impl IntoIterator<Item = &'a NewDelivery>,
) -> Result<Vec<String>, sqlx::Error> {
    let (mut ids, mut events, mut payloads) = (Vec::new(), Vec::new(), Vec::new());
    for delivery in deliveries {
        ids.push(delivery.id.as_str());
        events.push(delivery.event.as_str());
        payloads.push(delivery.payload.as_str());
    }
    sqlx::query_scalar!(
        r#"
        INSERT INTO workos.inbox (id, event, payload)
        SELECT id, event, payload::json
        FROM UNNEST($1::text[], $2::text[], $3::text[]) AS d(id, event, payload)
        ON CONFLICT (id) DO NOTHING
        RETURNING id
        "#,
        &ids as &[&str],
        &events as &[&str],
        &payloads as &[&str],
    )
    .fetch_all(pool)
    .await
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
    /// Claims so far, this one included; finishing checks it so a worker whose lease ran out
    /// cannot finish a row another worker has claimed since.
    pub attempts: i32,
}

/// Claims up to `limit` available rows, oldest first, for `lease`. Rows locked by another
/// worker are skipped, so several workers can claim at once.
pub async fn claim(
    pool: &PgPool,
    limit: i64,
    lease: Duration,
) -> Result<Vec<Claimed>, sqlx::Error> {
    sqlx::query_as!(
        Claimed,
        r#"
        WITH picked AS (
            SELECT id FROM workos.inbox
            WHERE finished_at IS NULL AND available_at <= now()
              AND (locked_until IS NULL OR locked_until <= now())
            ORDER BY available_at
            LIMIT $1
            FOR UPDATE SKIP LOCKED
        )
        UPDATE workos.inbox AS i
        SET status = 'processing',
            attempts = i.attempts + 1,
            locked_until = now() + make_interval(secs => $2)
        FROM picked
        WHERE i.id = picked.id
        RETURNING i.id, i.event, i.payload::text AS "payload!", i.received_at, i.attempts
        "#,
        limit,
        lease.as_secs_f64(),
    )
    .fetch_all(pool)
    .await
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

/// Finishes claimed rows inside the applying transaction. Returns how many rows were still
/// held by this claim; fewer than given means a lease ran out and the caller must roll back.
pub async fn finish(
    conn: &mut PgConnection,
    rows: &[(&Claimed, Finish)],
) -> Result<u64, sqlx::Error> {
    let ids: Vec<&str> = rows.iter().map(|(row, _)| row.id.as_str()).collect();
    let attempts: Vec<i32> = rows.iter().map(|(row, _)| row.attempts).collect();
    let statuses: Vec<&str> = rows.iter().map(|(_, finish)| finish.as_str()).collect();
    let result = sqlx::query!(
        r#"
        UPDATE workos.inbox AS i
        SET status = f.status, finished_at = now(), locked_until = NULL, last_error = NULL
        FROM UNNEST($1::text[], $2::int4[], $3::text[]) AS f(id, attempts, status)
        WHERE i.id = f.id AND i.attempts = f.attempts AND i.status = 'processing'
        "#,
        &ids as &[&str],
        &attempts,
        &statuses as &[&str],
    )
    .execute(conn)
    .await?;
    Ok(result.rows_affected())
}

/// Records a failed attempt: back to `pending` until `retry_at`, or `dead` when `retry_at` is
/// `None`. Does nothing if the row has been claimed again since.
pub async fn fail(
    pool: &PgPool,
    row: &Claimed,
    error: &str,
    retry_at: Option<DateTime<Utc>>,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        r#"
        UPDATE workos.inbox
        SET status = CASE WHEN $3::timestamptz IS NULL THEN 'dead' ELSE 'pending' END,
            available_at = COALESCE($3, available_at),
            locked_until = NULL,
            finished_at = CASE WHEN $3 IS NULL THEN now() END,
            last_error = $4
        WHERE id = $1 AND attempts = $2 AND status = 'processing'
        "#,
        row.id,
        row.attempts,
        retry_at,
        error,
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// What is waiting in the inbox.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Backlog {
    /// Rows waiting for a first attempt or a retry.
    pub pending: i64,
    /// Rows claimed by a worker.
    pub processing: i64,
    /// Rows that failed for good.
    pub dead: i64,
    /// Age of the oldest pending or processing row, 0 if none.
    pub oldest_pending_seconds: f64,
}

/// Counts the rows that are not finished, and the dead ones (cheap: partial indexes cover
/// them).
pub async fn backlog(pool: &PgPool) -> Result<Backlog, sqlx::Error> {
    let row = sqlx::query!(
        r#"
        SELECT
            count(*) FILTER (WHERE status = 'pending') AS "pending!",
            count(*) FILTER (WHERE status = 'processing') AS "processing!",
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
        processing: row.processing,
        dead: row.dead,
        oldest_pending_seconds: row.oldest,
    })
}

/// One status's share of the inbox.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusCount {
    /// The status.
    pub status: String,
    /// Rows with it.
    pub count: i64,
    /// When the oldest of them arrived.
    pub oldest: Option<DateTime<Utc>>,
}

/// Rows per status (a full count: for operators, not for every scrape).
pub async fn stats(pool: &PgPool) -> Result<Vec<StatusCount>, sqlx::Error> {
    sqlx::query_as!(
        StatusCount,
        r#"
        SELECT status AS "status!", count(*) AS "count!", min(received_at) AS oldest
        FROM workos.inbox GROUP BY status ORDER BY status
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
    /// `pending`, `processing`, `done`, `ignored` or `dead`.
    pub status: String,
    /// Claims so far.
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
        SELECT id, event, status, attempts, received_at, last_error
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
    /// While processing: when the worker's lease ends.
    pub locked_until: Option<DateTime<Utc>>,
    /// When it reached done, ignored or dead.
    pub finished_at: Option<DateTime<Utc>>,
}

/// One row by event id.
pub async fn get(pool: &PgPool, id: &str) -> Result<Option<Row>, sqlx::Error> {
    let row = sqlx::query!(
        r#"
        SELECT id, event, status, attempts, received_at, last_error,
               payload::text AS "payload!", available_at, locked_until, finished_at
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
            attempts: row.attempts,
            received_at: row.received_at,
            last_error: row.last_error,
        },
        payload: row.payload,
        available_at: row.available_at,
        locked_until: row.locked_until,
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
/// wakes the workers. Rows being processed are left alone. Returns how many were requeued.
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
            SET status = 'pending', attempts = 0, available_at = now(), locked_until = NULL,
                finished_at = NULL, last_error = NULL
            WHERE status = ANY($1::text[])
              AND (cardinality($2::text[]) = 0 OR id = ANY($2))
              AND ($3::timestamptz IS NULL OR received_at >= $3)
              AND ($4::timestamptz IS NULL OR received_at < $4)
              AND ($5::text IS NULL OR payload -> 'data' ->> 'directory_id' = $5
                   OR (event IN ('dsync.activated', 'dsync.deactivated', 'dsync.deleted')
                       AND payload -> 'data' ->> 'id' = $5))
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
        WHERE id IN (
            SELECT id FROM workos.inbox
            WHERE status IN ('done', 'ignored') AND finished_at < $1
            LIMIT $2
            FOR UPDATE SKIP LOCKED
        )
        "#,
        before,
        limit,
    )
    .execute(pool)
    .await?;
    Ok(result.rows_affected())
}
