#!/usr/bin/env bash
# make demo: a throwaway PostgreSQL, pgshunt in front of it, the ingest workload through
# pgshunt, and a report of what happened.  Everything started here is stopped by PID on
# the way out, whatever happens.
set -euo pipefail
cd "$(dirname "$0")/.."

ROOT=$PWD
HARNESS=$ROOT/tests/harness/pgserver.sh
SECONDS_OF_LOAD=${DEMO_SECONDS:-5}
work=$(mktemp -d /tmp/pgshunt-demo.XXXXXX)
chmod 0755 "$work"
pg_dir=$work/pg
proxy_pid=
load_pid=

cleanup() {
	local rc=$?
	if [ -n "$load_pid" ]; then kill "$load_pid" 2>/dev/null || true; fi
	if [ -n "$proxy_pid" ] && kill -0 "$proxy_pid" 2>/dev/null; then
		kill -TERM "$proxy_pid" 2>/dev/null || true
		for _ in $(seq 50); do kill -0 "$proxy_pid" 2>/dev/null || break; sleep 0.1; done
		kill -KILL "$proxy_pid" 2>/dev/null || true
	fi
	[ -d "$pg_dir" ] && bash "$HARNESS" stop "$pg_dir" >/dev/null 2>&1 || true
	if [ $rc -ne 0 ] && [ -f "$work/pgshunt.log" ]; then
		echo "--- last lines of the pgshunt log ---"
		tail -n 20 "$work/pgshunt.log"
	fi
	rm -rf "$work"
	exit $rc
}
trap cleanup EXIT INT TERM

step() { printf '\n== %s\n' "$*"; }

step "starting a throwaway PostgreSQL 15"
mkdir -p "$pg_dir"
bash "$HARNESS" start "$pg_dir" >/dev/null
# shellcheck disable=SC1091
. "$pg_dir/env"
echo "PostgreSQL on 127.0.0.1:$PGSERVER_PORT (pid $PGSERVER_PID)"

direct="host=127.0.0.1 port=$PGSERVER_PORT dbname=shunt_test user=shunt_admin password=admin-secret"
psql -qX "$direct" -v ON_ERROR_STOP=1 -f tests/fixtures/ingest_schema.sql
psql -qX "$direct" -c "SELECT seed_ingest_idempotency(20000)" >/dev/null
psql -qX "$direct" -c "GRANT ALL ON ingest_idempotency TO shunt_scram" >/dev/null
echo "ingest_idempotency seeded with 20000 rows"

step "starting pgshunt in front of it"
proxy_port=$(bash "$HARNESS" freeport)
cat >"$work/pgshunt.ini" <<EOF
[pgshunt]
listen_addr = 127.0.0.1
listen_port = $proxy_port
unix_socket_dir = $work
server_host = 127.0.0.1
server_port = $PGSERVER_PORT
control_dsn = host=127.0.0.1 port=$PGSERVER_PORT dbname=shunt_test user=shunt_admin password=admin-secret
admin_users = shunt_admin
client_tls_sslmode = prefer
client_tls_cert_file = $SERVER_CERT
client_tls_key_file = $SERVER_KEY
server_tls_sslmode = verify-full
server_tls_ca_file = $CA_FILE
log_level = info
EOF
./pgshunt "$work/pgshunt.ini" 2>"$work/pgshunt.log" &
proxy_pid=$!
for _ in $(seq 100); do
	pg_isready -q -h 127.0.0.1 -p "$proxy_port" && break
	sleep 0.1
done
pg_isready -q -h 127.0.0.1 -p "$proxy_port"
echo "pgshunt $(./pgshunt --version | cut -d' ' -f2) on 127.0.0.1:$proxy_port (pid $proxy_pid); TLS to the server: verify-full"

