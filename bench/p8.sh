#!/bin/bash
# pgshunt benchmark P8 (not a test): see docs/BENCHMARKS.md, section "P8".
#
#   P8_ROUNDS=20 bash bench/p8.sh        (./pgshunt must be built: make pgshunt)
#
# P8 = how long `SET PHASE` on an admin console takes to return, i.e. until every live
#      proxy of the fleet has acknowledged the new epoch (docs/OPERATOR.md sections 2
#      and 7), with 4 proxies on one database and no client load.
# Target: median < 1 s (the maximum is reported against 1 s too).
#
# One throwaway PostgreSQL 15, one database (p8) built from
# tests/fixtures/ingest_schema.sql and seeded with P8_SEED rows, 4 pgshunt instances
# on free ports, each with control_dsn to that database.  MIGRATE PREPARE once, on the
# first console; then, once the 4 proxies hold a live lease in pgshunt.proxies,
# P8_ROUNDS rounds of
#     SET PHASE dual_write ; SET PHASE passthrough
# both on the console of proxy (round - 1) % 4 (round-robin).  Timing: a python3
# psycopg client keeps one console connection per proxy open and times each command
# with time.perf_counter() around the execute (psql's start-up and login are not
# counted; what they add is measured separately, for context).  Before each command
# it pauses a random 0-250 ms, so that the commands do not fall in step with the
# proxies' 250 ms poll.  After each command it checks, directly in the database, that
#     SELECT min(acked_epoch) FROM pgshunt.proxies = SELECT epoch FROM pgshunt.state
# with 4 rows, all with a live lease, and that SHOW PHASE on each of the 4 consoles
# gives the new phase and epoch.
# Then a check, not part of P8: a client transaction (BEGIN; SELECT ... FROM
# ingest_idempotency) open through proxy 2 while SET PHASE runs on proxy 1's console,
# committed P8_HOLD s later: SET PHASE must wait for it (take >= P8_HOLD s).
# Output on stdout and in bench/results/p8.txt.
#
# Knobs (environment):
#   P8_ROUNDS   rounds (each: dual_write, then passthrough)          (default 20)
#   P8_SEED     rows seeded into the table                           (default 5000)
#   P8_HOLD     seconds the client transaction of the check stays open (default 2)
#   PGBIN       PostgreSQL binaries      (default /usr/lib/postgresql/15/bin)
#
# Every process started here is stopped by its PID, and the temporary directory
# removed, on exit, failure or interruption.  Everything listens on 127.0.0.1.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)

ROUNDS=${P8_ROUNDS:-20}
SEED=${P8_SEED:-5000}
HOLD=${P8_HOLD:-2}
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
PY=/usr/bin/python3
NPROXIES=4
P8_TARGET_MS=1000
DB=p8

BENCH_NAME=p8
# shellcheck source=bench/lib.sh
. bench/lib.sh

bench_int P8_ROUNDS "$ROUNDS"
bench_int P8_SEED "$SEED"
bench_int P8_HOLD "$HOLD"
bench_require psql "$PY"
bench_require_psycopg
bench_readable tests/fixtures/ingest_schema.sql

# ---------------------------------------------------------------- processes, cleanup

bench_begin bench/results/p8.txt

# console N CMD: run one command on the admin console of proxy N (1..4).
console() {
	psql -X -qAt -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "${SHUNT_PORT[$1]}" -U postgres -d pgshunt -c "$2"
}

# ------------------------------------------------------------------ machine info

bench_header "pgshunt benchmark P8"
echo "python:      $("$PY" --version 2>&1), psycopg $("$PY" -c 'import psycopg; print(psycopg.__version__)')"
echo "settings:    P8_ROUNDS=$ROUNDS P8_SEED=$SEED P8_HOLD=$HOLD, $NPROXIES proxies"
echo

# ------------------------------------------------------------------ PostgreSQL

echo "## Setup"
pg_start PGPORT_ <<EOF
max_connections = 100
shared_buffers = 128MB
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
echo "postgres:  127.0.0.1:$PGPORT_ (pid $(postmaster_pid)), shared_buffers=128MB fsync=off synchronous_commit=off full_page_writes=off"

