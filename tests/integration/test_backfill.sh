#!/usr/bin/env bash
# The backfill end to end: refused before dual_write (55000), then run in small batches
# while the application inserts, updates and deletes through pgshunt; SHOW BACKFILL
# reports it; VERIFY finds the two tables identical, and so does a row-by-row
# comparison; VERIFY after a deliberate difference is dirty and names the keys.
set -euo pipefail
. tests/integration/lib.sh

rows=${BACKFILL_ROWS:-200000}
own_database "backfill_$$"
q() { psql -X -qtA "$direct" -c "$1"; }
q "SELECT seed_ingest_idempotency($rows)" >/dev/null
q "ANALYZE ingest_idempotency"
start_pgshunt "control_dsn = $direct" "backfill_batch_rows = 2000" "partition_interval = month"
c() { psql -X -qtA "$console" -c "$1" 2>&1; }
load_pid=
trap '[ -n "$load_pid" ] && kill "$load_pid" 2>/dev/null; lib_cleanup' EXIT

out=$(c 'BACKFILL NOW') && fail "BACKFILL NOW accepted"
grep -q 'usage: BACKFILL START|PAUSE|RESUME|CANCEL' <<<"$out" || fail "BACKFILL NOW: $out"
out=$(c 'BACKFILL START START') && fail "BACKFILL START START accepted"
c 'MIGRATE PREPARE' >/dev/null || fail "MIGRATE PREPARE"
# Column names are an API.
cols() { psql -X -A "$console" -c "$1" | head -n 1; }
[ "$(cols 'SHOW BACKFILL')" = "state|rows_done|rows_total|percent|rows_per_sec|eta|cursor|inserted|runner|started_at|updated_at|error" ] ||
	fail "SHOW BACKFILL columns: $(cols 'SHOW BACKFILL')"
out=$(c 'BACKFILL START') && fail "BACKFILL START in passthrough accepted"
grep -q 'runs in dual_write only; the phase is passthrough' <<<"$out" || fail "BACKFILL START in passthrough: $out"
ok "BACKFILL refused with a usage error, and outside dual_write"

[ "$(c 'SHOW BACKFILL')" = "idle|||||||||||" ] || fail "SHOW BACKFILL before any backfill: $(c 'SHOW BACKFILL')"
[ "$(c 'SHOW VERIFY' | cut -d'|' -f1)" = idle ] || fail "SHOW VERIFY before any VERIFY: $(c 'SHOW VERIFY')"
c 'SET PHASE dual_write' >/dev/null || fail "SET PHASE dual_write"
[ "$(cols 'SHOW VERIFY')" = "state|keys_checked|rows_old|rows_next|differences|first_differences|cursor|runner|started_at|updated_at|error" ] ||
	fail "SHOW VERIFY columns: $(cols 'SHOW VERIFY')"

# A proxy that registered but never acknowledged dual_write blocks the start.
q "INSERT INTO pgshunt.proxies (proxy_id, acked_epoch, lease_until) VALUES ('laggard:1:1', 1, now() + interval '1 hour')"
out=$(c 'BACKFILL START') && fail "BACKFILL START with a laggard accepted"
grep -q 'laggard:1:1 (acked 1)' <<<"$out" || fail "laggard not named: $out"
q "DELETE FROM pgshunt.proxies WHERE proxy_id = 'laggard:1:1'"
ok "BACKFILL START names the proxies that did not acknowledge dual_write"

# A batch under another epoch than its proxy pinned does nothing (the phase moved).
# (In a transaction rolled back: no runner sees the job.)
out=$(psql -X -qtA "$direct" <<'EOF'
BEGIN;
INSERT INTO pgshunt.jobs (name, state) VALUES ('backfill', 'running');
SELECT rows_read || ' ' || state FROM pgshunt.backfill_batch('ingest_idempotency', 'ingest_idempotency_next', 10, (SELECT epoch - 1 FROM pgshunt.state));
SELECT count(*) FROM ingest_idempotency_next;
ROLLBACK;
EOF
)
[ "$out" = $'0 stale_epoch\n0' ] || fail "a batch ran under a stale epoch: $out"
ok "a batch pinned to an older epoch does not run"

