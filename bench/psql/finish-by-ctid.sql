-- Finishing 1,000 claimed inbox rows by id or by ctid (BENCHMARKS.md, "Did not help, or not
-- settled", 2026-12-06). Run on the `probe` database that `bench/probe BINARY drain:240000`
-- leaves (an inbox of 240,000 rows):
--
--   for by_ctid in false true; do
--     psql -q "$SERVER/probe" -c "UPDATE workos.inbox SET finished_at = NULL, status = 'pending'" \
--       -c "VACUUM workos.inbox" -c "CHECKPOINT"
--     psql -tAq "$SERVER/probe" -f bench/psql/finish-by-ctid.sql -c "SELECT $by_ctid, pg_temp.run($by_ctid, 100)"
--   done
--
-- prints the seconds 100 finishes of 1,000 rows took (the finish only, not the selection).
CREATE OR REPLACE FUNCTION pg_temp.run(by_ctid bool, batches int) RETURNS double precision LANGUAGE plpgsql AS $$
DECLARE ids text[]; tids tid[]; sts text[]; t0 timestamptz; total double precision := 0;
BEGIN
  FOR b IN 1..batches LOOP
    SELECT array_agg(id), array_agg(ctid), array_agg('done'::text) INTO ids, tids, sts
      FROM (SELECT id, ctid FROM workos.inbox WHERE finished_at IS NULL ORDER BY turn_at LIMIT 1000) s;
    t0 := clock_timestamp();
    IF by_ctid THEN
      UPDATE workos.inbox AS i SET status = f.status, attempts = i.attempts + 1, finished_at = now(), last_error = NULL
        FROM UNNEST(tids, sts) AS f(tid, status) WHERE i.ctid = f.tid;
    ELSE
      UPDATE workos.inbox AS i SET status = f.status, attempts = i.attempts + 1, finished_at = now(), last_error = NULL
        FROM UNNEST(ids, sts) AS f(id, status) WHERE i.id = f.id;
    END IF;
    total := total + extract(epoch FROM clock_timestamp() - t0);
  END LOOP;
  RETURN total;
END $$;
