# Shared by the integration tests that run a pgshunt (and a database) of their own.
# Source it after `set -euo pipefail`, from the repository root (run.sh's working
# directory). It owns the EXIT trap (a test with more to clean up sets its own, ending
# in lib_cleanup): everything it started is stopped by PID, the database dropped and
# the scratch folder $work removed, whatever happens, on SIGINT and SIGTERM too.
#
#   own_database NAME        a database owned by shunt_trust with the ingest table;
#                            sets $direct (its conninfo, straight to PostgreSQL)
#   reference_database NAME  one more, never migrated, that the answers through pgshunt
#                            are compared with; sets $ref (its conninfo)
#   seed_both                the same 300 rows in both (seed-0..6, k1..k300), with
#                            fixed values (timestamps from the start of today)
#   start_pgshunt [LINE...]  a pgshunt with the base config plus LINEs; sets $pid,
#                            $port, $app (through it, as shunt_trust) and $console
#   stop_pgshunt             SIGTERM, wait, and fail on any sanitizer report in its log
#   wait_phase_known         until the phase is known on $console (fails after 5 s)
#   fail MSG / ok MSG        end the test with the log's warnings / say what passed
#
# For tests that run several pgshunts, each with a config and a log of its own:
#   shunt_conf FILE PORT [LINE...]   the base config plus LINEs, listening on PORT
#   run_pgshunt CONFIG LOG PORT      start one, wait until it listens; sets $pid
#   own_pids+=(PID)                  a process the EXIT trap stops (run_pgshunt adds its)
#   stop_ok PID [SECONDS]            SIGTERM, and it must exit with status 0

shunt_bin=${PGSHUNT_BIN:-./pgshunt}
shunt_harness=tests/harness/pgserver.sh
shunt_admin="host=127.0.0.1 port=$SHUNT_SERVER_PORT user=shunt_admin password=admin-secret"
work=$(mktemp -d /tmp/pgshunt-test.XXXXXX)
pid=
own_db=
ref_db=
own_pids=()

lib_cleanup() {
	local p
	# The processes in own_pids: SIGTERM to all, up to 5 s each to exit, then SIGKILL.
	for p in "${own_pids[@]}"; do
		kill -TERM "$p" 2>/dev/null || true
	done
	for p in "${own_pids[@]}"; do
		for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
		kill -KILL "$p" 2>/dev/null || true
		wait "$p" 2>/dev/null || true
	done
	if [ -n "$pid" ]; then
		kill -TERM "$pid" 2>/dev/null && sleep 0.3
		kill -KILL "$pid" 2>/dev/null || true
	fi
	local db
	for db in $own_db $ref_db; do
		psql -X -q "$shunt_admin dbname=shunt_test" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" \
			2>/dev/null || true
	done
	rm -rf "$work"
}
trap lib_cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

fail() {
	echo "FAIL: $*" >&2
	if [ -f "$work/pgshunt.log" ]; then
		grep -E 'level=(warning|error)|Sanitizer|runtime error' "$work/pgshunt.log" | tail -n 30 >&2
	fi
	exit 1
}

ok() { echo "ok: $*"; }

# show_logs FILE...: the last 20 lines of each FILE that exists, on stderr (for a fail
# of a test's own that shows its logs).
show_logs() {
	local f
	for f in "$@"; do
		if [ -f "$f" ]; then
			echo "--- $f" >&2
			tail -n 20 "$f" >&2
		fi
	done
}

# expect_eq WHAT GOT WANT: fail unless GOT is WANT.
expect_eq() {
	[ "$2" = "$3" ] || fail "$1: got '$2', want '$3'"
}

own_database() {
	own_db=$1
	psql -X -q "$shunt_admin dbname=shunt_test" -c "CREATE DATABASE $own_db OWNER shunt_trust"
	direct="host=127.0.0.1 port=$SHUNT_SERVER_PORT user=shunt_trust dbname=$own_db"
	psql -X -q -v ON_ERROR_STOP=1 "$direct" -f tests/fixtures/ingest_schema.sql
}

reference_database() {
	ref_db=$1
	psql -X -q "$shunt_admin dbname=shunt_test" -c "CREATE DATABASE $ref_db OWNER shunt_trust"
	ref="host=127.0.0.1 port=$SHUNT_SERVER_PORT user=shunt_trust dbname=$ref_db"
	psql -X -q -v ON_ERROR_STOP=1 "$ref" -f tests/fixtures/ingest_schema.sql
}

