# Shared by the integration tests that run a pgshunt (and a database) of their own.
# Source it after `set -euo pipefail`, from the repository root (run.sh's working
# directory). It owns the EXIT trap: everything it started is stopped by PID, the
# database dropped and the scratch folder removed, whatever happens.
#
#   own_database NAME        a database owned by shunt_trust with the ingest table;
#                            sets $direct (its conninfo, straight to PostgreSQL)
#   start_pgshunt [LINE...]  a pgshunt with the base config plus LINEs; sets $pid,
#                            $port, $app (through it, as shunt_trust) and $console
#   stop_pgshunt             SIGTERM, wait, and fail on any sanitizer report in its log
#   fail MSG / ok MSG        end the test with the log's warnings / say what passed

shunt_bin=${PGSHUNT_BIN:-./pgshunt}
shunt_harness=tests/harness/pgserver.sh
shunt_admin="host=127.0.0.1 port=$SHUNT_SERVER_PORT user=shunt_admin password=admin-secret"
work=$(mktemp -d /tmp/pgshunt-test.XXXXXX)
pid=
own_db=

lib_cleanup() {
	if [ -n "$pid" ]; then
		kill -TERM "$pid" 2>/dev/null && sleep 0.3
		kill -KILL "$pid" 2>/dev/null || true
	fi
	if [ -n "$own_db" ]; then
		psql -X -q "$shunt_admin dbname=shunt_test" -c "DROP DATABASE IF EXISTS $own_db WITH (FORCE)" \
			2>/dev/null || true
	fi
	rm -rf "$work"
}
trap lib_cleanup EXIT

fail() {
	echo "FAIL: $*" >&2
	if [ -f "$work/pgshunt.log" ]; then
		grep -E 'level=(warning|error)|Sanitizer|runtime error' "$work/pgshunt.log" | tail -n 30 >&2
	fi
	exit 1
}

ok() { echo "ok: $*"; }

own_database() {
	own_db=$1
	psql -X -q "$shunt_admin dbname=shunt_test" -c "CREATE DATABASE $own_db OWNER shunt_trust"
	direct="host=127.0.0.1 port=$SHUNT_SERVER_PORT user=shunt_trust dbname=$own_db"
	psql -X -q -v ON_ERROR_STOP=1 "$direct" -f tests/fixtures/ingest_schema.sql
}

start_pgshunt() {
	port=$(bash "$shunt_harness" freeport)
	{
		echo "[pgshunt]"
		echo "listen_addr = 127.0.0.1"
		echo "listen_port = $port"
		echo "server_host = 127.0.0.1"
		echo "server_port = $SHUNT_SERVER_PORT"
		echo "server_tls_sslmode = disable"
		echo "admin_users = shunt_admin"
		for line in "$@"; do echo "$line"; done
	} >"$work/pgshunt.ini"
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
	for _ in $(seq 100); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	kill -0 "$pid" 2>/dev/null && fail "pgshunt did not exit on SIGTERM"
	pid=
	if grep -qE 'Sanitizer|runtime error' "$work/pgshunt.log"; then
		fail "sanitizer report in the log"
	fi
}
