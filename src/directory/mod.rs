//! The built-in handler: keeps the synced directory tables (`workos.directories`,
//! `directory_users`, `directory_groups`, `directory_group_memberships`) equal to what applying
//! every `dsync.*` event in order would give, whatever order, duplicates and retries they
//! arrive in, and tells listeners which rows changed. `docs/SCHEMA.md` is the contract for the
//! apps that read the tables; this module owns writing them.
//!
//! A batch is applied set-wise: read and reduced in Rust (`plan`), then written in a handful
//! of statements (`store`), whatever its size. The worker drains backlogs of tens of thousands
//! of events a second in batches of a thousand, so per-event round trips would not keep up.
//!
//! The rules, in short (the long form is in `docs/SCHEMA.md`):
//! - a directory, user or group row holds the snapshot of the event with the greatest key
//!   `(data.updated_at, rank, event id)`, rank 2 for deletions, 1 for `dsync.deactivated`;
//! - a membership row is decided by its newest membership event, by `(created_at, event id)`;
//! - a deletion is dated by its envelope's `created_at` (the object it carries is as it last
//!   was), kept as a tombstone, and cascades whichever arrives first: a deleted directory takes
//!   everything in it, for good; a deleted user or group takes the memberships decided at or
//!   before its deletion.

mod model;
mod plan;
mod steps;
mod store;

use std::collections::BTreeMap;

use serde_json::json;
use sqlx::PgConnection;

use self::model::EventKind;
use self::plan::Plan;
use self::store::{Change, ChangedRow};
use crate::handler::{Event, EventHandler, HandlerError};

/// The channel on which the handler announces changed rows, once per row and batch, when the
/// batch commits. The payload is a JSON object:
/// `{"table": "directory_users", "id": …, "directory_id": …, "op": "upsert" | "delete"}`;
/// membership payloads carry `group_id` and `user_id` instead of `id`. `op` says whether the
/// row is live or deleted after the change.
pub const CHANGES_CHANNEL: &str = "workos_directory_changes";

/// Applies `dsync.*` events to the synced directory tables. Stateless: one value can serve
/// every worker.
#[derive(Debug, Clone, Copy, Default)]
pub struct DirectoryHandler;

impl DirectoryHandler {
    /// The handler.
    pub fn new() -> Self {
        DirectoryHandler
    }

    /// The event types it applies.
    pub fn event_types() -> impl Iterator<Item = &'static str> {
        EventKind::ALL.into_iter().map(EventKind::event_type)
    }
}

#[async_trait::async_trait]
impl EventHandler for DirectoryHandler {
    fn name(&self) -> &'static str {
        "directory"
    }

    /// The directory, user, group and membership events; not `dsync.token.*` nor anything
    /// outside `dsync.*`.
    fn handles(&self, event_type: &str) -> bool {
        EventKind::from_event_type(event_type).is_some()
    }

    async fn handle(&self, conn: &mut PgConnection, event: &Event) -> Result<(), HandlerError> {
        self.handle_batch(conn, &[event]).await
    }

    /// One step of the oldest deletion under way: of a directory (`workos.directory_deletions`),
    /// up to [`DELETION_STEP_ROWS`] rows of one table; when none is left, of a large group
    /// (`workos.group_deletions`), up to as many of its memberships. One deletion a
    /// transaction: a step holds its directory's lock until it commits, and waits for no other
    /// directory's meanwhile (a batch writing under both could hold that one and wait for this).
    async fn step(&self, conn: &mut PgConnection) -> Result<bool, HandlerError> {
        if let Some(directory_id) = steps::oldest_deletion(conn).await? {
            if let Some(mut deletion) = steps::locked_deletion(conn, &directory_id).await? {
                let step =
                    steps::deletion_step(conn, CHANGES_CHANNEL, &mut deletion, DELETION_STEP_ROWS)
                        .await?;
                tracing::debug!(
                    directory.id = %deletion.directory_id,
                    directory.changed_rows = step.changed,
                    directory.deleted = step.done,
                    "deletion step"
                );
            }
            return Ok(true);
        }
        if let Some((group_id, directory_id)) = steps::oldest_group_deletion(conn).await? {
            let locked =
                steps::locked_group_deletion(conn, &group_id, directory_id.as_deref()).await?;
            if let Some(mut deletion) = locked {
                let step = steps::group_deletion_step(
                    conn,
                    CHANGES_CHANNEL,
                    &mut deletion,
                    DELETION_STEP_ROWS,
                )
                .await?;
                tracing::debug!(
                    group.id = %deletion.group_id,
                    directory.changed_rows = step.changed,
                    group.deleted = step.done,
                    "group deletion step"
                );
            }
            return Ok(true);
        }
        Ok(false)
    }

    async fn handle_batch(
        &self,
        conn: &mut PgConnection,
        events: &[&Event],
    ) -> Result<(), HandlerError> {
        let plan = Plan::for_events(events)?;
        if plan.is_empty() {
            return Ok(());
        }
        let changed_rows = apply(conn, &plan).await?;
        tracing::debug!(
            directory.events = events.len(),
            directory.changed_rows = changed_rows,
            "applied directory events"
        );
        Ok(())
    }
}

