-- Claiming and finishing 120,000 inbox rows, 1,000 a transaction, three ways (BENCHMARKS.md,
-- "Did not help, or not settled", 2026-12-06): as the worker does (`current`: lock the rows on
-- the claim index, then a non-HOT update that takes them out of it); with a narrow queue table
-- beside the inbox (`queue+HOT`: lock queue rows joined to the inbox, a HOT update of the
-- inbox rows, which then have no index on `finished_at`, and a delete of the queue rows); and
-- the queue alone (`queue only`: no write to the inbox at all, which would need the inbox's
-- status kept elsewhere). In any database migrated by dsyncd (it copies `workos.inbox`):
--
--   for round in 1 2 3; do
--     psql -tAq "$DB" -f bench/psql/queue-table.sql -c "CHECKPOINT" -c "CALL pg_temp.current()" \
--       -c "CHECKPOINT" -c "CALL pg_temp.queue_hot()" -c "CHECKPOINT" -c "CALL pg_temp.queue_only()"
--   done
--
-- Each prints its seconds (a NOTICE). `queue only` runs on what `queue+HOT` left, so the file
-- is run again (it refills the tables) before each round.
DROP TABLE IF EXISTS x_inbox, x_inbox2, x_queue;
CREATE TABLE x_inbox (LIKE workos.inbox INCLUDING ALL) WITH (fillfactor = 50);
INSERT INTO x_inbox (id, event, payload, turn_at)
SELECT 'event_' || lpad(n::text, 10, '0'), 'dsync.user.created', repeat('x', 950),
       now() + n * interval '1 microsecond'
FROM generate_series(1, 120000) n;
CREATE TABLE x_inbox2 (LIKE workos.inbox INCLUDING DEFAULTS INCLUDING CONSTRAINTS) WITH (fillfactor = 50);
ALTER TABLE x_inbox2 ADD PRIMARY KEY (id);
CREATE INDEX ON x_inbox2 (received_at);
INSERT INTO x_inbox2 SELECT * FROM x_inbox;
CREATE TABLE x_queue (id text NOT NULL, turn_at timestamptz NOT NULL,
                      available_at timestamptz NOT NULL DEFAULT now());
CREATE INDEX ON x_queue (turn_at);
INSERT INTO x_queue (id, turn_at) SELECT id, turn_at FROM x_inbox;
VACUUM ANALYZE x_inbox, x_inbox2, x_queue;

CREATE OR REPLACE PROCEDURE pg_temp.current() LANGUAGE plpgsql AS $$
DECLARE t0 timestamptz := clock_timestamp(); ids text[];
BEGIN
  FOR b IN 1..120 LOOP
    SELECT array_agg(id) INTO ids FROM (
      SELECT id FROM x_inbox WHERE finished_at IS NULL AND available_at <= now()
      ORDER BY turn_at LIMIT 1000 FOR UPDATE SKIP LOCKED) c;
    UPDATE x_inbox AS i
    SET status = 'done', attempts = i.attempts + 1, finished_at = now(), last_error = NULL
    FROM unnest(ids) AS f(id) WHERE i.id = f.id;
    COMMIT;
  END LOOP;
  RAISE NOTICE 'current %', extract(epoch FROM clock_timestamp() - t0);
END $$;

CREATE OR REPLACE PROCEDURE pg_temp.queue_hot() LANGUAGE plpgsql AS $$
DECLARE t0 timestamptz := clock_timestamp(); ids text[]; ctids tid[];
BEGIN
  FOR b IN 1..120 LOOP
    SELECT array_agg(c.id), array_agg(c.ctid) INTO ids, ctids FROM (
      SELECT q.ctid, q.id, i.payload FROM x_queue q JOIN x_inbox2 i ON i.id = q.id
      WHERE q.available_at <= now() ORDER BY q.turn_at LIMIT 1000 FOR UPDATE OF q SKIP LOCKED) c;
    UPDATE x_inbox2 AS i
    SET status = 'done', attempts = i.attempts + 1, finished_at = now(), last_error = NULL
    FROM unnest(ids) AS f(id) WHERE i.id = f.id;
    DELETE FROM x_queue WHERE ctid = ANY (ctids);
    COMMIT;
  END LOOP;
  RAISE NOTICE 'queue+HOT %', extract(epoch FROM clock_timestamp() - t0);
END $$;

CREATE OR REPLACE PROCEDURE pg_temp.queue_only() LANGUAGE plpgsql AS $$
DECLARE t0 timestamptz := clock_timestamp(); ctids tid[];
BEGIN
  -- What queue_hot finished goes back in the queue.
  INSERT INTO x_queue (id, turn_at) SELECT id, turn_at FROM x_inbox2;
  COMMIT;
  t0 := clock_timestamp();
  FOR b IN 1..120 LOOP
    SELECT array_agg(c.ctid) INTO ctids FROM (
      SELECT q.ctid, i.payload FROM x_queue q JOIN x_inbox2 i ON i.id = q.id
      WHERE q.available_at <= now() ORDER BY q.turn_at LIMIT 1000 FOR UPDATE OF q SKIP LOCKED) c;
    DELETE FROM x_queue WHERE ctid = ANY (ctids);
    COMMIT;
  END LOOP;
  RAISE NOTICE 'queue only %', extract(epoch FROM clock_timestamp() - t0);
END $$;
