//! The WorkOS objects that `dsync.*` events carry, and the rows of the synced tables they become.
//!
//! Reading is lenient where WorkOS is loose (unknown fields are ignored, most fields may be
//! missing or `null`, timestamps come in two forms) and strict only where applying the event
//! needs it: an object's `id`, its `directory_id` and its `updated_at`, without which it cannot
//! be stored or ordered. An event missing one of them is rejected with a message that names the
//! field. Mapping an event to rows is pure; the SQL lives in `store.rs`.

use chrono::{DateTime, Datelike, SubsecRound, Utc};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::Value;

use crate::envelope::{parse_timestamp, MAX_FIELD_LEN};
use crate::handler::{Event, HandlerError};

/// The event types the directory handler applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum EventKind {
    DirectoryActivated,
    /// Legacy: no longer sent, still found in old inboxes.
    DirectoryDeactivated,
    DirectoryDeleted,
    UserCreated,
    UserUpdated,
    UserDeleted,
    GroupCreated,
    GroupUpdated,
    GroupDeleted,
    GroupUserAdded,
    GroupUserRemoved,
}

impl EventKind {
    /// Every kind, for tests and for `handles`.
    pub(crate) const ALL: [EventKind; 11] = [
        EventKind::DirectoryActivated,
        EventKind::DirectoryDeactivated,
        EventKind::DirectoryDeleted,
        EventKind::UserCreated,
        EventKind::UserUpdated,
        EventKind::UserDeleted,
        EventKind::GroupCreated,
        EventKind::GroupUpdated,
        EventKind::GroupDeleted,
        EventKind::GroupUserAdded,
        EventKind::GroupUserRemoved,
    ];

    /// The kind of an event type, or `None` for the types this handler leaves alone.
    pub(crate) fn from_event_type(event_type: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|kind| kind.event_type() == event_type)
    }

    /// The WorkOS event type, as stored in `last_event`.
    pub(crate) fn event_type(self) -> &'static str {
        match self {
            EventKind::DirectoryActivated => "dsync.activated",
            EventKind::DirectoryDeactivated => "dsync.deactivated",
            EventKind::DirectoryDeleted => "dsync.deleted",
            EventKind::UserCreated => "dsync.user.created",
            EventKind::UserUpdated => "dsync.user.updated",
            EventKind::UserDeleted => "dsync.user.deleted",
            EventKind::GroupCreated => "dsync.group.created",
            EventKind::GroupUpdated => "dsync.group.updated",
            EventKind::GroupDeleted => "dsync.group.deleted",
            EventKind::GroupUserAdded => "dsync.group.user_added",
            EventKind::GroupUserRemoved => "dsync.group.user_removed",
        }
    }

    /// The middle part of the snapshot ordering key: at the same `updated_at`, a deletion wins
    /// over the legacy deactivation, which wins over anything else. The SQL function
    /// `workos.event_rank` computes the same from `last_event`.
    pub(crate) fn rank(self) -> u8 {
        match self {
            EventKind::DirectoryDeleted | EventKind::UserDeleted | EventKind::GroupDeleted => 2,
            EventKind::DirectoryDeactivated => 1,
            _ => 0,
        }
    }

    /// Whether the event deletes the object it carries.
    pub(crate) fn is_deletion(self) -> bool {
        self.rank() == 2
    }
}

impl Serialize for EventKind {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.event_type())
    }
}

/// The ordering key of a snapshot: `(data.updated_at, rank, event id)`. A snapshot replaces a
/// stored row only if its key is strictly greater.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct SnapshotKey<'a> {
    pub(crate) updated_at: DateTime<Utc>,
    pub(crate) rank: u8,
    pub(crate) event_id: &'a str,
}

/// The ordering key of a membership event: `(event time, event id)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct MembershipKey<'a> {
    pub(crate) at: DateTime<Utc>,
    pub(crate) event_id: &'a str,
}

