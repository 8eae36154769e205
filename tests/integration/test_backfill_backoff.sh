#!/usr/bin/env bash
# The backfill yields to the application: while this proxy's p99 insert latency is over
# 100 ms it copies nothing (and says so in the log), and it goes on once inserts are
# fast again.  Slow inserts are made with a trigger that sleeps on the table.
set -euo pipefail
. tests/integration/lib.sh

own_database "bfbackoff_$$"
q() { psql -X -qtA "$direct" -c "$1"; }
q "SELECT seed_ingest_idempotency(40000)" >/dev/null
start_pgshunt "control_dsn = $direct" "backfill_batch_rows = 500" "backfill_max_rows_per_sec = 4000"
c() { psql -X -qtA "$console" -c "$1" 2>&1; }
load_pid=
trap '[ -n "$load_pid" ] && kill "$load_pid" 2>/dev/null; lib_cleanup' EXIT
job() { q "SELECT $1 FROM pgshunt.jobs WHERE name = 'backfill'"; }

c 'MIGRATE PREPARE' >/dev/null || fail "MIGRATE PREPARE"
c 'SET PHASE dual_write' >/dev/null || fail "SET PHASE dual_write"
q "CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS \$\$BEGIN PERFORM pg_sleep(0.15); RETURN NEW; END\$\$"
q "CREATE TRIGGER slow BEFORE INSERT ON ingest_idempotency FOR EACH ROW WHEN (NEW.site_id = 'slow') EXECUTE FUNCTION slow()"

cat >"$work/slow.py" <<'PY'
import sys, threading, time, psycopg
stop = time.time() + float(sys.argv[2])
def run(t):
    conn = psycopg.connect(sys.argv[1], autocommit=True)
    n = 0
    while time.time() < stop:
        n += 1
        conn.execute("INSERT INTO ingest_idempotency (site_id, idempotency_key, request_hash) VALUES ('slow', %s, '\\x01')",
                     ('%d-%d' % (t, n),))
threads = [threading.Thread(target=run, args=(t,)) for t in range(8)]
for t in threads: t.start()
for t in threads: t.join()
PY
/usr/bin/python3 "$work/slow.py" "$app" 6 &
load_pid=$!
sleep 2.5
c 'BACKFILL START' >/dev/null || fail "BACKFILL START"
sleep 2.5
[ "$(job rows_done)" = 0 ] || fail "the backfill copied $(job rows_done) rows while inserts took 150 ms"
grep -q 'job backfill: backing off, p99 insert latency here is [0-9]* ms (limit 100 ms)' "$work/pgshunt.log" ||
	fail "no back-off in the log"
ok "slow inserts: the backfill waits"
wait "$load_pid" || fail "the slow load failed"
load_pid=
# And at the rate asked (4000 rows/s), measured between two points of its progress.
t0= d0=
for _ in $(seq 400); do
	IFS='|' read -r d t st <<<"$(q "SELECT rows_done, extract(epoch FROM clock_timestamp()), state FROM pgshunt.jobs WHERE name = 'backfill'")"
	if [ -z "$t0" ] && [ "$d" -ge 4000 ]; then t0=$t d0=$d; fi
	if [ -n "$t0" ] && [ "$d" -ge 30000 ]; then break; fi
	[ "$st" = done ] && break
	sleep 0.05
done
[ -n "$t0" ] && [ "$d" -ge 30000 ] || fail "the backfill did not go on: $(job state) at $(job rows_done)"
rate=$(python3 -c "print(round(($d - $d0) / ($t - $t0)))")
[ "$rate" -ge 3600 ] && [ "$rate" -le 4400 ] || fail "backfill at $rate rows/s, asked 4000"
ok "throttle: $rate rows/s measured for 4000 asked"
for _ in $(seq 100); do
	[ "$(job state)" = done ] && break
	sleep 0.2
done
[ "$(job state)" = done ] || fail "the backfill did not go on: $(job state) at $(job rows_done)"
grep -q 'job backfill: insert latency back under 100 ms, going on' "$work/pgshunt.log" || fail "no resumption in the log"
[ "$(q "SELECT count(*) FROM (SELECT * FROM ingest_idempotency EXCEPT ALL SELECT * FROM ingest_idempotency_next) a")" = 0 ] ||
	fail "rows of old missing in next"
ok "fast inserts again: the backfill went on and completed"
stop_pgshunt
