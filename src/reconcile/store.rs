//! All SQL for reconciliation's own tables (`workos.events_cursor`, `workos.reconcile_runs`,
//! `workos.reconcile_listed`) and its read-only comparisons with the synced tables. The synced
//! tables are only ever written by the directory handler.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};

/// The tail's position.
#[derive(Debug, Clone, PartialEq)]
pub struct Cursor {
    /// The last stored event, as served; `None` until the first event after `range_start`.
    pub event_id: Option<String>,
    /// That event's `created_at`.
    pub event_created_at: Option<DateTime<Utc>>,
    /// Where the tail (re)started.
    pub range_start: DateTime<Utc>,
    /// When the cursor last moved.
    pub moved_at: DateTime<Utc>,
}

/// The cursor, or `None` if the tail never started.
pub async fn cursor(conn: &mut PgConnection) -> Result<Option<Cursor>, sqlx::Error> {
    sqlx::query_as!(
        Cursor,
        "SELECT event_id, event_created_at, range_start, moved_at FROM workos.events_cursor"
    )
    .fetch_optional(conn)
    .await
}

/// Moves the cursor to `event_id`, in the transaction that stored its page.
pub(crate) async fn move_cursor(
    conn: &mut PgConnection,
    event_id: &str,
    event_created_at: Option<DateTime<Utc>>,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        r#"
        UPDATE workos.events_cursor
        SET event_id = $1, event_created_at = COALESCE($2, event_created_at), moved_at = now()
        "#,
        event_id,
        event_created_at,
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// (Re)starts the tail at `range_start`, forgetting any cursor.
pub(crate) async fn restart_cursor(
    pool: &PgPool,
    range_start: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        r#"
        INSERT INTO workos.events_cursor (range_start) VALUES ($1)
        ON CONFLICT (singleton) DO UPDATE
        SET event_id = NULL, event_created_at = NULL, range_start = $1, moved_at = now()
        "#,
        range_start,
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Records the start of a snapshot run; returns its id and start time (the database's clock,
/// which also writes `synced_at`).
pub(crate) async fn begin_run(
    pool: &PgPool,
    directory_id: Option<&str>,
    dry_run: bool,
) -> Result<(i64, DateTime<Utc>), sqlx::Error> {
    // Scratch rows of runs that died before cleaning up.
    sqlx::query!(
        r#"
        DELETE FROM workos.reconcile_listed
        WHERE run_id IN (SELECT id FROM workos.reconcile_runs
                         WHERE finished_at IS NOT NULL OR started_at < now() - interval '2 days')
        "#
    )
    .execute(pool)
    .await?;
    let row = sqlx::query!(
        r#"
        INSERT INTO workos.reconcile_runs (started_at, directory_id, dry_run)
        VALUES (date_trunc('milliseconds', now()), $1, $2)
        RETURNING id, started_at
        "#,
        directory_id,
        dry_run,
    )
    .fetch_one(pool)
    .await?;
    Ok((row.id, row.started_at))
}

/// Records how a run ended, and empties its scratch rows.
pub(crate) async fn finish_run(
    pool: &PgPool,
    run_id: i64,
    drift: Option<&serde_json::Value>,
    error: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE workos.reconcile_runs SET finished_at = now(), drift = $2, error = $3 WHERE id = $1",
        run_id,
        drift,
        error,
    )
    .execute(pool)
    .await?;
    sqlx::query!(
        "DELETE FROM workos.reconcile_listed WHERE run_id = $1",
        run_id
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// The last run that repaired every directory and finished without error.
#[derive(Debug, Clone, PartialEq)]
pub struct LastRun {
    /// When it began.
    pub started_at: DateTime<Utc>,
    /// When it finished.
    pub finished_at: DateTime<Utc>,
    /// The drift it found (see [`super::Drift`]).
    pub drift: serde_json::Value,
}

/// The last successful full run (not a dry run, not limited to a directory).
pub async fn last_full_run(pool: &PgPool) -> Result<Option<LastRun>, sqlx::Error> {
    sqlx::query_as!(
        LastRun,
        r#"
        SELECT started_at, finished_at AS "finished_at!", drift AS "drift!"
        FROM workos.reconcile_runs
        WHERE finished_at IS NOT NULL AND error IS NULL AND NOT dry_run
          AND directory_id IS NULL AND drift IS NOT NULL
        ORDER BY id DESC LIMIT 1
        "#
    )
    .fetch_optional(pool)
    .await
}

/// One listed object to remember for the run.
#[derive(Debug, Clone)]
pub(crate) struct Listed {
    pub(crate) id: String,
    pub(crate) updated_at: DateTime<Utc>,
    /// The object in the event form.
    pub(crate) object: String,
}

/// What the listing is of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Directory,
    User,
    Group,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Directory => "directory",
            Kind::User => "user",
            Kind::Group => "group",
        }
    }
}

/// Remembers a page of listed objects.
pub(crate) async fn stage(
    pool: &PgPool,
    run_id: i64,
    kind: Kind,
    directory_id: &str,
    items: &[Listed],
) -> Result<(), sqlx::Error> {
    let ids: Vec<&str> = items.iter().map(|item| item.id.as_str()).collect();
    let objects: Vec<&str> = items.iter().map(|item| item.object.as_str()).collect();
    sqlx::query!(
        r#"
        INSERT INTO workos.reconcile_listed (run_id, kind, directory_id, id, object)
        SELECT $1, $2, CASE WHEN $2 = 'directory' THEN l.id ELSE $3 END, l.id, l.object
        FROM UNNEST($4::text[], $5::text[]) AS l(id, object)
        ON CONFLICT DO NOTHING
        "#,
        run_id,
        kind.as_str(),
        directory_id,
        &ids as &[&str],
        &objects as &[&str],
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Remembers a page of a group's listed members.
pub(crate) async fn stage_members(
    pool: &PgPool,
    run_id: i64,
    directory_id: &str,
    group_id: &str,
    user_ids: &[&str],
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        r#"
        INSERT INTO workos.reconcile_listed (run_id, kind, directory_id, id, group_id)
        SELECT $1, 'member', $2, id, $3 FROM UNNEST($4::text[]) AS l(id)
        ON CONFLICT DO NOTHING
        "#,
        run_id,
        directory_id,
        group_id,
        user_ids as &[&str],
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// A listed object that differs from what is stored.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Drifted {
    pub(crate) id: String,
    /// No live row here (none at all, or a deleted one older than the listing); otherwise
    /// the stored row is older (`stale`).
    pub(crate) missing: bool,
}

/// The listed objects that are missing here, or stored with an older `updated_at`. Rows
/// written since the run began (`since`) are left out: an event arrived meanwhile.
pub(crate) async fn drifted(
    pool: &PgPool,
    kind: Kind,
    items: &[Listed],
    since: DateTime<Utc>,
) -> Result<Vec<Drifted>, sqlx::Error> {
    let ids: Vec<&str> = items.iter().map(|item| item.id.as_str()).collect();
    let updated: Vec<DateTime<Utc>> = items.iter().map(|item| item.updated_at).collect();
    // One statement per table: a checked query cannot take a table name as a parameter.
    macro_rules! drifted {
        ($table:literal) => {
            sqlx::query_as!(
                Drifted,
                r#"
                SELECT l.id AS "id!", (s.id IS NULL OR s.deleted_at IS NOT NULL) AS "missing!"
                FROM UNNEST($1::text[], $2::timestamptz[]) AS l(id, updated_at)
                LEFT JOIN "# + $table + r#" AS s ON s.id = l.id
                WHERE (s.id IS NULL OR s.updated_at < l.updated_at)
                  AND (s.id IS NULL OR s.synced_at < $3)
                ORDER BY l.id
                "#,
                &ids as &[&str],
                &updated,
                since,
            )
            .fetch_all(pool)
            .await
        };
    }
    match kind {
        Kind::Directory => drifted!("workos.directories"),
        Kind::User => drifted!("workos.directory_users"),
        Kind::Group => drifted!("workos.directory_groups"),
    }
}

/// How long a comparison of what a run did not list may run: it reads every row of a
/// directory once (a few seconds for a million users), longer than `database.timeout_ms`
/// allows the requests' statements, and it holds no lock anyone waits for.
const COMPARISON_TIMEOUT: &str = "300s";

/// A transaction whose statements may run [`COMPARISON_TIMEOUT`].
async fn comparison(
    pool: &PgPool,
) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query!(
        r#"SELECT set_config('statement_timeout', $1, true) AS "set!""#,
        COMPARISON_TIMEOUT
    )
    .fetch_one(&mut *tx)
    .await?;
    Ok(tx)
}

/// Samples `workos.reconcile_listed` for the planner (see `snapshot::Run::refresh_statistics`).
pub(crate) async fn analyze_listed(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::query!("ANALYZE workos.reconcile_listed")
        .execute(pool)
        .await?;
    Ok(())
}

/// Up to `limit` live rows that the run did not list, written before it began, after `after`
/// in id order: `(id, the row in the event form)`. Directories: any (only a complete listing
/// asks), or only `directory_id`'s; users and groups: those of `directory_id`.
pub(crate) async fn unlisted(
    pool: &PgPool,
    run_id: i64,
    kind: Kind,
    directory_id: Option<&str>,
    since: DateTime<Utc>,
    after: &str,
    limit: i64,
) -> Result<Vec<(String, String)>, sqlx::Error> {
    // One statement per table (a checked query cannot take a table name as a parameter):
    // the table, the function that turns its row into the event form, the listing's kind,
    // and which rows the run is about.
    let mut tx = comparison(pool).await?;
    macro_rules! unlisted {
        ($table:literal, $as_event:literal, $kind:literal, $scope:literal) => {
            sqlx::query!(
                r#"SELECT s.id, "#
                    + $as_event
                    + r#"(s)::text AS "object!"
                FROM "#
                    + $table
                    + r#" AS s
                WHERE s.deleted_at IS NULL AND s.synced_at < $2 AND s.id > $3 AND "#
                    + $scope
                    + r#"
                  AND NOT EXISTS (SELECT 1 FROM workos.reconcile_listed AS l
                                  WHERE l.run_id = $1 AND l.kind = "#
                    + $kind
                    + r#" AND l.id = s.id)
                ORDER BY s.id LIMIT $5
                "#,
                run_id,
                since,
                after,
                directory_id,
                limit,
            )
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .map(|row| (row.id, row.object))
            .collect()
        };
    }
    let rows = match kind {
        Kind::Directory => unlisted!(
            "workos.directories",
            "workos.directory_as_event",
            "'directory'",
            "($4::text IS NULL OR s.id = $4)"
        ),
        Kind::User => unlisted!(
            "workos.directory_users",
            "workos.user_as_event",
            "'user'",
            "s.directory_id = $4"
        ),
        Kind::Group => unlisted!(
            "workos.directory_groups",
            "workos.group_as_event",
            "'group'",
            "s.directory_id = $4"
        ),
    };
    tx.commit().await?;
    Ok(rows)
}

/// Up to `limit` objects the run listed, after `after` in id order: `(id, object)`.
/// Directories: all the run listed; users and groups: `directory_id`'s.
pub(crate) async fn listed(
    pool: &PgPool,
    run_id: i64,
    kind: Kind,
    directory_id: &str,
    after: &str,
    limit: i64,
) -> Result<Vec<(String, String)>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"
        SELECT id, object AS "object!" FROM workos.reconcile_listed
        WHERE run_id = $1 AND kind = $2 AND ($2 = 'directory' OR directory_id = $3)
          AND id > $4 AND object IS NOT NULL
        ORDER BY id LIMIT $5
        "#,
        run_id,
        kind.as_str(),
        directory_id,
        after,
        limit,
    )
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|row| (row.id, row.object)).collect())
}

