//! All SQL for the synced directory tables (`workos.directories`, `directory_users`,
//! `directory_groups`, `directory_group_memberships`; see `docs/SCHEMA.md`).
//!
//! Every function takes a whole batch and runs one statement (the cascades one per tombstone
//! source), so a batch of a thousand events costs a handful of round trips. Rows are passed as
//! one array per column and read with `UNNEST`: Postgres decodes binary arrays for much less
//! than it parses the same rows out of a JSON document (BENCHMARKS.md). The `jsonb` columns
//! travel as JSON text, and the `roles` lists, which a two-dimensional array cannot hold when
//! their lengths differ, as array literals. Each upsert returns the rows it actually changed,
//! for the change notifications; a cascade, which may delete a whole directory, announces its
//! rows in Postgres and returns only how many it changed, so that the worker's memory does not
//! grow with the directory.
//!
//! Concurrency: several workers may apply batches at once. The ordering key is compared in the
//! `ON CONFLICT … WHERE` clause against the row as committed, so concurrent upserts of one row
//! are safe on their own. Tombstones are not: a cascade does not see a row another transaction
//! is inserting, and that insert does not see the uncommitted tombstone. Batches therefore lock
//! each directory they write under (see [`lock_directories`]).

use chrono::{DateTime, Utc};
use sqlx::{Executor, PgConnection};

use crate::db;

use super::model::{DirectoryRow, EventKind, GroupRow, MembershipRow, RawJson, UserRow};
use super::plan::Tombstone;

/// The first key of the advisory locks taken on directories, to keep them apart from other
/// advisory locks in the database (the second key is a hash of the directory id).
const DIRECTORY_LOCK_CLASS: i32 = 0x6473_796e; // "dsyn"

/// A row that a statement inserted or changed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum ChangedRow {
    Directory {
        id: String,
    },
    User {
        id: String,
        directory_id: String,
    },
    Group {
        id: String,
        directory_id: String,
    },
    Membership {
        group_id: String,
        user_id: String,
        directory_id: String,
    },
}

/// A changed row and whether it is deleted now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Change {
    pub(crate) row: ChangedRow,
    pub(crate) deleted: bool,
}

/// Locks the directories a batch writes under until the transaction ends: exclusively where the
/// batch deletes something (its tombstones and cascades then see every row committed before,
/// and no one writes under the directory meanwhile), shared elsewhere (batches that only
/// upsert run side by side). Locks are taken in one statement in a fixed order, so two batches
/// cannot deadlock on them.
pub(crate) async fn lock_directories(
    conn: &mut PgConnection,
    directory_ids: &[String],
    exclusive: &[bool],
) -> Result<(), sqlx::Error> {
    sqlx::query_scalar!(
        r#"
        SELECT count(*) AS "locked!"
        FROM (
            SELECT CASE
                WHEN wanted.exclusive THEN pg_advisory_xact_lock($1, wanted.key)
                ELSE pg_advisory_xact_lock_shared($1, wanted.key)
            END
            FROM (
                SELECT hashtext(x.directory_id) AS key, bool_or(x.exclusive) AS exclusive
                FROM unnest($2::text[], $3::bool[]) AS x(directory_id, exclusive)
                GROUP BY 1
                ORDER BY 1
            ) AS wanted
        ) AS locked
        "#,
        DIRECTORY_LOCK_CLASS,
        directory_ids,
        exclusive,
    )
    .fetch_one(conn)
    .await?;
    Ok(())
}

