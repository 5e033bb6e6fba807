-- Deletions that reach everything under them (docs/SCHEMA.md, "How a row is decided").
--
-- WorkOS's deletion events carry the deleted object as it last was: `data.updated_at` is its
-- last change, not the time of the deletion, which is the envelope's `created_at`. The earlier
-- rules took the deletion's time from `data.updated_at` and cascaded only onto rows not newer
-- than it, so a directory's users changed after the directory itself, or a membership added
-- after its user's last change, stayed live. This migration adds the tombstones the new rules
-- cascade from, and repairs what the old rules left live. Running it again changes nothing.

-- One row per deleted object, kept for good (also when a newer snapshot revives a user or a
-- group), so that cascades and late events see every deletion whatever order they arrive in.
CREATE TABLE IF NOT EXISTS workos.tombstones (
    -- `directory`, `user` or `group`
    kind           text        NOT NULL CHECK (kind IN ('directory', 'user', 'group')),
    id             text        NOT NULL,
    -- The earliest deletion time of the object: the envelope `created_at` of its deletion
    -- event, or `data.updated_at` when the event has none (very old `wh_` deliveries).
    deleted_at     timestamptz NOT NULL,
    -- Memberships decided at or before this time are deleted with a user or a group:
    -- `created_at` of the deletion event, or `infinity` for a deletion without one (every
    -- membership) and for directories (which delete everything under them).
    cascades_until timestamptz NOT NULL,
    PRIMARY KEY (kind, id)
);

-- ---- The repair ----
-- Tombstones for the objects the old rules deleted by their own deletion event. Their time is
-- the `deleted_at` the tables already show. How far a user's or group's deletion reaches is
-- the deletion event's `created_at` if the inbox still holds the event, else every membership.

CREATE OR REPLACE FUNCTION pg_temp.timestamp_or_null(value text) RETURNS timestamptz
    LANGUAGE plpgsql IMMUTABLE
AS $$
BEGIN
    RETURN value::timestamptz;
EXCEPTION WHEN others THEN
    RETURN NULL;
END;
$$;

INSERT INTO workos.tombstones (kind, id, deleted_at, cascades_until)
SELECT 'directory', d.id, d.deleted_at, 'infinity'
FROM workos.directories d
WHERE d.deleted_at IS NOT NULL AND d.last_event = 'dsync.deleted'
ON CONFLICT DO NOTHING;

INSERT INTO workos.tombstones (kind, id, deleted_at, cascades_until)
SELECT 'user', u.id, u.deleted_at,
       coalesce(pg_temp.timestamp_or_null(i.payload::json ->> 'created_at'), 'infinity')
FROM workos.directory_users u
LEFT JOIN workos.inbox i ON i.id = u.last_event_id
WHERE u.deleted_at IS NOT NULL AND u.last_event = 'dsync.user.deleted'
ON CONFLICT DO NOTHING;

INSERT INTO workos.tombstones (kind, id, deleted_at, cascades_until)
SELECT 'group', g.id, g.deleted_at,
       coalesce(pg_temp.timestamp_or_null(i.payload::json ->> 'created_at'), 'infinity')
FROM workos.directory_groups g
LEFT JOIN workos.inbox i ON i.id = g.last_event_id
WHERE g.deleted_at IS NOT NULL AND g.last_event = 'dsync.group.deleted'
ON CONFLICT DO NOTHING;

-- Everything in a deleted directory is deleted, at the directory's deletion time unless it was
-- deleted earlier.
UPDATE workos.directory_users u
SET deleted_at = t.deleted_at, synced_at = now()
FROM workos.tombstones t
WHERE t.kind = 'directory' AND t.id = u.directory_id
  AND (u.deleted_at IS NULL OR u.deleted_at > t.deleted_at);

UPDATE workos.directory_groups g
SET deleted_at = t.deleted_at, synced_at = now()
FROM workos.tombstones t
WHERE t.kind = 'directory' AND t.id = g.directory_id
  AND (g.deleted_at IS NULL OR g.deleted_at > t.deleted_at);

-- Memberships: at the earliest tombstone of their directory, user or group that covers them.
UPDATE workos.directory_group_memberships m
SET deleted_at = hit.deleted_at, synced_at = now()
FROM (
    SELECT group_id, user_id, min(deleted_at) AS deleted_at
    FROM (
        SELECT c.group_id, c.user_id, t.deleted_at
        FROM workos.tombstones t
        JOIN workos.directory_group_memberships c ON c.directory_id = t.id
        WHERE t.kind = 'directory'
        UNION ALL
        SELECT c.group_id, c.user_id, t.deleted_at
        FROM workos.tombstones t
        JOIN workos.directory_group_memberships c
          ON c.user_id = t.id AND c.updated_at <= t.cascades_until
        WHERE t.kind = 'user'
        UNION ALL
        SELECT c.group_id, c.user_id, t.deleted_at
        FROM workos.tombstones t
        JOIN workos.directory_group_memberships c
          ON c.group_id = t.id AND c.updated_at <= t.cascades_until
        WHERE t.kind = 'group'
    ) AS covered
    GROUP BY group_id, user_id
) AS hit
WHERE m.group_id = hit.group_id AND m.user_id = hit.user_id
  AND (m.deleted_at IS NULL OR m.deleted_at > hit.deleted_at);
