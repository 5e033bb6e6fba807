//! Snapshot reconciliation: list every directory at WorkOS, and for each its users, groups
//! and each group's members, compare with the synced tables and repair them.
//!
//! Repairs go through the directory handler's own rules: each drifted object becomes a
//! synthetic event applied with [`DirectoryHandler`], so compare-and-set, tombstones, locks and
//! change notifications are exactly those of events. Every synthetic event of a run has the id
//! `dsyncd_snapshot_<run start in ms>` and the envelope `created_at` of the run's start:
//! - listed but missing here, or stored older → `dsync.activated` / `dsync.user.updated` /
//!   `dsync.group.updated` carrying the listed object. The id sorts below WorkOS's `event_…`
//!   (and `wh_…`) ids, so at an equal `updated_at` the stored event's row stays;
//! - live here but not listed → `dsync.deleted` (only after a complete directory listing) /
//!   `dsync.user.deleted` / `dsync.group.deleted` carrying the stored row in WorkOS's form;
//! - a listed member without a live membership → `dsync.group.user_added`; a live membership
//!   not listed, while its user and group are → `dsync.group.user_removed`. Both are dated by
//!   the run's start, so any membership event newer than that wins over them. Live
//!   memberships of users or groups that WorkOS no longer lists are removed the same way:
//!   a deletion cascades only to memberships not newer than the deletion's time.
//!
//! Rows written after the run began are left alone (an event arrived meanwhile). Memory stays
//! bounded: pages of 100 are compared as they come, and what was listed is remembered in
//! `workos.reconcile_listed`, not in the process.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use sqlx::PgPool;

use super::store::{self, Kind, Listed};
use super::ReconcileError;
use crate::directory::DirectoryHandler;
use crate::envelope::parse_timestamp;
use crate::handler::{Event, EventHandler};
use crate::workos_api::Client;

/// Page size of every listing (WorkOS's maximum).
pub(crate) const PAGE: usize = 100;

/// What to reconcile.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Only this directory (its users, groups and memberships); every directory otherwise.
    pub directory_id: Option<String>,
    /// Find and count the drift, change nothing.
    pub dry_run: bool,
}

/// Drift of one table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Listed at WorkOS, not live here.
    pub missing: u64,
    /// Stored with an older `updated_at` than listed.
    pub stale: u64,
    /// Live here, no longer listed at WorkOS (deleted there).
    pub deleted: u64,
}

/// The drift a run found, per table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drift {
    /// `workos.directories`
    pub directories: Counts,
    /// `workos.directory_users`
    pub users: Counts,
    /// `workos.directory_groups`
    pub groups: Counts,
    /// `workos.directory_group_memberships`
    pub memberships: Counts,
}

impl Drift {
    /// `(table, kind, count)` for every table and kind.
    pub fn entries(&self) -> Vec<(&'static str, &'static str, u64)> {
        let mut entries = Vec::new();
        for (table, counts) in [
            ("directories", self.directories),
            ("users", self.users),
            ("groups", self.groups),
            ("memberships", self.memberships),
        ] {
            entries.push((table, "missing", counts.missing));
            entries.push((table, "stale", counts.stale));
            entries.push((table, "deleted", counts.deleted));
        }
        entries
    }

    /// Whether nothing drifted.
    pub fn is_empty(&self) -> bool {
        self.entries().iter().all(|(_, _, count)| *count == 0)
    }