/// Of `user_ids`, listed as members of `group_id`, those without a live membership here
/// (none, or one removed before the run began).
pub(crate) async fn members_missing(
    pool: &PgPool,
    group_id: &str,
    user_ids: &[&str],
    since: DateTime<Utc>,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar!(
        r#"
        SELECT l.id AS "id!"
        FROM UNNEST($1::text[]) AS l(id)
        LEFT JOIN workos.directory_group_memberships AS m
               ON m.group_id = $2 AND m.user_id = l.id
        WHERE m.group_id IS NULL OR (m.deleted_at IS NOT NULL AND m.synced_at < $3)
        ORDER BY l.id
        "#,
        user_ids as &[&str],
        group_id,
        since,
    )
    .fetch_all(pool)
    .await
}

/// A live membership that the run did not list.
#[derive(Debug, Clone)]
pub(crate) struct Unlisted {
    pub(crate) group_id: String,
    pub(crate) user_id: String,
    /// The user as listed, else as stored.
    pub(crate) user: String,
    /// The group as listed, else as stored.
    pub(crate) group: String,
}

/// Up to `limit` live memberships of `directory_id` that the run did not list among their
/// group's members, written before it began, after `(group, user)` `after`. Those of users or
/// groups WorkOS no longer lists are included (their deletion may not cascade to memberships
/// newer than the deleted object), provided the user and the group are known here.
pub(crate) async fn members_unlisted(
    pool: &PgPool,
    run_id: i64,
    directory_id: &str,
    since: DateTime<Utc>,
    after: (&str, &str),
    limit: i64,
) -> Result<Vec<Unlisted>, sqlx::Error> {
    let mut tx = comparison(pool).await?;
    let rows = sqlx::query_as!(
        Unlisted,
        r#"
        SELECT m.group_id, m.user_id,
               COALESCE(lu.object, workos.user_as_event(su)::text) AS "user!",
               COALESCE(lg.object, workos.group_as_event(sg)::text) AS "group!"
        FROM workos.directory_group_memberships AS m
        LEFT JOIN workos.reconcile_listed AS lu
               ON lu.run_id = $1 AND lu.kind = 'user' AND lu.id = m.user_id AND lu.group_id = ''
        LEFT JOIN workos.directory_users AS su ON su.id = m.user_id
        LEFT JOIN workos.reconcile_listed AS lg
               ON lg.run_id = $1 AND lg.kind = 'group' AND lg.id = m.group_id AND lg.group_id = ''
        LEFT JOIN workos.directory_groups AS sg ON sg.id = m.group_id
        WHERE m.directory_id = $2 AND m.deleted_at IS NULL AND m.synced_at < $3
          AND (m.group_id, m.user_id) > ($4::text, $5::text)
          AND NOT EXISTS (SELECT 1 FROM workos.reconcile_listed AS l
                          WHERE l.run_id = $1 AND l.kind = 'member'
                            AND l.group_id = m.group_id AND l.id = m.user_id)
          AND (lu.object IS NOT NULL OR su.id IS NOT NULL)
          AND (lg.object IS NOT NULL OR sg.id IS NOT NULL)
        ORDER BY m.group_id, m.user_id LIMIT $6
        "#,
        run_id,
        directory_id,
        since,
        after.0,
        after.1,
        limit,
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(rows)
}