/// What a deletion event says: when its object went, and how far back the deletion reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Deletion {
    /// The deletion time: the envelope's `created_at` (when WorkOS recorded the deletion),
    /// else the object's `data.updated_at` (very old deliveries have no `created_at`). Not
    /// `data.updated_at` first: a deletion carries the object as it last was, so that is its
    /// last change, often long before the deletion.
    pub(crate) at: DateTime<Utc>,
    /// Memberships decided at or before this time go with a deleted user or group: the
    /// envelope's `created_at`, or `None` for a deletion without one, which takes every
    /// membership (its real time is unknown). Directories take everything under them anyway.
    pub(crate) reaches: Option<DateTime<Utc>>,
}

// ---- What WorkOS sends ----

/// `data` of `dsync.activated`, `dsync.deactivated` and `dsync.deleted`.
#[derive(Debug, Deserialize)]
struct WorkosDirectory {
    id: Option<Value>,
    organization_id: Option<String>,
    name: Option<String>,
    #[serde(rename = "type")]
    directory_type: Option<String>,
    state: Option<String>,
    external_key: Option<String>,
    domains: Option<Vec<Domain>>,
    created_at: Option<Value>,
    updated_at: Option<Value>,
}

/// One of a directory's domains, as stored in `directories.domains`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub(crate) struct Domain {
    pub(crate) id: Option<String>,
    pub(crate) domain: Option<String>,
}

/// A DirectoryUser: `data` of `dsync.user.*`, and `user` of membership events.
#[derive(Debug, Deserialize)]
struct WorkosUser {
    id: Option<Value>,
    directory_id: Option<Value>,
    organization_id: Option<String>,
    idp_id: Option<String>,
    email: Option<String>,
    first_name: Option<String>,
    last_name: Option<String>,
    name: Option<String>,
    username: Option<String>,
    job_title: Option<String>,
    state: Option<String>,
    emails: Option<RawJson>,
    role: Option<Role>,
    roles: Option<Vec<Option<Role>>>,
    custom_attributes: Option<RawJson>,
    raw_attributes: Option<RawJson>,
    created_at: Option<Value>,
    updated_at: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct Role {
    slug: Option<String>,
}

/// A DirectoryGroup: `data` of `dsync.group.*`, and `group` of membership events.
#[derive(Debug, Deserialize)]
struct WorkosGroup {
    id: Option<Value>,
    directory_id: Option<Value>,
    organization_id: Option<String>,
    idp_id: Option<String>,
    name: Option<String>,
    raw_attributes: Option<RawJson>,
    created_at: Option<Value>,
    updated_at: Option<Value>,
}

/// `data` of `dsync.group.user_added` and `dsync.group.user_removed`.
#[derive(Debug, Deserialize)]
struct WorkosMembership {
    directory_id: Option<Value>,
    user: Option<WorkosUser>,
    group: Option<WorkosGroup>,
}

// ---- What dsyncd stores ----

/// A JSON value for a `jsonb` column, kept as the text WorkOS sent: Postgres parses it, and the
/// worker neither builds it nor writes it out again.
#[derive(Debug, Clone, Deserialize)]
#[serde(transparent)]
pub(crate) struct RawJson(Box<RawValue>);

impl RawJson {
    pub(crate) fn text(&self) -> &str {
        self.0.get()
    }
}

impl PartialEq for RawJson {
    fn eq(&self, other: &Self) -> bool {
        self.text() == other.text()
    }
}

/// A row of `workos.directories`. Field names are the column names (`directory_type` is `type`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DirectoryRow {
    pub(crate) id: String,
    pub(crate) organization_id: Option<String>,
    pub(crate) name: Option<String>,
    pub(crate) directory_type: Option<String>,
    pub(crate) state: Option<String>,
    pub(crate) external_key: Option<String>,
    pub(crate) domains: Option<Vec<Domain>>,
    pub(crate) created_at: Option<DateTime<Utc>>,
    pub(crate) updated_at: DateTime<Utc>,
    /// Set when the event is `dsync.deleted`. The row's `deleted_at` comes from the
    /// directory's tombstone, which holds the earliest of its deletions.
    pub(crate) deletion: Option<Deletion>,
    pub(crate) last_event_id: String,
    pub(crate) last_event: EventKind,
}

