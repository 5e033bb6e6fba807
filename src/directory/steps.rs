//! Deletions too large for one transaction, done in steps: a deleted directory's users, groups
//! and memberships (`workos.directory_deletions`, migration 0010), and a deleted group's
//! memberships when it has more than a step of them (`workos.group_deletions`, migration 0011).
//!
//! The batch that applies the deletion records its tombstone first, so every row written under
//! it afterwards is written deleted (`super::store`'s upserts read the tombstones); what is left
//! are the rows that were there, and a step walks the next few thousand of them in the order of
//! an index, moves those the deletion covers to its time, and records how far it got. A step is
//! a transaction of its own (the worker's, [`super::DirectoryHandler::step`]): it holds only its
//! own rows, and its commit queues only its own rows' change notifications, which every other
//! notifying commit (the receivers' inserts among them) waits for. A step locks its directory
//! as a batch that deletes does, and then the deletion's row (`FOR UPDATE SKIP LOCKED`), so no
//! batch writes under the directory while it walks, and two workers never walk one deletion
//! at once.
//!
//! Every step's statements run with sequential scans off: the planner rates a range of keys as
//! a third of the table, and read all of a large directory's or group's memberships on every
//! step (BENCHMARKS.md, "Scale").

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use super::plan::Tombstone;
use super::store::{columns, lock_directories};

/// The table a directory deletion's next step walks (`workos.directory_deletions.phase`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Users,
    Groups,
    Memberships,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Users => "users",
            Phase::Groups => "groups",
            Phase::Memberships => "memberships",
        }
    }

    fn from_name(name: &str) -> Phase {
        match name {
            "groups" => Phase::Groups,
            "memberships" => Phase::Memberships,
            _ => Phase::Users,
        }
    }
}

/// A directory's deletion under way (`workos.directory_deletions`): its rows are moved to
/// `deleted_at` a step at a time, each table in the order of its directory index, from just
/// after the last row walked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DirectoryDeletion {
    pub(crate) directory_id: String,
    pub(crate) deleted_at: DateTime<Utc>,
    pub(crate) phase: Phase,
    /// The last row walked in `phase`: users `(COALESCE(created_at, 'epoch'), id)`, groups
    /// `id`, memberships `(group_id, user_id)`; `None` before the first.
    after: Option<(Option<DateTime<Utc>>, String, Option<String>)>,
}

/// What a deletion step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Step {
    /// Rows it deleted (or moved to an earlier deletion time).
    pub(crate) changed: u64,
    /// Whether the deletion is done: every row it covers is deleted.
    pub(crate) done: bool,
}

/// Records the deletions under way for directory tombstones that are new or moved earlier,
/// from the start of the walk (an earlier time must reach the rows walked already).
pub(crate) async fn start_deletions(
    conn: &mut PgConnection,
    directories: &[Tombstone],
) -> Result<(), sqlx::Error> {
    if directories.is_empty() {
        return Ok(());
    }
    let (ids, times, _) = columns(directories);
    sqlx::query!(
        r#"
        INSERT INTO workos.directory_deletions AS d (directory_id, deleted_at)
        SELECT * FROM UNNEST($1::text[], $2::timestamptz[])
        ON CONFLICT (directory_id) DO UPDATE SET
            deleted_at = EXCLUDED.deleted_at, phase = 'users', after_at = NULL,
            after_id = NULL, after_user_id = NULL, started_at = now()
        "#,
        &ids as &[&str],
        &times,
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// The directory of the oldest deletion under way, if any; nothing is locked.
pub(crate) async fn oldest_deletion(
    conn: &mut PgConnection,
) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar!(
        "SELECT directory_id FROM workos.directory_deletions ORDER BY started_at LIMIT 1"
    )
    .fetch_optional(conn)
    .await
}

/// The deletion under way of `directory_id`, locked until this transaction ends together with
/// the directory ([`lock_directory`]); `None` when there is none (any more) or another
/// transaction is stepping it. A batch finds the one it recorded itself. The transaction holds
/// the directory's lock either way.
pub(crate) async fn locked_deletion(
    conn: &mut PgConnection,
    directory_id: &str,
) -> Result<Option<DirectoryDeletion>, sqlx::Error> {
    lock_directory(conn, directory_id).await?;
    let row = sqlx::query!(
        r#"
        SELECT directory_id, deleted_at, phase, after_at, after_id, after_user_id
        FROM workos.directory_deletions
        WHERE directory_id = $1
        FOR UPDATE SKIP LOCKED
        "#,
        directory_id,
    )
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|row| DirectoryDeletion {
        directory_id: row.directory_id,
        deleted_at: row.deleted_at,
        phase: Phase::from_name(&row.phase),
        after: row.after_id.map(|id| (row.after_at, id, row.after_user_id)),
    }))
}