ingest_db "$DB" "$SEED"
echo "database:  $DB from tests/fixtures/ingest_schema.sql, seed_ingest_idempotency($SEED): $(sql "$PGPORT_" "$DB" 'SELECT count(*) FROM ingest_idempotency') rows"

# ------------------------------------------------------------------ 4 proxies

declare -a SHUNT_PORT=()
for ((n = 1; n <= NPROXIES; n++)); do
	freeport SHUNT_PORT[n]
	shunt_ini "$TMP/pgshunt$n.ini" "${SHUNT_PORT[n]}" "admin_users = postgres" \
		"control_dsn = host=127.0.0.1 port=$PGPORT_ dbname=$DB user=postgres" "log_level = warning"
	"$ROOT/pgshunt" "$TMP/pgshunt$n.ini" >"$TMP/pgshunt$n.log" 2>&1 &
	PIDS[pgshunt$n]=$!
done
for ((n = 1; n <= NPROXIES; n++)); do
	wait_up "pgshunt$n" "${SHUNT_PORT[n]}" sql "${SHUNT_PORT[n]}" "$DB" 'SELECT 1'
	echo "pgshunt $n: 127.0.0.1:${SHUNT_PORT[n]} (pid ${PIDS[pgshunt$n]}) -> $DB, control_dsn to $DB"
done

console_retry pgshunt1 "$TMP/prepare.out" console 1 'MIGRATE PREPARE'
echo "prepare:   MIGRATE PREPARE on pgshunt 1's console ($(wc -l <"$TMP/prepare.out") steps)"

# Each proxy registers at its next heartbeat (every 2 s) once the schema exists.
LIVE_SQL='SELECT count(*) FROM pgshunt.proxies WHERE lease_until > now()'
t0=$(date +%s%N)
for ((i = 0; i < 300; i++)); do
	live=$(sql "$PGPORT_" "$DB" "$LIVE_SQL")
	[ "$live" = "$NPROXIES" ] && break
	sleep 0.1
done
[ "$live" = "$NPROXIES" ] || {
	sql "$PGPORT_" "$DB" 'SELECT * FROM pgshunt.proxies' || true
	die "only $live of $NPROXIES proxies have a live lease in pgshunt.proxies after 30 s"
}
echo "fleet:     $live proxies with a live lease in pgshunt.proxies, $((($(date +%s%N) - t0) / 1000000)) ms after MIGRATE PREPARE"
echo "phase:     $(sql "$PGPORT_" "$DB" "SELECT phase || ', epoch ' || epoch FROM pgshunt.state")"
sleep 1 # let every proxy's post-registration beat settle
echo

# ------------------------------------------------------------------ the measurement

cat >"$TMP/p8.py" <<'EOF'
# P8: times SET PHASE on open console connections and checks the fleet after each.
import math
import random
import statistics
import sys
import threading
import time

import psycopg

ports = sys.argv[1].split(",")
pgport, db, rounds, hold, target = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6])
n = len(ports)


def connect(port, dbname):
    return psycopg.connect(f"host=127.0.0.1 port={port} dbname={dbname} user=postgres connect_timeout=10",
                           autocommit=True)


consoles = [connect(p, "pgshunt") for p in ports]
direct = connect(pgport, db)
rng = random.Random(8)

FLEET_SQL = """
SELECT s.phase, s.epoch,
       (SELECT min(acked_epoch) FROM pgshunt.proxies),
       (SELECT count(*) FROM pgshunt.proxies),
       (SELECT count(*) FROM pgshunt.proxies WHERE lease_until > now()),
       (SELECT round(extract(epoch FROM max(heartbeat_at) - s.changed_at) * 1000)::int
          FROM pgshunt.proxies)
  FROM pgshunt.state s"""

times = {"dual_write": [], "passthrough": []}
failures = []

print(f"## P8: SET PHASE to all-acked, {n} proxies, idle, {rounds} rounds "
      f"(python3 psycopg, open console connections, time.perf_counter() around the execute)")
