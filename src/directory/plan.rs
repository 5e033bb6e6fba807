//! What a batch of events changes, worked out before touching the database: the winning
//! snapshot per object, the tombstones to cascade, and the directories to lock.
//!
//! One statement cannot update a row twice, so a batch is reduced to one row per object: the
//! one with the greatest ordering key, which is also the one that would win if the events were
//! applied one by one. Pure, so the reduction is unit-tested here.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use super::model::{
    read_snapshot, Deletion, DirectoryRow, EventKind, GroupRow, MembershipRow, Snapshot, UserRow,
};
use crate::handler::{Event, HandlerError};

/// An object's deletions, merged: what `workos.tombstones` keeps of them. Everything under a
/// directory goes with it; a user's or group's memberships decided at or before
/// `cascades_until` go with it (all of them when it is `None`). Each goes at `deleted_at`,
/// unless it went earlier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Tombstone {
    pub(crate) id: String,
    /// The earliest deletion time.
    pub(crate) deleted_at: DateTime<Utc>,
    /// The furthest reach; `None` is every membership.
    pub(crate) cascades_until: Option<DateTime<Utc>>,
}

impl Tombstone {
    fn new(id: &str, deletion: Deletion) -> Tombstone {
        Tombstone {
            id: id.to_owned(),
            deleted_at: deletion.at,
            cascades_until: deletion.reaches,
        }
    }

    /// Takes in another deletion of the same object: the earliest time, the furthest reach.
    fn merge(&mut self, other: Tombstone) {
        self.deleted_at = self.deleted_at.min(other.deleted_at);
        self.cascades_until = match (self.cascades_until, other.cascades_until) {
            (Some(mine), Some(theirs)) => Some(mine.max(theirs)),
            _ => None,
        };
    }
}

/// The reduced changes of a batch, each list sorted by id so that concurrent batches lock rows
/// in the same order.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Plan {
    pub(crate) directories: Vec<DirectoryRow>,
    pub(crate) users: Vec<UserRow>,
    pub(crate) groups: Vec<GroupRow>,
    pub(crate) memberships: Vec<MembershipRow>,
    /// From `dsync.deleted`: the directory and everything in it go.
    pub(crate) deleted_directories: Vec<Tombstone>,
    /// From `dsync.user.deleted`: the user and its memberships go.
    pub(crate) deleted_users: Vec<Tombstone>,
    /// From `dsync.group.deleted`: the group and its memberships go.
    pub(crate) deleted_groups: Vec<Tombstone>,
    /// Every directory the batch writes under, and whether the batch deletes something in it
    /// (see `store::lock_directories`).
    pub(crate) directory_locks: BTreeMap<String, bool>,
}

impl Plan {
    /// Reads and reduces a batch. Events of other types are skipped; one unreadable event
    /// rejects the batch (the worker then retries its events one by one).
    pub(crate) fn for_events(events: &[&Event]) -> Result<Plan, HandlerError> {
        let mut reduction = Reduction::default();
        for event in events {
            let Some(kind) = EventKind::from_event_type(&event.event) else {
                continue;
            };
            reduction.add(read_snapshot(event, kind)?);
        }
        Ok(reduction.into_plan())
    }

    /// Whether the batch changes nothing.
    pub(crate) fn is_empty(&self) -> bool {
        self.directory_locks.is_empty()
    }
}

#[derive(Default)]
struct Reduction {
    directories: BTreeMap<String, DirectoryRow>,
    users: BTreeMap<String, UserRow>,
    groups: BTreeMap<String, GroupRow>,
    memberships: BTreeMap<(String, String), MembershipRow>,
    deleted_directories: BTreeMap<String, Tombstone>,
    deleted_users: BTreeMap<String, Tombstone>,
    deleted_groups: BTreeMap<String, Tombstone>,
    directory_locks: BTreeMap<String, bool>,
}

impl Reduction {
    fn add(&mut self, snapshot: Snapshot) {
        match snapshot {
            Snapshot::Directory(row) => self.add_directory(row),
            Snapshot::User(row) => self.add_user(row),
            Snapshot::Group(row) => self.add_group(row),
            Snapshot::Membership(change) => {
                self.add_user(change.user);
                self.add_group(change.group);
                let row = change.membership;
                self.lock(&row.directory_id, false);
                keep_greatest(
                    &mut self.memberships,
                    (row.group_id.clone(), row.user_id.clone()),
                    row,
                    |old, new| new.key() > old.key(),
                );
            }
        }
    }

    fn add_directory(&mut self, row: DirectoryRow) {
        if let Some(deletion) = row.deletion {
            // A directory takes everything under it, whenever it changed.
            let deletion = Deletion {
                reaches: None,
                ..deletion
            };
            add_tombstone(&mut self.deleted_directories, &row.id, deletion);
        }
        self.lock(&row.id, row.deletion.is_some());
        keep_greatest(&mut self.directories, row.id.clone(), row, |old, new| {
            new.key() > old.key()
        });
    }

