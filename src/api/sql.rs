//! Every query of the read API, and nothing else. All values are bound parameters; the SQL
//! text varies only with which filters, which cursor direction and whether the key is
//! limited to organizations, so each variant is one prepared statement.
//!
//! Lists page by keyset on `(COALESCE(created_at, 'epoch'), id COLLATE "C")` over live rows,
//! the expressions of the partial indexes of `migrations/0007_read_api.sql`: a page is an
//! index range scan past the cursor's key, never an `OFFSET`, and rows inserted or deleted
//! elsewhere in the list do not move the pages around it.

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, QueryBuilder};

use super::auth::Scope;
use super::lookup::ById;
use super::objects::{DirectoryRow, GroupRow, UserJson};
use super::params::Page;

/// The position of a cursor's object in its list.
#[derive(Debug, Clone)]
pub struct Bound {
    /// Its `COALESCE(created_at, 'epoch')`.
    pub key: DateTime<Utc>,
    /// Its id.
    pub id: String,
}

/// The tables a cursor can name an object of.
#[derive(Debug, Clone, Copy)]
pub enum Table {
    /// `workos.directories`
    Directories,
    /// `workos.directory_users`
    Users,
    /// `workos.directory_groups`
    Groups,
}

impl Table {
    fn name(self) -> &'static str {
        match self {
            Table::Directories => "workos.directories",
            Table::Users => "workos.directory_users",
            Table::Groups => "workos.directory_groups",
        }
    }
}

/// The order key of a row of `alias`.
fn key(alias: &str) -> String {
    format!("COALESCE({alias}.created_at, 'epoch'::timestamptz)")
}

fn push_scope(query: &mut QueryBuilder<'_, Postgres>, alias: &str, scope: &Scope) {
    if let Some(organizations) = scope.organizations() {
        query.push(format_args!(" AND {alias}.organization_id = ANY("));
        query.push_bind(organizations.to_vec());
        query.push(")");
    }
}

/// Leaves out the rows (`alias`) of a directory whose deletion is still under way
/// (`workos.directory_deletions`): its row is deleted, and its users and groups go in steps
/// (docs/SCHEMA.md, "Deletions"), but to an app they are gone with it.
fn push_directory_not_deleted(query: &mut QueryBuilder<'_, Postgres>, alias: &str) {
    query.push(format_args!(
        " AND NOT EXISTS (SELECT FROM workos.directory_deletions dd \
         WHERE dd.directory_id = {alias}.directory_id)"
    ));
}

/// `column IN ($n, …)` for `ids` (a lookup's, at most [`super::lookup::MAX_IDS`]), with as
/// many parameters as the next power of two, the last id repeated: one statement per size,
/// which Postgres plans once and keeps (a generic plan, estimated as the custom plans are).
/// An array parameter (`= ANY($1)`) would be re-planned at every execution, since a generic
/// plan assumes ten elements: 0.25 ms of planning for the user's statement.
fn push_ids(query: &mut QueryBuilder<'_, Postgres>, column: &str, mut ids: Vec<String>) {
    let last = ids.last().expect("a lookup has an id").clone();
    ids.resize(ids.len().next_power_of_two(), last);
    query.push(format_args!("{column} IN ("));
    let mut list = query.separated(", ");
    for id in ids {
        list.push_bind(id);
    }
    query.push(")");
}

/// The cursor bound (if any), the order and the limit of `page`.
fn push_page(
    query: &mut QueryBuilder<'_, Postgres>,
    alias: &str,
    page: &Page,
    bound: Option<&Bound>,
) {
    let (op, direction) = if page.scan_descending() {
        ("<", "DESC")
    } else {
        (">", "ASC")
    };
    let key = key(alias);
    if let Some(bound) = bound {
        query.push(format_args!(
            " AND ({key}, {alias}.id COLLATE \"C\") {op} ("
        ));
        query.push_bind(bound.key);
        query.push(", ");
        query.push_bind(bound.id.clone());
        query.push(")");
    }
    query.push(format_args!(
        " ORDER BY {key} {direction}, {alias}.id COLLATE \"C\" {direction} LIMIT "
    ));
    query.push_bind(page.fetch());
}