    fn counts(&mut self, kind: Kind) -> &mut Counts {
        match kind {
            Kind::Directory => &mut self.directories,
            Kind::User => &mut self.users,
            Kind::Group => &mut self.groups,
        }
    }
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct Report {
    /// When the listing began (the synthetic events' `created_at`).
    pub started_at: DateTime<Utc>,
    /// The drift found (and, unless a dry run, repaired).
    pub drift: Drift,
    /// Whether it changed nothing.
    pub dry_run: bool,
}

/// Runs one snapshot reconciliation. The run is recorded in `workos.reconcile_runs`, with
/// its drift or its error.
pub async fn run(
    pool: &PgPool,
    client: &Client,
    options: &Options,
) -> Result<Report, ReconcileError> {
    let (run_id, started_at) =
        store::begin_run(pool, options.directory_id.as_deref(), options.dry_run).await?;
    tracing::info!(
        reconcile.run = run_id,
        dry_run = options.dry_run,
        directory = options.directory_id.as_deref(),
        "snapshot reconciliation started"
    );
    let mut run = Run {
        pool,
        client,
        options,
        run_id,
        started_at,
        event_id: format!("dsyncd_snapshot_{}", started_at.timestamp_millis()),
        drift: Drift::default(),
        staged: 0,
        staged_since_analyze: 0,
    };
    let outcome = run.everything().await;
    let drift = run.drift;
    match outcome {
        Ok(()) => {
            let value = serde_json::to_value(drift).expect("counts serialize");
            store::finish_run(pool, run_id, Some(&value), None).await?;
            tracing::info!(reconcile.run = run_id, drift = %value, "snapshot reconciliation finished");
            Ok(Report {
                started_at,
                drift,
                dry_run: options.dry_run,
            })
        }
        Err(error) => {
            let message = error.to_string();
            if let Err(db) = store::finish_run(pool, run_id, None, Some(&message)).await {
                tracing::warn!(error = %db, "cannot record the failed run");
            }
            Err(error)
        }
    }
}

struct Run<'a> {
    pool: &'a PgPool,
    client: &'a Client,
    options: &'a Options,
    run_id: i64,
    started_at: DateTime<Utc>,
    event_id: String,
    drift: Drift,
    /// Rows staged in `workos.reconcile_listed` by this run, in all and since its last
    /// `ANALYZE` (see [`Run::refresh_statistics`]).
    staged: u64,
    staged_since_analyze: u64,
}

/// The fields of a listed object that the comparison needs.
#[derive(Deserialize)]
struct Identity {
    id: String,
    updated_at: Option<String>,
}