    fn add_user(&mut self, row: UserRow) {
        // Every deletion cascades, even one that loses to a newer snapshot: applied one by
        // one, it would have cascaded when it arrived.
        if let Some(deletion) = row.deletion {
            add_tombstone(&mut self.deleted_users, &row.id, deletion);
        }
        self.lock(&row.directory_id, row.deletion.is_some());
        keep_greatest(&mut self.users, row.id.clone(), row, |old, new| {
            new.key() > old.key()
        });
    }

    fn add_group(&mut self, row: GroupRow) {
        if let Some(deletion) = row.deletion {
            add_tombstone(&mut self.deleted_groups, &row.id, deletion);
        }
        self.lock(&row.directory_id, row.deletion.is_some());
        keep_greatest(&mut self.groups, row.id.clone(), row, |old, new| {
            new.key() > old.key()
        });
    }

    fn lock(&mut self, directory_id: &str, exclusive: bool) {
        let entry = self
            .directory_locks
            .entry(directory_id.to_owned())
            .or_default();
        *entry |= exclusive;
    }

    fn into_plan(self) -> Plan {
        Plan {
            directories: self.directories.into_values().collect(),
            users: self.users.into_values().collect(),
            groups: self.groups.into_values().collect(),
            memberships: self.memberships.into_values().collect(),
            deleted_directories: self.deleted_directories.into_values().collect(),
            deleted_users: self.deleted_users.into_values().collect(),
            deleted_groups: self.deleted_groups.into_values().collect(),
            directory_locks: self.directory_locks,
        }
    }
}

fn add_tombstone(tombstones: &mut BTreeMap<String, Tombstone>, id: &str, deletion: Deletion) {
    let tombstone = Tombstone::new(id, deletion);
    match tombstones.entry(tombstone.id.clone()) {
        std::collections::btree_map::Entry::Vacant(entry) => {
            entry.insert(tombstone);
        }
        std::collections::btree_map::Entry::Occupied(mut entry) => entry.get_mut().merge(tombstone),
    }
}