seed_both() {
	local seed="INSERT INTO ingest_idempotency SELECT 'seed-' || g % 7, 'k' || g, '\\x00', 'completed', 200,
  jsonb_build_object('g', g), date_trunc('day', now()) + g * interval '1 second',
  date_trunc('day', now()) + interval '1 day' FROM generate_series(1, 300) AS g"
	psql -X -qtA -v ON_ERROR_STOP=1 "$direct" -c "$seed" >/dev/null
	psql -X -qtA -v ON_ERROR_STOP=1 "$ref" -c "$seed" >/dev/null
}

# shunt_conf FILE PORT [LINE...]: a pgshunt config listening on 127.0.0.1:PORT in front of
# the harness's PostgreSQL (no TLS to it), shunt_admin on the console, plus LINEs.
shunt_conf() {
	local file=$1 port=$2 line
	shift 2
	{
		echo "[pgshunt]"
		echo "listen_addr = 127.0.0.1"
		echo "listen_port = $port"
		echo "server_host = 127.0.0.1"
		echo "server_port = $SHUNT_SERVER_PORT"
		echo "server_tls_sslmode = disable"
		echo "admin_users = shunt_admin"
		for line in "$@"; do echo "$line"; done
	} >"$file"
}

start_pgshunt() {
	port=$(bash "$shunt_harness" freeport)
	shunt_conf "$work/pgshunt.ini" "$port" "$@"
	"$shunt_bin" "$work/pgshunt.ini" 2>>"$work/pgshunt.log" &
	pid=$!
	for _ in $(seq 100); do
		pg_isready -q -h 127.0.0.1 -p "$port" && break
		kill -0 "$pid" 2>/dev/null || fail "pgshunt exited at start"
		sleep 0.1
	done
	app="host=127.0.0.1 port=$port dbname=${own_db:-shunt_test} user=shunt_trust"
	console="host=127.0.0.1 port=$port dbname=pgshunt user=shunt_admin password=admin-secret"
}

stop_pgshunt() {
	kill -TERM "$pid"
	wait_gone "$pid" 10 "pgshunt did not exit on SIGTERM"
	pid=
	if grep -qE 'Sanitizer|runtime error' "$work/pgshunt.log"; then
		fail "sanitizer report in the log"
	fi
}

# wait_phase_known: until SHOW PHASE on $console says the phase is known (5 s at most).
wait_phase_known() {
	for _ in $(seq 50); do
		[ "$(psql -X -qtA -F'|' "$console" -c 'SHOW PHASE' 2>/dev/null | cut -d'|' -f4)" = yes ] &&
			return 0
		sleep 0.1
	done
	fail "the phase is not known 5 s after the start: $(psql -X -qtA "$console" -c 'SHOW PHASE' 2>&1)"
}

# wait_listening PORT PID LOG: until the pgshunt PID accepts connections on PORT (10 s at
# most); fail, with its LOG, if it exits first.
wait_listening() {
	for _ in $(seq 100); do
		pg_isready -q -h 127.0.0.1 -p "$1" && return 0
		kill -0 "$2" 2>/dev/null || fail "pgshunt exited at start: $(cat "$3")"
		sleep 0.1
	done
	fail "pgshunt did not start listening on $1"
}

# run_pgshunt CONFIG LOG PORT: start a pgshunt on CONFIG, its stderr in LOG, and wait
# until it listens on PORT; sets $pid, in own_pids.
run_pgshunt() {
	"$shunt_bin" "$1" 2>"$2" &
	pid=$!
	own_pids+=("$pid")
	wait_listening "$3" "$pid" "$2"
}

# wait_gone PID SECONDS [MESSAGE]: until PID has exited; fail (with MESSAGE) if it still
# runs after SECONDS.
wait_gone() {
	for _ in $(seq $(($2 * 10))); do
		kill -0 "$1" 2>/dev/null || return 0
		sleep 0.1
	done
	fail "${3:-process $1 still running after $2 s}"
}

# exited_ok PID SECONDS [WHEN]: wait_gone, then fail unless PID, a child of the test,
# exited with status 0 (a sanitizer build does not on a report); WHEN ("after SIGTERM")
# for the messages.
exited_ok() {
	local rc=0
	wait_gone "$1" "$2" "pgshunt $1 still running $2 s${3:+ $3}"
	wait "$1" || rc=$?
	[ "$rc" = 0 ] || fail "pgshunt $1 exited with status $rc${3:+ $3}"
}

# stop_ok PID [SECONDS]: SIGTERM, then exited_ok within SECONDS (10).
stop_ok() {
	kill -TERM "$1"
	exited_ok "$1" "${2:-10}" "after SIGTERM"
}