/// A row of `workos.directory_users`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct UserRow {
    pub(crate) id: String,
    pub(crate) directory_id: String,
    pub(crate) organization_id: Option<String>,
    pub(crate) idp_id: Option<String>,
    pub(crate) email: Option<String>,
    pub(crate) first_name: Option<String>,
    pub(crate) last_name: Option<String>,
    pub(crate) name: Option<String>,
    pub(crate) username: Option<String>,
    pub(crate) job_title: Option<String>,
    pub(crate) state: Option<String>,
    pub(crate) emails: Option<RawJson>,
    pub(crate) role: Option<String>,
    pub(crate) roles: Option<Vec<String>>,
    pub(crate) custom_attributes: Option<RawJson>,
    pub(crate) raw_attributes: Option<RawJson>,
    pub(crate) created_at: Option<DateTime<Utc>>,
    pub(crate) updated_at: DateTime<Utc>,
    /// Set when the event deletes the object (see [`DirectoryRow::deletion`]).
    pub(crate) deletion: Option<Deletion>,
    pub(crate) last_event_id: String,
    pub(crate) last_event: EventKind,
}

/// A row of `workos.directory_groups`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct GroupRow {
    pub(crate) id: String,
    pub(crate) directory_id: String,
    pub(crate) organization_id: Option<String>,
    pub(crate) idp_id: Option<String>,
    pub(crate) name: Option<String>,
    pub(crate) raw_attributes: Option<RawJson>,
    pub(crate) created_at: Option<DateTime<Utc>>,
    pub(crate) updated_at: DateTime<Utc>,
    /// Set when the event deletes the object (see [`DirectoryRow::deletion`]).
    pub(crate) deletion: Option<Deletion>,
    pub(crate) last_event_id: String,
    pub(crate) last_event: EventKind,
}

/// A row of `workos.directory_group_memberships`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct MembershipRow {
    pub(crate) group_id: String,
    pub(crate) user_id: String,
    pub(crate) directory_id: String,
    pub(crate) organization_id: Option<String>,
    /// The time of the membership event (see [`MembershipRow::key`]).
    pub(crate) updated_at: DateTime<Utc>,
    /// Set to `updated_at` when the event removed the user.
    pub(crate) deleted_at: Option<DateTime<Utc>>,
    pub(crate) last_event_id: String,
    pub(crate) last_event: EventKind,
}

/// Everything a membership event says: the membership, and the snapshots of its user and group.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct MembershipChange {
    pub(crate) membership: MembershipRow,
    pub(crate) user: UserRow,
    pub(crate) group: GroupRow,
}

/// What one event asks to store.
// Short-lived and handled one at a time: boxing the variants would only add allocations.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Snapshot {
    Directory(DirectoryRow),
    User(UserRow),
    Group(GroupRow),
    Membership(MembershipChange),
}

impl DirectoryRow {
    pub(crate) fn key(&self) -> SnapshotKey<'_> {
        snapshot_key(self.updated_at, self.last_event, &self.last_event_id)
    }
}

impl UserRow {
    pub(crate) fn key(&self) -> SnapshotKey<'_> {
        snapshot_key(self.updated_at, self.last_event, &self.last_event_id)
    }
}

impl GroupRow {
    pub(crate) fn key(&self) -> SnapshotKey<'_> {
        snapshot_key(self.updated_at, self.last_event, &self.last_event_id)
    }
}

impl MembershipRow {
    pub(crate) fn key(&self) -> MembershipKey<'_> {
        MembershipKey {
            at: self.updated_at,
            event_id: &self.last_event_id,
        }
    }
}

fn snapshot_key(updated_at: DateTime<Utc>, event: EventKind, event_id: &str) -> SnapshotKey<'_> {
    SnapshotKey {
        updated_at,
        rank: event.rank(),
        event_id,
    }
}