/// Locks the directory whose rows a step is about to walk, as a batch that deletes under it
/// locks it ([`super::store::lock_directories`]), and before the deletion's row, as a batch
/// does before it records a deletion: so the step holds nothing while it waits, and while it
/// walks nobody else writes under the directory. Without it a batch could lock some of the
/// rows of the step's range (its upserts, a user's cascade) while the step held others and the
/// deletion's row, and each then wait for the other, until Postgres broke the deadlock by
/// failing one of them.
async fn lock_directory(conn: &mut PgConnection, directory_id: &str) -> Result<(), sqlx::Error> {
    lock_directories(conn, &[directory_id.to_owned()], &[true]).await
}

/// Walks the next `limit` rows of the deletion's table, moves those that are live or deleted
/// later to its time (each announced on `channel`, from Postgres as the cascades do), and
/// records how far it got: the next table once this one is walked to its end, and the end of
/// the deletion after the memberships.
///
/// A step is two statements on the table's directory index: the key of the `limit`-th row
/// after the last one walked, then one update of the range up to it (to the end of the
/// directory when fewer rows are left). Joining the walked rows back to the table instead let
/// the planner hash the whole table on every step. Sequential scans are off meanwhile: the
/// planner rates a range of keys as a third of the rows, and read all of a large directory's
/// memberships on every step (BENCHMARKS.md, "Scale").
pub(crate) async fn deletion_step(
    conn: &mut PgConnection,
    channel: &str,
    deletion: &mut DirectoryDeletion,
    limit: i64,
) -> Result<Step, sqlx::Error> {
    let was = seqscan_off(conn).await?;
    let step = walk(conn, channel, deletion, limit).await?;
    restore_seqscan(conn, was).await?;
    Ok(step)
}

