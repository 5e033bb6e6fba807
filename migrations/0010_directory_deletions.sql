-- A directory's deletion in steps (docs/SCHEMA.md, "Deletions"; BENCHMARKS.md, "Scale").
--
-- Until now a `dsync.deleted` marked every user, group and membership of the directory deleted
-- in the one transaction of its batch. For a directory of a million users that transaction ran
-- 21 s, and its commit queued four million change notifications while holding the lock every
-- notifying commit takes: the receivers' inserts (which notify the workers) waited behind it
-- past `database.timeout_ms` and answered 503, and other directories' batches waited too. Now
-- the batch deletes the directory's own row and records the deletion here; its rows are then
-- deleted a few thousand at a time, each step a transaction of its own, walking each table in
-- the order of an index that leads with `directory_id`. A row here is a deletion under way; it
-- is removed when the last step is done.
CREATE TABLE workos.directory_deletions (
    directory_id   text        PRIMARY KEY,
    -- The time the rows move to: the directory's tombstone (`workos.tombstones.deleted_at`).
    deleted_at     timestamptz NOT NULL,
    -- The table the next step walks.
    phase          text        NOT NULL DEFAULT 'users'
                   CHECK (phase IN ('users', 'groups', 'memberships')),
    -- Where in it: the key of the last row walked (users: `COALESCE(created_at, 'epoch')` and
    -- `id`; groups: `id`; memberships: `group_id` and `user_id`), NULL before the first.
    after_at       timestamptz,
    after_id       text,
    after_user_id  text,
    started_at     timestamptz NOT NULL DEFAULT now()
);

-- The walks' indexes. Users already have one (`directory_users_list_idx`, migration 0008).
-- Each replaces an index on `directory_id` alone, which it serves as well; neither mentions
-- `deleted_at`, so deleting a row in place stays a HOT update. Building them reads the whole
-- table once, and blocks writes to it meanwhile (docs/OPERATIONS.md, "Upgrading").
CREATE INDEX directory_groups_directory_idx
    ON workos.directory_groups (directory_id, id COLLATE "C");
DROP INDEX workos.directory_groups_directory_id_idx;
CREATE INDEX directory_group_memberships_directory_idx
    ON workos.directory_group_memberships (directory_id, group_id COLLATE "C", user_id COLLATE "C");
DROP INDEX workos.directory_group_memberships_directory_id_idx;
