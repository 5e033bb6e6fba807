-- Reconciliation (issue 11): the Events API tail and snapshot reconciliation (src/reconcile/).

-- Where each inbox row came from: a webhook delivery, or the Events API tail. Only the tail
-- writes `events_api`; the receiver's insert is unchanged and keeps the default. A constant
-- default adds the column without rewriting the table, and the check is NOT VALID so that
-- adding it does not scan the inbox (existing rows all hold the default).
ALTER TABLE workos.inbox ADD COLUMN source text NOT NULL DEFAULT 'webhook';
ALTER TABLE workos.inbox ADD CONSTRAINT inbox_source_check
    CHECK (source IN ('webhook', 'events_api')) NOT VALID;

-- The Events API tail's position: one row once the tail has started. No row means the tail
-- never ran: it runs a snapshot reconciliation first.
CREATE TABLE workos.events_cursor (
    singleton        boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    -- The last event of the last stored page, as served (`after` of the next request); NULL
    -- until the first event after `range_start` is stored.
    event_id         text,
    -- That event's `created_at` (how old the cursor is: WorkOS keeps 30 days).
    event_created_at timestamptz,
    -- Where the tail (re)started: when the snapshot reconciliation before it began. Used as
    -- `range_start` while `event_id` is NULL.
    range_start      timestamptz NOT NULL,
    -- When the cursor last moved.
    moved_at         timestamptz NOT NULL DEFAULT now()
);

-- Snapshot reconciliation runs, newest last: what the command and the metrics report.
CREATE TABLE workos.reconcile_runs (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- When the listing began: synthetic events are dated so, and rows written after it are
    -- left alone.
    started_at   timestamptz NOT NULL,
    finished_at  timestamptz,
    -- The run's scope (`--directory`), NULL for every directory.
    directory_id text,
    dry_run      boolean     NOT NULL,
    -- `{"users": {"missing": 1, "stale": 0, "deleted": 2}, …}`, once finished.
    drift        jsonb,
    -- Why the run failed, if it did (never a response body).
    error        text
);

-- What a run has listed so far, compared with the synced tables in SQL so that a directory is
-- never held in memory. Unlogged: it is scratch space, emptied by each run.
-- kind: `directory`, `user`, `group`, or `member` (id = the user, group_id = the group).
CREATE UNLOGGED TABLE workos.reconcile_listed (
    run_id       bigint      NOT NULL,
    kind         text        NOT NULL,
    -- The directory it was listed under (for a directory: itself).
    directory_id text        NOT NULL,
    id           text        NOT NULL,
    group_id     text        NOT NULL DEFAULT '',
    -- The listed object, in the event form (directories, users and groups only).
    object       text,
    PRIMARY KEY (run_id, kind, id, group_id)
);

-- A stored row turned back into WorkOS's event form (every attribute dsyncd keeps), for the
-- deletion events a snapshot reconciliation applies to rows WorkOS no longer lists: the
-- tombstoned row keeps its attributes. Timestamps in WorkOS's form, with microseconds.
CREATE FUNCTION workos.reconcile_timestamp(at timestamptz) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') $$;

CREATE FUNCTION workos.directory_as_event(d workos.directories) RETURNS json
    LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT json_build_object(
        'object', 'directory', 'id', d.id, 'organization_id', d.organization_id,
        'name', d.name, 'type', d.type, 'state', d.state, 'external_key', d.external_key,
        'domains', d.domains,
        'created_at', workos.reconcile_timestamp(d.created_at),
        'updated_at', workos.reconcile_timestamp(d.updated_at))
$$;

CREATE FUNCTION workos.user_as_event(u workos.directory_users) RETURNS json
    LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT json_build_object(
        'object', 'directory_user', 'id', u.id, 'directory_id', u.directory_id,
        'organization_id', u.organization_id, 'idp_id', u.idp_id, 'email', u.email,
        'first_name', u.first_name, 'last_name', u.last_name, 'name', u.name,
        'username', u.username, 'job_title', u.job_title, 'state', u.state,
        'emails', u.emails,
        'role', CASE WHEN u.role IS NOT NULL THEN json_build_object('slug', u.role) END,
        'roles', CASE WHEN u.roles IS NOT NULL THEN
            COALESCE((SELECT json_agg(json_build_object('slug', r)) FROM unnest(u.roles) AS r),
                     '[]'::json) END,
        'custom_attributes', u.custom_attributes, 'raw_attributes', u.raw_attributes,
        'created_at', workos.reconcile_timestamp(u.created_at),
        'updated_at', workos.reconcile_timestamp(u.updated_at))
$$;

CREATE FUNCTION workos.group_as_event(g workos.directory_groups) RETURNS json
    LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT json_build_object(
        'object', 'directory_group', 'id', g.id, 'directory_id', g.directory_id,
        'organization_id', g.organization_id, 'idp_id', g.idp_id, 'name', g.name,
        'raw_attributes', g.raw_attributes,
        'created_at', workos.reconcile_timestamp(g.created_at),
        'updated_at', workos.reconcile_timestamp(g.updated_at))
$$;