/// Reads what an event of a known kind asks to store.
pub(crate) fn read_snapshot(event: &Event, kind: EventKind) -> Result<Snapshot, HandlerError> {
    let fields = Fields { event };
    fields.reject_nul_characters()?;
    match kind {
        EventKind::DirectoryActivated
        | EventKind::DirectoryDeactivated
        | EventKind::DirectoryDeleted => {
            let data: WorkosDirectory = event.data_as()?;
            Ok(Snapshot::Directory(fields.directory_row(data, kind)?))
        }
        EventKind::UserCreated | EventKind::UserUpdated | EventKind::UserDeleted => {
            let data: WorkosUser = event.data_as()?;
            Ok(Snapshot::User(fields.user_row(data, kind, "data")?))
        }
        EventKind::GroupCreated | EventKind::GroupUpdated | EventKind::GroupDeleted => {
            let data: WorkosGroup = event.data_as()?;
            Ok(Snapshot::Group(fields.group_row(data, kind, "data")?))
        }
        EventKind::GroupUserAdded | EventKind::GroupUserRemoved => {
            let data: WorkosMembership = event.data_as()?;
            Ok(Snapshot::Membership(fields.membership_change(data, kind)?))
        }
    }
}

/// Turns the fields of one event's `data` into rows, naming the field in every rejection.
struct Fields<'e> {
    event: &'e Event,
}