/// Upserts directory snapshots (one per id) where their key beats the stored row's. A deleted
/// directory stays deleted, at its tombstone's time, whatever snapshot wins.
pub(crate) async fn upsert_directories(
    conn: &mut PgConnection,
    rows: &[DirectoryRow],
) -> Result<Vec<Change>, sqlx::Error> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let ids = column(rows, |row| row.id.as_str());
    let organization_ids = column(rows, |row| row.organization_id.as_deref());
    let names = column(rows, |row| row.name.as_deref());
    let types = column(rows, |row| row.directory_type.as_deref());
    let states = column(rows, |row| row.state.as_deref());
    let external_keys = column(rows, |row| row.external_key.as_deref());
    let domains = column(rows, |row| json_text(&row.domains));
    let created_ats = column(rows, |row| row.created_at);
    let updated_ats = column(rows, |row| row.updated_at);
    let last_event_ids = column(rows, |row| row.last_event_id.as_str());
    let last_events = column(rows, |row| row.last_event.event_type());
    let changed = sqlx::query!(
        r#"
        INSERT INTO workos.directories AS d (
            id, organization_id, name, type, state, external_key, domains,
            created_at, updated_at, deleted_at, last_event_id, last_event
        )
        SELECT x.id, x.organization_id, x.name, x.type, x.state, x.external_key,
               x.domains::jsonb, x.created_at, x.updated_at,
               (SELECT t.deleted_at FROM workos.tombstones t
                WHERE t.kind = 'directory' AND t.id = x.id),
               x.last_event_id, x.last_event
        FROM UNNEST(
            $1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
            $8::timestamptz[], $9::timestamptz[], $10::text[], $11::text[]
        ) AS x(
            id, organization_id, name, type, state, external_key, domains,
            created_at, updated_at, last_event_id, last_event
        )
        ON CONFLICT (id) DO UPDATE SET
            organization_id = EXCLUDED.organization_id,
            name = EXCLUDED.name,
            type = EXCLUDED.type,
            state = EXCLUDED.state,
            external_key = EXCLUDED.external_key,
            domains = EXCLUDED.domains,
            created_at = EXCLUDED.created_at,
            updated_at = EXCLUDED.updated_at,
            deleted_at = EXCLUDED.deleted_at,
            last_event_id = EXCLUDED.last_event_id,
            last_event = EXCLUDED.last_event,
            synced_at = now()
        WHERE (EXCLUDED.updated_at, workos.event_rank(EXCLUDED.last_event), EXCLUDED.last_event_id)
            > (d.updated_at, workos.event_rank(d.last_event), d.last_event_id)
        RETURNING d.id, d.deleted_at
        "#,
        &ids as &[&str],
        &organization_ids as &[Option<&str>],
        &names as &[Option<&str>],
        &types as &[Option<&str>],
        &states as &[Option<&str>],
        &external_keys as &[Option<&str>],
        &domains as &[Option<String>],
        &created_ats as &[Option<DateTime<Utc>>],
        &updated_ats,
        &last_event_ids as &[&str],
        &last_events as &[&str],
    )
    .fetch_all(conn)
    .await?;
    Ok(changed
        .into_iter()
        .map(|row| Change {
            row: ChangedRow::Directory { id: row.id },
            deleted: row.deleted_at.is_some(),
        })
        .collect())
}

