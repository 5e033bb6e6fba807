//! The objects as WorkOS serves them (`API.md` §3.6), built from the rows of the synced
//! tables: `directory` (the REST form) and `directory_group`, and the list envelope. A
//! `directory_user` (with its `groups`) comes as JSON text that its query builds with the
//! same rules (`sql::push_user_select`), spliced into the answer as it is ([`raw_list`]).
//!
//! Where a column is `NULL` but an SDK needs a string (the Rust SDK rejects `null` in
//! `organization_id`, `idp_id`, `name`, `external_key`, `type`, `state`), the object carries
//! `""`; `raw_attributes` and `custom_attributes` are `{}` unless the stored value is an
//! object; `created_at` is `1970-01-01T00:00:00.000Z` when unknown (and sorts so). Optional
//! fields (`role`, `roles`, `emails`, `domain`) are left out when the table has nothing.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};
use serde_json::value::RawValue;
use sqlx::types::Json;

/// The `created_at` (served, and sorted by) of a row that has none.
pub const UNKNOWN_CREATED_AT: DateTime<Utc> = DateTime::UNIX_EPOCH;

/// A stored JSON value, as stored.
pub type StoredJson = Option<Json<Box<RawValue>>>;

/// A time as WorkOS writes it: ISO 8601, milliseconds, `Z`.
fn time<S: Serializer>(time: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&time.to_rfc3339_opts(SecondsFormat::Millis, true))
}

fn created<S: Serializer>(time: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
    self::time(&time.unwrap_or(UNKNOWN_CREATED_AT), s)
}

/// A text column as a string: `""` for `NULL`.
fn text<S: Serializer>(text: &Option<String>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(text.as_deref().unwrap_or(""))
}

/// Whether a stored JSON value starts with `open` (`{` for objects, `[` for arrays).
fn is_json(value: &StoredJson, open: char) -> bool {
    matches!(value, Some(Json(raw)) if raw.get().trim_start().starts_with(open))
}

/// A stored JSON value if it is an object, `{}` otherwise.
fn object<S: Serializer>(value: &StoredJson, serializer: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(Json(raw)) if is_json(value, '{') => raw.serialize(serializer),
        _ => serializer.serialize_map(Some(0))?.end(),
    }
}

/// `{"active": …, "inactive": …}`
#[derive(Serialize)]
struct UserCounts {
    active: i64,
    inactive: i64,
}

/// `{"users": …, "groups": …}`
#[derive(Serialize)]
struct Metadata {
    users: UserCounts,
    groups: i64,
}

/// A live row of `workos.directories`, with the counts of its live users and groups.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DirectoryRow {
    pub id: String,
    pub organization_id: Option<String>,
    pub name: Option<String>,
    #[sqlx(rename = "type")]
    pub kind: Option<String>,
    pub state: Option<String>,
    pub external_key: Option<String>,
    /// The first entry of `domains`.
    pub domain: Option<String>,
    pub created_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
    /// Live users whose `state` is `active`.
    pub users_active: i64,
    /// Live users in any other state.
    pub users_inactive: i64,
    /// Live groups.
    pub groups: i64,
}

/// The REST form of a directory state: the event form `active`/`inactive` is
/// `linked`/`unlinked`; every other value is the same in both.
pub fn rest_state(state: &str) -> &str {
    match state {
        "active" => "linked",
        "inactive" => "unlinked",
        other => other,
    }
}

#[derive(Serialize)]
struct DirectoryJson<'a> {
    object: &'static str,
    id: &'a str,
    #[serde(serialize_with = "text")]
    organization_id: &'a Option<String>,
    #[serde(serialize_with = "text")]
    external_key: &'a Option<String>,
    #[serde(rename = "type", serialize_with = "text")]
    kind: &'a Option<String>,
    state: &'a str,
    #[serde(serialize_with = "text")]
    name: &'a Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    domain: &'a Option<String>,
    metadata: Metadata,
    #[serde(serialize_with = "created")]
    created_at: &'a Option<DateTime<Utc>>,
    #[serde(serialize_with = "time")]
    updated_at: &'a DateTime<Utc>,
}

impl Serialize for DirectoryRow {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        DirectoryJson {
            object: "directory",
            id: &self.id,
            organization_id: &self.organization_id,
            external_key: &self.external_key,
            kind: &self.kind,
            state: rest_state(self.state.as_deref().unwrap_or("")),
            name: &self.name,
            domain: &self.domain,
            metadata: Metadata {
                users: UserCounts {
                    active: self.users_active,
                    inactive: self.users_inactive,
                },
                groups: self.groups,
            },
            created_at: &self.created_at,
            updated_at: &self.updated_at,
        }
        .serialize(serializer)
    }
}

