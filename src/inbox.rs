//! All SQL for `workos.inbox`, the table between the receiver and the worker.
//!
//! Life of a row: the receiver inserts it `pending`; a worker claims it (`processing`, with a
//! lease in `available_at`), then finishes it `done` or `ignored` in the transaction that
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
pub async fn insert(pool: &PgPool, deliveries: &[NewDelivery]) -> Result<Vec<String>, sqlx::Error> {
    let ids: Vec<&str> = deliveries.iter().map(|d| d.id.as_str()).collect();
    let events: Vec<&str> = deliveries.iter().map(|d| d.event.as_str()).collect();
    let payloads: Vec<&str> = deliveries.iter().map(|d| d.payload.as_str()).collect();
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
            WHERE status IN ('pending', 'processing') AND available_at <= now()
            ORDER BY available_at
            LIMIT $1
            FOR UPDATE SKIP LOCKED
        )
        UPDATE workos.inbox AS i
        SET status = 'processing',
            attempts = i.attempts + 1,
            available_at = now() + make_interval(secs => $2)
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
        SET status = f.status, finished_at = now(), last_error = NULL
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

/// Counts the rows that are not finished (cheap: partial indexes cover them).
pub async fn backlog(pool: &PgPool) -> Result<Backlog, sqlx::Error> {
    let row = sqlx::query!(
        r#"
        SELECT
            count(*) FILTER (WHERE status = 'pending') AS "pending!",
            count(*) FILTER (WHERE status = 'processing') AS "processing!",
            count(*) FILTER (WHERE status = 'dead') AS "dead!",
            COALESCE(extract(epoch FROM now() - min(received_at)
                FILTER (WHERE status IN ('pending', 'processing'))), 0)::float8 AS "oldest!"
        FROM workos.inbox
        WHERE status IN ('pending', 'processing', 'dead')
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
