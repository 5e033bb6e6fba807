# Shared by the scenario scripts of reliability/ (sourced, not run). Needs DATABASE_URL,
# DSYNCD_PGDATA and DSYNCD_PG_BIN from scripts/with-postgres, and the release binaries
# (reliability/run builds them). A scenario can run on its own inside scripts/with-postgres:
#
#   env -u DATABASE_URL scripts/with-postgres -- reliability/kill9
#
# Every process a scenario starts is recorded and killed on exit, whatever the outcome; every
# wait has a deadline. A scenario reports with `figure NAME VALUE` and `check NAME DETAIL
# COMMAND...` (lines of $RELIABILITY_RESULTS, for reliability/summary.py) and exits non-zero if
# any check failed.

# shellcheck disable=SC2034  # the variables are for the scenarios that source this
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

bin="$root/target/release/dsyncd"
loadgen="$root/target/release/examples/loadgen"
scenario="$(basename "$0")"
export WORKOS_WEBHOOK_SECRET=whsec_reliability
export RUST_LOG="${RELIABILITY_LOG:-warn}"
quick() { [ "${RELIABILITY_QUICK:-0}" = 1 ]; }

# The suite's own Postgres, from scripts/with-postgres (the outage scenario stops and starts it).
pg_data="$DSYNCD_PGDATA" pg_bin="$DSYNCD_PG_BIN"

work="${RELIABILITY_WORK:-$(mktemp -d)}/$scenario"
rm -rf "$work"
mkdir -p "$work"
results="${RELIABILITY_RESULTS:-$work/results.tsv}"
failed=0

# ---- Reporting ----

now() { date +%s.%N; }
say() { printf '%s: %s\n' "$scenario" "$*" >&2; }
figure() {
  printf '%s\tfigure\t%s\t%s\n' "$scenario" "$1" "$2" >> "$results"
  say "$1 = $2"
}
# check NAME DETAIL COMMAND...: passes if COMMAND (e.g. `[ "$dead" = 0 ]`) succeeds.
check() {
  local name=$1 detail=$2
  shift 2
  if "$@"; then
    printf '%s\tcheck\t%s\tPASS\t%s\n' "$scenario" "$name" "$detail" >> "$results"
    say "PASS $name${detail:+ ($detail)}"
  else
    printf '%s\tcheck\t%s\tFAIL\t%s\n' "$scenario" "$name" "$detail" >> "$results"
    say "FAIL $name${detail:+ ($detail)}"
    failed=1
  fi
}
finish() {
  if [ "$failed" = 0 ]; then say "passed"; else say "FAILED (logs in $work)"; fi
  exit "$failed"
}

# ---- Processes ----

started_pids=()
cleanup() {
  local pid
  for pid in "${started_pids[@]}"; do
    kill -KILL "$pid" 2>/dev/null || true
  done
  for pid in "${started_pids[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  for hook in "${cleanup_hooks[@]}"; do
    $hook || true
  done
}
cleanup_hooks=()
trap cleanup EXIT
trap 'exit 130' INT TERM

# track PID: kill it when the scenario ends.
track() { started_pids+=("$1"); }

# A free loopback port (the kernel's pick; released before use, which is racy only in theory).
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])'
}

# start_dsyncd NAME PORT ROLE [VAR=VALUE...]: starts `dsyncd serve`, sets $last_pid. Logs
# append to $work/NAME.log.
start_dsyncd() {
  local name=$1 port=$2 role=$3
  shift 3
  env DSYNCD_LISTEN="127.0.0.1:$port" "$@" "$bin" serve --role "$role" >> "$work/$name.log" 2>&1 &
  last_pid=$!
  track "$last_pid"
}

# wait_for SECONDS DESCRIPTION COMMAND...: polls COMMAND until it succeeds; fails the scenario
# (exits) at the deadline.
wait_for() {
  local seconds=$1 description=$2
  shift 2
  local deadline=$(( $(date +%s) + seconds ))
  until "$@" >/dev/null 2>&1; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
      check "$description within ${seconds}s" "" false
      finish
    fi
    sleep 0.05
  done
}

