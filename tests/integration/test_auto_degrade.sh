#!/usr/bin/env bash
# auto-DEGRADED with real measured latency: a trigger that sleeps 600 ms in every
# INSERT pushes the p99 this proxy measures (and reports in its heartbeat) over the
# 500 ms action limit; after auto_degrade_window_s the decider turns DEGRADED on
# through the console's own path.  Fast inserts afterwards do not turn it off while
# the slow ones are still inside the 60 s window (hysteresis: under 100 ms, for the
# window); once they have left it, it goes off.
set -euo pipefail

. tests/integration/lib.sh

own_database "autodeg_$$"
mport=$(bash "$shunt_harness" freeport)
start_pgshunt "control_dsn = $direct" "metrics_addr = 127.0.0.1:$mport" \
	"auto_degrade = on" "auto_degrade_window_s = 2"

db() { psql -X -qtA "$direct" -c "$1"; }
run() { psql -X -qtA -F'|' "$console" -c "$1"; }
gauge() { curl -sS --max-time 5 "http://127.0.0.1:$mport/metrics" | awk -v k="$1" '$1 == k { print $2 }'; }
degraded() { db "SELECT degraded FROM pgshunt.state"; }
insert_some() { # n prefix
	for i in $(seq "$1"); do
		psql -X -q "$app" -c "INSERT INTO ingest_idempotency (site_id, idempotency_key, request_hash) VALUES ('a', '$2-$i', '\\x00')" >/dev/null ||
			fail "insert $2-$i through pgshunt"
	done
}

run "MIGRATE PREPARE" >/dev/null
run "SET PHASE dual_write" >/dev/null
for _ in $(seq 50); do [ "$(gauge pgshunt_auto_degrade_leader)" = 1 ] && break; sleep 0.2; done
[ "$(gauge pgshunt_auto_degrade_leader)" = 1 ] || fail "this proxy did not become the decider"
ok "the only proxy holds the decider's lock"

out=$(psql -X -qtA -v VERBOSITY=verbose "$console" -c "DEGRADED ON" 2>&1) || fail "DEGRADED ON: $out"
run "DEGRADED OFF" >/dev/null

# Fast inserts: nothing happens.
insert_some 5 fast
sleep 4
[ "$(degraded)" = f ] || fail "DEGRADED on with fast inserts"
grep -q "auto-DEGRADED: turning" "$work/pgshunt.log" && fail "auto-DEGRADED acted on fast inserts"
ok "fast inserts: DEGRADED stays off"

db "CREATE FUNCTION slow_insert() RETURNS trigger LANGUAGE plpgsql AS \$\$ BEGIN PERFORM pg_sleep(0.6); RETURN NEW; END \$\$;
    CREATE TRIGGER slow_insert BEFORE INSERT ON ingest_idempotency FOR EACH ROW EXECUTE FUNCTION slow_insert()" >/dev/null
start=$SECONDS
insert_some 3 slow
p99=$(db "SELECT max(insert_p99_ms) FROM pgshunt.proxies")
for _ in $(seq 100); do [ "$(degraded)" = t ] && break; sleep 0.2; done
[ "$(degraded)" = t ] || fail "DEGRADED not on with a fleet p99 of $p99 ms"
[ "$(db "SELECT by LIKE 'pgshunt auto-DEGRADED (%' FROM pgshunt.phase_log ORDER BY id DESC LIMIT 1")" = t ] ||
	fail "phase_log does not name auto-DEGRADED"
[ "$(gauge 'pgshunt_auto_degrade_total{direction="on"}')" = 1 ] || fail "pgshunt_auto_degrade_total on"
on_at=$SECONDS
ok "DEGRADED on $((on_at - start)) s after the slow inserts began (fleet p99 $p99 ms)"

# Fast again (the buffer has no slow trigger, and it is dropped anyway).
db "DROP TRIGGER slow_insert ON ingest_idempotency" >/dev/null
insert_some 5 after
sleep 8
[ "$(degraded)" = t ] || fail "DEGRADED went off while the slow inserts were still in the window"
ok "hysteresis: still on 8 s later, the slow inserts still in the 60 s window"

for _ in $(seq 120); do [ "$(degraded)" = f ] && break; sleep 1; done
[ "$(degraded)" = f ] || fail "DEGRADED never went off"
[ "$(gauge 'pgshunt_auto_degrade_total{direction="off"}')" = 1 ] || fail "pgshunt_auto_degrade_total off"
ok "DEGRADED off $((SECONDS - on_at)) s after it went on"
stop_pgshunt
ok "auto_degrade"