/// Upserts user snapshots (one per id) where their key beats the stored row's. A deletion is
/// written at the user's tombstone's time (the earliest of its deletions); a user of a deleted
/// directory is written deleted whatever its snapshot, at the earlier of the two tombstones:
/// the cascade would have deleted it, had the user been there first.
///
/// A batch of `dsync.user.created` snapshots only (a directory's first sync) is first
/// inserted without the conflict rule, in a savepoint: a plain insert skips the speculative
/// insertion that `ON CONFLICT` makes of every row (the check for a conflict, a lock and a
/// second WAL record each). If one of them is stored already (a redelivery, a replay), the
/// insert fails on the primary key, is rolled back, and the batch is upserted.
pub(crate) async fn upsert_users(
    conn: &mut PgConnection,
    rows: &[UserRow],
) -> Result<Vec<Change>, sqlx::Error> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let ids = column(rows, |row| row.id.as_str());
    let directory_ids = column(rows, |row| row.directory_id.as_str());
    let organization_ids = column(rows, |row| row.organization_id.as_deref());
    let idp_ids = column(rows, |row| row.idp_id.as_deref());
    let emails = column(rows, |row| row.email.as_deref());
    let first_names = column(rows, |row| row.first_name.as_deref());
    let last_names = column(rows, |row| row.last_name.as_deref());
    let names = column(rows, |row| row.name.as_deref());
    let usernames = column(rows, |row| row.username.as_deref());
    let job_titles = column(rows, |row| row.job_title.as_deref());
    let states = column(rows, |row| row.state.as_deref());
    let email_lists = column(rows, |row| row.emails.as_ref().map(RawJson::text));
    let roles = column(rows, |row| row.role.as_deref());
    let role_lists = column(rows, |row| row.roles.as_deref().map(text_array_literal));
    let custom_attributes = column(rows, |row| {
        row.custom_attributes.as_ref().map(RawJson::text)
    });
    let raw_attributes = column(rows, |row| row.raw_attributes.as_ref().map(RawJson::text));
    let created_ats = column(rows, |row| row.created_at);
    let updated_ats = column(rows, |row| row.updated_at);
    let deleted = column(rows, |row| row.deletion.is_some());
    let last_event_ids = column(rows, |row| row.last_event_id.as_str());
    let last_events = column(rows, |row| row.last_event.event_type());
    // One statement, with or without the conflict rule: the rows' `INSERT` is the same.
    macro_rules! insert_users {
        ($on_conflict:literal) => {
            sqlx::query!(
                r#"
        INSERT INTO workos.directory_users AS u (
            id, directory_id, organization_id, idp_id, email, first_name, last_name, name,
            username, job_title, state, emails, role, roles, custom_attributes, raw_attributes,
            created_at, updated_at, deleted_at, last_event_id, last_event
        )
        SELECT x.id, x.directory_id, x.organization_id, x.idp_id, x.email, x.first_name,
               x.last_name, x.name, x.username, x.job_title, x.state, x.emails::jsonb, x.role,
               x.roles::text[],
               x.custom_attributes::jsonb, x.raw_attributes::jsonb, x.created_at, x.updated_at,
               LEAST(
                   (SELECT t.deleted_at FROM workos.tombstones t
                    WHERE x.deleted AND t.kind = 'user' AND t.id = x.id),
                   (SELECT t.deleted_at FROM workos.tombstones t
                    WHERE t.kind = 'directory' AND t.id = x.directory_id)
               ),
               x.last_event_id, x.last_event
        FROM UNNEST(
            $1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
            $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::text[],
            $14::text[], $15::text[], $16::text[], $17::timestamptz[], $18::timestamptz[],
            $19::bool[], $20::text[], $21::text[]
        ) AS x(
            id, directory_id, organization_id, idp_id, email, first_name, last_name, name,
            username, job_title, state, emails, role, roles, custom_attributes, raw_attributes,
            created_at, updated_at, deleted, last_event_id, last_event
        )
        "# + $on_conflict + r#"
        RETURNING u.id, u.directory_id, u.deleted_at
        "#,
                &ids as &[&str],
                &directory_ids as &[&str],
                &organization_ids as &[Option<&str>],
                &idp_ids as &[Option<&str>],
                &emails as &[Option<&str>],
                &first_names as &[Option<&str>],
                &last_names as &[Option<&str>],
                &names as &[Option<&str>],
                &usernames as &[Option<&str>],
                &job_titles as &[Option<&str>],
                &states as &[Option<&str>],
                &email_lists as &[Option<&str>],
                &roles as &[Option<&str>],
                &role_lists as &[Option<String>],
                &custom_attributes as &[Option<&str>],
                &raw_attributes as &[Option<&str>],
                &created_ats as &[Option<DateTime<Utc>>],
                &updated_ats,
                &deleted,
                &last_event_ids as &[&str],
                &last_events as &[&str],
            )
            .fetch_all(&mut *conn)
            .await
            .map(|rows| {
                rows.into_iter()
                    .map(|row| Change {
                        row: ChangedRow::User {
                            id: row.id,
                            directory_id: row.directory_id,
                        },
                        deleted: row.deleted_at.is_some(),
                    })
                    .collect::<Vec<_>>()
            })
        };
    }
    if rows
        .iter()
        .all(|row| row.last_event == EventKind::UserCreated)
    {
        conn.execute("SAVEPOINT new_users").await?;
        match insert_users!("") {
            Ok(changed) => {
                conn.execute("RELEASE SAVEPOINT new_users").await?;
                return Ok(changed);
            }
            Err(error) if db::is_unique_violation(&error) => {
                conn.execute("ROLLBACK TO SAVEPOINT new_users; RELEASE SAVEPOINT new_users")
                    .await?;
            }
            Err(error) => return Err(error),
        }
    }
    insert_users!(
        r#"
        ON CONFLICT (id) DO UPDATE SET
            directory_id = EXCLUDED.directory_id,
            organization_id = EXCLUDED.organization_id,
            idp_id = EXCLUDED.idp_id,
            email = EXCLUDED.email,
            first_name = EXCLUDED.first_name,
            last_name = EXCLUDED.last_name,
            name = EXCLUDED.name,
            username = EXCLUDED.username,
            job_title = EXCLUDED.job_title,
            state = EXCLUDED.state,
            emails = EXCLUDED.emails,
            role = EXCLUDED.role,
            roles = EXCLUDED.roles,
            custom_attributes = EXCLUDED.custom_attributes,
            raw_attributes = EXCLUDED.raw_attributes,
            created_at = EXCLUDED.created_at,
            updated_at = EXCLUDED.updated_at,
            deleted_at = EXCLUDED.deleted_at,
            last_event_id = EXCLUDED.last_event_id,
            last_event = EXCLUDED.last_event,
            synced_at = now()
        WHERE (EXCLUDED.updated_at, workos.event_rank(EXCLUDED.last_event), EXCLUDED.last_event_id)
            > (u.updated_at, workos.event_rank(u.last_event), u.last_event_id)
"#
    )
}