/// Maps `events` to directory rows and reduces them as one batch would be, without a
/// database, and checks that the batch in reverse order reduces to the same plan. The events
/// must have distinct ids, as a batch claimed from the inbox has.
///
/// It exists for fuzzing (`fuzz/fuzz_targets/event_mapping.rs`) and is not a supported API.
/// Returns the rejection of an event the handler would send to `dead`; panics if the mapping
/// panics or depends on the order of the batch.
#[doc(hidden)]
pub fn plan_for_fuzzing(events: &[&Event]) -> Result<(), HandlerError> {
    let plan = Plan::for_events(events)?;
    let reversed: Vec<&Event> = events.iter().rev().copied().collect();
    let plan_of_reversed = Plan::for_events(&reversed)?;
    assert!(
        plan == plan_of_reversed,
        "the plan depends on the order of the batch"
    );
    Ok(())
}

/// Writes a plan and queues its notifications; returns how many rows changed (a row that
/// several statements changed counts once for each).
async fn apply(conn: &mut PgConnection, plan: &Plan) -> Result<u64, sqlx::Error> {
    let (directory_ids, exclusive): (Vec<String>, Vec<bool>) = plan
        .directory_locks
        .iter()
        .map(|(directory_id, exclusive)| (directory_id.clone(), *exclusive))
        .unzip();
    store::lock_directories(conn, &directory_ids, &exclusive).await?;

    // Tombstones first: every upsert reads them. Then directories, users and groups, then
    // memberships. The cascades come last and catch the rows that were already there.
    let tombstones = store::upsert_tombstones(
        conn,
        &plan.deleted_directories,
        &plan.deleted_users,
        &plan.deleted_groups,
    )
    .await?;
    let mut changes = store::upsert_directories(conn, &plan.directories).await?;
    changes.extend(store::upsert_users(conn, &plan.users).await?);
    changes.extend(store::upsert_groups(conn, &plan.groups).await?);
    changes.extend(store::upsert_memberships(conn, &plan.memberships).await?);
    // The upserts' notifications go first: a row an upsert wrote and a cascade then deleted is
    // last announced as deleted. The cascades announce their rows themselves, in Postgres: one
    // of them can delete a whole directory, and its rows never come back here.
    let payloads = notification_payloads(changes);
    store::notify(conn, CHANGES_CHANNEL, &payloads).await?;
    // A deleted group's memberships: here unless there are more than a step of them (an
    // "everyone" group), then in steps of their own ([`DirectoryHandler::step`]).
    let large = steps::large_groups(conn, &tombstones.groups, DELETION_STEP_ROWS).await?;
    let (stepped, in_batch): (Vec<_>, Vec<_>) = tombstones
        .groups
        .iter()
        .partition(|group| large.contains(&group.id));
    let in_batch: Vec<_> = in_batch.into_iter().cloned().collect();
    let mut cascaded = store::cascade(conn, CHANGES_CHANNEL, &tombstones, &in_batch).await?;
    steps::start_group_deletions(conn, &stepped).await?;
    // A deleted directory's users, groups and memberships: here as long as each table takes
    // less than one step, the rest in steps of their own.
    steps::start_deletions(conn, &tombstones.directories).await?;
    for tombstone in &tombstones.directories {
        cascaded += delete_directory_in_batch(conn, &tombstone.id).await?;
    }
    Ok(payloads.len() as u64 + cascaded)
}

/// The rows a deletion step walks at most in each table, and the memberships above which a
/// group's go in steps: a step is a transaction of its own, and this bounds how long it holds
/// its rows and its directory's lock, and how many change notifications its commit queues
/// (every notifying commit waits for that queueing). A step of 20,000 rows takes about 0.15 s;
/// steps of 5,000 deleted a directory of 100,000 users and 300,000 memberships in 4.1-4.8 s,
/// steps of 20,000 in 3.3-4.3 s, with other directories' events applied as promptly
/// (BENCHMARKS.md, "Scale").
pub const DELETION_STEP_ROWS: i64 = 20_000;