impl Fields<'_> {
    fn directory_row(
        &self,
        data: WorkosDirectory,
        kind: EventKind,
    ) -> Result<DirectoryRow, HandlerError> {
        let updated_at = self.required_timestamp(data.updated_at, "data", "updated_at")?;
        Ok(DirectoryRow {
            id: self.required_id(data.id, "data", "id")?,
            organization_id: data.organization_id,
            name: data.name,
            directory_type: data.directory_type,
            state: data.state,
            external_key: data.external_key,
            domains: data.domains,
            created_at: optional_timestamp(data.created_at),
            updated_at,
            deletion: self.deletion(kind, updated_at),
            last_event_id: self.event.id.clone(),
            last_event: kind,
        })
    }

    fn user_row(
        &self,
        data: WorkosUser,
        kind: EventKind,
        path: &str,
    ) -> Result<UserRow, HandlerError> {
        let updated_at = self.required_timestamp(data.updated_at, path, "updated_at")?;
        Ok(UserRow {
            id: self.required_id(data.id, path, "id")?,
            directory_id: self.required_id(data.directory_id, path, "directory_id")?,
            organization_id: data.organization_id,
            idp_id: data.idp_id,
            email: data.email,
            first_name: data.first_name,
            last_name: data.last_name,
            name: data.name,
            username: data.username,
            job_title: data.job_title,
            state: data.state,
            emails: data.emails,
            role: data.role.and_then(|role| role.slug),
            roles: data.roles.map(|roles| {
                roles
                    .into_iter()
                    .flatten()
                    .filter_map(|role| role.slug)
                    .collect()
            }),
            custom_attributes: data.custom_attributes,
            raw_attributes: data.raw_attributes,
            created_at: optional_timestamp(data.created_at),
            updated_at,
            deletion: self.deletion(kind, updated_at),
            last_event_id: self.event.id.clone(),
            last_event: kind,
        })
    }

    fn group_row(
        &self,
        data: WorkosGroup,
        kind: EventKind,
        path: &str,
    ) -> Result<GroupRow, HandlerError> {
        let updated_at = self.required_timestamp(data.updated_at, path, "updated_at")?;
        Ok(GroupRow {
            id: self.required_id(data.id, path, "id")?,
            directory_id: self.required_id(data.directory_id, path, "directory_id")?,
            organization_id: data.organization_id,
            idp_id: data.idp_id,
            name: data.name,
            raw_attributes: data.raw_attributes,
            created_at: optional_timestamp(data.created_at),
            updated_at,
            deletion: self.deletion(kind, updated_at),
            last_event_id: self.event.id.clone(),
            last_event: kind,
        })
    }

    /// The deletion an event of `kind` about an object last changed at `updated_at` makes.
    fn deletion(&self, kind: EventKind, updated_at: DateTime<Utc>) -> Option<Deletion> {
        let created_at = self.event.created_at.map(truncate_to_micros);
        kind.is_deletion().then(|| Deletion {
            at: created_at.unwrap_or(updated_at),
            reaches: created_at,
        })
    }

    fn membership_change(
        &self,
        data: WorkosMembership,
        kind: EventKind,
    ) -> Result<MembershipChange, HandlerError> {
        let directory_id = self.required_id(data.directory_id, "data", "directory_id")?;
        let user = data.user.ok_or_else(|| self.missing("data", "user"))?;
        let group = data.group.ok_or_else(|| self.missing("data", "group"))?;
        // The snapshots are stored under the membership event's id and type, which order
        // like any other snapshot event (rank 0).
        let user = self.user_row(user, kind, "data.user")?;
        let group = self.group_row(group, kind, "data.group")?;
        // Very old deliveries have no `created_at`; the later snapshot is the best estimate
        // of when the membership changed.
        let at = self
            .event
            .created_at
            .map(truncate_to_micros)
            .unwrap_or(user.updated_at.max(group.updated_at));
        let membership = MembershipRow {
            group_id: group.id.clone(),
            user_id: user.id.clone(),
            directory_id,
            organization_id: group
                .organization_id
                .clone()
                .or_else(|| user.organization_id.clone()),
            updated_at: at,
            deleted_at: (kind == EventKind::GroupUserRemoved).then_some(at),
            last_event_id: self.event.id.clone(),
            last_event: kind,
        };
        Ok(MembershipChange {
            membership,
            user,
            group,
        })
    }

    /// An id: 1 to [`MAX_FIELD_LEN`] characters without control characters, so that it fits
    /// in a change notification. `path` and `name` only build the rejection message.
    fn required_id(
        &self,
        value: Option<Value>,
        path: &str,
        name: &str,
    ) -> Result<String, HandlerError> {
        match value {
            None => Err(self.missing(path, name)),
            Some(Value::String(id))
                if !id.is_empty()
                    && id.len() <= MAX_FIELD_LEN
                    && !id.chars().any(char::is_control) =>
            {
                Ok(id)
            }
            Some(_) => Err(self.rejected(
                &format!("{path}.{name}"),
                &format!(
                    "is not an id (1 to {MAX_FIELD_LEN} characters without control characters)"
                ),
            )),
        }
    }

    fn required_timestamp(
        &self,
        value: Option<Value>,
        path: &str,
        name: &str,
    ) -> Result<DateTime<Utc>, HandlerError> {
        match value {
            None => Err(self.missing(path, name)),
            // The value is not quoted: it is a piece of the directory's data.
            Some(value) => read_timestamp(&value)
                .ok_or_else(|| self.rejected(&format!("{path}.{name}"), "is not a timestamp")),
        }
    }

    /// Postgres text cannot hold U+0000: such an event could never be stored, and would
    /// otherwise fail as a database error and be retried in vain.
    fn reject_nul_characters(&self) -> Result<(), HandlerError> {
        let raw = self.event.data.get();
        // Cheap test first; a `\u0000` escape is the only way JSON can carry the character.
        if !raw.contains("\\u0000") {
            return Ok(());
        }
        let data: Value = self.event.data_as()?;
        if contains_nul(&data) {
            return Err(self.rejected("data", "contains a U+0000 character"));
        }
        Ok(())
    }

    fn missing(&self, path: &str, name: &str) -> HandlerError {
        self.rejected(&format!("{path}.{name}"), "is missing")
    }

    fn rejected(&self, field: &str, problem: &str) -> HandlerError {
        HandlerError::Rejected(format!("`{field}` of {} {problem}", self.event.event))
    }
}

