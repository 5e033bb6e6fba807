INSERT INTO x_inbox_current (id, event, payload, turn_at)
SELECT 'event_' || lpad(nextval('x_seq')::text, 12, '0'), 'dsync.user.created', repeat('x', 967), now()
FROM generate_series(1, 30);