/// Upserts group snapshots (one per id), like [`upsert_users`].
pub(crate) async fn upsert_groups(
    conn: &mut PgConnection,
    rows: &[GroupRow],
) -> Result<Vec<Change>, sqlx::Error> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let ids = column(rows, |row| row.id.as_str());
    let directory_ids = column(rows, |row| row.directory_id.as_str());
    let organization_ids = column(rows, |row| row.organization_id.as_deref());
    let idp_ids = column(rows, |row| row.idp_id.as_deref());
    let names = column(rows, |row| row.name.as_deref());
    let raw_attributes = column(rows, |row| row.raw_attributes.as_ref().map(RawJson::text));
    let created_ats = column(rows, |row| row.created_at);
    let updated_ats = column(rows, |row| row.updated_at);
    let deleted = column(rows, |row| row.deletion.is_some());
    let last_event_ids = column(rows, |row| row.last_event_id.as_str());
    let last_events = column(rows, |row| row.last_event.event_type());
    let changed = sqlx::query!(
        r#"
        INSERT INTO workos.directory_groups AS g (
            id, directory_id, organization_id, idp_id, name, raw_attributes,
            created_at, updated_at, deleted_at, last_event_id, last_event
        )
        SELECT x.id, x.directory_id, x.organization_id, x.idp_id, x.name, x.raw_attributes::jsonb,
               x.created_at, x.updated_at,
               LEAST(
                   (SELECT t.deleted_at FROM workos.tombstones t
                    WHERE x.deleted AND t.kind = 'group' AND t.id = x.id),
                   (SELECT t.deleted_at FROM workos.tombstones t
                    WHERE t.kind = 'directory' AND t.id = x.directory_id)
               ),
               x.last_event_id, x.last_event
        FROM UNNEST(
            $1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
            $7::timestamptz[], $8::timestamptz[], $9::bool[], $10::text[], $11::text[]
        ) AS x(
            id, directory_id, organization_id, idp_id, name, raw_attributes,
            created_at, updated_at, deleted, last_event_id, last_event
        )
        ON CONFLICT (id) DO UPDATE SET
            directory_id = EXCLUDED.directory_id,
            organization_id = EXCLUDED.organization_id,
            idp_id = EXCLUDED.idp_id,
            name = EXCLUDED.name,
            raw_attributes = EXCLUDED.raw_attributes,
            created_at = EXCLUDED.created_at,
            updated_at = EXCLUDED.updated_at,
            deleted_at = EXCLUDED.deleted_at,
            last_event_id = EXCLUDED.last_event_id,
            last_event = EXCLUDED.last_event,
            synced_at = now()
        WHERE (EXCLUDED.updated_at, workos.event_rank(EXCLUDED.last_event), EXCLUDED.last_event_id)
            > (g.updated_at, workos.event_rank(g.last_event), g.last_event_id)
        RETURNING g.id, g.directory_id, g.deleted_at
        "#,
        &ids as &[&str],
        &directory_ids as &[&str],
        &organization_ids as &[Option<&str>],
        &idp_ids as &[Option<&str>],
        &names as &[Option<&str>],
        &raw_attributes as &[Option<&str>],
        &created_ats as &[Option<DateTime<Utc>>],
        &updated_ats,
        &deleted,
        &last_event_ids as &[&str],
        &last_events as &[&str],
    )
    .fetch_all(conn)
    .await?;
    Ok(changed
        .into_iter()
        .map(|row| Change {
            row: ChangedRow::Group {
                id: row.id,
                directory_id: row.directory_id,
            },
            deleted: row.deleted_at.is_some(),
        })
        .collect())
}

