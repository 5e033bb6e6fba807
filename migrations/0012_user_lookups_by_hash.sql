-- The read API's lookups of a directory's users by `email` and by `idp_id` go through hash
-- indexes instead of B-trees. Those two B-trees of `(directory_id, email)` and `(directory_id,
-- idp_id)` (migration 0008) took a third of the time of the worker's user upsert: every new user
-- is a descent of each, comparing text at every level, to a page at a random place. A hash
-- index stores a 4-byte hash and finds its bucket without comparing; the same upsert of 120,000
-- users took 12-22 % less time with hash indexes in their place (BENCHMARKS.md, "Scale").
--
-- Lookups only need equality, and a hash index holds one column, so each hashes the directory
-- and the value together: a value that many directories' users share (an `idp_id` of "1" in
-- every SCIM directory) is then still one bucket's worth of rows, not one per directory. The
-- expressions must stay exactly those of src/api/sql.rs for the planner to use them; the query
-- also compares both columns, so a separator that appears inside an id cannot match a wrong row.
-- Rows without the value (`NULL`) are not indexed; no lookup asks for them.

CREATE INDEX directory_users_email_hash_idx
    ON workos.directory_users USING hash ((directory_id || ' ' || email));
CREATE INDEX directory_users_idp_id_hash_idx
    ON workos.directory_users USING hash ((directory_id || ' ' || idp_id));

DROP INDEX workos.directory_users_email_idx;
DROP INDEX workos.directory_users_idp_id_idx;
