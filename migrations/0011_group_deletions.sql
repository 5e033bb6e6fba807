-- A large group's memberships deleted in steps (docs/SCHEMA.md, "Deletions"; BENCHMARKS.md,
-- "Scale").
--
-- Migration 0010 bounded a directory's deletion. A group's deletion was still one statement over
-- all of its memberships, in the transaction of its batch: for an "everyone" group of a large
-- directory, one transaction holding every member's row, whose commit queues a change
-- notification for each while every other notifying commit (the receivers' inserts among them)
-- waits. Now a batch deletes the memberships of a group of at most 5,000 as before, and records
-- a larger group's deletion here; its memberships are then deleted a few thousand at a time,
-- each step a transaction of its own, walking the memberships' primary key `(group_id,
-- user_id)`. A row here is a deletion under way; it is removed when the last step is done.
CREATE TABLE workos.group_deletions (
    group_id       text        PRIMARY KEY,
    -- The time the memberships move to: the group's tombstone (`workos.tombstones.deleted_at`).
    deleted_at     timestamptz NOT NULL,
    -- The memberships decided at or before this go (the tombstone's `cascades_until`).
    cascades_until timestamptz NOT NULL,
    -- The `user_id` of the last membership walked; NULL before the first.
    after_user_id  text,
    started_at     timestamptz NOT NULL DEFAULT now()
);