/// The position of the object `id` of `table`, deleted or not (a page's last object may be
/// deleted before the next page is asked for), if it exists and the scope may see it.
pub async fn cursor(
    pool: &PgPool,
    table: Table,
    scope: &Scope,
    id: &str,
) -> sqlx::Result<Option<Bound>> {
    let mut query = QueryBuilder::new(format!(
        "SELECT {} FROM {} t WHERE t.id = ",
        key("t"),
        table.name()
    ));
    query.push_bind(id.to_owned());
    push_scope(&mut query, "t", scope);
    let key: Option<DateTime<Utc>> = query.build_query_scalar().fetch_optional(pool).await?;
    Ok(key.map(|key| Bound {
        key,
        id: id.to_owned(),
    }))
}

// ---- Directories ----

const DIRECTORY_SELECT: &str = "SELECT d.id, d.organization_id, d.name, d.type, d.state, \
     d.external_key, d.domains -> 0 ->> 'domain' AS domain, d.created_at, d.updated_at, \
     users.active AS users_active, users.inactive AS users_inactive, \
     (SELECT count(*) FROM workos.directory_groups g \
      WHERE g.directory_id = d.id AND g.deleted_at IS NULL) AS groups \
     FROM workos.directories d \
     CROSS JOIN LATERAL (SELECT count(*) FILTER (WHERE u.state = 'active') AS active, \
         count(*) FILTER (WHERE u.state IS DISTINCT FROM 'active') AS inactive \
         FROM workos.directory_users u \
         WHERE u.directory_id = d.id AND u.deleted_at IS NULL) users \
     WHERE d.deleted_at IS NULL";

/// The filters of `GET /directories`.
#[derive(Debug, Default)]
pub struct DirectoryFilter {
    /// `organization_id`
    pub organization_id: Option<String>,
    /// `search`: a substring of the name, in any case.
    pub search: Option<String>,
    /// `domain`: one of `domains[].domain`.
    pub domain: Option<String>,
}

/// Live directories by id.
impl ById for DirectoryRow {
    fn id(&self) -> &str {
        &self.id
    }

    async fn fetch(pool: PgPool, scope: Scope, ids: Vec<String>) -> sqlx::Result<Vec<Self>> {
        let mut query = QueryBuilder::new(DIRECTORY_SELECT);
        query.push(" AND ");
        push_ids(&mut query, "d.id", ids);
        push_scope(&mut query, "d", &scope);
        query.build_query_as().fetch_all(&pool).await
    }
}

/// A page of live directories.
pub async fn directories(
    pool: &PgPool,
    scope: &Scope,
    filter: &DirectoryFilter,
    page: &Page,
    bound: Option<&Bound>,
) -> sqlx::Result<Vec<DirectoryRow>> {
    let mut query = QueryBuilder::new(DIRECTORY_SELECT);
    if let Some(organization_id) = &filter.organization_id {
        query.push(" AND d.organization_id = ");
        query.push_bind(organization_id.clone());
    }
    if let Some(search) = &filter.search {
        let escaped = search
            .replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_");
        query.push(" AND d.name ILIKE ");
        query.push_bind(format!("%{escaped}%"));
    }
    if let Some(domain) = &filter.domain {
        query.push(" AND d.domains @> jsonb_build_array(jsonb_build_object('domain', ");
        query.push_bind(domain.clone());
        query.push("::text))");
    }
    push_scope(&mut query, "d", scope);
    push_page(&mut query, "d", page, bound);
    query.build_query_as().fetch_all(pool).await
}

// ---- Users ----

/// A timestamp as WorkOS writes it (ISO 8601 in UTC, milliseconds, `Z`), as the Rust
/// serializer of the other objects does (`objects::time`). The colons are quoted so that the
/// same text runs in pgbench, which would take `:MI` for a variable.
fn iso_time(expr: &str) -> String {
    format!("to_char(({expr}) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24\":\"MI\":\"SS.MS\"Z\"')")
}

/// A stored `jsonb` column if it holds an object, `{}` otherwise.
fn json_object(column: &str) -> String {
    format!("CASE WHEN jsonb_typeof({column}) = 'object' THEN {column} ELSE '{{}}'::jsonb END")
}