fn keep_greatest<K: Ord, V>(
    rows: &mut BTreeMap<K, V>,
    key: K,
    row: V,
    is_greater: impl Fn(&V, &V) -> bool,
) {
    match rows.entry(key) {
        std::collections::btree_map::Entry::Vacant(entry) => {
            entry.insert(row);
        }
        std::collections::btree_map::Entry::Occupied(mut entry) => {
            if is_greater(entry.get(), &row) {
                entry.insert(row);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(id: &str, event_type: &str, data: serde_json::Value, created_at: &str) -> Event {
        let body = json!({"id": id, "event": event_type, "data": data, "created_at": created_at});
        Event::from_payload(&body.to_string()).unwrap()
    }

    fn user(id: &str, updated_at: &str, job_title: &str) -> serde_json::Value {
        json!({"id": id, "directory_id": "directory_1", "job_title": job_title,
               "updated_at": updated_at})
    }

    fn group(id: &str, updated_at: &str) -> serde_json::Value {
        json!({"id": id, "directory_id": "directory_1", "updated_at": updated_at})
    }

    fn plan(events: &[Event]) -> Plan {
        Plan::for_events(&events.iter().collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn keeps_the_greatest_snapshot_per_object_whatever_the_order() {
        let events = [
            event(
                "e3",
                "dsync.user.updated",
                user("u1", "2021-01-03T00:00:00Z", "third"),
                "2021-01-03T00:00:00Z",
            ),
            event(
                "e1",
                "dsync.user.created",
                user("u1", "2021-01-01T00:00:00Z", "first"),
                "2021-01-01T00:00:00Z",
            ),
            event(
                "e2",
                "dsync.user.updated",
                user("u1", "2021-01-02T00:00:00Z", "second"),
                "2021-01-02T00:00:00Z",
            ),
            event(
                "e4",
                "dsync.user.created",
                user("u2", "2021-01-01T00:00:00Z", "other"),
                "2021-01-01T00:00:00Z",
            ),
        ];
        let forward = plan(&events);
        assert_eq!(forward.users.len(), 2);
        assert_eq!(forward.users[0].job_title.as_deref(), Some("third"));
        assert_eq!(forward.users[1].id, "u2");
        let mut reversed = events.clone();
        reversed.reverse();
        assert_eq!(plan(&reversed), forward);
    }

    #[test]
    fn at_equal_updated_at_a_deletion_wins_and_still_cascades_when_it_loses() {
        let events = [
            event(
                "e9",
                "dsync.user.updated",
                user("u1", "2021-01-02T00:00:00Z", "kept"),
                "2021-01-02T00:00:00Z",
            ),
            event(
                "e1",
                "dsync.user.deleted",
                user("u1", "2021-01-02T00:00:00Z", "deleted"),
                "2021-01-02T00:00:00Z",
            ),
            event(
                "e0",
                "dsync.user.deleted",
                user("u2", "2021-01-01T00:00:00Z", "gone"),
                "2021-01-01T00:00:00Z",
            ),
            event(
                "e5",
                "dsync.user.updated",
                user("u2", "2021-01-05T00:00:00Z", "back"),
                "2021-01-05T00:00:00Z",
            ),
        ];
        let plan = plan(&events);
        assert_eq!(plan.users[0].last_event_id, "e1");
        assert_eq!(plan.users[1].last_event_id, "e5");
        let deleted: Vec<_> = plan.deleted_users.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(deleted, ["u1", "u2"]);
        assert_eq!(
            plan.directory_locks,
            BTreeMap::from([("directory_1".into(), true)])
        );
    }

    #[test]
    fn a_membership_event_is_decided_by_its_time_and_upserts_its_snapshots() {
        let data = |title| {
            json!({"directory_id": "directory_1",
                                  "user": user("u1", "2021-01-01T00:00:00Z", title),
                                  "group": group("g1", "2021-01-01T00:00:00Z")})
        };
        let events = [
            event(
                "e7",
                "dsync.group.user_removed",
                data("removed"),
                "2021-01-07T00:00:00Z",
            ),
            event(
                "e5",
                "dsync.group.user_added",
                data("added"),
                "2021-01-05T00:00:00Z",
            ),
        ];
        let plan = plan(&events);
        assert_eq!(plan.memberships.len(), 1);
        assert_eq!(plan.memberships[0].last_event, EventKind::GroupUserRemoved);
        assert!(plan.memberships[0].deleted_at.is_some());
        // Same user snapshot time: the event id breaks the tie.
        assert_eq!(plan.users[0].last_event_id, "e7");
        assert_eq!(plan.groups[0].id, "g1");
        assert!(plan.deleted_users.is_empty());
        assert_eq!(
            plan.directory_locks,
            BTreeMap::from([("directory_1".into(), false)])
        );
    }

    #[test]
    fn several_deletions_of_an_object_keep_the_earliest_time_and_the_furthest_reach() {
        let deleted = |id: &str, created_at: Option<&str>| {
            let mut body = json!({"id": id, "event": "dsync.user.deleted",
                                  "data": user("u1", "2021-01-01T00:00:00Z", "gone")});
            if let Some(created_at) = created_at {
                body["created_at"] = created_at.into();
            }
            Event::from_payload(&body.to_string()).unwrap()
        };
        let at = |text: &str| text.parse::<DateTime<Utc>>().unwrap();
        let merged = plan(&[
            deleted("e2", Some("2021-01-05T00:00:00Z")),
            deleted("e1", Some("2021-01-03T00:00:00Z")),
        ]);
        assert_eq!(
            merged.deleted_users,
            [Tombstone {
                id: "u1".into(),
                deleted_at: at("2021-01-03T00:00:00Z"),
                cascades_until: Some(at("2021-01-05T00:00:00Z")),
            }]
        );
        // Without `created_at` a deletion is dated by `updated_at` and reaches everything.
        let legacy = plan(&[
            deleted("e2", Some("2021-01-05T00:00:00Z")),
            deleted("wh_1", None),
        ]);
        assert_eq!(
            legacy.deleted_users[0].deleted_at,
            at("2021-01-01T00:00:00Z")
        );
        assert_eq!(legacy.deleted_users[0].cascades_until, None);
    }

    #[test]
    fn a_directory_deletion_reaches_everything_under_it() {
        let body = json!({"id": "e1", "event": "dsync.deleted", "created_at": "2021-01-09T00:00:00Z",
                          "data": {"id": "directory_1", "updated_at": "2021-01-01T00:00:00Z"}});
        let deleted = plan(&[Event::from_payload(&body.to_string()).unwrap()]);
        assert_eq!(
            deleted.deleted_directories,
            [Tombstone {
                id: "directory_1".into(),
                deleted_at: "2021-01-09T00:00:00Z".parse().unwrap(),
                cascades_until: None,
            }]
        );
    }

    #[test]
    fn skips_other_events_and_rejects_unreadable_ones() {
        let token = event(
            "e1",
            "dsync.token.created",
            json!({"id": "t"}),
            "2021-01-01T00:00:00Z",
        );
        assert!(plan(&[token]).is_empty());
        let broken = event(
            "e2",
            "dsync.group.created",
            json!({"id": "g"}),
            "2021-01-01T00:00:00Z",
        );
        assert!(matches!(
            Plan::for_events(&[&broken]),
            Err(HandlerError::Rejected(_))
        ));
    }
}
