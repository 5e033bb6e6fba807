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
    -- pending: not before this time (backoff); processing: when the worker's lease ends.
    available_at timestamptz NOT NULL DEFAULT now(),
    last_error   text,
    -- When the row reached done, ignored or dead.
    finished_at  timestamptz
);

-- Claiming: the oldest available row that is pending, or processing with an expired lease.
CREATE INDEX inbox_claimable_idx ON workos.inbox (available_at)
    WHERE status IN ('pending', 'processing');
-- Retention sweeps finished rows by age.
CREATE INDEX inbox_finished_idx ON workos.inbox (finished_at)
    WHERE status IN ('done', 'ignored');
-- Operators list dead rows.
CREATE INDEX inbox_dead_idx ON workos.inbox (finished_at) WHERE status = 'dead';

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
