#!/usr/bin/env bash
# Duplicate-key storms (tests/integration/storm.py) in every phase this pgshunt serves,
# in a database of its own with a pgshunt of its own.
set -euo pipefail

bin=${PGSHUNT_BIN:-./pgshunt}
harness=tests/harness/pgserver.sh
db=storm_$$
work=$(mktemp -d /tmp/pgshunt-storm.XXXXXX)
pid=
admin="host=127.0.0.1 port=$SHUNT_SERVER_PORT user=shunt_admin password=admin-secret"

cleanup() {
	if [ -n "$pid" ]; then
		kill -TERM "$pid" 2>/dev/null && sleep 0.3
		kill -KILL "$pid" 2>/dev/null || true
	fi
	psql -X -q "$admin dbname=shunt_test" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT

fail() {
	echo "FAIL: $*" >&2
	[ -f "$work/pgshunt.log" ] && grep -E 'level=(warning|error)' "$work/pgshunt.log" | tail -n 20 >&2
	exit 1
}

psql -X -q "$admin dbname=shunt_test" -c "CREATE DATABASE $db OWNER shunt_trust"
direct="host=127.0.0.1 port=$SHUNT_SERVER_PORT user=shunt_trust dbname=$db"
psql -X -q -v ON_ERROR_STOP=1 "$direct" -f tests/fixtures/ingest_schema.sql

port=$(bash "$harness" freeport)
cat >"$work/pgshunt.ini" <<EOF
[pgshunt]
listen_addr = 127.0.0.1
listen_port = $port
server_host = 127.0.0.1
server_port = $SHUNT_SERVER_PORT
server_tls_sslmode = disable
admin_users = shunt_admin
control_dsn = $direct
EOF
"$bin" "$work/pgshunt.ini" 2>"$work/pgshunt.log" &
pid=$!
for _ in $(seq 100); do
	pg_isready -q -h 127.0.0.1 -p "$port" && break
	sleep 0.1
done
app="host=127.0.0.1 port=$port dbname=$db user=shunt_trust"
console="host=127.0.0.1 port=$port dbname=pgshunt user=shunt_admin password=admin-secret"

storm() {
	/usr/bin/python3 tests/integration/storm.py "$app" "$direct" "$1" || fail "storm in $1"
}

storm passthrough
psql -X -qtA "$console" -c 'MIGRATE PREPARE' >/dev/null || fail "MIGRATE PREPARE"
psql -X -qtA "$console" -c 'SET PHASE dual_write' || fail "SET PHASE dual_write"
storm dual_write
psql -X -qtA "$console" -c 'SET PHASE read_next FORCE' || fail "SET PHASE read_next FORCE"
storm read_next
echo "storms: ok"