/// Upserts membership decisions (one per pair) where their key `(updated_at, event id)` beats
/// the stored row's. A membership is written deleted at the earliest tombstone that covers it:
/// its directory's, or its user's or group's if the membership was decided at or before the
/// deletion (see [`Tombstone`]).
pub(crate) async fn upsert_memberships(
    conn: &mut PgConnection,
    rows: &[MembershipRow],
) -> Result<Vec<Change>, sqlx::Error> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let group_ids = column(rows, |row| row.group_id.as_str());
    let user_ids = column(rows, |row| row.user_id.as_str());
    let directory_ids = column(rows, |row| row.directory_id.as_str());
    let organization_ids = column(rows, |row| row.organization_id.as_deref());
    let updated_ats = column(rows, |row| row.updated_at);
    let deleted_ats = column(rows, |row| row.deleted_at);
    let last_event_ids = column(rows, |row| row.last_event_id.as_str());
    let last_events = column(rows, |row| row.last_event.event_type());
    let changed = sqlx::query!(
        r#"
        INSERT INTO workos.directory_group_memberships AS m (
            group_id, user_id, directory_id, organization_id, updated_at, deleted_at,
            last_event_id, last_event
        )
        SELECT x.group_id, x.user_id, x.directory_id, x.organization_id, x.updated_at,
               LEAST(
                   x.deleted_at,
                   (SELECT t.deleted_at FROM workos.tombstones t
                    WHERE t.kind = 'user' AND t.id = x.user_id
                      AND x.updated_at <= t.cascades_until),
                   (SELECT t.deleted_at FROM workos.tombstones t
                    WHERE t.kind = 'group' AND t.id = x.group_id
                      AND x.updated_at <= t.cascades_until),
                   (SELECT t.deleted_at FROM workos.tombstones t
                    WHERE t.kind = 'directory' AND t.id = x.directory_id)
               ),
               x.last_event_id, x.last_event
        FROM UNNEST(
            $1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[],
            $6::timestamptz[], $7::text[], $8::text[]
        ) AS x(
            group_id, user_id, directory_id, organization_id, updated_at, deleted_at,
            last_event_id, last_event
        )
        ON CONFLICT (group_id, user_id) DO UPDATE SET
            directory_id = EXCLUDED.directory_id,
            organization_id = EXCLUDED.organization_id,
            updated_at = EXCLUDED.updated_at,
            deleted_at = EXCLUDED.deleted_at,
            last_event_id = EXCLUDED.last_event_id,
            last_event = EXCLUDED.last_event,
            synced_at = now()
        WHERE (EXCLUDED.updated_at, EXCLUDED.last_event_id) > (m.updated_at, m.last_event_id)
        RETURNING m.group_id, m.user_id, m.directory_id, m.deleted_at
        "#,
        &group_ids as &[&str],
        &user_ids as &[&str],
        &directory_ids as &[&str],
        &organization_ids as &[Option<&str>],
        &updated_ats,
        &deleted_ats as &[Option<DateTime<Utc>>],
        &last_event_ids as &[&str],
        &last_events as &[&str],
    )
    .fetch_all(conn)
    .await?;
    Ok(changed
        .into_iter()
        .map(|row| Change {
            row: ChangedRow::Membership {
                group_id: row.group_id,
                user_id: row.user_id,
                directory_id: row.directory_id,
            },
            deleted: row.deleted_at.is_some(),
        })
        .collect())
}

/// The tombstones of a batch that are new or changed once merged with the stored ones (an
/// earlier time, a further reach): what is left to cascade. A deletion already recorded as it
/// is cascades no more.
#[derive(Debug, Default)]
pub(crate) struct NewTombstones {
    pub(crate) directories: Vec<Tombstone>,
    pub(crate) users: Vec<Tombstone>,
    pub(crate) groups: Vec<Tombstone>,
}