/// A live row of `workos.directory_groups`. (In a user's `groups` the same object is built
/// by the user's query: `sql::push_user_select`.)
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct GroupRow {
    pub id: String,
    pub idp_id: Option<String>,
    pub directory_id: String,
    pub organization_id: Option<String>,
    pub name: Option<String>,
    pub raw_attributes: StoredJson,
    pub created_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Serialize)]
struct GroupJson<'a> {
    object: &'static str,
    id: &'a str,
    #[serde(serialize_with = "text")]
    idp_id: &'a Option<String>,
    directory_id: &'a str,
    #[serde(serialize_with = "text")]
    organization_id: &'a Option<String>,
    #[serde(serialize_with = "text")]
    name: &'a Option<String>,
    #[serde(serialize_with = "object")]
    raw_attributes: &'a StoredJson,
    #[serde(serialize_with = "created")]
    created_at: &'a Option<DateTime<Utc>>,
    #[serde(serialize_with = "time")]
    updated_at: &'a DateTime<Utc>,
}

impl Serialize for GroupRow {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        GroupJson {
            object: "directory_group",
            id: &self.id,
            idp_id: &self.idp_id,
            directory_id: &self.directory_id,
            organization_id: &self.organization_id,
            name: &self.name,
            raw_attributes: &self.raw_attributes,
            created_at: &self.created_at,
            updated_at: &self.updated_at,
        }
        .serialize(serializer)
    }
}

/// A live user as the JSON text of its whole `directory_user` object (with `groups`), built
/// by its query (`sql::user`, `sql::users`): served as it comes, never parsed.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct UserJson {
    pub id: String,
    pub json: String,
}

/// `{"before": …, "after": …}`
#[derive(Serialize)]
struct ListMetadata<'a> {
    before: &'a Option<String>,
    after: &'a Option<String>,
}

/// The list envelope: `{"object": "list", "data": […], "list_metadata": {…}}`.
#[derive(Serialize)]
pub struct List<'a, T> {
    object: &'static str,
    data: &'a [T],
    list_metadata: ListMetadata<'a>,
}

impl<'a, T: Serialize> List<'a, T> {
    /// A page and its cursors.
    pub fn new(data: &'a [T], before: &'a Option<String>, after: &'a Option<String>) -> Self {
        List {
            object: "list",
            data,
            list_metadata: ListMetadata { before, after },
        }
    }
}

/// The list envelope around objects that are JSON text already, written as [`List`] would
/// write it.
pub fn raw_list(data: &[UserJson], before: &Option<String>, after: &Option<String>) -> Vec<u8> {
    let objects: usize = data.iter().map(|object| object.json.len() + 1).sum();
    let mut body = Vec::with_capacity(objects + 128);
    body.extend_from_slice(b"{\"object\":\"list\",\"data\":[");
    for (i, object) in data.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(object.json.as_bytes());
    }
    body.extend_from_slice(b"],\"list_metadata\":");
    serde_json::to_writer(&mut body, &ListMetadata { before, after }).expect("strings serialize");
    body.push(b'}');
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_raw_list_is_the_list_of_its_objects() {
        let users = [
            UserJson {
                id: "u1".into(),
                json: r#"{"id" : "u1", "groups" : []}"#.into(),
            },
            UserJson {
                id: "u2".into(),
                json: r#"{"id" : "u2", "groups" : [{"id" : "g"}]}"#.into(),
            },
        ];
        let body = raw_list(&users, &None, &Some("u2".into()));
        let parsed: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            parsed,
            serde_json::json!({"object": "list", "data": [{"id": "u1", "groups": []},
                {"id": "u2", "groups": [{"id": "g"}]}],
                "list_metadata": {"before": null, "after": "u2"}})
        );
        let empty: serde_json::Value =
            serde_json::from_slice(&raw_list(&[], &None, &None)).unwrap();
        assert_eq!(empty["data"], serde_json::json!([]));
    }

    #[test]
    fn states_map_to_the_rest_form() {
        assert_eq!(rest_state("active"), "linked");
        assert_eq!(rest_state("inactive"), "unlinked");
        assert_eq!(rest_state("deleting"), "deleting");
        assert_eq!(rest_state("invalid_credentials"), "invalid_credentials");
    }

    #[test]
    fn nulls_become_what_the_sdks_accept() {
        let group = GroupRow {
            id: "directory_group_1".into(),
            idp_id: None,
            directory_id: "directory_1".into(),
            organization_id: None,
            name: None,
            raw_attributes: Some(Json(RawValue::from_string("[1]".into()).unwrap())),
            created_at: None,
            updated_at: DateTime::from_timestamp_millis(1_624_648_053_155).unwrap(),
        };
        let json = serde_json::to_value(&group).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"object": "directory_group", "id": "directory_group_1",
                "idp_id": "", "directory_id": "directory_1", "organization_id": "", "name": "",
                "raw_attributes": {}, "created_at": "1970-01-01T00:00:00.000Z",
                "updated_at": "2021-06-25T19:07:33.155Z"})
        );
    }
}