async fn walk(
    conn: &mut PgConnection,
    channel: &str,
    deletion: &mut DirectoryDeletion,
    limit: i64,
) -> Result<Step, sqlx::Error> {
    let directory_id = deletion.directory_id.as_str();
    let at = deletion.deleted_at;
    // Before the first row, the walk starts after `-infinity` and the empty id: ids are never
    // empty.
    let (after_at, after_id, after_user_id) = match &deletion.after {
        Some((after_at, id, user_id)) => {
            (*after_at, id.clone(), user_id.clone().unwrap_or_default())
        }
        None => (None, String::new(), String::new()),
    };
    let (changed, last) = match deletion.phase {
        Phase::Users => {
            let bound = sqlx::query!(
                r#"
                SELECT COALESCE(created_at, 'epoch'::timestamptz) AS "at!", id
                FROM workos.directory_users
                WHERE directory_id = $1
                  AND (COALESCE(created_at, 'epoch'::timestamptz), id COLLATE "C")
                      > (COALESCE($2::timestamptz, '-infinity'), $3::text)
                ORDER BY COALESCE(created_at, 'epoch'::timestamptz), id COLLATE "C"
                OFFSET $4 LIMIT 1
                "#,
                directory_id,
                after_at as Option<DateTime<Utc>>,
                after_id,
                limit - 1,
            )
            .fetch_optional(&mut *conn)
            .await?;
            // Without a bound, the range runs to the directory's end: past every key, as no
            // stored time is `infinity` (chrono has none to store).
            let (upper_at, upper_id) = match &bound {
                Some(bound) => (Some(bound.at), bound.id.as_str()),
                None => (None, ""),
            };
            let changed = sqlx::query_scalar!(
                r#"
                WITH changed AS (
                    UPDATE workos.directory_users AS r SET deleted_at = $2, synced_at = now()
                    WHERE r.directory_id = $1
                      AND (COALESCE(r.created_at, 'epoch'::timestamptz), r.id COLLATE "C")
                          > (COALESCE($3::timestamptz, '-infinity'), $4::text)
                      AND (COALESCE(r.created_at, 'epoch'::timestamptz), r.id COLLATE "C")
                          <= (COALESCE($5::timestamptz, 'infinity'), $6::text)
                      AND (r.deleted_at IS NULL OR r.deleted_at > $2)
                    RETURNING pg_notify($7,
                        workos.deletion_notice('directory_users', r.directory_id, r.id))
                )
                SELECT count(*) AS "changed!" FROM changed
                "#,
                directory_id,
                at,
                after_at as Option<DateTime<Utc>>,
                after_id,
                upper_at as Option<DateTime<Utc>>,
                upper_id,
                channel,
            )
            .fetch_one(&mut *conn)
            .await?;
            (changed, bound.map(|bound| (Some(bound.at), bound.id, None)))
        }
        Phase::Groups => {
            let bound = sqlx::query_scalar!(
                r#"
                SELECT id FROM workos.directory_groups
                WHERE directory_id = $1 AND id COLLATE "C" > $2::text
                ORDER BY id COLLATE "C"
                OFFSET $3 LIMIT 1
                "#,
                directory_id,
                after_id,
                limit - 1,
            )
            .fetch_optional(&mut *conn)
            .await?;
            let changed = sqlx::query_scalar!(
                r#"
                WITH changed AS (
                    UPDATE workos.directory_groups AS r SET deleted_at = $2, synced_at = now()
                    WHERE r.directory_id = $1 AND r.id COLLATE "C" > $3::text
                      AND r.id COLLATE "C" <= COALESCE($4::text, chr(1114111))
                      AND (r.deleted_at IS NULL OR r.deleted_at > $2)
                    RETURNING pg_notify($5,
                        workos.deletion_notice('directory_groups', r.directory_id, r.id))
                )
                SELECT count(*) AS "changed!" FROM changed
                "#,
                directory_id,
                at,
                after_id,
                bound.as_deref(),
                channel,
            )
            .fetch_one(&mut *conn)
            .await?;
            (changed, bound.map(|id| (None, id, None)))
        }
        Phase::Memberships => {
            let bound = sqlx::query!(
                r#"
                SELECT group_id, user_id FROM workos.directory_group_memberships
                WHERE directory_id = $1
                  AND (group_id COLLATE "C", user_id COLLATE "C") > ($2::text, $3::text)
                ORDER BY group_id COLLATE "C", user_id COLLATE "C"
                OFFSET $4 LIMIT 1
                "#,
                directory_id,
                after_id,
                after_user_id,
                limit - 1,
            )
            .fetch_optional(&mut *conn)
            .await?;
            // Without a bound, the range runs to the directory's end: past every key, as the
            // highest code point (U+10FFFF, a noncharacter) begins no id.
            let (upper_group, upper_user) = match &bound {
                Some(bound) => (Some(bound.group_id.as_str()), bound.user_id.as_str()),
                None => (None, ""),
            };
            let changed = sqlx::query_scalar!(
                r#"
                WITH changed AS (
                    UPDATE workos.directory_group_memberships AS r
                    SET deleted_at = $2, synced_at = now()
                    WHERE r.directory_id = $1
                      AND (r.group_id COLLATE "C", r.user_id COLLATE "C") > ($3::text, $4::text)
                      AND (r.group_id COLLATE "C", r.user_id COLLATE "C")
                          <= (COALESCE($5::text, chr(1114111)), $6::text)
                      AND (r.deleted_at IS NULL OR r.deleted_at > $2)
                    RETURNING pg_notify($7, workos.membership_deletion_notice(
                        r.directory_id, r.group_id, r.user_id))
                )
                SELECT count(*) AS "changed!" FROM changed
                "#,
                directory_id,
                at,
                after_id,
                after_user_id,
                upper_group,
                upper_user,
                channel,
            )
            .fetch_one(&mut *conn)
            .await?;
            (
                changed,
                bound.map(|bound| (None, bound.group_id, Some(bound.user_id))),
            )
        }
    };
    let changed = changed as u64;
    if last.is_some() {
        deletion.after = last;
    } else {
        // The table is walked to its end.
        deletion.after = None;
        match deletion.phase {
            Phase::Users => deletion.phase = Phase::Groups,
            Phase::Groups => deletion.phase = Phase::Memberships,
            Phase::Memberships => {
                sqlx::query!(
                    "DELETE FROM workos.directory_deletions WHERE directory_id = $1",
                    directory_id,
                )
                .execute(&mut *conn)
                .await?;
                return Ok(Step {
                    changed,
                    done: true,
                });
            }
        }
    }
    let (after_at, after_id, after_user_id) = match &deletion.after {
        Some((after_at, id, user_id)) => (*after_at, Some(id.as_str()), user_id.as_deref()),
        None => (None, None, None),
    };
    sqlx::query!(
        r#"
        UPDATE workos.directory_deletions
        SET phase = $2, after_at = $3, after_id = $4, after_user_id = $5
        WHERE directory_id = $1
        "#,
        directory_id,
        deletion.phase.name(),
        after_at,
        after_id,
        after_user_id,
    )
    .execute(&mut *conn)
    .await?;
    Ok(Step {
        changed,
        done: false,
    })
}

