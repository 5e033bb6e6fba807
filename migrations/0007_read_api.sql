-- Indexes for the read API (src/api/): its lists page by keyset on
-- `(COALESCE(created_at, 'epoch'), id COLLATE "C")` over live rows, so every page is one index
-- range scan whatever the cursor's depth. A row without `created_at` sorts (and is served) as
-- created at 1970-01-01T00:00:00.000Z. Only indexes: no table or data changes.
-- The expressions must stay exactly those of src/api/sql.rs for the planner to use them.

CREATE INDEX directory_users_api_list_idx
    ON workos.directory_users (directory_id, COALESCE(created_at, 'epoch'::timestamptz), id COLLATE "C")
    WHERE deleted_at IS NULL;
CREATE INDEX directory_users_api_email_idx
    ON workos.directory_users (directory_id, email)
    WHERE deleted_at IS NULL;
CREATE INDEX directory_users_api_idp_id_idx
    ON workos.directory_users (directory_id, idp_id)
    WHERE deleted_at IS NULL;

CREATE INDEX directory_groups_api_list_idx
    ON workos.directory_groups (directory_id, COALESCE(created_at, 'epoch'::timestamptz), id COLLATE "C")
    WHERE deleted_at IS NULL;

CREATE INDEX directories_api_list_idx
    ON workos.directories (COALESCE(created_at, 'epoch'::timestamptz), id COLLATE "C")
    WHERE deleted_at IS NULL;
CREATE INDEX directories_api_organization_idx
    ON workos.directories (organization_id, COALESCE(created_at, 'epoch'::timestamptz), id COLLATE "C")
    WHERE deleted_at IS NULL;
