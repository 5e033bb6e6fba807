-- The inbox: every delivery that passed the signature check, exactly as received.
-- The receiver inserts; the worker claims, applies and finishes rows.
CREATE SCHEMA IF NOT EXISTS workos;

CREATE TABLE workos.inbox (
    -- The WorkOS event id (`event_…`, or `wh_…` for very old deliveries): the same across retries.
    id           text        PRIMARY KEY,
    -- The event type, e.g. `dsync.user.created`.
    event        text        NOT NULL,
    -- The request body exactly as received (the `json` type keeps the bytes as sent).
    payload      json        NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now(),
    status       text        NOT NULL DEFAULT 'pending'
                 CHECK (status IN ('pending', 'processing', 'done', 'ignored', 'dead')),
    -- How many times a worker has claimed the row.
    attempts     integer     NOT NULL DEFAULT 0,
    -- Not to be claimed before this time (a retry's backoff).
    available_at timestamptz NOT NULL DEFAULT now(),
    -- While processing: when the worker's lease ends and the row may be claimed again.
    locked_until timestamptz,
    last_error   text,
    -- When the row reached done, ignored or dead; NULL while it is pending or processing.
    finished_at  timestamptz
) WITH (fillfactor = 50);

-- No index mentions `status`, `attempts` or `locked_until`, and the pages keep room (fillfactor):
-- so claiming a row, which changes only those, is a HOT update that writes no index entry and
-- logs only the changed bytes, instead of a second full copy of the ~1 KB row.

-- Claiming: rows not finished, available now, and not under a live lease.
CREATE INDEX inbox_claimable_idx ON workos.inbox (available_at) WHERE finished_at IS NULL;
-- Retention sweeps finished rows by age.
CREATE INDEX inbox_finished_idx ON workos.inbox (finished_at) WHERE finished_at IS NOT NULL;
-- Failed rows (waiting for a retry, or dead): few, and what operators and metrics look at.
CREATE INDEX inbox_failed_idx ON workos.inbox (received_at) WHERE last_error IS NOT NULL;

-- Wake the workers (LISTEN workos_inbox) whenever deliveries are inserted. Statement-level, so
-- a group commit of many deliveries sends one notification, delivered when it commits.
CREATE FUNCTION workos.notify_inbox() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('workos_inbox', '');
    RETURN NULL;
END;
$$;

CREATE TRIGGER inbox_notify AFTER INSERT ON workos.inbox
    FOR EACH STATEMENT EXECUTE FUNCTION workos.notify_inbox();