impl Run<'_> {
    async fn everything(&mut self) -> Result<(), ReconcileError> {
        // Directories: every page (the directory filter only narrows what is compared).
        let mut pages = Pager::new("/directories", Vec::new());
        while let Some(items) = pages.next(self.client).await? {
            let mut listed = Vec::new();
            for item in items {
                if let Some(directory) = listed_object(&item, directory_to_event_form) {
                    if self
                        .options
                        .directory_id
                        .as_ref()
                        .is_none_or(|only| *only == directory.id)
                    {
                        listed.push(directory);
                    }
                }
            }
            self.compare_page(Kind::Directory, "", &listed).await?;
        }
        // The listing is complete: what it lacks is deleted at WorkOS.
        self.delete_unlisted(Kind::Directory, self.options.directory_id.as_deref())
            .await?;

        let mut after = String::new();
        loop {
            let directories = store::listed(
                self.pool,
                self.run_id,
                Kind::Directory,
                "",
                &after,
                PAGE as i64,
            )
            .await?;
            let Some((last, _)) = directories.last() else {
                break;
            };
            after = last.clone();
            for (directory_id, _) in &directories {
                self.directory(directory_id).await?;
            }
        }
        Ok(())
    }

    /// A directory's users, groups and memberships.
    async fn directory(&mut self, directory_id: &str) -> Result<(), ReconcileError> {
        for (kind, path) in [
            (Kind::User, "/directory_users"),
            (Kind::Group, "/directory_groups"),
        ] {
            let mut pages = Pager::new(path, vec![("directory", directory_id.to_owned())]);
            while let Some(items) = pages.next(self.client).await? {
                let listed: Vec<Listed> = items
                    .iter()
                    .filter_map(|item| listed_object(item, Some))
                    .collect();
                self.compare_page(kind, directory_id, &listed).await?;
            }
            self.delete_unlisted(kind, Some(directory_id)).await?;
        }
        let mut after = String::new();
        loop {
            let groups = store::listed(
                self.pool,
                self.run_id,
                Kind::Group,
                directory_id,
                &after,
                PAGE as i64,
            )
            .await?;
            let Some((last, _)) = groups.last() else {
                break;
            };
            after = last.clone();
            for (group_id, group) in &groups {
                self.members(directory_id, group_id, group).await?;
            }
        }
        self.remove_unlisted_members(directory_id).await
    }

    /// Remembers a page of listed objects, counts its drift and repairs it.
    async fn compare_page(
        &mut self,
        kind: Kind,
        directory_id: &str,
        listed: &[Listed],
    ) -> Result<(), ReconcileError> {
        if listed.is_empty() {
            return Ok(());
        }
        store::stage(self.pool, self.run_id, kind, directory_id, listed).await?;
        self.count_staged(listed.len());
        let drifted = store::drifted(self.pool, kind, listed, self.started_at).await?;
        let mut events = Vec::new();
        for drifted in &drifted {
            let counts = self.drift.counts(kind);
            if drifted.missing {
                counts.missing += 1;
            } else {
                counts.stale += 1;
            }
            let object = listed
                .iter()
                .find(|item| item.id == drifted.id)
                .expect("drifted ids come from the page");
            let event_type = match kind {
                Kind::Directory => "dsync.activated",
                Kind::User => "dsync.user.updated",
                Kind::Group => "dsync.group.updated",
            };
            events.push(self.event(event_type, &object.object));
        }
        self.apply(events).await
    }

    fn count_staged(&mut self, rows: usize) {
        self.staged += rows as u64;
        self.staged_since_analyze += rows as u64;
    }

    /// Has Postgres sample the staging table once it has grown by half since it last did (and
    /// by at least `ANALYZE_AFTER` rows): the comparisons of what was not listed join every row
    /// of a directory with it, and a planner that believed it small compared each row with
    /// every staged one, which for 100,000 users ran past any timeout (BENCHMARKS.md, "Scale").
    /// Samples cost about the same whatever the size, and there are a few per run.
    async fn refresh_statistics(&mut self) -> Result<(), ReconcileError> {
        const ANALYZE_AFTER: u64 = 1_000;
        if self.staged_since_analyze >= ANALYZE_AFTER.max(self.staged / 3) {
            store::analyze_listed(self.pool).await?;
            self.staged_since_analyze = 0;
        }
        Ok(())
    }

    /// Deletes the live rows the run did not list.
    async fn delete_unlisted(
        &mut self,
        kind: Kind,
        directory_id: Option<&str>,
    ) -> Result<(), ReconcileError> {
        self.refresh_statistics().await?;
        let event_type = match kind {
            Kind::Directory => "dsync.deleted",
            Kind::User => "dsync.user.deleted",
            Kind::Group => "dsync.group.deleted",
        };
        let mut after = String::new();
        loop {
            let rows = store::unlisted(
                self.pool,
                self.run_id,
                kind,
                directory_id,
                self.started_at,
                &after,
                PAGE as i64,
            )
            .await?;
            let Some((last, _)) = rows.last() else {
                return Ok(());
            };
            after = last.clone();
            self.drift.counts(kind).deleted += rows.len() as u64;
            let events = rows
                .iter()
                .map(|(_, object)| self.event(event_type, object))
                .collect();
            self.apply(events).await?;
        }
    }

    /// A group's members: adds the listed ones missing here.
    async fn members(
        &mut self,
        directory_id: &str,
        group_id: &str,
        group: &str,
    ) -> Result<(), ReconcileError> {
        let mut pages = Pager::new("/directory_users", vec![("group", group_id.to_owned())]);
        while let Some(items) = pages.next(self.client).await? {
            let users: Vec<Listed> = items
                .iter()
                .filter_map(|item| listed_object(item, Some))
                .collect();
            if users.is_empty() {
                continue;
            }
            let ids: Vec<&str> = users.iter().map(|user| user.id.as_str()).collect();
            store::stage_members(self.pool, self.run_id, directory_id, group_id, &ids).await?;
            self.count_staged(ids.len());
            let missing =
                store::members_missing(self.pool, group_id, &ids, self.started_at).await?;
            self.drift.memberships.missing += missing.len() as u64;
            let events = missing
                .iter()
                .filter_map(|id| users.iter().find(|user| user.id == *id))
                .map(|user| {
                    self.event(
                        "dsync.group.user_added",
                        &membership_data(directory_id, &user.object, group),
                    )
                })
                .collect();
            self.apply(events).await?;
        }
        Ok(())
    }

    /// Removes the live memberships of a directory that no group listing showed.
    async fn remove_unlisted_members(&mut self, directory_id: &str) -> Result<(), ReconcileError> {
        self.refresh_statistics().await?;
        let mut after = (String::new(), String::new());
        loop {
            let rows = store::members_unlisted(
                self.pool,
                self.run_id,
                directory_id,
                self.started_at,
                (&after.0, &after.1),
                PAGE as i64,
            )
            .await?;
            let Some(last) = rows.last() else {
                return Ok(());
            };
            after = (last.group_id.clone(), last.user_id.clone());
            self.drift.memberships.deleted += rows.len() as u64;
            let events = rows
                .iter()
                .map(|row| {
                    self.event(
                        "dsync.group.user_removed",
                        &membership_data(directory_id, &row.user, &row.group),
                    )
                })
                .collect();
            self.apply(events).await?;
        }
    }

    /// A synthetic event of this run.
    fn event(&self, event_type: &str, data: &str) -> String {
        format!(
            r#"{{"object":"event","id":{},"event":{},"data":{data},"created_at":{}}}"#,
            Value::from(self.event_id.as_str()),
            Value::from(event_type),
            Value::from(self.started_at.to_rfc3339_opts(SecondsFormat::Millis, true)),
        )
    }

    /// Applies synthetic events with the directory handler, in one transaction (unless this
    /// is a dry run).
    async fn apply(&self, bodies: Vec<String>) -> Result<(), ReconcileError> {
        if bodies.is_empty() || self.options.dry_run {
            return Ok(());
        }
        let events = bodies
            .iter()
            .map(|body| Event::from_payload(body))
            .collect::<Result<Vec<Event>, _>>()
            .map_err(|error| ReconcileError::Synthetic(error.to_string()))?;
        let events: Vec<&Event> = events.iter().collect();
        let mut tx = self.pool.begin().await?;
        DirectoryHandler
            .handle_batch(&mut tx, &events)
            .await
            .map_err(|error| ReconcileError::Apply(error.to_string()))?;
        tx.commit().await?;
        Ok(())
    }
}