# The application's load through pgshunt, all along the backfill.
cat >"$work/load.py" <<'EOF'
import random, sys, psycopg
conn = psycopg.connect(sys.argv[1], autocommit=True)
rng = random.Random(7)
n = 0
while True:
    n += 1
    g = rng.randint(1, int(sys.argv[2]))
    site, key = 'site-%d' % (g % 500), None
    op = n % 4
    if op == 0:
        conn.execute("INSERT INTO ingest_idempotency (site_id, idempotency_key, request_hash, created_at) "
                     "VALUES (%s, %s, '\\x01', now() - interval '1 day' * %s) ON CONFLICT (site_id, idempotency_key) DO NOTHING",
                     ('load', 'k%d' % n, rng.randint(0, 100)))
    elif op == 1:
        conn.execute("UPDATE ingest_idempotency SET status = 'failed', response_code = %s "
                     "WHERE site_id = %s AND idempotency_key = md5(%s)::text",
                     (n, site, str(g)))
        conn.execute("UPDATE ingest_idempotency SET status = 'failed', response_code = %s "
                     "WHERE site_id = %s AND idempotency_key = 'seed-' || md5(%s)",
                     (n, site, str(g)))
    elif op == 2:
        conn.execute("DELETE FROM ingest_idempotency WHERE site_id = %s AND idempotency_key = 'seed-' || md5(%s)",
                     (site, str(g)))
    else:
        conn.execute("UPDATE ingest_idempotency SET expires_at = expires_at + interval '1 hour' "
                     "WHERE site_id = 'load' AND idempotency_key = %s", ('k%d' % (n - 3),))
    if n % 200 == 0:
        print(n, flush=True)
EOF
/usr/bin/python3 -u "$work/load.py" "$app" "$rows" >"$work/load.out" 2>&1 &
load_pid=$!
sleep 1

out=$(c 'BACKFILL START') || fail "BACKFILL START: $out"
[ "$out" = "" ] || fail "BACKFILL START printed: $out"
grep -q "job backfill: running here" "$work/pgshunt.log" ||
	for _ in $(seq 30); do grep -q "job backfill: running here" "$work/pgshunt.log" && break; sleep 0.1; done
grep -q "job backfill: running here" "$work/pgshunt.log" || fail "no runner took the backfill"
out=$(c 'BACKFILL START') && fail "a second BACKFILL START accepted"
grep -q 'the backfill is running: PAUSE it' <<<"$out" || fail "second START: $out"

# PAUSE stops it where it is, RESUME goes on from the cursor.
sleep 1
c 'BACKFILL PAUSE' >/dev/null || fail "BACKFILL PAUSE"
sleep 1.5
paused_at=$(q "SELECT rows_done FROM pgshunt.jobs WHERE name = 'backfill'")
sleep 1.5
[ "$(q "SELECT rows_done FROM pgshunt.jobs WHERE name = 'backfill'")" = "$paused_at" ] || fail "the backfill went on while paused"
[ "$(c 'SHOW BACKFILL' | cut -d'|' -f1)" = paused ] || fail "SHOW BACKFILL while paused"
[ "$paused_at" -gt 0 ] && [ "$paused_at" -lt "$rows" ] || fail "paused at $paused_at of $rows"
c 'BACKFILL RESUME' >/dev/null || fail "BACKFILL RESUME"
ok "PAUSE held the backfill at $paused_at rows, RESUME goes on"

for _ in $(seq 600); do
	state=$(q "SELECT state FROM pgshunt.jobs WHERE name = 'backfill'")
	[ "$state" = running ] || break
	kill -0 "$load_pid" 2>/dev/null || fail "the load stopped: $(tail -n 5 "$work/load.out")"
	sleep 0.2