/// `SELECT u.id, <the user's JSON>`: each user as the whole `directory_user` object of
/// `API.md` §3.6, built by Postgres (so dsyncd only splices its text into the answer): the
/// same fields and values as the Rust objects of `objects` would give (`""` for a `NULL` that
/// an SDK needs as a string, `{}` for attributes that are not objects, `emails`, `role` and
/// `roles` left out when absent), with `groups` its live groups, oldest first.
fn push_user_select(query: &mut QueryBuilder<'_, Postgres>, scope: &Scope) {
    query.push(format_args!(
        "SELECT u.id, left(json_build_object('object', 'directory_user', 'id', u.id, \
         'directory_id', u.directory_id, 'organization_id', COALESCE(u.organization_id, ''), \
         'idp_id', COALESCE(u.idp_id, ''), 'email', u.email, 'first_name', u.first_name, \
         'last_name', u.last_name, 'name', u.name, 'username', u.username, \
         'job_title', u.job_title, 'state', COALESCE(u.state, ''), \
         'raw_attributes', {}, 'custom_attributes', {}, \
         'created_at', {}, 'updated_at', {}, \
         'groups', COALESCE((SELECT json_agg(json_build_object('object', 'directory_group', \
             'id', g.id, 'idp_id', COALESCE(g.idp_id, ''), 'directory_id', g.directory_id, \
             'organization_id', COALESCE(g.organization_id, ''), 'name', COALESCE(g.name, ''), \
             'raw_attributes', {}, 'created_at', {}, 'updated_at', {}) \
             ORDER BY {}, g.id COLLATE \"C\") \
           FROM workos.directory_group_memberships gm \
           JOIN workos.directory_groups g ON g.id = gm.group_id \
           WHERE gm.user_id = u.id AND gm.deleted_at IS NULL AND g.deleted_at IS NULL",
        json_object("u.raw_attributes"),
        json_object("u.custom_attributes"),
        iso_time(&key("u")),
        iso_time("u.updated_at"),
        json_object("g.raw_attributes"),
        iso_time(&key("g")),
        iso_time("g.updated_at"),
        key("g"),
    ));
    push_scope(query, "g", scope);
    // The object's text without its closing brace, then the fields present only sometimes.
    query.push(
        "), '[]'::json))::text, -1) \
         || CASE WHEN jsonb_typeof(u.emails) = 'array' \
             THEN ', \"emails\" : ' || u.emails::text ELSE '' END \
         || CASE WHEN u.role IS NULL THEN '' \
             ELSE ', \"role\" : ' || json_build_object('slug', u.role)::text END \
         || CASE WHEN u.roles IS NULL THEN '' \
             ELSE ', \"roles\" : ' || COALESCE((SELECT json_agg(json_build_object('slug', r.slug) \
                 ORDER BY r.n)::text FROM unnest(u.roles) WITH ORDINALITY AS r(slug, n)), '[]') END \
         || '}' AS json",
    );
}

/// Whose users `GET /directory_users` lists.
#[derive(Debug)]
pub enum UsersOf {
    /// `directory`, with `email` and `idp_id` if given.
    Directory {
        /// The directory id.
        id: String,
        /// The primary email.
        email: Option<String>,
        /// The id at the identity provider.
        idp_id: Option<String>,
    },
    /// `group`: its live members.
    Group(String),
}

/// Live users by id, with their groups.
impl ById for UserJson {
    fn id(&self) -> &str {
        &self.id
    }

    async fn fetch(pool: PgPool, scope: Scope, ids: Vec<String>) -> sqlx::Result<Vec<Self>> {
        users_by_id_query(&scope, ids)
            .build_query_as()
            .fetch_all(&pool)
            .await
    }
}

fn users_by_id_query(scope: &Scope, ids: Vec<String>) -> QueryBuilder<'static, Postgres> {
    let mut query = QueryBuilder::new("");
    push_user_select(&mut query, scope);
    query.push(" FROM workos.directory_users u WHERE u.deleted_at IS NULL AND ");
    push_ids(&mut query, "u.id", ids);
    push_directory_not_deleted(&mut query, "u");
    push_scope(&mut query, "u", scope);
    query
}