print("# console = the proxy whose console ran the command (round-robin); ms = until SET PHASE returned;")
print("# min acked = SELECT min(acked_epoch) FROM pgshunt.proxies, right after; SHOW PHASE = the 4 consoles;")
print("# last beat = the latest heartbeat_at in pgshunt.proxies - pgshunt.state.changed_at (the write):")
print("#             at most when the slowest proxy acknowledged (a later periodic beat would also count)")
print(f"{'round':>5} {'console':>7} {'command':<26} {'ms':>8} {'epoch':>6} {'min acked':>9} "
      f"{'live':>5} {'SHOW PHASE x4':<14} {'last beat':>9}  check")
for r in range(1, rounds + 1):
    k = (r - 1) % n
    for phase in ("dual_write", "passthrough"):
        time.sleep(rng.uniform(0, 0.25))
        t0 = time.perf_counter()
        try:
            consoles[k].execute(f"SET PHASE {phase}")
            ms = (time.perf_counter() - t0) * 1000
        except psycopg.Error as e:
            ms = (time.perf_counter() - t0) * 1000
            print(f"{r:>5} {k + 1:>7} SET PHASE {phase:<16} {ms:>8.1f}  FAILED: {e}".rstrip())
            failures.append(f"round {r}: SET PHASE {phase}: {e}")
            continue
        st_phase, epoch, min_acked, rows, live, last_beat = direct.execute(FLEET_SQL).fetchone()
        shown = [c.execute("SHOW PHASE").fetchone() for c in consoles]
        shown_ok = all(s[0] == phase and int(s[2]) == epoch for s in shown)
        ok = (st_phase == phase and min_acked == epoch and rows == n and live == n and shown_ok)
        shown_txt = f"{sum(s[0] == phase and int(s[2]) == epoch for s in shown)}/{n} ok"
        print(f"{r:>5} {k + 1:>7} SET PHASE {phase:<16} {ms:>8.1f} {epoch:>6} {min_acked:>9} "
              f"{live:>3}/{rows:<1} {shown_txt:<14} {last_beat:>6} ms  {'ok' if ok else 'FAILED'}")
        if not ok:
            failures.append(f"round {r}: SET PHASE {phase}: state {st_phase}/{epoch}, min acked {min_acked}, "
                            f"{live}/{rows} live, SHOW PHASE {[(s[0], s[2]) for s in shown]}")
        times[phase].append(ms)
print()


def p90(v):  # nearest rank
    s = sorted(v)
    return s[max(0, math.ceil(0.9 * len(s)) - 1)]


print(f"## P8: SET PHASE until every live proxy acknowledged, ms ({n} proxies, idle, {rounds} rounds; "
      f"p90 = nearest rank)")
print(f"{'command':<28} {'n':>4} {'min':>8} {'median':>8} {'p90':>8} {'max':>8}")
rows_ = [("SET PHASE dual_write", times["dual_write"]), ("SET PHASE passthrough", times["passthrough"]),
         ("both", times["dual_write"] + times["passthrough"])]
for name, v in rows_:
    if v:
        print(f"{name:<28} {len(v):>4} {min(v):>8.1f} {statistics.median(v):>8.1f} {p90(v):>8.1f} {max(v):>8.1f}")
    else:
        print(f"{name:<28} {0:>4} {'-':>8} {'-':>8} {'-':>8} {'-':>8}")
print()
complete = all(len(v) == rounds for v in times.values())
if failures:
    print("checks FAILED:")
    for f in failures:
        print("  " + f)
else:
    print(f"checks: after each of the {2 * rounds} commands min(acked_epoch) = pgshunt.state.epoch, "
          f"{n} live proxies, SHOW PHASE on all {n} consoles gives the new phase and epoch: ok")
med_ok = complete and not failures and all(statistics.median(v) < target for v in times.values())
max_ok = complete and not failures and all(max(v) < target for v in times.values())
print(f"P8 (median < {target:.0f} ms, each command): {'MET' if med_ok else 'NOT MET'}")
print(f"   (max < {target:.0f} ms, each command):    {'MET' if max_ok else 'NOT MET'}")
print()