done
[ "$state" = done ] || fail "backfill state $state"
show=$(c 'SHOW BACKFILL')
IFS='|' read -r st done_rows total pct rate eta cursor inserted runner _ <<<"$show"
[ "$st" = done ] && [ "$pct" = 100.0 ] || fail "SHOW BACKFILL at the end: $show"
[ "$done_rows" -ge "$((rows * 9 / 10))" ] || fail "rows_done $done_rows"
grep -q '^\["site-' <<<"$cursor" || fail "cursor $cursor"
[[ "$runner" == *":$port:$pid" ]] || fail "runner $runner (pid $pid)"
ok "backfill done: $done_rows rows read, $inserted copied, by $runner"

# The load keeps running while VERIFY reads: mirrors commit with their writes.
out=$(psql -X -A "$console" -c 'VERIFY')
[ "$(head -n 1 <<<"$out")" = "state|keys_checked|rows_old|rows_next|differences|first_differences" ] || fail "VERIFY columns: $out"
IFS='|' read -r vst keys vo vn vd first <<<"$(sed -n 2p <<<"$out")"
[ "$vst" = clean ] && [ "$vd" = 0 ] && [ "$vo" = "$vn" ] || fail "VERIFY under load: $out"
ok "VERIFY under load: clean, $vo rows on each side"

kill "$load_pid"
wait "$load_pid" 2>/dev/null || true
load_pid=
ops=$(tail -n 1 "$work/load.out")
[ "${ops:-0}" -ge 200 ] || fail "too little load: $ops"
cmp="SELECT count(*) FROM (SELECT * FROM ingest_idempotency EXCEPT ALL SELECT * FROM ingest_idempotency_next) a"
[ "$(q "$cmp")" = 0 ] || fail "rows of old not in next: $(q "$cmp")"
[ "$(q "SELECT count(*) FROM (SELECT * FROM ingest_idempotency_next EXCEPT ALL SELECT * FROM ingest_idempotency) a")" = 0 ] ||
	fail "rows of next not in old"
[ "$(q "SELECT count(*) FROM ingest_idempotency")" = "$(q "SELECT count(*) FROM ingest_idempotency_next")" ] || fail "counts differ"
ok "old and next identical row for row after $ops statements of load"

# A deliberate difference of each kind: VERIFY is dirty and names them, in key order.
q "DELETE FROM ingest_idempotency_next WHERE site_id = 'site-1' AND idempotency_key = (SELECT min(idempotency_key) FROM ingest_idempotency WHERE site_id = 'site-1')"
q "UPDATE ingest_idempotency_next SET status = 'processing' WHERE site_id = 'site-2' AND idempotency_key = (SELECT min(idempotency_key) FROM ingest_idempotency WHERE site_id = 'site-2')"
q "INSERT INTO ingest_idempotency_next (site_id, idempotency_key, request_hash) VALUES ('site-3', 'only-in-next', '\\x09')"
out=$(c 'VERIFY')
IFS='|' read -r vst keys vo vn vd first <<<"$out"
[ "$vst" = dirty ] && [ "$vd" = 3 ] || fail "VERIFY after differences: $out"
k1=$(q "SELECT min(idempotency_key) FROM ingest_idempotency WHERE site_id = 'site-1'")
grep -q "{\"key\": \[\"site-1\", \"$k1\"\], \"kind\": \"missing in next\"}" <<<"$first" || fail "missing in next not named: $first"
grep -q '"kind": "different"}' <<<"$first" || fail "different row not named: $first"
grep -q '{"key": \["site-3", "only-in-next"\], "kind": "missing in old"}' <<<"$first" || fail "missing in old not named: $first"
[ "$(c 'SHOW VERIFY' | cut -d'|' -f1,5)" = "dirty|3" ] || fail "SHOW VERIFY: $(c 'SHOW VERIFY')"
out=$(c 'SET PHASE read_next') && fail "read_next entered after a dirty VERIFY"
grep -q 'the last VERIFY is not clean' <<<"$out" || fail "read_next refusal: $out"
ok "VERIFY dirty: 3 differences named (missing in next, different, missing in old); read_next refused"

stop_pgshunt
