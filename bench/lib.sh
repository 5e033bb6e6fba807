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

# drained_at: waits until no inbox row is unfinished, and prints when the last one finished
# (Unix seconds). The poll must cost Postgres next to nothing: counting the rows scans the whole
# inbox, and every 50 ms that took a core from the drain it measured. So it runs twice a second,
# the end is read from the rows, and it walks the partial index of unfinished rows (with a plan
# of its own, a sequential scan read past every finished row: 1.1 s of Postgres's time in a
# drain of a million, BENCHMARKS.md).
drained_at() {
  while [ -n "$(psql -tAq "$DATABASE_URL" -c "SET enable_seqscan = off" \
      -c "SELECT 1 FROM workos.inbox WHERE finished_at IS NULL LIMIT 1")" ]; do
    sleep 0.5
  done
  psql -tAq "$DATABASE_URL" -c "SELECT extract(epoch FROM max(finished_at)) FROM workos.inbox"
}