app="host=localhost port=$proxy_port dbname=shunt_test user=shunt_scram password=scram-secret sslmode=verify-full sslrootcert=$CA_FILE channel_binding=disable"
console="host=127.0.0.1 port=$proxy_port dbname=pgshunt user=shunt_admin password=admin-secret"
before=$(psql -qtAX "$direct" -c "SELECT count(*) FROM ingest_idempotency")

step "the application's workload through pgshunt (TLS + SCRAM, 4 clients, prepared statements), running throughout"
pgbench -n -c 4 -j 2 -T $((3 * SECONDS_OF_LOAD)) -M prepared -f tests/fixtures/ingest_workload.pgbench "$app" \
	>"$work/pgbench.out" 2>&1 &
load_pid=$!
sleep "$SECONDS_OF_LOAD"
echo "$(date -u +%T) load running in passthrough"

step "MIGRATE PREPARE: the partitioned table, its partitions, the buffer, the pgshunt schema"
psql -qtAX -F' ' "$console" -c "MIGRATE PREPARE" | cut -c1-110 | sed 's/^/  /'
psql -qtAX "$direct" -c "SELECT count(*) || ' partitions of ingest_idempotency_next' FROM pg_inherits WHERE inhparent = 'ingest_idempotency_next'::regclass"

step "SET PHASE dual_write, under load"
psql -qtAX "$console" -c "SET PHASE dual_write"
switched=$(psql -qtAX "$direct" -c "SELECT now()")
psql -X "$console" -c "SHOW PHASE"
wait "$load_pid" || { cat "$work/pgbench.out"; exit 1; }
grep -E 'transactions actually processed|failed transactions|^tps|latency average' "$work/pgbench.out"

step "what PostgreSQL holds afterwards (read directly, not through pgshunt)"
after=$(psql -qtAX "$direct" -c "SELECT count(*) FROM ingest_idempotency")
dups=$(psql -qtAX "$direct" -c "SELECT count(*) FROM (SELECT 1 FROM ingest_idempotency GROUP BY site_id, idempotency_key HAVING count(*) > 1) d")
mirrored=$(psql -qtAX "$direct" -c "SELECT count(*) FROM ingest_idempotency_next")
differ=$(psql -qtAX "$direct" -c "SELECT count(*) FROM ingest_idempotency_next n LEFT JOIN ingest_idempotency o USING (site_id, idempotency_key) WHERE o IS NULL OR row(o.*)::text <> row(n.*)::text")
missing=$(psql -qtAX "$direct" -c "SELECT count(*) FROM ingest_idempotency o WHERE o.created_at >= '$switched' AND NOT EXISTS (SELECT 1 FROM ingest_idempotency_next n WHERE (n.site_id, n.idempotency_key) = (o.site_id, o.idempotency_key))")
failed=$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' "$work/pgbench.out")
acked=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$work/pgbench.out")
printf '  %-52s %s\n' \
	"transactions acknowledged (claim, read, record)" "$acked" \
	"client errors" "${failed:-?}" \
	"rows in the table (before: $before)" "$after" \
	"duplicate (site_id, idempotency_key) pairs" "$dups" \
	"rows written in dual_write, now in next_table" "$mirrored" \
	"rows of next_table that differ from the table's" "$differ" \
	"rows inserted after the switch missing from next" "$missing"

step "rollback is one step back: SET PHASE passthrough"
psql -qtAX "$console" -c "SET PHASE passthrough"
psql -X "$console" -c "SHOW PHASE"

step "the admin console: SHOW STATS"
psql -X "$console" -c "SHOW STATS"

step "result"
if [ "$dups" = 0 ] && [ "${failed:-1}" = 0 ] && [ "$differ" = 0 ] && [ "$missing" = 0 ] && [ "$mirrored" -gt 0 ]; then
	echo "OK: no client errors, no duplicate keys, every write of dual_write mirrored identically"
else
	echo "PROBLEM: client errors=${failed:-?} duplicates=$dups differing=$differ missing=$missing mirrored=$mirrored"
	exit 1
fi