/// A page of live users of a directory, or of the live members of a group.
pub async fn users(
    pool: &PgPool,
    scope: &Scope,
    of: &UsersOf,
    page: &Page,
    bound: Option<&Bound>,
) -> sqlx::Result<Vec<UserJson>> {
    users_query(scope, of, page, bound)
        .build_query_as()
        .fetch_all(pool)
        .await
}

fn users_query(
    scope: &Scope,
    of: &UsersOf,
    page: &Page,
    bound: Option<&Bound>,
) -> QueryBuilder<'static, Postgres> {
    let mut query = QueryBuilder::new("");
    push_user_select(&mut query, scope);
    match of {
        UsersOf::Directory { id, email, idp_id } => {
            query.push(
                " FROM workos.directory_users u WHERE u.deleted_at IS NULL AND u.directory_id = ",
            );
            query.push_bind(id.clone());
            // Each lookup also states its hash index's expression (migration 0012), which the
            // planner matches as written.
            for (column, value) in [("email", email), ("idp_id", idp_id)] {
                if let Some(value) = value {
                    query.push(format_args!(" AND u.{column} = "));
                    query.push_bind(value.clone());
                    query.push(format_args!(
                        " AND (u.directory_id || ' ' || u.{column}) = ("
                    ));
                    query.push_bind(id.clone());
                    query.push(" || ' ' || ");
                    query.push_bind(value.clone());
                    query.push(")");
                }
            }
        }
        UsersOf::Group(group) => {
            query.push(
                " FROM workos.directory_group_memberships m \
                 JOIN workos.directory_users u ON u.id = m.user_id \
                 WHERE m.deleted_at IS NULL AND u.deleted_at IS NULL AND m.group_id = ",
            );
            query.push_bind(group.clone());
            // A deleted group's memberships may still be going in steps: it has no members.
            query.push(
                " AND NOT EXISTS (SELECT FROM workos.group_deletions gd \
                 WHERE gd.group_id = m.group_id)",
            );
        }
    }
    push_directory_not_deleted(&mut query, "u");
    push_scope(&mut query, "u", scope);
    push_page(&mut query, "u", page, bound);
    query
}

// ---- Groups ----

const GROUP_COLUMNS: &str = "SELECT g.id, g.idp_id, g.directory_id, g.organization_id, g.name, \
     g.raw_attributes, g.created_at, g.updated_at";

/// Whose groups `GET /directory_groups` lists.
#[derive(Debug)]
pub enum GroupsOf {
    /// `directory`
    Directory(String),
    /// `user`: the live groups it is a live member of.
    User(String),
}

/// Live groups by id.
impl ById for GroupRow {
    fn id(&self) -> &str {
        &self.id
    }

    async fn fetch(pool: PgPool, scope: Scope, ids: Vec<String>) -> sqlx::Result<Vec<Self>> {
        let mut query = QueryBuilder::new(GROUP_COLUMNS);
        query.push(" FROM workos.directory_groups g WHERE g.deleted_at IS NULL AND ");
        push_ids(&mut query, "g.id", ids);
        push_directory_not_deleted(&mut query, "g");
        push_scope(&mut query, "g", &scope);
        query.build_query_as().fetch_all(&pool).await
    }
}

