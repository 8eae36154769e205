#!/bin/bash
# The database restarts under pgshunt (a fast shutdown, as a failover or a restart does),
# on a PostgreSQL of the test's own:
#   - a session running a query and an idle one both get the server's FATAL 57P01, as
#     they would directly, and are gone from SHOW CLIENTS;
#   - while the server is down a new client gets FATAL 08006 naming the server;
#   - once it is up again new clients work, the control connection is back (SHOW PHASE
#     knows the phase), and pgshunt stops cleanly on SIGTERM;
#   - all along, before MIGRATE PREPARE, the control connection's polls leave no ERROR
#     in the server's log.
set -euo pipefail
. tests/integration/lib.sh

# Not in $work: the cluster's owner must be able to reach it.
pgdir=$(mktemp -d /tmp/pgshunt-restart.XXXXXX)
cleanup() {
	bash "$shunt_harness" stop "$pgdir" >/dev/null 2>&1 || true
}
trap 'cleanup; lib_cleanup' EXIT
bash "$shunt_harness" start "$pgdir" 2>"$work/pgserver.log" || fail "pgserver: $(cat "$work/pgserver.log")"
# shellcheck disable=SC1091
. "$pgdir/env"
own_server="host=127.0.0.1 port=$PGSERVER_PORT dbname=shunt_test user=shunt_admin password=admin-secret"

# The lib's config points at the shared server: this pgshunt points at ours.
SHUNT_SERVER_PORT=$PGSERVER_PORT start_pgshunt "control_dsn = $own_server"
started=$SECONDS
wait_phase_known
through="host=127.0.0.1 port=$port dbname=shunt_test user=shunt_trust"

/usr/bin/python3 - "$through" "$own_server" "$shunt_harness" "$pgdir" >"$work/restart.out" 2>&1 <<'EOF' ||
import subprocess, sys, threading, time
import psycopg

through, own_server, harness, pgdir = sys.argv[1:5]

def sqlstate(e):
    return getattr(e, "sqlstate", None)

def is_57p01(e):
    # libpq reports a FATAL read while consuming input as the connection's error, whose
    # SQLSTATE psycopg cannot see: its text is the server's.
    return sqlstate(e) == "57P01" or \
        "terminating connection due to administrator command" in str(e)

idle = psycopg.connect(through, autocommit=True)
busy = psycopg.connect(through, autocommit=True)
assert idle.execute("SELECT 1").fetchone() == (1,)
busy_error = []

def run_busy():
    try:
        busy.execute("SELECT pg_sleep(60)")
    except psycopg.Error as e:
        busy_error.append(e)

t = threading.Thread(target=run_busy)
t.start()
with psycopg.connect(own_server, autocommit=True) as watch:
    for _ in range(100):
        n = watch.execute("SELECT count(*) FROM pg_stat_activity"
                          " WHERE query = 'SELECT pg_sleep(60)' AND state = 'active'").fetchone()[0]
        if n == 1:
            break
        time.sleep(0.1)
    else:
        sys.exit("the busy session's query never ran")

subprocess.run(["bash", harness, "down", pgdir], check=True)
t.join(30)
if t.is_alive():
    sys.exit("the busy session still waits 30 s after the server went down")
if not busy_error or not is_57p01(busy_error[0]):
    sys.exit(f"busy session: want 57P01, got {busy_error!r} {[sqlstate(e) for e in busy_error]}")
print("ok: the busy session got 57P01:", str(busy_error[0]).splitlines()[0])
try:
    idle.execute("SELECT 1")
    sys.exit("the idle session still answers with the server down")
except psycopg.Error as e:
    if not is_57p01(e):
        sys.exit(f"idle session: want 57P01, got {sqlstate(e)}: {e}")
    print("ok: the idle session got 57P01:", str(e).splitlines()[0])

try:
    psycopg.connect(through, connect_timeout=10).close()
    sys.exit("a login succeeded with the server down")
except psycopg.Error as e:
    if sqlstate(e) != "08006" and "could not connect to server" not in str(e):
        sys.exit(f"login with the server down: want 08006, got {sqlstate(e)}: {e}")
    print("ok: a login with the server down:", str(e).strip().splitlines()[-1])

subprocess.run(["bash", harness, "up", pgdir], check=True)
with psycopg.connect(through, autocommit=True) as again:
    assert again.execute("SELECT 40 + 2").fetchone() == (42,)
print("ok: a login after the restart works")
EOF
	fail "$(cat "$work/restart.out")"
cat "$work/restart.out"
grep -q "login with the server down: .*could not connect to server 127.0.0.1:$PGSERVER_PORT" \
	"$work/restart.out" || fail "the refused login does not name the server: $(cat "$work/restart.out")"

# Nothing left of the dead sessions but this console's own.
clients=$(psql -X -qtA "$console" -c 'SHOW CLIENTS' | grep -vc '|pgshunt|' || true)
expect_eq "sessions left after the restart" "$clients" 0
for _ in $(seq 150); do
	[ "$(psql -X -qtA -F'|' "$console" -c 'SHOW PHASE' 2>/dev/null | cut -d'|' -f4)" = yes ] && break
	sleep 0.1
done
expect_eq "phase known again" "$(psql -X -qtA -F'|' "$console" -c 'SHOW PHASE' | cut -d'|' -f4)" yes
ok "after the restart: no session left over, the control connection back"
kill -0 "$pid" 2>/dev/null || fail "pgshunt exited"

# Before MIGRATE PREPARE the control connection reads nothing that is not there: its
# polls (four a second) and its heartbeat (every 2 s) leave no ERROR in the server's log.
while ((SECONDS - started < 3)); do sleep 0.2; done
n=$(grep -c 'ERROR: .*"pgshunt\.' "$pgdir/postgres.log" || true)
expect_eq "errors in the server's log from pgshunt's polls before MIGRATE PREPARE" "$n" 0
ok "no errors in the server's log before MIGRATE PREPARE"
stop_pgshunt
ok "pgshunt stops cleanly"
