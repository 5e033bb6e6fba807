-- The inbox keeps each delivery's body as text. The receiver has already checked that it is
-- JSON (it parses the whole body before storing it), and Postgres validating it again as `json`
-- cost about a sixth of its time per stored delivery (BENCHMARKS.md). Read it as JSON with a
-- cast: `payload::json -> 'data'`. (Rewrites the table: takes a while on a large inbox.)
ALTER TABLE workos.inbox ALTER COLUMN payload TYPE text;