/// `{"directory_id": …, "user": …, "group": …}`
fn membership_data(directory_id: &str, user: &str, group: &str) -> String {
    format!(
        r#"{{"directory_id":{},"user":{user},"group":{group}}}"#,
        Value::from(directory_id)
    )
}

/// A listed item with what comparing it needs, its object made into the event form by
/// `to_event_form`; `None` (and a warning) for an item without an id or `updated_at`, which
/// could neither be compared nor applied.
fn listed_object(
    item: &RawValue,
    to_event_form: impl FnOnce(String) -> Option<String>,
) -> Option<Listed> {
    let identity: Identity = match serde_json::from_str(item.get()) {
        Ok(identity) => identity,
        Err(_) => {
            tracing::warn!("a listed WorkOS object has no id; skipped");
            return None;
        }
    };
    let Some(updated_at) = identity.updated_at.as_deref().and_then(parse_timestamp) else {
        tracing::warn!(id = %identity.id, "a listed WorkOS object has no readable updated_at; skipped");
        return None;
    };
    Some(Listed {
        id: identity.id,
        updated_at,
        object: to_event_form(item.get().to_owned())?,
    })
}

/// A directory as `GET /directories` lists it, in the form `dsync.activated` carries: `state`
/// `linked` → `active` and `unlinked` → `inactive`, and `domain` as
/// `domains: [{"id": null, "domain": …}]` when there are no `domains`.
pub(crate) fn directory_to_event_form(text: String) -> Option<String> {
    let mut object: Map<String, Value> = serde_json::from_str(&text).ok()?;
    if let Some(Value::String(state)) = object.get_mut("state") {
        match state.as_str() {
            "linked" => *state = "active".to_owned(),
            "unlinked" => *state = "inactive".to_owned(),
            _ => {}
        }
    }
    let domain = object.remove("domain");
    object.remove("metadata");
    if !object.contains_key("domains") {
        if let Some(Value::String(domain)) = domain {
            object.insert(
                "domains".to_owned(),
                serde_json::json!([{"id": null, "domain": domain}]),
            );
        }
    }
    Some(Value::Object(object).to_string())
}