/// Steps through the deletion of `directory_id` inside the batch until a step walks a whole
/// [`DELETION_STEP_ROWS`] of one table (the rest is left to later steps) or the deletion is
/// done; returns how many rows changed.
async fn delete_directory_in_batch(
    conn: &mut PgConnection,
    directory_id: &str,
) -> Result<u64, sqlx::Error> {
    let Some(mut deletion) = steps::locked_deletion(conn, directory_id).await? else {
        return Ok(0);
    };
    let mut changed = 0;
    loop {
        let phase = deletion.phase;
        let step =
            steps::deletion_step(conn, CHANGES_CHANNEL, &mut deletion, DELETION_STEP_ROWS).await?;
        changed += step.changed;
        if step.done || deletion.phase == phase {
            return Ok(changed);
        }
    }
}

/// One payload per changed row, saying how the row ended up after the batch's last change.
fn notification_payloads(changes: Vec<Change>) -> Vec<String> {
    let last_change: BTreeMap<ChangedRow, bool> = changes
        .into_iter()
        .map(|change| (change.row, change.deleted))
        .collect();
    last_change
        .into_iter()
        .map(|(row, deleted)| notification_payload(&row, deleted).to_string())
        .collect()
}

fn notification_payload(row: &ChangedRow, deleted: bool) -> serde_json::Value {
    let op = if deleted { "delete" } else { "upsert" };
    match row {
        ChangedRow::Directory { id } => {
            json!({"table": "directories", "id": id, "directory_id": id, "op": op})
        }
        ChangedRow::User { id, directory_id } => {
            json!({"table": "directory_users", "id": id, "directory_id": directory_id, "op": op})
        }
        ChangedRow::Group { id, directory_id } => {
            json!({"table": "directory_groups", "id": id, "directory_id": directory_id, "op": op})
        }
        ChangedRow::Membership {
            group_id,
            user_id,
            directory_id,
        } => json!({
            "table": "directory_group_memberships",
            "group_id": group_id,
            "user_id": user_id,
            "directory_id": directory_id,
            "op": op,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::MAX_FIELD_LEN;

    #[test]
    fn handles_directory_events_only() {
        let handler = DirectoryHandler::new();
        assert_eq!(handler.name(), "directory");
        for event_type in [
            "dsync.activated",
            "dsync.deactivated",
            "dsync.deleted",
            "dsync.user.created",
            "dsync.user.updated",
            "dsync.user.deleted",
            "dsync.group.created",
            "dsync.group.updated",
            "dsync.group.deleted",
            "dsync.group.user_added",
            "dsync.group.user_removed",
        ] {
            assert!(handler.handles(event_type), "{event_type}");
        }
        for event_type in [
            "dsync.token.created",
            "dsync.token.revoked",
            "connection.activated",
        ] {
            assert!(!handler.handles(event_type), "{event_type}");
        }
    }

    #[test]
    fn one_payload_per_row_with_its_last_state() {
        let user = ChangedRow::User {
            id: "u1".into(),
            directory_id: "d1".into(),
        };
        let membership = ChangedRow::Membership {
            group_id: "g1".into(),
            user_id: "u1".into(),
            directory_id: "d1".into(),
        };
        let payloads = notification_payloads(vec![
            Change {
                row: user.clone(),
                deleted: false,
            },
            Change {
                row: membership,
                deleted: false,
            },
            Change {
                row: user,
                deleted: true,
            },
        ]);
        let payloads: Vec<serde_json::Value> = payloads
            .iter()
            .map(|payload| serde_json::from_str(payload).unwrap())
            .collect();
        assert_eq!(
            payloads,
            [
                json!({"table": "directory_users", "id": "u1", "directory_id": "d1", "op": "delete"}),
                json!({"table": "directory_group_memberships", "group_id": "g1", "user_id": "u1",
                       "directory_id": "d1", "op": "upsert"}),
            ]
        );
    }

    #[test]
    fn payloads_stay_under_the_notify_limit() {
        // Ids are at most MAX_FIELD_LEN characters, and quotes double when escaped.
        let id = "\"".repeat(MAX_FIELD_LEN);
        let row = ChangedRow::Membership {
            group_id: id.clone(),
            user_id: id.clone(),
            directory_id: id,
        };
        assert!(notification_payload(&row, true).to_string().len() < 8000);
    }
}
