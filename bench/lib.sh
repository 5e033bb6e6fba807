# Shared by bench/suite and bench/ab (sourced): starting and stopping dsyncd, and waiting for a
# drain. Expects `bin` (the dsyncd binary), `port` and DATABASE_URL.

# start_dsyncd ROLE: starts `dsyncd serve --role ROLE` and waits until it is ready; sets
# dsyncd_pid.
start_dsyncd() {
  DSYNCD_LISTEN="127.0.0.1:$port" "$bin" serve --role "$1" &
  dsyncd_pid=$!
  for _ in $(seq 100); do
    "$bin" healthcheck --url "http://127.0.0.1:$port/readyz" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "dsyncd did not become ready" >&2
  exit 1
}

stop_dsyncd() {
  kill -TERM "$dsyncd_pid"
  wait "$dsyncd_pid" || true
}

# Migration 0013 moved the events' states out of `workos.inbox`, into a queue of the unfinished
# ones and a table of outcomes. These read either schema (of $DATABASE_URL), so that bench/ab,
# bench/scale and DSYNCD_BIN compare builds from both sides of it.
queued_schema() {
  [ "$(psql -tAq "$DATABASE_URL" -c "SELECT to_regclass('workos.inbox_queue') IS NOT NULL")" = t ]
}
# The inbox's tables, to truncate.
inbox_tables() {
  if queued_schema; then echo "workos.inbox, workos.inbox_queue, workos.inbox_finished"; else echo workos.inbox; fi
}
# The table of finished events, with their `finished_at`.
finishes() {
  if queued_schema; then echo workos.inbox_finished; else echo workos.inbox; fi
}
# unfinished [PATTERN]: a query of one unfinished event (with an id LIKE PATTERN, if given).
# Before 0013 it walks the partial index of unfinished rows (with a plan of its own, a
# sequential scan read past every finished row: 1.1 s of Postgres's time in a drain of a
# million, BENCHMARKS.md); since, the queue holds only those.
unfinished() {
  local like=${1:+"AND id LIKE '$1'"}
  if queued_schema; then
    echo "SELECT 1 FROM workos.inbox_queue WHERE true $like LIMIT 1"
  else
    echo "SET enable_seqscan = off; SELECT 1 FROM workos.inbox WHERE finished_at IS NULL $like LIMIT 1"
  fi
}

# drained_at: waits until no inbox row is unfinished, and prints when the last one finished
# (Unix seconds). The poll must cost Postgres next to nothing: counting the rows scans the whole
# inbox, and every 50 ms that took a core from the drain it measured. So it runs twice a second,
# and the end is read from the rows.
drained_at() {
  local query
  query=$(unfinished)
  while [ -n "$(psql -tAq "$DATABASE_URL" -c "$query")" ]; do
    sleep 0.5
  done
  psql -tAq "$DATABASE_URL" -c "SELECT extract(epoch FROM max(finished_at)) FROM $(finishes)"
}