/// A page of live groups of a directory, or of those a user is a live member of.
pub async fn groups(
    pool: &PgPool,
    scope: &Scope,
    of: &GroupsOf,
    page: &Page,
    bound: Option<&Bound>,
) -> sqlx::Result<Vec<GroupRow>> {
    let mut query = QueryBuilder::new(GROUP_COLUMNS);
    match of {
        GroupsOf::Directory(directory) => {
            query.push(
                " FROM workos.directory_groups g WHERE g.deleted_at IS NULL AND g.directory_id = ",
            );
            query.push_bind(directory.clone());
        }
        GroupsOf::User(user) => {
            query.push(
                " FROM workos.directory_group_memberships m \
                 JOIN workos.directory_groups g ON g.id = m.group_id \
                 WHERE m.deleted_at IS NULL AND g.deleted_at IS NULL AND m.user_id = ",
            );
            query.push_bind(user.clone());
        }
    }
    push_directory_not_deleted(&mut query, "g");
    push_scope(&mut query, "g", scope);
    push_page(&mut query, "g", page, bound);
    query.build_query_as().fetch_all(pool).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::params::Order;

    /// The statement of a pgbench script of bench/ (its last line), with the parameters in
    /// order: a benchmark compares dsyncd with Postgres running exactly its statement.
    fn bench_statement(file: &str, parameters: &[&str]) -> String {
        let script =
            std::fs::read_to_string(format!("{}/bench/{file}", env!("CARGO_MANIFEST_DIR")))
                .unwrap();
        let mut statement = script
            .lines()
            .last()
            .unwrap()
            .trim_end_matches(';')
            .to_owned();
        for (i, parameter) in parameters.iter().enumerate() {
            statement = statement.replacen(parameter, &format!("${}", i + 1), 1);
        }
        statement
    }

    #[test]
    fn lookups_of_up_to_a_power_of_two_ids_share_a_statement() {
        let statement = |n: usize| {
            let ids = (0..n).map(|n| format!("directory_user_{n}")).collect();
            users_by_id_query(&Scope::All, ids).sql().to_owned()
        };
        assert!(statement(1).contains("u.id IN ($1)"));
        assert!(statement(3).contains("u.id IN ($1, $2, $3, $4)"));
        assert_eq!(statement(3), statement(4));
        assert_ne!(statement(4), statement(5));
        assert_eq!(statement(33), statement(64));
    }

    #[test]
    fn the_benchmark_runs_the_statements_of_the_user_routes() {
        let list = Page {
            limit: 100,
            order: Order::Desc,
            cursor: None,
        };
        let of = UsersOf::Directory {
            id: "directory_bench_read".into(),
            email: None,
            idp_id: None,
        };
        assert_eq!(
            users_query(&Scope::All, &of, &list, None).sql(),
            bench_statement("read_list.sql", &["'directory_bench_read'", "101"])
        );
        assert_eq!(
            users_by_id_query(&Scope::All, vec!["directory_user_read_1".into()]).sql(),
            bench_statement("read_get.sql", &["'directory_user_read_' || :n::text"])
        );
    }

    /// The plan of a list of users, as the read API binds it.
    async fn plan(pool: &PgPool, of: UsersOf) -> String {
        use sqlx::Execute;
        let page = Page {
            limit: 10,
            order: Order::Asc,
            cursor: None,
        };
        let mut query = users_query(&Scope::All, &of, &page, None);
        let mut query = query.build();
        let arguments = query.take_arguments().unwrap().unwrap();
        let explain = format!("EXPLAIN (FORMAT JSON, COSTS OFF) {}", query.sql());
        let plan: serde_json::Value = sqlx::query_scalar_with(&explain, arguments)
            .fetch_one(pool)
            .await
            .unwrap();
        plan.to_string()
    }

    #[sqlx::test]
    async fn a_lookup_by_email_or_idp_id_reads_one_bucket_of_its_hash_index(pool: PgPool) {
        // 50 SCIM-like directories whose users share idp_ids "1" to "400", and emails.
        sqlx::query(
            "INSERT INTO workos.directory_users (id, directory_id, idp_id, email, created_at,
                 updated_at, last_event_id, last_event)
             SELECT 'directory_user_' || d || '_' || n, 'directory_' || d, n::text,
                 'user' || n || '@example.com', now(), now(), 'event_' || d || '_' || n,
                 'dsync.user.created'
             FROM generate_series(1, 50) AS d, generate_series(1, 400) AS n",
        )
        .execute(&pool)
        .await
        .unwrap();
        sqlx::query("ANALYZE workos.directory_users")
            .execute(&pool)
            .await
            .unwrap();
        let by_email = plan(
            &pool,
            UsersOf::Directory {
                id: "directory_7".into(),
                email: Some("user12@example.com".into()),
                idp_id: None,
            },
        )
        .await;
        assert!(
            by_email.contains("directory_users_email_hash_idx"),
            "{by_email}"
        );
        let by_idp_id = plan(
            &pool,
            UsersOf::Directory {
                id: "directory_7".into(),
                email: None,
                idp_id: Some("12".into()),
            },
        )
        .await;
        assert!(
            by_idp_id.contains("directory_users_idp_id_hash_idx"),
            "{by_idp_id}"
        );
    }
}
