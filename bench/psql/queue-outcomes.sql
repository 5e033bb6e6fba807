-- Claiming and finishing 120,000 inbox rows, 1,000 a transaction, as the worker does (`current`:
-- lock the rows on the claim index, then a non-HOT update that takes them out of it), against
-- the inbox beside a narrow queue of unfinished events and a table of outcomes (`queue`: lock
-- queue rows joined to the deliveries, delete them by address, append the outcomes; the design
-- of branch `queue`, migration 0013 there). BENCHMARKS.md, "Did not help, or not settled", the
-- queue beside the inbox. In any database migrated by dsyncd up to migration 0012 (it copies
-- `workos.inbox` as it is there):
--
--   for round in 1 2 3; do
--     psql -tAq "$DB" -f bench/psql/queue-outcomes.sql -c CHECKPOINT -c "CALL pg_temp.current()" \
--       -c CHECKPOINT -c "CALL pg_temp.queue()"
--   done
--
-- Each prints its seconds (a NOTICE). With `ALTER TABLE x_finished ADD PRIMARY KEY (id)` after
-- the file, `queue` prices an index on the outcomes' ids.
DROP TABLE IF EXISTS x_inbox, x_inbox2, x_pending, x_finished;
CREATE TABLE x_inbox (LIKE workos.inbox INCLUDING ALL) WITH (fillfactor = 50);
INSERT INTO x_inbox (id, event, payload, turn_at)
SELECT 'event_' || md5(n::text), 'dsync.user.created', repeat('x', 950),
       now() + n * interval '1 microsecond'
FROM generate_series(1, 120000) n;
CREATE TABLE x_inbox2 (id text PRIMARY KEY, event text NOT NULL, payload text NOT NULL,
  received_at timestamptz NOT NULL DEFAULT now(), source text NOT NULL DEFAULT 'webhook');
INSERT INTO x_inbox2 (id, event, payload) SELECT id, event, payload FROM x_inbox;
CREATE TABLE x_pending (id text NOT NULL, turn_at timestamptz NOT NULL,
  available_at timestamptz NOT NULL DEFAULT now(), attempts int NOT NULL DEFAULT 0, last_error text);
CREATE INDEX ON x_pending (turn_at);
INSERT INTO x_pending (id, turn_at) SELECT id, turn_at FROM x_inbox;
CREATE TABLE x_finished (id text NOT NULL, status text NOT NULL, attempts int NOT NULL,
  last_error text, finished_at timestamptz NOT NULL DEFAULT now());
CREATE INDEX ON x_finished (finished_at);
VACUUM ANALYZE x_inbox, x_inbox2, x_pending, x_finished;

CREATE OR REPLACE PROCEDURE pg_temp.current() LANGUAGE plpgsql AS $$
DECLARE t0 timestamptz := clock_timestamp(); ids text[]; n bigint;
BEGIN
  FOR b IN 1..120 LOOP
    SELECT array_agg(id), sum(length(payload)) INTO ids, n FROM (
      SELECT id, payload FROM x_inbox WHERE finished_at IS NULL AND available_at <= now()
      ORDER BY turn_at LIMIT 1000 FOR UPDATE SKIP LOCKED) c;
    UPDATE x_inbox AS i
    SET status = 'done', attempts = i.attempts + 1, finished_at = now(), last_error = NULL
    FROM unnest(ids) AS f(id) WHERE i.id = f.id;
    COMMIT;
  END LOOP;
  RAISE NOTICE 'current %', extract(epoch FROM clock_timestamp() - t0);
END $$;

CREATE OR REPLACE PROCEDURE pg_temp.queue() LANGUAGE plpgsql AS $$
DECLARE t0 timestamptz := clock_timestamp(); ids text[]; ctids tid[]; att int[]; n bigint;
BEGIN
  FOR b IN 1..120 LOOP
    SELECT array_agg(c.id), array_agg(c.ctid), array_agg(c.attempts), sum(length(payload)) INTO ids, ctids, att, n FROM (
      SELECT q.ctid, q.id, q.attempts, i.payload FROM x_pending q JOIN x_inbox2 i ON i.id = q.id
      WHERE q.available_at <= now() ORDER BY q.turn_at LIMIT 1000 FOR UPDATE OF q SKIP LOCKED) c;
    WITH gone AS (DELETE FROM x_pending WHERE ctid = ANY (ctids) RETURNING id, attempts)
    INSERT INTO x_finished (id, status, attempts) SELECT id, 'done', attempts + 1 FROM gone;
    COMMIT;
  END LOOP;
  RAISE NOTICE 'queue %', extract(epoch FROM clock_timestamp() - t0);
END $$;
