WITH stored AS (
  INSERT INTO x_inbox_queue (id, event, payload, turn_at)
  SELECT 'event_' || lpad(nextval('x_seq')::text, 12, '0'), 'dsync.user.created', repeat('x', 967), now()
  FROM generate_series(1, 30)
  RETURNING id, turn_at)
INSERT INTO x_queue (id, turn_at) SELECT id, turn_at FROM stored;
