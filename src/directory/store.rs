//! All SQL for the synced directory tables (`workos.directories`, `directory_users`,
//! `directory_groups`, `directory_group_memberships`; see `docs/SCHEMA.md`).
//!
//! Every function takes a whole batch and runs one statement (the cascade of memberships one
//! per source), so a batch of a thousand events costs a handful of round trips. Rows are passed as one
//! array per column and read with `UNNEST`: Postgres decodes binary arrays for much less than it
//! parses the same rows out of a JSON document (BENCHMARKS.md). The `jsonb` columns travel as
//! JSON text, and the `roles` lists, which a two-dimensional array cannot hold when their
//! lengths differ, as array literals. Each write returns the rows it actually changed, for the change
//! notifications.
//!
//! Concurrency: several workers may apply batches at once. The ordering key is compared in the
//! `ON CONFLICT … WHERE` clause against the row as committed, so concurrent upserts of one row
//! are safe on their own. Tombstones are not: a cascade does not see a row another transaction
//! is inserting, and that insert does not see the uncommitted tombstone. Batches therefore lock
//! each directory they write under (see [`lock_directories`]).

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use super::model::{DirectoryRow, GroupRow, MembershipRow, RawJson, UserRow};
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

/// Upserts directory snapshots (one per id) where their key beats the stored row's.
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
    let deleted_ats = column(rows, |row| row.deleted_at);
    let last_event_ids = column(rows, |row| row.last_event_id.as_str());
    let last_events = column(rows, |row| row.last_event.event_type());
    let changed = sqlx::query!(
        r#"
        INSERT INTO workos.directories AS d (
            id, organization_id, name, type, state, external_key, domains,
            created_at, updated_at, deleted_at, last_event_id, last_event
        )
        SELECT x.id, x.organization_id, x.name, x.type, x.state, x.external_key,
               x.domains::jsonb, x.created_at, x.updated_at, x.deleted_at, x.last_event_id,
               x.last_event
        FROM UNNEST(
            $1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
            $8::timestamptz[], $9::timestamptz[], $10::timestamptz[], $11::text[], $12::text[]
        ) AS x(
            id, organization_id, name, type, state, external_key, domains,
            created_at, updated_at, deleted_at, last_event_id, last_event
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
        &deleted_ats as &[Option<DateTime<Utc>>],
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

/// Upserts user snapshots (one per id) where their key beats the stored row's. A user of a
/// deleted directory is written deleted if the directory's deletion is not older than the
/// snapshot: the cascade would have deleted it, had the user been there first.
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
    let deleted_ats = column(rows, |row| row.deleted_at);
    let last_event_ids = column(rows, |row| row.last_event_id.as_str());
    let last_events = column(rows, |row| row.last_event.event_type());
    let changed = sqlx::query!(
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
                   x.deleted_at,
                   (SELECT d.deleted_at FROM workos.directories d
                    WHERE d.id = x.directory_id AND d.deleted_at >= x.updated_at)
               ),
               x.last_event_id, x.last_event
        FROM UNNEST(
            $1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
            $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::text[],
            $14::text[], $15::text[], $16::text[], $17::timestamptz[], $18::timestamptz[],
            $19::timestamptz[], $20::text[], $21::text[]
        ) AS x(
            id, directory_id, organization_id, idp_id, email, first_name, last_name, name,
            username, job_title, state, emails, role, roles, custom_attributes, raw_attributes,
            created_at, updated_at, deleted_at, last_event_id, last_event
        )
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
        &deleted_ats as &[Option<DateTime<Utc>>],
        &last_event_ids as &[&str],
        &last_events as &[&str],
    )
    .fetch_all(conn)
    .await?;
    Ok(changed
        .into_iter()
        .map(|row| Change {
            row: ChangedRow::User {
                id: row.id,
                directory_id: row.directory_id,
            },
            deleted: row.deleted_at.is_some(),
        })
        .collect())
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
    let deleted_ats = column(rows, |row| row.deleted_at);
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
                   x.deleted_at,
                   (SELECT d.deleted_at FROM workos.directories d
                    WHERE d.id = x.directory_id AND d.deleted_at >= x.updated_at)
               ),
               x.last_event_id, x.last_event
        FROM UNNEST(
            $1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
            $7::timestamptz[], $8::timestamptz[], $9::timestamptz[], $10::text[], $11::text[]
        ) AS x(
            id, directory_id, organization_id, idp_id, name, raw_attributes,
            created_at, updated_at, deleted_at, last_event_id, last_event
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
        &deleted_ats as &[Option<DateTime<Utc>>],
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
/// the stored row's. A membership is written deleted at the earliest tombstone of its user, its
/// group or its directory that is not older than the membership event.
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
                   (SELECT u.deleted_at FROM workos.directory_users u
                    WHERE u.id = x.user_id AND u.deleted_at >= x.updated_at),
                   (SELECT g.deleted_at FROM workos.directory_groups g
                    WHERE g.id = x.group_id AND g.deleted_at >= x.updated_at),
                   (SELECT d.deleted_at FROM workos.directories d
                    WHERE d.id = x.directory_id AND d.deleted_at >= x.updated_at)
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

/// Deletes the users of deleted directories that are not newer than the deletion, at the
/// earliest applicable tombstone.
pub(crate) async fn cascade_to_users(
    conn: &mut PgConnection,
    deleted_directories: &[Tombstone],
) -> Result<Vec<Change>, sqlx::Error> {
    if deleted_directories.is_empty() {
        return Ok(Vec::new());
    }
    let (ids, times) = columns(deleted_directories);
    let changed = sqlx::query!(
        r#"
        UPDATE workos.directory_users AS u
        SET deleted_at = hit.deleted_at, synced_at = now()
        FROM (
            SELECT candidate.id, min(t.deleted_at) AS deleted_at
            FROM unnest($1::text[], $2::timestamptz[]) AS t(directory_id, deleted_at)
            JOIN workos.directory_users candidate
              ON candidate.directory_id = t.directory_id AND candidate.updated_at <= t.deleted_at
            GROUP BY candidate.id
        ) AS hit
        WHERE u.id = hit.id AND (u.deleted_at IS NULL OR u.deleted_at > hit.deleted_at)
        RETURNING u.id, u.directory_id
        "#,
        &ids,
        &times,
    )
    .fetch_all(conn)
    .await?;
    Ok(changed
        .into_iter()
        .map(|row| Change {
            row: ChangedRow::User {
                id: row.id,
                directory_id: row.directory_id,
            },
            deleted: true,
        })
        .collect())
}

/// Deletes the groups of deleted directories, like [`cascade_to_users`].
pub(crate) async fn cascade_to_groups(
    conn: &mut PgConnection,
    deleted_directories: &[Tombstone],
) -> Result<Vec<Change>, sqlx::Error> {
    if deleted_directories.is_empty() {
        return Ok(Vec::new());
    }
    let (ids, times) = columns(deleted_directories);
    let changed = sqlx::query!(
        r#"
        UPDATE workos.directory_groups AS g
        SET deleted_at = hit.deleted_at, synced_at = now()
        FROM (
            SELECT candidate.id, min(t.deleted_at) AS deleted_at
            FROM unnest($1::text[], $2::timestamptz[]) AS t(directory_id, deleted_at)
            JOIN workos.directory_groups candidate
              ON candidate.directory_id = t.directory_id AND candidate.updated_at <= t.deleted_at
            GROUP BY candidate.id
        ) AS hit
        WHERE g.id = hit.id AND (g.deleted_at IS NULL OR g.deleted_at > hit.deleted_at)
        RETURNING g.id, g.directory_id
        "#,
        &ids,
        &times,
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
            deleted: true,
        })
        .collect())
}