/// Records the batch's deletions in `workos.tombstones`, each object's merged with what is
/// stored (the earliest time, the furthest reach), before any row is written: the upserts read
/// them. Returns those that changed.
pub(crate) async fn upsert_tombstones(
    conn: &mut PgConnection,
    directories: &[Tombstone],
    users: &[Tombstone],
    groups: &[Tombstone],
) -> Result<NewTombstones, sqlx::Error> {
    let mut new = NewTombstones::default();
    if directories.is_empty() && users.is_empty() && groups.is_empty() {
        return Ok(new);
    }
    let mut kinds = Vec::new();
    let mut ids = Vec::new();
    let mut deleted_ats = Vec::new();
    let mut reaches = Vec::new();
    for (kind, tombstones) in [
        ("directory", directories),
        ("user", users),
        ("group", groups),
    ] {
        for tombstone in tombstones {
            kinds.push(kind);
            ids.push(tombstone.id.as_str());
            deleted_ats.push(tombstone.deleted_at);
            reaches.push(tombstone.cascades_until);
        }
    }
    // `infinity` (every membership) travels as NULL: chrono has no infinite time.
    let changed = sqlx::query!(
        r#"
        INSERT INTO workos.tombstones AS t (kind, id, deleted_at, cascades_until)
        SELECT x.kind, x.id, x.deleted_at, coalesce(x.cascades_until, 'infinity')
        FROM UNNEST($1::text[], $2::text[], $3::timestamptz[], $4::timestamptz[])
            AS x(kind, id, deleted_at, cascades_until)
        ON CONFLICT (kind, id) DO UPDATE SET
            deleted_at = LEAST(t.deleted_at, EXCLUDED.deleted_at),
            cascades_until = GREATEST(t.cascades_until, EXCLUDED.cascades_until)
        WHERE EXCLUDED.deleted_at < t.deleted_at OR EXCLUDED.cascades_until > t.cascades_until
        RETURNING t.kind, t.id, t.deleted_at,
                  NULLIF(t.cascades_until, 'infinity') AS cascades_until
        "#,
        &kinds as &[&str],
        &ids as &[&str],
        &deleted_ats,
        &reaches as &[Option<DateTime<Utc>>],
    )
    .fetch_all(conn)
    .await?;
    for row in changed {
        let tombstone = Tombstone {
            id: row.id,
            deleted_at: row.deleted_at,
            cascades_until: row.cascades_until,
        };
        match row.kind.as_str() {
            "directory" => new.directories.push(tombstone),
            "user" => new.users.push(tombstone),
            _ => new.groups.push(tombstone),
        }
    }
    Ok(new)
}