/// Turns sequential scans off for the rest of the transaction, and returns the setting it had.
async fn seqscan_off(conn: &mut PgConnection) -> Result<String, sqlx::Error> {
    Ok(sqlx::query!(
        r#"SELECT current_setting('enable_seqscan') AS "was!",
                  set_config('enable_seqscan', 'off', true) AS "off!""#
    )
    .fetch_one(conn)
    .await?
    .was)
}

/// Gives sequential scans back the setting [`seqscan_off`] returned (a step may run inside
/// the batch that started its deletion, whose other statements must plan as before).
async fn restore_seqscan(conn: &mut PgConnection, was: String) -> Result<(), sqlx::Error> {
    sqlx::query!("SELECT set_config('enable_seqscan', $1, true)", was)
        .fetch_one(conn)
        .await?;
    Ok(())
}

/// Of the groups of `tombstones`, those with more than `limit` memberships (live or deleted):
/// their memberships go in steps ([`start_group_deletions`]), the others' in the batch.
pub(crate) async fn large_groups(
    conn: &mut PgConnection,
    tombstones: &[Tombstone],
    limit: i64,
) -> Result<Vec<String>, sqlx::Error> {
    if tombstones.is_empty() {
        return Ok(Vec::new());
    }
    let (ids, _, _) = columns(tombstones);
    sqlx::query_scalar!(
        r#"
        SELECT t.id AS "id!" FROM unnest($1::text[]) AS t(id)
        WHERE EXISTS (SELECT FROM workos.directory_group_memberships AS m
                      WHERE m.group_id = t.id ORDER BY m.user_id OFFSET $2 LIMIT 1)
        "#,
        &ids as &[&str],
        limit,
    )
    .fetch_all(conn)
    .await
}

/// A group's deletion under way (`workos.group_deletions`): its memberships decided at or
/// before `cascades_until` are moved to `deleted_at` a step at a time, in the order of the
/// memberships' primary key, from just after the last member walked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GroupDeletion {
    pub(crate) group_id: String,
    deleted_at: DateTime<Utc>,
    /// `None`: every membership (`infinity`).
    cascades_until: Option<DateTime<Utc>>,
    /// The `user_id` of the last membership walked; `None` before the first.
    after_user_id: Option<String>,
}

/// Records the deletions under way of group tombstones that are new or changed (an earlier
/// time, a further reach), from the start of the walk: the change must reach the memberships
/// walked already.
pub(crate) async fn start_group_deletions(
    conn: &mut PgConnection,
    groups: &[&Tombstone],
) -> Result<(), sqlx::Error> {
    if groups.is_empty() {
        return Ok(());
    }
    let ids: Vec<&str> = groups.iter().map(|group| group.id.as_str()).collect();
    let times: Vec<DateTime<Utc>> = groups.iter().map(|group| group.deleted_at).collect();
    let reaches: Vec<Option<DateTime<Utc>>> =
        groups.iter().map(|group| group.cascades_until).collect();
    sqlx::query!(
        r#"
        INSERT INTO workos.group_deletions AS d (group_id, deleted_at, cascades_until)
        SELECT x.id, x.deleted_at, coalesce(x.reach, 'infinity')
        FROM UNNEST($1::text[], $2::timestamptz[], $3::timestamptz[]) AS x(id, deleted_at, reach)
        ON CONFLICT (group_id) DO UPDATE SET
            deleted_at = EXCLUDED.deleted_at, cascades_until = EXCLUDED.cascades_until,
            after_user_id = NULL, started_at = now()
        "#,
        &ids as &[&str],
        &times,
        &reaches as &[Option<DateTime<Utc>>],
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// The oldest group deletion under way, if any, and the group's directory (that of its
/// memberships: a group deleted in steps has thousands); nothing is locked.
pub(crate) async fn oldest_group_deletion(
    conn: &mut PgConnection,
) -> Result<Option<(String, Option<String>)>, sqlx::Error> {
    let oldest = sqlx::query!(
        r#"
        SELECT d.group_id,
               (SELECT m.directory_id FROM workos.directory_group_memberships AS m
                WHERE m.group_id = d.group_id LIMIT 1) AS directory_id
        FROM workos.group_deletions AS d
        ORDER BY d.started_at
        LIMIT 1
        "#
    )
    .fetch_optional(conn)
    .await?;
    Ok(oldest.map(|oldest| (oldest.group_id, oldest.directory_id)))
}

/// The deletion under way of `group_id`, locked until this transaction ends together with the
/// group's `directory_id` ([`lock_directory`]); `None` when there is none (any more) or another
/// transaction is stepping it. The transaction holds the directory's lock either way.
pub(crate) async fn locked_group_deletion(
    conn: &mut PgConnection,
    group_id: &str,
    directory_id: Option<&str>,
) -> Result<Option<GroupDeletion>, sqlx::Error> {
    if let Some(directory_id) = directory_id {
        lock_directory(conn, directory_id).await?;
    }
    let row = sqlx::query!(
        r#"
        SELECT group_id, deleted_at, NULLIF(cascades_until, 'infinity') AS cascades_until,
               after_user_id
        FROM workos.group_deletions
        WHERE group_id = $1
        FOR UPDATE SKIP LOCKED
        "#,
        group_id,
    )
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|row| GroupDeletion {
        group_id: row.group_id,
        deleted_at: row.deleted_at,
        cascades_until: row.cascades_until,
        after_user_id: row.after_user_id,
    }))
}

