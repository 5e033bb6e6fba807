-- Fills for bench/scale, installed in each benchmark database (schema `bench`). They build the
-- rows in SQL (INSERT … SELECT generate_series), much faster than posting them: the deliveries
-- look like the load generator's (samples/dsync.user.created.json padded to ~1 KB), spread over
-- many directories. They work on the schema of any dsyncd release (a stored backlog's rows all
-- take the turn of their arrival, where migration 0009's `turn_at` exists; since migration 0013
-- the events' states are rows of `workos.inbox_queue` and `workos.inbox_finished`).
CREATE SCHEMA IF NOT EXISTS bench;

-- The body of user event number `n` of directory `directory`, about 1 KB.
CREATE FUNCTION bench.user_event(prefix text, n bigint, directory text, event text DEFAULT 'dsync.user.created')
RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT '{"object":"event","id":"event_' || prefix || '_' || lpad(n::text, 8, '0')
        || '","event":"' || event || '","data":{"object":"directory_user","id":"directory_user_'
        || prefix || '_' || lpad(n::text, 8, '0') || '","directory_id":"' || directory
        || '","organization_id":"org_' || directory || '","idp_id":"' || n
        || '","email":"user' || n || '@example.com","first_name":"Marcelina","last_name":"Davis","name":null,"username":"user'
        || n || '@example.com","emails":[{"primary":true,"type":"work","value":"user' || n
        || '@example.com"}],"job_title":"Software Engineer","state":"active","role":{"slug":"member"},"roles":[{"slug":"member"}],'
        || '"raw_attributes":{"department":"Engineering","manager":"2190","title":"Senior Software Engineer, Platform",'
        || '"cost_center":"CC-1042 Platform Engineering","location":"Berlin, Germany","employee_number":"'
        || lpad(n::text, 8, '0') || '"},"custom_attributes":{"department":"Engineering"},'
        || '"created_at":"2021-06-25T19:07:33.155Z","updated_at":"2021-06-25T19:07:33.155Z"},'
        || '"created_at":"2021-06-25T19:07:33.155Z","context":{}}'
$$;

-- Stores `count` user events (`prefix`, numbered from 0) of `directories` directories
-- (`directory_<prefix>_<k>`, round robin) in the inbox. `finished_from`/`finished_to` NULL:
-- pending; otherwise `done`, finished at times spread evenly between the two.
CREATE FUNCTION bench.fill_inbox(prefix text, count bigint, directories int,
                                 finished_from timestamptz DEFAULT NULL,
                                 finished_to timestamptz DEFAULT NULL)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    CREATE TEMPORARY TABLE fill ON COMMIT DROP AS
    SELECT 'event_' || prefix || '_' || lpad(g::text, 8, '0') AS id,
           bench.user_event(prefix, g, 'directory_' || prefix || '_' || (g % directories)) AS payload,
           s.status, s.attempts, s.at, s.finished
    FROM generate_series(0, count - 1) AS g,
         LATERAL (
             SELECT CASE WHEN finished_from IS NULL THEN 'pending' ELSE 'done' END AS status,
                    CASE WHEN finished_from IS NULL THEN 0 ELSE 1 END AS attempts,
                    COALESCE(finished_from + (finished_to - finished_from) * (g::float8 / count),
                             now()) AS at,
                    finished_from + (finished_to - finished_from) * (g::float8 / count) AS finished
         ) AS s;
    IF to_regclass('workos.inbox_queue') IS NULL THEN
        INSERT INTO workos.inbox (id, event, payload, status, attempts, received_at, available_at,
                                  finished_at)
        SELECT id, 'dsync.user.created', payload, status, attempts, at, at, finished FROM fill;
    ELSE
        INSERT INTO workos.inbox (id, event, payload, received_at)
        SELECT id, 'dsync.user.created', payload, at FROM fill;
        INSERT INTO workos.inbox_queue (id, received_at, turn_at, available_at)
        SELECT id, at, at, at FROM fill WHERE finished IS NULL;
        INSERT INTO workos.inbox_finished (id, status, attempts, finished_at)
        SELECT id, status, attempts, finished FROM fill WHERE finished IS NOT NULL;
    END IF;
    DROP TABLE fill;
END;
$$;

-- `count` users numbered from 0 (`directory_user_<prefix>_<n>`, n zero-padded), user n in
-- `directories[n % cardinality + 1]`, stored in the synced tables as applying their
-- bench.user_event would have (a drain of bench.fill_inbox(prefix, ...) leaves the same rows).
CREATE FUNCTION bench.fill_users(prefix text, count bigint, directories text[])
RETURNS void LANGUAGE sql AS $$
    INSERT INTO workos.directory_users (
        id, directory_id, organization_id, idp_id, email, first_name, last_name, name, username,
        job_title, state, emails, role, roles, custom_attributes, raw_attributes, created_at,
        updated_at, last_event_id, last_event)
    SELECT 'directory_user_' || prefix || '_' || lpad(u::text, 8, '0'), d.directory,
           'org_' || d.directory, u::text, 'user' || u || '@example.com', 'Marcelina', 'Davis',
           NULL, 'user' || u || '@example.com', 'Software Engineer', 'active',
           jsonb_build_array(jsonb_build_object('primary', true, 'type', 'work', 'value', 'user' || u || '@example.com')),
           'member', ARRAY['member'], '{"department":"Engineering"}',
           jsonb_build_object('department', 'Engineering', 'manager', '2190',
                              'title', 'Senior Software Engineer, Platform',
                              'cost_center', 'CC-1042 Platform Engineering',
                              'location', 'Berlin, Germany', 'employee_number', lpad(u::text, 8, '0')),
           '2021-06-25T19:07:33.155Z', '2021-06-25T19:07:33.155Z',
           'event_' || prefix || '_' || lpad(u::text, 8, '0'), 'dsync.user.created'
    FROM generate_series(0, count - 1) AS u,
         LATERAL (SELECT directories[u % cardinality(directories) + 1] AS directory) AS d;
$$;

-- The inbox and users a month of traffic leaves: `count` finished rows (`prefix`, of 200
-- directories) finished over the last 29 days, the users they applied, and `expired` of the rows
-- moved to 31-40 days ago, past the default retention of 30 days.
CREATE FUNCTION bench.fill_month(prefix text, count bigint, expired bigint)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM bench.fill_inbox(prefix, count, 200, now() - interval '29 days', now() - interval '1 minute');
    PERFORM bench.fill_users(prefix, count,
                             ARRAY(SELECT 'directory_' || prefix || '_' || k FROM generate_series(0, 199) AS k));
    IF to_regclass('workos.inbox_queue') IS NULL THEN
        UPDATE workos.inbox
        SET finished_at = now() - interval '31 days' - random() * interval '9 days'
        WHERE id IN (SELECT id FROM workos.inbox WHERE id LIKE 'event_' || prefix || '_%' LIMIT expired);
    ELSE
        -- By address: the outcomes have no index on `id`, and a plan that reads them once for
        -- each of the ids (statistics from before the fill) does not end.
        UPDATE workos.inbox_finished
        SET finished_at = now() - interval '31 days' - random() * interval '9 days'
        WHERE ctid = ANY (ARRAY(SELECT ctid FROM workos.inbox_finished
                                WHERE id LIKE 'event_' || prefix || '_%' LIMIT expired));
    END IF;
END;
$$;

-- A directory `directory` with `users` users, `groups` groups and each user in
-- `per_user` groups, stored in the synced tables as applying their events would have.
CREATE FUNCTION bench.fill_directory(directory text, users int, groups int, per_user int)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO workos.directories (id, organization_id, name, type, state, created_at, updated_at,
                                    last_event_id, last_event)
    VALUES (directory, 'org_' || directory, 'Bench directory', 'generic scim v2.0', 'active',
            '2021-06-25T19:07:33.155Z', '2021-06-25T19:07:33.155Z', 'event_' || directory, 'dsync.activated');
    PERFORM bench.fill_users(directory, users, ARRAY[directory]);
    INSERT INTO workos.directory_groups (id, directory_id, organization_id, idp_id, name,
                                         raw_attributes, created_at, updated_at, last_event_id, last_event)
    SELECT 'directory_group_' || directory || '_' || g, directory, 'org_' || directory, g::text,
           'Group ' || g, '{"description":"Engineering org"}', '2021-06-25T19:07:33.155Z',
           '2021-06-25T19:07:33.155Z', 'event_g_' || directory || '_' || g, 'dsync.group.created'
    FROM generate_series(0, groups - 1) AS g;
    INSERT INTO workos.directory_group_memberships (group_id, user_id, directory_id, organization_id,
                                                    updated_at, last_event_id, last_event)
    SELECT 'directory_group_' || directory || '_' || ((u * per_user + k) % groups),
           'directory_user_' || directory || '_' || lpad(u::text, 8, '0'), directory, 'org_' || directory,
           '2021-06-25T19:08:00.000Z', 'event_m_' || directory || '_' || u || '_' || k,
           'dsync.group.user_added'
    FROM generate_series(0, users - 1) AS u, generate_series(0, per_user - 1) AS k;
END;
$$;

-- Rows under `directory` that are still live, across the three tables.
CREATE FUNCTION bench.live_under(directory text) RETURNS bigint LANGUAGE sql AS $$
    SELECT (SELECT count(*) FROM workos.directory_users WHERE directory_id = directory AND deleted_at IS NULL)
         + (SELECT count(*) FROM workos.directory_groups WHERE directory_id = directory AND deleted_at IS NULL)
         + (SELECT count(*) FROM workos.directory_group_memberships WHERE directory_id = directory AND deleted_at IS NULL)
$$;

-- Rows of group `group_id` that are still live: the group and its memberships.
CREATE FUNCTION bench.live_in_group(group_id text) RETURNS bigint LANGUAGE sql AS $$
    SELECT (SELECT count(*) FROM workos.directory_groups WHERE id = group_id AND deleted_at IS NULL)
         + (SELECT count(*) FROM workos.directory_group_memberships AS m
            WHERE m.group_id = live_in_group.group_id AND deleted_at IS NULL)
$$;