/// Deletes the memberships of deleted users, groups and directories that are not newer than
/// the deletion, each at the earliest applicable tombstone.
pub(crate) async fn cascade_to_memberships(
    conn: &mut PgConnection,
    deleted_users: &[Tombstone],
    deleted_groups: &[Tombstone],
    deleted_directories: &[Tombstone],
) -> Result<Vec<Change>, sqlx::Error> {
    if deleted_users.is_empty() && deleted_groups.is_empty() && deleted_directories.is_empty() {
        return Ok(Vec::new());
    }
    let (user_ids, user_times) = columns(deleted_users);
    let (group_ids, group_times) = columns(deleted_groups);
    let (directory_ids, directory_times) = columns(deleted_directories);
    let changed = sqlx::query!(
        r#"
        UPDATE workos.directory_group_memberships AS m
        SET deleted_at = hit.deleted_at, synced_at = now()
        FROM (
            SELECT group_id, user_id, min(deleted_at) AS deleted_at
            FROM (
                SELECT candidate.group_id, candidate.user_id, t.deleted_at
                FROM unnest($1::text[], $2::timestamptz[]) AS t(id, deleted_at)
                JOIN workos.directory_group_memberships candidate
                  ON candidate.user_id = t.id AND candidate.updated_at <= t.deleted_at
                UNION ALL
                SELECT candidate.group_id, candidate.user_id, t.deleted_at
                FROM unnest($3::text[], $4::timestamptz[]) AS t(id, deleted_at)
                JOIN workos.directory_group_memberships candidate
                  ON candidate.group_id = t.id AND candidate.updated_at <= t.deleted_at
                UNION ALL
                SELECT candidate.group_id, candidate.user_id, t.deleted_at
                FROM unnest($5::text[], $6::timestamptz[]) AS t(id, deleted_at)
                JOIN workos.directory_group_memberships candidate
                  ON candidate.directory_id = t.id AND candidate.updated_at <= t.deleted_at
            ) AS tombstoned
            GROUP BY group_id, user_id
        ) AS hit
        WHERE m.group_id = hit.group_id AND m.user_id = hit.user_id
          AND (m.deleted_at IS NULL OR m.deleted_at > hit.deleted_at)
        RETURNING m.group_id, m.user_id, m.directory_id
        "#,
        &user_ids,
        &user_times,
        &group_ids,
        &group_times,
        &directory_ids,
        &directory_times,
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
            deleted: true,
        })
        .collect())
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

fn columns(tombstones: &[Tombstone]) -> (Vec<String>, Vec<DateTime<Utc>>) {
    tombstones
        .iter()
        .map(|tombstone| (tombstone.id.clone(), tombstone.deleted_at))
        .unzip()
}