fn contains_nul(value: &Value) -> bool {
    match value {
        Value::String(text) => text.contains('\0'),
        Value::Array(items) => items.iter().any(contains_nul),
        Value::Object(fields) => fields
            .iter()
            .any(|(name, value)| name.contains('\0') || contains_nul(value)),
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
}

/// A lenient optional timestamp: anything unreadable is stored as unknown.
fn optional_timestamp(value: Option<Value>) -> Option<DateTime<Utc>> {
    value.as_ref().and_then(read_timestamp)
}

/// Reads a WorkOS timestamp, cut to the microseconds Postgres keeps (so that ordering in Rust
/// and in SQL agree) and limited to the years both understand.
fn read_timestamp(value: &Value) -> Option<DateTime<Utc>> {
    let parsed = parse_timestamp(value.as_str()?)?;
    (1..=9999)
        .contains(&parsed.year())
        .then(|| truncate_to_micros(parsed))
}

fn truncate_to_micros(at: DateTime<Utc>) -> DateTime<Utc> {
    at.trunc_subsecs(6)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(event_type: &str, data: Value) -> Event {
        let body = serde_json::json!({
            "id": "event_1",
            "event": event_type,
            "data": data,
            "created_at": "2021-06-28T08:00:00.000Z",
        });
        Event::from_payload(&body.to_string()).unwrap()
    }

    fn read(event_type: &str, data: Value) -> Result<Snapshot, HandlerError> {
        let event = event(event_type, data);
        read_snapshot(&event, EventKind::from_event_type(event_type).unwrap())
    }

    fn at(text: &str) -> DateTime<Utc> {
        parse_timestamp(text).unwrap()
    }

    fn rejection(result: Result<Snapshot, HandlerError>) -> String {
        match result {
            Err(HandlerError::Rejected(message)) => message,
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    fn user_json() -> Value {
        serde_json::json!({
            "object": "directory_user",
            "id": "directory_user_1",
            "directory_id": "directory_1",
            "organization_id": null,
            "idp_id": "2836",
            "email": null,
            "first_name": "Marcelina",
            "state": "inactive",
            "emails": [{"primary": true, "type": "work", "value": "m@example.com"}],
            "role": {"slug": "member"},
            "roles": [{"slug": "member"}, {"slug": "admin"}, null],
            "custom_attributes": {"department": "Engineering"},
            "created_at": "2023-04-28 20:05:31.093",
            "updated_at": "2021-06-26T08:00:00.123456789Z",
            "previous_attributes": {"job_title": "Software Engineer"},
            "something_new": [1, 2, 3]
        })
    }

    #[test]
    fn maps_a_user_event_to_a_row() {
        let Snapshot::User(user) = read("dsync.user.updated", user_json()).unwrap() else {
            panic!("not a user");
        };
        assert_eq!(user.id, "directory_user_1");
        assert_eq!(user.directory_id, "directory_1");
        assert_eq!(user.organization_id, None);
        assert_eq!(user.email, None);
        assert_eq!(user.last_name, None);
        assert_eq!(user.state.as_deref(), Some("inactive"));
        assert_eq!(user.role.as_deref(), Some("member"));
        assert_eq!(user.roles, Some(vec!["member".into(), "admin".into()]));
        let emails: Value = serde_json::from_str(user.emails.unwrap().text()).unwrap();
        assert_eq!(emails[0]["value"], "m@example.com");
        assert_eq!(user.created_at, Some(at("2023-04-28T20:05:31.093Z")));
        // Postgres keeps microseconds: the key must be the same in Rust and in SQL.
        assert_eq!(user.updated_at, at("2021-06-26T08:00:00.123456Z"));
        // `state: inactive` is a state, not a deletion.
        assert_eq!(user.deletion, None);
        assert_eq!(user.last_event_id, "event_1");
        assert_eq!(user.last_event, EventKind::UserUpdated);
    }

    #[test]
    fn a_deletion_is_dated_by_its_envelope_not_by_the_object_it_carries() {
        // As WorkOS sends it: the user as it last was, long before the deletion.
        let Snapshot::User(user) = read("dsync.user.deleted", user_json()).unwrap() else {
            panic!("not a user");
        };
        let deleted = at("2021-06-28T08:00:00Z");
        assert_eq!(user.updated_at, at("2021-06-26T08:00:00.123456Z"));
        assert_eq!(
            user.deletion,
            Some(Deletion {
                at: deleted,
                reaches: Some(deleted)
            })
        );
        let directory = serde_json::json!({
            "id": "directory_1", "state": "deleting", "type": "okta scim v2.0",
            "created_at": "2021-06-25T19:07:33.155Z", "updated_at": "2021-06-25T19:07:33.155Z"
        });
        let Snapshot::Directory(row) = read("dsync.deleted", directory).unwrap() else {
            panic!("not a directory");
        };
        assert_eq!(row.deletion.map(|deletion| deletion.at), Some(deleted));
        assert_eq!(row.directory_type.as_deref(), Some("okta scim v2.0"));
        assert_eq!(row.domains, None);
    }

    #[test]
    fn a_deletion_without_created_at_is_dated_by_updated_at_and_reaches_everything() {
        // The quick start's own `dsync.user.deleted`: a `wh_` id and no `created_at`.
        let body = serde_json::json!({
            "id": "wh_09FKJ843CVE8F7BXQSPFH0M53V",
            "event": "dsync.user.deleted",
            "data": user_json(),
        });
        let event = Event::from_payload(&body.to_string()).unwrap();
        let Snapshot::User(user) = read_snapshot(&event, EventKind::UserDeleted).unwrap() else {
            panic!("not a user");
        };
        assert_eq!(
            user.deletion,
            Some(Deletion {
                at: user.updated_at,
                reaches: None
            })
        );
    }

    #[test]
    fn keeps_only_id_and_domain_of_directory_domains() {
        let directory = serde_json::json!({
            "id": "directory_1",
            "domains": [{"object": "organization_domain", "id": "od_1", "domain": "foo.com"}],
            "updated_at": "2021-07-01T10:00:00Z"
        });
        let Snapshot::Directory(row) = read("dsync.activated", directory).unwrap() else {
            panic!("not a directory");
        };
        assert_eq!(
            serde_json::to_value(&row.domains).unwrap(),
            serde_json::json!([{"id": "od_1", "domain": "foo.com"}])
        );
        assert_eq!(row.deletion, None);
    }

    #[test]
    fn a_membership_event_carries_its_user_and_group() {
        let data = serde_json::json!({
            "directory_id": "directory_1",
            "user": user_json(),
            "group": {"id": "group_1", "directory_id": "directory_1",
                      "organization_id": "org_1", "updated_at": "2021-06-27T08:00:00Z"}
        });
        let Snapshot::Membership(change) = read("dsync.group.user_removed", data).unwrap() else {
            panic!("not a membership");
        };
        let membership = change.membership;
        assert_eq!(membership.group_id, "group_1");
        assert_eq!(membership.user_id, "directory_user_1");
        assert_eq!(membership.organization_id.as_deref(), Some("org_1"));
        // The envelope's created_at decides, not the snapshots.
        assert_eq!(membership.updated_at, at("2021-06-28T08:00:00Z"));
        assert_eq!(membership.deleted_at, Some(membership.updated_at));
        assert_eq!(change.user.last_event, EventKind::GroupUserRemoved);
        assert_eq!(change.user.deletion, None);
        assert_eq!(change.group.last_event_id, "event_1");
    }

    #[test]
    fn a_membership_without_created_at_dates_from_its_later_snapshot() {
        let body = serde_json::json!({
            "id": "wh_1",
            "event": "dsync.group.user_added",
            "data": {
                "directory_id": "directory_1",
                "user": user_json(),
                "group": {"id": "group_1", "directory_id": "directory_1",
                          "updated_at": "2021-06-27T08:00:00Z"}
            }
        });
        let event = Event::from_payload(&body.to_string()).unwrap();
        let Snapshot::Membership(change) =
            read_snapshot(&event, EventKind::GroupUserAdded).unwrap()
        else {
            panic!("not a membership");
        };
        assert_eq!(change.membership.updated_at, at("2021-06-27T08:00:00Z"));
        assert_eq!(change.membership.deleted_at, None);
    }

    #[test]
    fn rejects_events_missing_what_applying_needs_and_names_the_field() {
        let mut user = user_json();
        user.as_object_mut().unwrap().remove("updated_at");
        assert_eq!(
            rejection(read("dsync.user.created", user)),
            "`data.updated_at` of dsync.user.created is missing"
        );

        let mut user = user_json();
        user["updated_at"] = "last tuesday".into();
        assert!(rejection(read("dsync.user.created", user)).starts_with("`data.updated_at`"));

        let mut user = user_json();
        user["updated_at"] = "0000-01-01T00:00:00Z".into();
        assert!(rejection(read("dsync.user.created", user)).starts_with("`data.updated_at`"));

        let mut user = user_json();
        user["directory_id"] = Value::Null;
        assert!(rejection(read("dsync.user.deleted", user)).starts_with("`data.directory_id`"));

        let group = serde_json::json!({"directory_id": "d", "updated_at": "2021-06-27T08:00:00Z"});
        assert!(rejection(read("dsync.group.created", group)).starts_with("`data.id`"));

        let mut user = user_json();
        user["id"] = "x".repeat(MAX_FIELD_LEN + 1).into();
        assert!(rejection(read("dsync.user.created", user)).starts_with("`data.id`"));

        let data = serde_json::json!({"directory_id": "d", "user": user_json(),
                                      "group": {"id": "g", "directory_id": "d"}});
        assert_eq!(
            rejection(read("dsync.group.user_added", data)),
            "`data.group.updated_at` of dsync.group.user_added is missing"
        );

        let data = serde_json::json!({"directory_id": "d", "group": {}});
        assert!(rejection(read("dsync.group.user_added", data)).starts_with("`data.user`"));

        assert!(rejection(read("dsync.activated", Value::Null)).starts_with("`data` of"));
    }

    #[test]
    fn rejects_a_nul_character_postgres_cannot_store() {
        let mut user = user_json();
        user["raw_attributes"] = serde_json::json!({"note": "a\u{0}b"});
        assert!(rejection(read("dsync.user.created", user)).contains("U+0000"));

        // An escaped backslash before `u0000` is ordinary text.
        let mut user = user_json();
        user["name"] = "C:\\u0000".into();
        assert!(read("dsync.user.created", user).is_ok());
    }

    #[test]
    fn orders_snapshots_by_updated_at_then_rank_then_event_id() {
        let t = at("2021-06-25T19:07:33.155Z");
        let later = at("2021-06-25T19:07:33.156Z");
        let key = |at, kind: EventKind, id| snapshot_key(at, kind, id);
        assert!(key(later, EventKind::UserCreated, "a") > key(t, EventKind::UserDeleted, "z"));
        assert!(key(t, EventKind::UserDeleted, "a") > key(t, EventKind::UserUpdated, "z"));
        assert!(
            key(t, EventKind::DirectoryDeactivated, "a")
                > key(t, EventKind::DirectoryActivated, "z")
        );
        assert!(
            key(t, EventKind::DirectoryDeleted, "a") > key(t, EventKind::DirectoryDeactivated, "z")
        );
        assert!(key(t, EventKind::UserUpdated, "b") > key(t, EventKind::UserCreated, "a"));
    }

    #[test]
    fn ranks_like_the_sql_function() {
        // The same table as `the_sql_event_rank_orders_like_the_spec` in tests/directory.rs.
        let expected = [
            ("dsync.activated", 0),
            ("dsync.deactivated", 1),
            ("dsync.deleted", 2),
            ("dsync.user.created", 0),
            ("dsync.user.updated", 0),
            ("dsync.user.deleted", 2),
            ("dsync.group.created", 0),
            ("dsync.group.updated", 0),
            ("dsync.group.deleted", 2),
            ("dsync.group.user_added", 0),
            ("dsync.group.user_removed", 0),
        ];
        for (event_type, rank) in expected {
            let kind = EventKind::from_event_type(event_type).unwrap();
            assert_eq!(kind.rank(), rank, "{event_type}");
        }
    }

    #[test]
    fn knows_exactly_the_directory_events() {
        for kind in EventKind::ALL {
            assert_eq!(EventKind::from_event_type(kind.event_type()), Some(kind));
        }
        for other in [
            "dsync.token.created",
            "connection.activated",
            "dsync.user",
            "",
        ] {
            assert_eq!(EventKind::from_event_type(other), None);
        }
    }
}