/// Applies the batch's new tombstones to the rows they cover and returns how many rows changed
/// (a row two tombstones change counts twice):
/// - a deleted directory's own row, whatever snapshot it holds (a deleted directory is
///   terminal); every user, group and membership of it is the work of [`deletion_step`];
/// - a deleted user or group whose row holds its deletion (not a newer snapshot);
/// - the memberships decided at or before its reach of a deleted user, and of each group of
///   `groups_members` (the deleted groups whose memberships go in the batch; those of a larger
///   group are the work of `super::steps::group_deletion_step`).
///
/// Each row is deleted at the earliest tombstone that covers it: every statement only moves
/// `deleted_at` earlier. The statements may change a whole directory's rows, so they bring
/// nothing back to dsyncd but a count: Postgres itself queues their change notifications (from
/// `RETURNING`, inside the statement), in exactly the text `super::notification_payload` gives
/// (`workos.deletion_notice`, migration 0008), so that a row two statements of a batch delete
/// is announced once (Postgres drops a transaction's repeated notifications). Streaming the
/// rows back kept the worker's one runtime thread busy decoding them, and its other claim loop
/// waiting (BENCHMARKS.md, "Scale"). Each tombstone source has a statement of its own, on the
/// index of its key.
pub(crate) async fn cascade(
    conn: &mut PgConnection,
    channel: &str,
    tombstones: &NewTombstones,
    groups_members: &[Tombstone],
) -> Result<u64, sqlx::Error> {
    // The one statement shape: the rows `r` of `table` that match a tombstone `t` (its `key`,
    // `deleted_at` and `reach`) move to its time, each announced with `notice`.
    macro_rules! cascade {
        ($table:literal, $matches:literal, $notice:literal, $tombstones:expr) => {{
            let tombstones: &[Tombstone] = $tombstones;
            if tombstones.is_empty() {
                0
            } else {
                let (keys, times, reaches) = columns(tombstones);
                sqlx::query_scalar!(
                    "WITH changed AS ( UPDATE workos."
                        + $table
                        + " AS r \
                     SET deleted_at = t.deleted_at, synced_at = now() \
                     FROM unnest($2::text[], $3::timestamptz[], $4::timestamptz[]) \
                         AS t(key, deleted_at, reach) \
                     WHERE "
                        + $matches
                        + " \
                       AND (r.deleted_at IS NULL OR r.deleted_at > t.deleted_at) \
                     RETURNING pg_notify($1, "
                        + $notice
                        + ") IS NULL AS announced ) \
                     SELECT count(*) AS \"changed!\" FROM changed",
                    channel,
                    &keys as &[&str],
                    &times,
                    &reaches as &[Option<DateTime<Utc>>],
                )
                .fetch_one(&mut *conn)
                .await? as u64
            }
        }};
    }
    let directories = &tombstones.directories[..];
    let users = &tombstones.users[..];
    let groups = &tombstones.groups[..];
    let mut changed = cascade!(
        "directories",
        "r.id = t.key",
        "workos.deletion_notice('directories', r.id, r.id)",
        directories
    );
    changed += cascade!(
        "directory_users",
        "r.id = t.key AND r.last_event = 'dsync.user.deleted'",
        "workos.deletion_notice('directory_users', r.directory_id, r.id)",
        users
    );
    changed += cascade!(
        "directory_groups",
        "r.id = t.key AND r.last_event = 'dsync.group.deleted'",
        "workos.deletion_notice('directory_groups', r.directory_id, r.id)",
        groups
    );
    changed += cascade!(
        "directory_group_memberships",
        "r.user_id = t.key AND (t.reach IS NULL OR r.updated_at <= t.reach)",
        "workos.membership_deletion_notice(r.directory_id, r.group_id, r.user_id)",
        users
    );
    changed += cascade!(
        "directory_group_memberships",
        "r.group_id = t.key AND (t.reach IS NULL OR r.updated_at <= t.reach)",
        "workos.membership_deletion_notice(r.directory_id, r.group_id, r.user_id)",
        groups_members
    );
    Ok(changed)
}

/// Sends each payload on `channel`, delivered when the transaction commits.
pub(crate) async fn notify(
    conn: &mut PgConnection,
    channel: &str,
    payloads: &[String],
) -> Result<(), sqlx::Error> {
    if payloads.is_empty() {
        return Ok(());
    }
    sqlx::query!(
        "SELECT pg_notify($1, payload) FROM unnest($2::text[]) AS payload",
        channel,
        payloads,
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// One column of `rows`, for `UNNEST`.
fn column<'a, R, T>(rows: &'a [R], value: impl Fn(&'a R) -> T) -> Vec<T> {
    rows.iter().map(value).collect()
}

/// `items` as the text of a Postgres array (`{"a","b \"c\""}`), every element quoted: how the
/// `roles` lists, whose lengths differ from row to row, travel in one `text[]` of rows. Postgres
/// reads it back with a cast for a fraction of what a JSON array and a subquery cost.
fn text_array_literal(items: &[String]) -> String {
    let mut literal = String::from("{");
    for (index, item) in items.iter().enumerate() {
        if index > 0 {
            literal.push(',');
        }
        literal.push('"');
        for character in item.chars() {
            if matches!(character, '"' | '\\') {
                literal.push('\\');
            }
            literal.push(character);
        }
        literal.push('"');
    }
    literal.push('}');
    literal
}

/// A `jsonb` column's value as JSON text.
fn json_text(value: &Option<impl serde::Serialize>) -> Option<String> {
    value
        .as_ref()
        .map(|value| serde_json::to_string(value).expect("a JSON value serializes"))
}

/// The ids, times and reaches of some tombstones, for `unnest`.
pub(super) type TombstoneColumns<'a> =
    (Vec<&'a str>, Vec<DateTime<Utc>>, Vec<Option<DateTime<Utc>>>);

/// `tombstones` as columns.
pub(super) fn columns(tombstones: &[Tombstone]) -> TombstoneColumns<'_> {
    let mut columns = (Vec::new(), Vec::new(), Vec::new());
    for tombstone in tombstones {
        columns.0.push(tombstone.id.as_str());
        columns.1.push(tombstone.deleted_at);
        columns.2.push(tombstone.cascades_until);
    }
    columns
}
