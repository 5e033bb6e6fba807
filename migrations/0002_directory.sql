-- The synced directory tables: the contract downstream apps read (docs/SCHEMA.md).
-- Only the directory handler (src/directory/store.rs) writes them. There are no foreign keys
-- between them: events arrive in any order, so a membership may be stored before its user.
-- Deletions are soft: a row is live while `deleted_at IS NULL`.

-- The rank of an event type in the ordering key `(data.updated_at, rank, event id)`: at the same
-- `updated_at` a deletion beats the legacy deactivation, which beats everything else.
-- src/directory/model.rs (`EventKind::rank`) must agree: tests check both against the same table.
CREATE FUNCTION workos.event_rank(event text) RETURNS integer
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT CASE
        WHEN event IN ('dsync.deleted', 'dsync.user.deleted', 'dsync.group.deleted') THEN 2
        WHEN event = 'dsync.deactivated' THEN 1
        ELSE 0
    END
$$;

-- Event ids are compared byte by byte (COLLATE "C"), as the handler compares them in Rust, so
-- that the winner does not depend on the database's locale.

CREATE TABLE workos.directories (
    id              text        PRIMARY KEY,
    organization_id text,
    name            text,
    -- An open set, e.g. `okta scim v2.0`.
    type            text,
    state           text,
    external_key    text,
    -- `[{"id": …, "domain": …}]`
    domains         jsonb,
    created_at      timestamptz,
    updated_at      timestamptz NOT NULL,
    deleted_at      timestamptz,
    last_event_id   text        COLLATE "C" NOT NULL,
    last_event      text        NOT NULL,
    synced_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX directories_organization_id_idx ON workos.directories (organization_id);

CREATE TABLE workos.directory_users (
    id                text        PRIMARY KEY,
    directory_id      text        NOT NULL,
    organization_id   text,
    idp_id            text,
    email             text,
    first_name        text,
    last_name         text,
    name              text,
    username          text,
    job_title         text,
    -- `active`, `suspended` or `inactive`; not the same as deleted.
    state             text,
    -- `[{"primary": …, "type": …, "value": …}]` as WorkOS sends it.
    emails            jsonb,
    -- `role.slug`
    role              text,
    -- the slugs of `roles`
    roles             text[],
    custom_attributes jsonb,
    raw_attributes    jsonb,
    created_at        timestamptz,
    updated_at        timestamptz NOT NULL,
    deleted_at        timestamptz,
    last_event_id     text        COLLATE "C" NOT NULL,
    last_event        text        NOT NULL,
    synced_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX directory_users_directory_id_idx ON workos.directory_users (directory_id);

CREATE TABLE workos.directory_groups (
    id              text        PRIMARY KEY,
    directory_id    text        NOT NULL,
    organization_id text,
    idp_id          text,
    name            text,
    raw_attributes  jsonb,
    created_at      timestamptz,
    updated_at      timestamptz NOT NULL,
    deleted_at      timestamptz,
    last_event_id   text        COLLATE "C" NOT NULL,
    last_event      text        NOT NULL,
    synced_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX directory_groups_directory_id_idx ON workos.directory_groups (directory_id);

CREATE TABLE workos.directory_group_memberships (
    group_id        text        NOT NULL,
    user_id         text        NOT NULL,
    directory_id    text        NOT NULL,
    organization_id text,
    -- The time of the membership event that decided the row (its `created_at`).
    updated_at      timestamptz NOT NULL,
    deleted_at      timestamptz,
    last_event_id   text        COLLATE "C" NOT NULL,
    last_event      text        NOT NULL,
    synced_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (group_id, user_id)
);
CREATE INDEX directory_group_memberships_user_id_idx
    ON workos.directory_group_memberships (user_id);
CREATE INDEX directory_group_memberships_directory_id_idx
    ON workos.directory_group_memberships (directory_id);
