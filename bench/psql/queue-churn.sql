-- Why the queue's claims grew costlier under churn (BENCHMARKS.md, "Did not help, or not
-- settled", the queue beside the inbox): one session stores 50 rows and claims the oldest
-- (`ORDER BY turn_at`, `FOR UPDATE SKIP LOCKED`, up to 1,000) and finishes them, 3,000 times,
-- while a second session claims the newest and finishes them, as the worker's two claim loops
-- do. `churn_q`/`desc_q`: a narrow queue whose rows a finish deletes (branch `queue`);
-- `churn_o`/`desc_o`: wide rows on half-filled pages that a finish updates out of a partial
-- index (as `main`). Each prints its seconds per 500 rounds. In any database:
--
--   for kind in q o; do
--     psql -q "$DB" -c "DROP TABLE IF EXISTS sq, so" -f bench/psql/queue-churn.sql
--     psql -q "$DB" -f bench/psql/queue-churn.sql -c "SET enable_sort = off" -c "CALL pg_temp.desc_$kind(1500)" &
--     psql -q "$DB" -f bench/psql/queue-churn.sql -c "SET enable_sort = off" -c "CALL pg_temp.churn_$kind(3000)"
--     wait
--   done
--
-- (The first line makes the tables afresh; the other two define the procedures in their own
-- sessions, where `IF NOT EXISTS` leaves the tables.) Variants measured: the
-- wide rows narrowed (`repeat('x', 900)` to `''`), and the queue at `fillfactor = 10`.
CREATE TABLE IF NOT EXISTS sq (id text NOT NULL, turn_at timestamptz NOT NULL,
    available_at timestamptz NOT NULL DEFAULT now(), attempts int NOT NULL DEFAULT 0, last_error text)
    WITH (vacuum_truncate = false, autovacuum_enabled = false);
CREATE INDEX IF NOT EXISTS sq_turn ON sq (turn_at);
CREATE TABLE IF NOT EXISTS so (id text PRIMARY KEY, turn_at timestamptz NOT NULL, finished_at timestamptz,
    available_at timestamptz NOT NULL DEFAULT now(), pad text)
    WITH (fillfactor = 50, autovacuum_enabled = false);
CREATE INDEX IF NOT EXISTS so_turn ON so (turn_at) WHERE finished_at IS NULL;
CREATE SEQUENCE IF NOT EXISTS churn_seq;
CREATE OR REPLACE PROCEDURE pg_temp.churn_q(n int) LANGUAGE plpgsql AS $$
DECLARE t0 timestamptz := clock_timestamp(); ctids tid[];
BEGIN
  FOR b IN 1..n LOOP
    INSERT INTO sq (id, turn_at) SELECT 'e' || nextval('churn_seq'), clock_timestamp() FROM generate_series(1, 50);
    COMMIT;
    SELECT array_agg(ctid) INTO ctids FROM (SELECT ctid FROM sq WHERE available_at <= now() ORDER BY turn_at LIMIT 1000 FOR UPDATE SKIP LOCKED) c;
    DELETE FROM sq WHERE ctid = ANY (ctids);
    COMMIT;
    IF b % 500 = 0 THEN RAISE NOTICE 'queue % %', b, round(extract(epoch FROM clock_timestamp() - t0)::numeric, 3); t0 := clock_timestamp(); END IF;
  END LOOP;
END $$;
CREATE OR REPLACE PROCEDURE pg_temp.churn_o(n int) LANGUAGE plpgsql AS $$
DECLARE t0 timestamptz := clock_timestamp(); ids text[];
BEGIN
  FOR b IN 1..n LOOP
    INSERT INTO so (id, turn_at, pad) SELECT 'e' || nextval('churn_seq'), clock_timestamp(), repeat('x', 900) FROM generate_series(1, 50);
    COMMIT;
    SELECT array_agg(id) INTO ids FROM (SELECT id FROM so WHERE finished_at IS NULL AND available_at <= now() ORDER BY turn_at LIMIT 1000 FOR UPDATE SKIP LOCKED) c;
    UPDATE so SET finished_at = now() WHERE id = ANY (ids);
    COMMIT;
    IF b % 500 = 0 THEN RAISE NOTICE 'old % %', b, round(extract(epoch FROM clock_timestamp() - t0)::numeric, 3); t0 := clock_timestamp(); END IF;
  END LOOP;
END $$;
CREATE OR REPLACE PROCEDURE pg_temp.desc_q(n int) LANGUAGE plpgsql AS $$
DECLARE ctids tid[];
BEGIN
  FOR b IN 1..n LOOP
    SELECT array_agg(ctid) INTO ctids FROM (SELECT ctid FROM sq WHERE available_at <= now() ORDER BY turn_at DESC LIMIT 1000 FOR UPDATE SKIP LOCKED) c;
    PERFORM pg_sleep(0.002);
    DELETE FROM sq WHERE ctid = ANY (ctids);
    COMMIT;
  END LOOP;
END $$;
CREATE OR REPLACE PROCEDURE pg_temp.desc_o(n int) LANGUAGE plpgsql AS $$
DECLARE ids text[];
BEGIN
  FOR b IN 1..n LOOP
    SELECT array_agg(id) INTO ids FROM (SELECT id FROM so WHERE finished_at IS NULL AND available_at <= now() ORDER BY turn_at DESC LIMIT 1000 FOR UPDATE SKIP LOCKED) c;
    PERFORM pg_sleep(0.002);
    UPDATE so SET finished_at = now() WHERE id = ANY (ids);
    COMMIT;
  END LOOP;
END $$;
