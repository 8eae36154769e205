#!/usr/bin/env bash
# make demo: the runbook end to end, under load, with no application change.
#
# A throwaway PostgreSQL 15 with DEMO_ROWS realistic rows, two pgshunt sidecars in front
# of it (TLS on both sides, SCRAM), and an ingest load through both that retries keys it
# already claimed.  From the console of one sidecar: MIGRATE PREPARE, dual_write, the
# backfill with its progress, VERIFY, read_next, cutover, finalized, then a DEGRADED
# episode and its drain.  It ends with a table of what the clients were told against what
# the table holds, and exits non-zero if an invariant broke.  Everything started here is
# stopped by PID on the way out, whatever happens.
#
# Environment: DEMO_ROWS (default 200000), DEMO_CLIENTS (default 4).
set -euo pipefail
cd "$(dirname "$0")/.."

ROOT=$PWD
HARNESS=$ROOT/tests/harness/pgserver.sh
ROWS=${DEMO_ROWS:-200000}
CLIENTS=${DEMO_CLIENTS:-4}
PY=/usr/bin/python3
work=$(mktemp -d /tmp/pgshunt-demo.XXXXXX)
chmod 0755 "$work"
pg_dir=$work/pg
proxy_pids=()
load_pid=

cleanup() {
	local rc=$?
	if [ -n "$load_pid" ]; then kill "$load_pid" 2>/dev/null || true; fi
	for p in "${proxy_pids[@]}"; do
		kill -TERM "$p" 2>/dev/null || true
	done
	for p in "${proxy_pids[@]}"; do
		for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
		kill -KILL "$p" 2>/dev/null || true
	done
	[ -d "$pg_dir" ] && bash "$HARNESS" stop "$pg_dir" >/dev/null 2>&1 || true
	if [ $rc -ne 0 ]; then
		for log in "$work"/pgshunt-*.log; do
			[ -f "$log" ] || continue
			echo "--- last lines of $(basename "$log") ---"
			tail -n 15 "$log"
		done
	fi
	rm -rf "$work"
	exit $rc
}
trap cleanup EXIT INT TERM

step() { printf '\n== %s  %s\n' "$(date -u +%T)" "$*"; }

step "a throwaway PostgreSQL 15"
mkdir -p "$pg_dir"
bash "$HARNESS" start "$pg_dir" >/dev/null
# shellcheck disable=SC1091
. "$pg_dir/env"
echo "PostgreSQL on 127.0.0.1:$PGSERVER_PORT (pid $PGSERVER_PID)"
direct="host=127.0.0.1 port=$PGSERVER_PORT dbname=shunt_test user=shunt_admin password=admin-secret"
q() { psql -qtAX "$direct" -c "$1"; }
psql -qX "$direct" -v ON_ERROR_STOP=1 -f tests/fixtures/ingest_schema.sql
q "SELECT seed_ingest_idempotency($ROWS)" >/dev/null
q "GRANT ALL ON ingest_idempotency TO shunt_scram" >/dev/null
q "ANALYZE ingest_idempotency"
echo "ingest_idempotency: $(q "SELECT count(*) FROM ingest_idempotency") rows over 120 days, $(q "SELECT pg_size_pretty(pg_total_relation_size('ingest_idempotency'))")"

step "two pgshunt sidecars in front of it"
# start_proxy N: pgshunt number N; sets port_N and records its PID for the cleanup.
start_proxy() {
	local n=$1 port
	port=$(bash "$HARNESS" freeport)
	cat >"$work/pgshunt-$n.ini" <<EOF
[pgshunt]
listen_addr = 127.0.0.1
listen_port = $port
unix_socket_dir = $work
server_host = 127.0.0.1
server_port = $PGSERVER_PORT
control_dsn = host=127.0.0.1 port=$PGSERVER_PORT dbname=shunt_test user=shunt_admin password=admin-secret application_name=pgshunt-$n
admin_users = shunt_admin
client_tls_sslmode = prefer
client_tls_cert_file = $SERVER_CERT
client_tls_key_file = $SERVER_KEY
server_tls_sslmode = verify-full
server_tls_ca_file = $CA_FILE
backfill_batch_rows = 2000
backfill_max_rows_per_sec = 100000
drain_max_rows_per_sec = 20000
log_level = info
EOF
	./pgshunt "$work/pgshunt-$n.ini" >"$work/pgshunt-$n.log" 2>&1 &
	proxy_pids+=($!)
	for _ in $(seq 100); do
		pg_isready -q -h 127.0.0.1 -p "$port" && break
		sleep 0.1
	done
	pg_isready -q -h 127.0.0.1 -p "$port"
	echo "pgshunt $n on 127.0.0.1:$port (pid $!)"
	printf -v "port_$n" '%s' "$port"
}
start_proxy 1
start_proxy 2
port1=$port_1
port2=$port_2
app() { echo "host=localhost port=$1 dbname=shunt_test user=shunt_scram password=scram-secret sslmode=verify-full sslrootcert=$CA_FILE channel_binding=disable"; }
console="host=127.0.0.1 port=$port1 dbname=pgshunt user=shunt_admin password=admin-secret"
admin() { psql -X -v ON_ERROR_STOP=1 "$console" -c "$1"; }
admin_q() { psql -qtAX -v ON_ERROR_STOP=1 "$console" -c "$1"; }