/// Pages through a list endpoint with `after`, `limit=100`.
pub(crate) struct Pager {
    path: &'static str,
    params: Vec<(&'static str, String)>,
    after: Option<String>,
    done: bool,
}

impl Pager {
    pub(crate) fn new(path: &'static str, params: Vec<(&'static str, String)>) -> Self {
        Pager {
            path,
            params,
            after: None,
            done: false,
        }
    }

    /// The next page's items, or `None` after the last page.
    pub(crate) async fn next(
        &mut self,
        client: &Client,
    ) -> Result<Option<Vec<Box<RawValue>>>, ReconcileError> {
        if self.done {
            return Ok(None);
        }
        let limit = PAGE.to_string();
        let mut query: Vec<(&str, &str)> = self
            .params
            .iter()
            .map(|(name, value)| (*name, value.as_str()))
            .collect();
        query.push(("limit", &limit));
        if let Some(after) = &self.after {
            query.push(("after", after));
        }
        let page = client.list(self.path, &query).await?;
        match page.list_metadata.after {
            Some(after) if !page.data.is_empty() && Some(&after) != self.after.as_ref() => {
                self.after = Some(after)
            }
            _ => self.done = true,
        }
        Ok(Some(page.data))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directories_are_mapped_to_the_event_form() {
        let rest = r#"{"object":"directory","id":"directory_1","state":"linked","domain":"foo.com","metadata":{"users":{"active":1,"inactive":0},"groups":0},"updated_at":"2026-01-01T00:00:00.000Z"}"#;
        let event: Value =
            serde_json::from_str(&directory_to_event_form(rest.to_owned()).unwrap()).unwrap();
        assert_eq!(event["state"], "active");
        assert_eq!(
            event["domains"],
            serde_json::json!([{"id": null, "domain": "foo.com"}])
        );
        assert!(event.get("domain").is_none() && event.get("metadata").is_none());
        let unlinked = r#"{"id":"d","state":"unlinked","domains":[{"id":"od","domain":"a.com"}]}"#;
        let event: Value =
            serde_json::from_str(&directory_to_event_form(unlinked.to_owned()).unwrap()).unwrap();
        assert_eq!(event["state"], "inactive");
        assert_eq!(event["domains"][0]["id"], "od");
        let deleting = r#"{"id":"d","state":"deleting"}"#;
        let event: Value =
            serde_json::from_str(&directory_to_event_form(deleting.to_owned()).unwrap()).unwrap();
        assert_eq!(event["state"], "deleting");
    }

    #[test]
    fn synthetic_ids_lose_ties_to_workos_event_ids() {
        // The directory handler breaks ties of `updated_at` by event id, byte by byte.
        let synthetic = "dsyncd_snapshot_1764547200000";
        assert!(synthetic < "event_01EHZNVPK3SFK441A1RGBFSHRT");
        assert!(synthetic < "wh_01EHZNVPK3SFK441A1RGBFSHRT");
    }

    #[test]
    fn drift_lists_every_table_and_kind() {
        let mut drift = Drift::default();
        assert!(drift.is_empty());
        drift.users.stale = 2;
        assert!(!drift.is_empty());
        let entries = drift.entries();
        assert_eq!(entries.len(), 12);
        assert!(entries.contains(&("users", "stale", 2)));
    }
}
