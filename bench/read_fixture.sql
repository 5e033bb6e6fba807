-- The read API's benchmark directory (bench/suite): 10,000 users shaped like the sample
-- deliveries (about 1 KB each as JSON), 10 groups, each user a member of one of them.
INSERT INTO workos.directories
    (id, organization_id, name, type, state, external_key, domains, created_at, updated_at,
     last_event_id, last_event)
VALUES ('directory_bench_read', 'org_bench_read', 'Bench Corp', 'okta scim v2.0', 'active',
        'bench-key', '[{"object": "organization_domain", "id": "org_domain_bench", "domain": "bench.example.com"}]',
        '2026-01-01', '2026-01-01', 'event_bench_read', 'dsync.activated');
INSERT INTO workos.directory_groups
    (id, directory_id, organization_id, idp_id, name, raw_attributes, created_at, updated_at,
     last_event_id, last_event)
SELECT 'directory_group_read_' || g, 'directory_bench_read', 'org_bench_read', 'idp-group-' || g,
       'Group ' || g, '{"description": "Engineering org"}',
       timestamptz '2026-01-01' + g * interval '1 second', timestamptz '2026-01-01' + g * interval '1 second',
       'event_bench_read', 'dsync.group.created'
FROM generate_series(1, 10) g;
INSERT INTO workos.directory_users
    (id, directory_id, organization_id, idp_id, email, first_name, last_name, name, username,
     job_title, state, emails, role, roles, custom_attributes, raw_attributes, created_at,
     updated_at, last_event_id, last_event)
SELECT 'directory_user_read_' || n, 'directory_bench_read', 'org_bench_read', n::text,
       'user' || n || '@bench.example.com', 'Marcelina', 'Davis', NULL, 'user' || n || '@bench.example.com',
       'Software Engineer', 'active',
       jsonb_build_array(jsonb_build_object('primary', true, 'type', 'work', 'value', 'user' || n || '@bench.example.com')),
       'member', ARRAY['member'], '{"department": "Engineering"}',
       jsonb_build_object('department', 'Engineering', 'manager', '2190',
           'title', 'Senior Software Engineer, Platform', 'cost_center', 'CC-1042 Platform Engineering',
           'location', 'Berlin, Germany', 'employee_number', lpad(n::text, 8, '0')),
       timestamptz '2026-01-02' + n * interval '1 second', timestamptz '2026-01-02' + n * interval '1 second',
       'event_bench_read', 'dsync.user.created'
FROM generate_series(1, 10000) n;
INSERT INTO workos.directory_group_memberships
    (group_id, user_id, directory_id, organization_id, updated_at, last_event_id, last_event)
SELECT 'directory_group_read_' || (n % 10 + 1), 'directory_user_read_' || n, 'directory_bench_read',
       'org_bench_read', '2026-01-03', 'event_bench_read', 'dsync.group.user_added'
FROM generate_series(1, 10000) n;
ANALYZE;
