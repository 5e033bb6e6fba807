-- Claims fair across directories. Workers claimed in `available_at` order, which is arrival
-- order: a directory's first sync of 200,000 events put every other directory's events behind
-- all of them (BENCHMARKS.md, "Scale", fairness). Each row now has a turn: when the receiver
-- stored it, pushed later while its directory sends faster than `ingest.directory_share_per_sec`
-- (src/ingest.rs, `Turns`). Workers claim in turn order, so such a directory's backlog waits
-- behind the events other directories send meanwhile, and still drains whenever nothing else
-- is due. `available_at` keeps its meaning (not before: a retry's backoff) and is checked on
-- the row.

-- A stable default: existing rows take the time of this statement without a table rewrite.
ALTER TABLE workos.inbox ADD COLUMN turn_at timestamptz NOT NULL DEFAULT now();

-- Unfinished rows keep their place in the order.
UPDATE workos.inbox SET turn_at = available_at WHERE finished_at IS NULL;

-- Claiming: unfinished rows in turn order. It replaces the index in arrival order, which
-- nothing else needs (the backlog count only needs a partial index on unfinished rows).
CREATE INDEX inbox_turn_idx ON workos.inbox (turn_at) WHERE finished_at IS NULL;
DROP INDEX workos.inbox_claimable_idx;