/// Walks the group's next `limit` memberships, moves those it covers that are live or deleted
/// later to its time (each announced on `channel`, from Postgres as the cascades do), and
/// records how far it got, or ends the deletion once the group is walked to its end.
///
/// Two statements on the primary key `(group_id, user_id)`: the count and last member of the
/// next `limit` (which bound the range even at the group's end, whatever the ids' collation),
/// then one update of that range.
pub(crate) async fn group_deletion_step(
    conn: &mut PgConnection,
    channel: &str,
    deletion: &mut GroupDeletion,
    limit: i64,
) -> Result<Step, sqlx::Error> {
    let was = seqscan_off(conn).await?;
    let step = walk_group(conn, channel, deletion, limit).await?;
    restore_seqscan(conn, was).await?;
    Ok(step)
}

async fn walk_group(
    conn: &mut PgConnection,
    channel: &str,
    deletion: &mut GroupDeletion,
    limit: i64,
) -> Result<Step, sqlx::Error> {
    let group_id = deletion.group_id.as_str();
    // Before the first member, the walk starts after the empty id: ids are never empty.
    let after = deletion.after_user_id.clone().unwrap_or_default();
    let range = sqlx::query!(
        r#"
        SELECT count(*) AS "walked!", max(user_id) AS last
        FROM (SELECT user_id FROM workos.directory_group_memberships
              WHERE group_id = $1 AND user_id > $2
              ORDER BY user_id LIMIT $3) AS walk
        "#,
        group_id,
        after,
        limit,
    )
    .fetch_one(&mut *conn)
    .await?;
    let mut changed = 0;
    if let Some(last) = &range.last {
        changed = sqlx::query_scalar!(
            r#"
            WITH changed AS (
                UPDATE workos.directory_group_memberships AS r
                SET deleted_at = $2, synced_at = now()
                WHERE r.group_id = $1 AND r.user_id > $3 AND r.user_id <= $4
                  AND r.updated_at <= coalesce($5::timestamptz, 'infinity')
                  AND (r.deleted_at IS NULL OR r.deleted_at > $2)
                RETURNING pg_notify($6, workos.membership_deletion_notice(
                    r.directory_id, r.group_id, r.user_id))
            )
            SELECT count(*) AS "changed!" FROM changed
            "#,
            group_id,
            deletion.deleted_at,
            after,
            last,
            deletion.cascades_until as Option<DateTime<Utc>>,
            channel,
        )
        .fetch_one(&mut *conn)
        .await? as u64;
    }
    if range.walked < limit {
        sqlx::query!(
            "DELETE FROM workos.group_deletions WHERE group_id = $1",
            group_id
        )
        .execute(&mut *conn)
        .await?;
        return Ok(Step {
            changed,
            done: true,
        });
    }
    deletion.after_user_id = range.last;
    sqlx::query!(
        "UPDATE workos.group_deletions SET after_user_id = $2 WHERE group_id = $1",
        group_id,
        deletion.after_user_id,
    )
    .execute(&mut *conn)
    .await?;
    Ok(Step {
        changed,
        done: false,
    })
}
