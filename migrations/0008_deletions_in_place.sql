-- Deleting a row in place: marking a user or membership deleted (`deleted_at`, `synced_at`)
-- should rewrite the row and nothing else. Postgres does that (a HOT update: no index entry
-- written) only when no index mentions a changed column and the row's page has room for the
-- new version. Before this migration neither held for users (the read API's indexes of 0007 are
-- partial on `deleted_at IS NULL`) nor, once a page was full, for memberships: deleting a
-- directory of 100,000 users and 300,000 memberships wrote 1.2 million index entries and took
-- 12 s of the statements alone (BENCHMARKS.md, "Scale").
--
-- 1. Users' and memberships' pages are filled to half, so every row of a page can be rewritten
--    on it once (a directory deletion rewrites all of them). This applies to pages written from
--    now on; `VACUUM FULL` (or pg_repack) rewrites the existing ones (docs/OPERATIONS.md).
-- 2. The users' read API indexes cover deleted rows too (the read API filters them on the
--    row), so that no index of `directory_users` mentions `deleted_at`. The list index leads
--    with `directory_id`, which makes `directory_users_directory_id_idx` redundant.
-- The expressions must stay exactly those of src/api/sql.rs for the planner to use them.

ALTER TABLE workos.directory_users SET (fillfactor = 50);
ALTER TABLE workos.directory_group_memberships SET (fillfactor = 50);

CREATE INDEX directory_users_list_idx
    ON workos.directory_users (directory_id, COALESCE(created_at, 'epoch'::timestamptz), id COLLATE "C");
CREATE INDEX directory_users_email_idx ON workos.directory_users (directory_id, email);
CREATE INDEX directory_users_idp_id_idx ON workos.directory_users (directory_id, idp_id);

DROP INDEX workos.directory_users_api_list_idx;
DROP INDEX workos.directory_users_api_email_idx;
DROP INDEX workos.directory_users_api_idp_id_idx;
DROP INDEX workos.directory_users_directory_id_idx;

-- 3. The change notifications of the rows a cascade deletes are built in Postgres (a directory's
--    deletion announces every row under it, and they never travel to dsyncd), in exactly the
--    text of src/directory/mod.rs's payloads: serde_json's, keys sorted, no spaces, so that
--    Postgres drops a row's repeated notification within a transaction. Ids hold no control
--    characters (the handler rejects them), so quoting one escapes `\` and `"` only. Plain SQL
--    expressions, which the planner inlines.
CREATE FUNCTION workos.json_quote(value text) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT '"' || replace(replace(value, '\', '\\'), '"', '\"') || '"' $$;

CREATE FUNCTION workos.deletion_notice(table_name text, directory_id text, id text) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT '{"directory_id":' || workos.json_quote(directory_id) || ',"id":'
                 || workos.json_quote(id) || ',"op":"delete","table":"' || table_name || '"}' $$;

CREATE FUNCTION workos.membership_deletion_notice(directory_id text, group_id text, user_id text)
    RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT '{"directory_id":' || workos.json_quote(directory_id) || ',"group_id":'
                 || workos.json_quote(group_id)
                 || ',"op":"delete","table":"directory_group_memberships","user_id":'
                 || workos.json_quote(user_id) || '}' $$;
