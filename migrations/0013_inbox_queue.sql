-- The inbox's rows are no longer written by the worker (BENCHMARKS.md, "Scale", the queue
-- beside the inbox). A worker locked each ~1 KB inbox row it claimed, which after every
-- checkpoint logged a full image of each inbox page, and finished it with a new version of the
-- whole row that left the claim index (`finished_at` was in its predicate, so never a HOT
-- update): 21 µs of Postgres's ~49 µs an applied event. Now:
--
-- - `workos.inbox` holds each delivery as received, and nothing else: written once by the
--   receiver (or the Events API tail), deleted by retention. Its pages are filled (fillfactor
--   100: nothing updates its rows any more), which takes the receiver's insert fewer new pages.
-- - `workos.inbox_queue` holds a narrow row for each event that is not finished: what the claim
--   orders and locks, what a failed attempt updates. The worker deletes it when the event is
--   applied.
-- - `workos.inbox_finished` holds each finished event's outcome, appended as it finishes:
--   `done`, `ignored` or `dead`. Retention walks it by `finished_at`.
--
-- An event is pending while its queue row exists and finished once its outcome row does; the
-- worker's transaction moves it from one to the other, and `dsyncd inbox retry`/`replay` back.
-- `workos.inbox_status` shows the three as the inbox's rows looked before, for operators.
-- Neither new table indexes `id`: a lookup by id there (`dsyncd inbox show`) reads the table,
-- where an index would cost every delivery or every finish a B-tree insert of its text.
-- Stop the workers of the previous release before applying this.

CREATE TABLE workos.inbox_queue (
    id           text        NOT NULL,
    -- The inbox row's `received_at`, for the backlog's age without a join.
    received_at  timestamptz NOT NULL DEFAULT now(),
    turn_at      timestamptz NOT NULL DEFAULT now(),
    available_at timestamptz NOT NULL DEFAULT now(),
    attempts     integer     NOT NULL DEFAULT 0,
    last_error   text
);
CREATE INDEX inbox_queue_turn_idx ON workos.inbox_queue (turn_at);
-- A queue that the workers keep up with is often empty at its end: a vacuum would then try to
-- cut those pages off, which takes a lock that holds off the receivers' inserts and the claims.
-- The pages are reused instead. The workers vacuum the queue while they drain it (`worker`).
ALTER TABLE workos.inbox_queue SET (vacuum_truncate = false);

CREATE TABLE workos.inbox_finished (
    id          text        NOT NULL,
    status      text        NOT NULL CHECK (status IN ('done', 'ignored', 'dead')),
    attempts    integer     NOT NULL,
    last_error  text,
    finished_at timestamptz NOT NULL DEFAULT now()
);
-- Retention sweeps finished rows by age.
CREATE INDEX inbox_finished_at_idx ON workos.inbox_finished (finished_at);
-- Dead rows: few, and what operators and metrics look at.
CREATE INDEX inbox_finished_dead_idx ON workos.inbox_finished (finished_at) WHERE status = 'dead';

INSERT INTO workos.inbox_queue (id, received_at, turn_at, available_at, attempts, last_error)
SELECT id, received_at, turn_at, available_at, attempts, last_error
FROM workos.inbox WHERE status = 'pending';

INSERT INTO workos.inbox_finished (id, status, attempts, last_error, finished_at)
SELECT id, status, attempts, last_error, COALESCE(finished_at, received_at)
FROM workos.inbox WHERE status <> 'pending';

-- New work wakes the workers: the receiver's and the tail's deliveries, and requeued events.
DROP TRIGGER inbox_notify ON workos.inbox;
CREATE TRIGGER inbox_queue_notify AFTER INSERT ON workos.inbox_queue
    FOR EACH STATEMENT EXECUTE FUNCTION workos.notify_inbox();

DROP INDEX workos.inbox_turn_idx;
DROP INDEX workos.inbox_finished_idx;
DROP INDEX workos.inbox_failed_idx;
ALTER TABLE workos.inbox
    DROP COLUMN status,
    DROP COLUMN attempts,
    DROP COLUMN available_at,
    DROP COLUMN turn_at,
    DROP COLUMN last_error,
    DROP COLUMN finished_at;
-- For pages written from now on.
ALTER TABLE workos.inbox SET (fillfactor = 100);

-- Every event with its state, as `workos.inbox`'s rows had it before this migration (without
-- the payload: join `workos.inbox` on `id` for it).
CREATE VIEW workos.inbox_status AS
SELECT i.id, i.event, i.source, i.received_at,
       COALESCE(f.status, 'pending') AS status,
       COALESCE(q.attempts, f.attempts, 0) AS attempts,
       q.available_at,
       q.turn_at,
       COALESCE(q.last_error, f.last_error) AS last_error,
       f.finished_at
FROM workos.inbox AS i
LEFT JOIN workos.inbox_queue AS q ON q.id = i.id
LEFT JOIN workos.inbox_finished AS f ON f.id = i.id;
