-- What a narrow queue table beside the inbox (bench/psql/queue-table.sql) would cost the
-- receiver (BENCHMARKS.md, "Did not help, or not settled", 2026-12-06): one flush of 30
-- deliveries as the writer inserts it now (`current.sql`: the inbox with its claim index) against
-- the inbox without that index plus a queue row per delivery that carries it (`queue.sql`, one
-- statement). pgbench with one client, as the one writer; in any database migrated by dsyncd:
--
--   psql -q "$DB" -f bench/psql/queue-ingest/setup.sql
--   for round in 1 2 3 4 5 6; do
--     order="current queue"; [ $((round % 2)) = 1 ] || order="queue current"
--     for v in $order; do
--       psql -q "$DB" -c "TRUNCATE x_inbox_current, x_inbox_queue, x_queue" -c CHECKPOINT
--       echo "$round $v: $(pgbench -n -M prepared -c 1 -t 2000 -f bench/psql/queue-ingest/$v.sql "$DB" 2>&1 | grep '^latency average')"
--     done
--   done
DROP TABLE IF EXISTS x_inbox_current, x_inbox_queue, x_queue;
DROP SEQUENCE IF EXISTS x_seq;
CREATE SEQUENCE x_seq;
CREATE TABLE x_inbox_current (LIKE workos.inbox INCLUDING ALL) WITH (fillfactor = 50);
CREATE TABLE x_inbox_queue (LIKE workos.inbox INCLUDING ALL) WITH (fillfactor = 50);
-- The queue's inbox has no claim index: the queue carries it.
DO $$ DECLARE claim_index text; BEGIN
  SELECT indexname INTO claim_index FROM pg_indexes
  WHERE tablename = 'x_inbox_queue' AND indexdef LIKE '%(turn_at)%';
  EXECUTE format('DROP INDEX %I', claim_index);
END $$;
CREATE TABLE x_queue (id text NOT NULL, turn_at timestamptz NOT NULL,
                      available_at timestamptz NOT NULL DEFAULT now());
CREATE INDEX ON x_queue (turn_at);
