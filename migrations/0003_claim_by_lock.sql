-- Workers claim inbox rows by locking them (`FOR UPDATE SKIP LOCKED`) in the transaction that
-- applies and finishes them, instead of committing a `processing` status with a lease first.
-- Each event is then written once by the worker instead of twice, and the events of a worker
-- that dies are claimable as soon as Postgres ends its session, not when a lease runs out.
-- Stop the workers of the previous release before applying this.

UPDATE workos.inbox SET status = 'pending' WHERE status = 'processing';

ALTER TABLE workos.inbox DROP COLUMN locked_until;

ALTER TABLE workos.inbox DROP CONSTRAINT inbox_status_check;
ALTER TABLE workos.inbox ADD CONSTRAINT inbox_status_check
    CHECK (status IN ('pending', 'done', 'ignored', 'dead'));