step "the ingest load through both sidecars ($CLIENTS clients, retries of claimed keys), running throughout"
$PY tests/load/ingest_load.py --dsn "$(app "$port1")" --dsn "$(app "$port2")" \
	--clients "$CLIENTS" --stop "$work/stop" --out "$work/load.json" 2>"$work/load.log" &
load_pid=$!
sleep 3
tail -n 1 "$work/load.log" 2>/dev/null || true

step "MIGRATE PREPARE"
admin_q "MIGRATE PREPARE" | cut -c1-120 | sed 's/^/  /'

step "SET PHASE dual_write (returns when both sidecars acknowledged)"
admin "SET PHASE dual_write"
admin "SHOW PROXIES"

step "BACKFILL START"
admin "BACKFILL START"
while :; do
	state=$(q "SELECT state FROM pgshunt.jobs WHERE name = 'backfill'")
	admin_q "SHOW BACKFILL" | head -n 1 | sed 's/^/  backfill: /'
	case $state in
	done) break ;;
	running | idle | '') sleep 2 ;;
	*) echo "backfill ended in state $state"; exit 1 ;;
	esac
done

step "VERIFY"
admin "VERIFY"

step "SET PHASE read_next: reads come from the partitioned table"
admin "SET PHASE read_next"
sleep 2

step "SET PHASE cutover: writes go to the partitioned table first, mirrored to the old one"
admin "SET PHASE cutover"
sleep 3

step "SET PHASE finalized: statements held for the rename, then released"
admin "SET PHASE finalized"
q "SELECT c.relname, CASE c.relkind WHEN 'p' THEN 'partitioned' ELSE 'heap' END FROM pg_class c WHERE c.relname IN ('ingest_idempotency', 'ingest_idempotency_old') ORDER BY 1" | sed 's/^/  /'
sleep 2

step "DEGRADED ON: inserts go to the append-only buffer"
admin "DEGRADED ON"
sleep 4
echo "  rows waiting in the buffer: $(q "SELECT count(*) FROM ingest_fallback_buffer")"
admin "DEGRADED OFF"

step "DRAIN START: the buffer into the table, keys de-duplicated"
admin "DRAIN START"
for _ in $(seq 300); do
	left=$(q "SELECT count(*) FROM ingest_fallback_buffer")
	admin_q "SHOW DRAIN" | head -n 1 | sed 's/^/  drain: /'
	[ "$left" = 0 ] && break
	sleep 1
done
admin "SHOW DRAIN"

step "stopping the load"
touch "$work/stop"
wait "$load_pid"
load_pid=
tail -n 1 "$work/load.log"

step "the result, read directly from PostgreSQL"
left=$(q "SELECT count(*) FROM ingest_fallback_buffer")
ledger=$(q "SELECT count(*) FROM pgshunt.conflicts")
set +e
$PY tests/load/check_acked.py "$work/load.json" "$direct" public.ingest_idempotency >"$work/check.txt" 2>&1
check=$?
set -e
val() { sed -n "s/^$1 //p" "$work/check.txt"; }
printf '  %-50s %s\n' \
	"inserts acknowledged to the clients" "$(val acknowledged_inserts)" \
	"  distinct keys among them (DEGRADED takes retries)" "$(val acknowledged_keys)" \
	"rows in the final (partitioned) table" "$(val rows_in_table)" \
	"duplicate (site_id, idempotency_key) pairs" "$(val duplicate_keys)" \
	"client errors" "$(val client_errors)" \
	"acknowledged inserts missing (rows lost)" "$(val rows_lost)" \
	"rows left in the buffer" "$left" \
	"buffered duplicates recorded in pgshunt.conflicts" "$ledger"
grep '  error:' "$work/check.txt" || true
if [ $check -eq 0 ] && [ "$left" = 0 ]; then
	echo "OK: every acknowledged insert is in the table once; no client saw an error"
else
	echo "PROBLEM: an invariant broke (see the figures above)"
	exit 1
fi
