-- The user upsert's parts (BENCHMARKS.md, "Did not help, or not settled", 2026-12-06): 120
-- batches of 1,000 users into an emptied workos.directory_users, copied from the users that
-- `bench/probe BINARY drain:240000` leaves in the `probe` database. Variant 0 is the worker's
-- upsert (its columns, casts, tombstone probes and conflict rule; from a table instead of
-- arrays); 1 leaves out the tombstone probes; 2 also the three jsonb values.
--
--   for variant in 0 1 2; do
--     psql -tAq "$SERVER/probe" -c "CHECKPOINT" -f bench/psql/upsert-parts.sql -c "SELECT $variant, pg_temp.run($variant)"
--   done
--
-- The first run copies the users into the table `src`, which later runs reuse. Prints the
-- seconds of the 120 statements.
CREATE UNLOGGED TABLE IF NOT EXISTS src AS SELECT row_number() OVER () AS n, u.*, u.emails::text AS emails_t, u.custom_attributes::text AS ca_t, u.raw_attributes::text AS ra_t, array_to_string(u.roles, ',') AS roles_t, false AS deleted FROM workos.directory_users u;
CREATE INDEX IF NOT EXISTS src_n_idx ON src (n);
ANALYZE src;
CREATE OR REPLACE FUNCTION pg_temp.run(variant int) RETURNS double precision LANGUAGE plpgsql AS $$
DECLARE t0 timestamptz; total double precision := 0;
BEGIN
  TRUNCATE workos.directory_users;
  FOR b IN 0..119 LOOP
    t0 := clock_timestamp();
    IF variant = 0 THEN
      INSERT INTO workos.directory_users AS u (id, directory_id, organization_id, idp_id, email, first_name, last_name, name, username, job_title, state, emails, role, roles, custom_attributes, raw_attributes, created_at, updated_at, deleted_at, last_event_id, last_event)
      SELECT x.id, x.directory_id, x.organization_id, x.idp_id, x.email, x.first_name, x.last_name, x.name, x.username, x.job_title, x.state, x.emails_t::jsonb, x.role, x.roles, x.ca_t::jsonb, x.ra_t::jsonb, x.created_at, x.updated_at,
        LEAST((SELECT t.deleted_at FROM workos.tombstones t WHERE x.deleted AND t.kind = 'user' AND t.id = x.id),
              (SELECT t.deleted_at FROM workos.tombstones t WHERE t.kind = 'directory' AND t.id = x.directory_id)),
        x.last_event_id, x.last_event
      FROM src x WHERE x.n > b * 1000 AND x.n <= (b + 1) * 1000
      ON CONFLICT (id) DO UPDATE SET updated_at = EXCLUDED.updated_at
      WHERE (EXCLUDED.updated_at, workos.event_rank(EXCLUDED.last_event), EXCLUDED.last_event_id) > (u.updated_at, workos.event_rank(u.last_event), u.last_event_id);
    ELSIF variant = 1 THEN
      INSERT INTO workos.directory_users AS u (id, directory_id, organization_id, idp_id, email, first_name, last_name, name, username, job_title, state, emails, role, roles, custom_attributes, raw_attributes, created_at, updated_at, deleted_at, last_event_id, last_event)
      SELECT x.id, x.directory_id, x.organization_id, x.idp_id, x.email, x.first_name, x.last_name, x.name, x.username, x.job_title, x.state, x.emails_t::jsonb, x.role, x.roles, x.ca_t::jsonb, x.ra_t::jsonb, x.created_at, x.updated_at,
        NULL,
        x.last_event_id, x.last_event
      FROM src x WHERE x.n > b * 1000 AND x.n <= (b + 1) * 1000
      ON CONFLICT (id) DO UPDATE SET updated_at = EXCLUDED.updated_at
      WHERE (EXCLUDED.updated_at, workos.event_rank(EXCLUDED.last_event), EXCLUDED.last_event_id) > (u.updated_at, workos.event_rank(u.last_event), u.last_event_id);
    ELSIF variant = 2 THEN
      INSERT INTO workos.directory_users AS u (id, directory_id, organization_id, idp_id, email, first_name, last_name, name, username, job_title, state, emails, role, roles, custom_attributes, raw_attributes, created_at, updated_at, deleted_at, last_event_id, last_event)
      SELECT x.id, x.directory_id, x.organization_id, x.idp_id, x.email, x.first_name, x.last_name, x.name, x.username, x.job_title, x.state, NULL, x.role, x.roles, NULL, NULL, x.created_at, x.updated_at,
        NULL,
        x.last_event_id, x.last_event
      FROM src x WHERE x.n > b * 1000 AND x.n <= (b + 1) * 1000
      ON CONFLICT (id) DO UPDATE SET updated_at = EXCLUDED.updated_at
      WHERE (EXCLUDED.updated_at, workos.event_rank(EXCLUDED.last_event), EXCLUDED.last_event_id) > (u.updated_at, workos.event_rank(u.last_event), u.last_event_id);
    END IF;
    total := total + extract(epoch FROM clock_timestamp() - t0);
  END LOOP;
  RETURN total;
END $$;