status_of() { curl -s -o /dev/null -m 2 -w '%{http_code}' "$1" || true; }
is_ready() { [ "$(status_of "http://127.0.0.1:$1/readyz")" = 200 ]; }

# run_tests SECONDS ARGS...: the integration-test binary (tests/it) with ARGS (a filter,
# --ignored…), stopped after SECONDS. reliability/run builds it before the scenarios and names it
# in RELIABILITY_TEST_BIN, so that source changes during a run cannot make a scenario compile.
run_tests() {
  local seconds=$1
  shift
  if [ -n "${RELIABILITY_TEST_BIN:-}" ]; then
    timeout "$seconds" "$RELIABILITY_TEST_BIN" "$@"
  else
    SQLX_OFFLINE=true timeout "$seconds" cargo test --quiet --test it -- "$@"
  fi
}

# ---- The database ----

# psql, quiet (no notices), failing on the first error, bounded in time.
psql_() {
  PGOPTIONS="-c client_min_messages=warning" timeout 60 psql -X -q -v ON_ERROR_STOP=1 "$@"
}
sql() { psql_ -tA "$DATABASE_URL" -c "$1"; }

# fresh_database NAME: a new database in the suite's server, migrated; DATABASE_URL points at it.
fresh_database() {
  local server="${DATABASE_URL%/*}"
  psql_ "$server/postgres" -c "DROP DATABASE IF EXISTS $1" -c "CREATE DATABASE $1"
  export DATABASE_URL="$server/$1"
  timeout 60 "$bin" migrate >> "$work/migrate.log" 2>&1
}

unfinished() { sql "SELECT count(*) FROM workos.inbox_queue"; }
drained() { [ "$(unfinished)" = 0 ]; }

# acknowledged_ids LOADGEN_JSON ACKED_FILE PREFIX OUT: checks that the load generator saw every
# delivery answered 2xx within its retry window, and writes the event ids answered 2xx, one a
# line, to OUT: from its --acknowledged-file, or (a load generator that does not write one) all
# of them when every delivery was acknowledged. Fails if there is no such list.
acknowledged_ids() {
  local report=$1 acked=$2 prefix=$3 out=$4
  local ok requests
  read -r ok requests < <(python3 -c 'import json, sys
report = json.load(open(sys.argv[1]))
print(report["ok"], report["requests"])' "$report")
  check "every delivery acknowledged within the retry window" "$ok of $requests" \
    [ "$ok" = "$requests" ]
  if [ -s "$acked" ]; then
    sort -u "$acked" > "$out"
  elif [ "$ok" = "$requests" ]; then
    python3 -c 'import sys
prefix, requests = sys.argv[1], int(sys.argv[2])
sys.stdout.writelines(f"event_{prefix}_{n:08}\n" for n in range(requests))' "$prefix" "$requests" \
      > "$out"
  else
    return 1
  fi
}

# verify_acknowledged FILE [exact]: checks that every event id in FILE is stored `done` and its
# user applied, that nothing is dead, and that every stored event gave exactly one user row (the
# load's events are distinct users). With `exact`, every delivery sent was acknowledged, so the
# inbox must hold exactly the acknowledged events, and the users table one row for each.
verify_acknowledged() {
  local file=$1 exact=${2:-}
  local acked
  acked=$(wc -l < "$file")
  sql "DROP TABLE IF EXISTS public.acknowledged;
       CREATE TABLE public.acknowledged (id text PRIMARY KEY)"
  psql_ "$DATABASE_URL" -c "\\copy public.acknowledged FROM '$file'"
  local not_done not_applied dead users stored
  not_done=$(sql "SELECT count(*) FROM public.acknowledged a LEFT JOIN workos.inbox_status i USING (id)
                  WHERE i.status IS DISTINCT FROM 'done'")
  not_applied=$(sql "SELECT count(*) FROM public.acknowledged a WHERE NOT EXISTS (
                       SELECT 1 FROM workos.directory_users u
                       WHERE u.id = replace(a.id, 'event_', 'directory_user_'))")
  dead=$(sql "SELECT count(*) FROM workos.inbox_finished WHERE status = 'dead'")
  users=$(sql "SELECT count(*) FROM workos.directory_users")
  stored=$(sql "SELECT count(*) FROM workos.inbox")
  figure acknowledged "$acked"
  figure stored "$stored"
  check "every acknowledged event is stored and done" "$not_done of $acked not done" \
    [ "$not_done" = 0 ]
  check "every acknowledged user is applied" "$not_applied of $acked missing" [ "$not_applied" = 0 ]
  check "no event is dead" "$dead dead" [ "$dead" = 0 ]
  check "one user row per stored event" "$users user rows, $stored events" [ "$users" = "$stored" ]
  if [ "$exact" = exact ]; then
    check "exactly the acknowledged events are stored" "$stored stored, $acked acknowledged" \
      [ "$stored" = "$acked" ]
  fi
}

# ---- Stopping and starting the suite's Postgres (the outage scenario) ----

as_pg_owner() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

# The options scripts/with-postgres started the server with (its postmaster.opts), minus the
# binary and -D, so that it comes back exactly as it was, on the same port.
pg_options() {
  local -a words
  eval "words=($(cat "$pg_data/postmaster.opts"))"
  echo "${words[*]:3}"
}

pg_stop() {
  pg_saved_options="$(pg_options)"
  as_pg_owner "$pg_bin/pg_ctl" -D "$pg_data" -m fast -w -t 60 stop > /dev/null
}

pg_start() {
  as_pg_owner "$pg_bin/pg_ctl" -D "$pg_data" -w -t 60 -l "$pg_data/server.log" \
    -o "$pg_saved_options" start > /dev/null
}