# ---- the check, not part of P8: a transaction open on another proxy holds SET PHASE.
cur_phase = direct.execute("SELECT phase FROM pgshunt.state").fetchone()[0]
to = "dual_write" if cur_phase == "passthrough" else "passthrough"
issuer, holder = 0, 1 % n
app = connect(ports[holder], db)
app.execute("BEGIN")
count = app.execute("SELECT count(*) FROM ingest_idempotency").fetchone()[0]
probe = connect(pgport, db)
seen = {}


def holder_side(t0):
    time.sleep(max(0, t0 + hold / 2 - time.perf_counter()))
    seen["mid"] = probe.execute(
        "SELECT acked_epoch, inflight, (SELECT epoch FROM pgshunt.state) FROM pgshunt.proxies "
        "WHERE proxy_id LIKE %s", (f"%:{ports[holder]}:%",)).fetchone()
    time.sleep(max(0, t0 + hold - time.perf_counter()))
    app.execute("COMMIT")
    seen["commit_ms"] = (time.perf_counter() - t0) * 1000


print(f"## Check (not P8): SET PHASE {to} on console {issuer + 1} while a client transaction is open on "
      f"proxy {holder + 1}")
print(f"# proxy {holder + 1}: BEGIN; SELECT count(*) FROM ingest_idempotency  -> {count}; COMMIT {hold} s "
      f"after SET PHASE was sent")
t0 = time.perf_counter()
th = threading.Thread(target=holder_side, args=(t0,))
th.start()
err = None
try:
    consoles[issuer].execute(f"SET PHASE {to}")
except psycopg.Error as e:
    err = e
ms = (time.perf_counter() - t0) * 1000
th.join()
mid = seen.get("mid")
if mid:
    print(f"after {hold / 2:.1f} s:   proxy {holder + 1} acked_epoch {mid[0]}, inflight {mid[1]}, "
          f"pgshunt.state.epoch {mid[2]}  ({'held back' if mid[0] < mid[2] else 'NOT held back'}; "
          f"inflight is as of that proxy's last heartbeat, every 2 s)")
print(f"COMMIT at:    {seen.get('commit_ms', float('nan')):.1f} ms")
if err:
    print(f"SET PHASE {to}: FAILED after {ms:.1f} ms: {err}")
    hold_ok = False
else:
    print(f"SET PHASE {to}: returned after {ms:.1f} ms, {ms - seen.get('commit_ms', 0):.1f} ms after the COMMIT")
    hold_ok = ms >= hold * 1000 and bool(mid) and mid[0] < mid[2]
print(f"check (SET PHASE waits for the open transaction: >= {hold * 1000} ms): {'ok' if hold_ok else 'FAILED'}")
sys.exit(0 if (complete and not failures and hold_ok) else 3)
EOF

ports=$(
	IFS=,
	echo "${SHUNT_PORT[*]}"
)
py_rc=0
"$PY" "$TMP/p8.py" "$ports" "$PGPORT_" "$DB" "$ROUNDS" "$HOLD" "$P8_TARGET_MS" || py_rc=$?
[ "$py_rc" = 0 ] || [ "$py_rc" = 3 ] || die "the measuring client failed (exit status $py_rc)"
echo

# For context: what a one-shot psql would have added to each command (start-up, TCP
# connection, login through the console, one SHOW PHASE, exit), timed with date +%s%N.
psql_ms=()
for ((i = 0; i < 5; i++)); do
	t0=$(date +%s%N)
	console $((i % NPROXIES + 1)) 'SHOW PHASE' >/dev/null
	psql_ms+=($((($(date +%s%N) - t0) / 1000000)))
done
echo "context: psql -c 'SHOW PHASE' on a console, whole process, 5 runs (date +%s%N): ${psql_ms[*]} ms" \
	"(not in the P8 figures)"

for ((n = 1; n <= NPROXIES; n++)); do
	log_errors "pgshunt$n"
done
bench_end
