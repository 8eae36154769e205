#!/usr/bin/env bash
# A proxy whose heartbeat fails while it still reads the phase (here: its role lost
# the right to update pgshunt.proxies) stops serving statements on the table before
# its lease lapses, since from then on SET PHASE no longer waits for it (I7); it serves
# everything else, and goes on once a heartbeat renews the lease.
set -euo pipefail
. tests/integration/lib.sh

own_database "lease_$$"
q() { psql -X -qtA "$direct" -c "$1"; }
start_pgshunt "control_dsn = $direct"
run() { psql -X -qtA "$console" -c "$1" 2>&1; }
run 'MIGRATE PREPARE' >/dev/null || fail "MIGRATE PREPARE"
run 'SET PHASE dual_write' >/dev/null || fail "SET PHASE dual_write"
for _ in $(seq 50); do
	[ "$(q "SELECT count(*) FROM pgshunt.proxies WHERE lease_until > now()")" = 1 ] && break
	sleep 0.1
done
lease_running() { q "SELECT lease_until > now() FROM pgshunt.proxies WHERE proxy_id LIKE '%:$port:%'"; }

q "REVOKE INSERT, UPDATE ON pgshunt.proxies FROM shunt_trust" >/dev/null
revoked=$(date +%s)
held_at=
for _ in $(seq 60); do
	if ! out=$(timeout 1 psql -X -qtA "$app" -c "SELECT count(*) FROM ingest_idempotency" 2>&1); then
		held_at=$(date +%s)
		alive=$(lease_running)
		break
	fi
	[ "$out" = 0 ] || fail "answer: $out"
	sleep 0.3
done
[ -n "$held_at" ] || fail "still serving the table 18 s after its heartbeats began to fail"
[ "$alive" = t ] || fail "served the table after its lease had lapsed"
[ $((held_at - revoked)) -ge 6 ] || fail "held after $((held_at - revoked)) s: too early"
[ "$(run 'SHOW PHASE' | cut -d'|' -f4)" = no ] || fail "SHOW PHASE: the phase still known"
[ "$(timeout 5 psql -X -qtA "$app" -c "SELECT 6 * 7")" = 42 ] || fail "a statement not naming the table was held"
grep -q 'lease in pgshunt.proxies was not renewed' "$work/pgshunt.log" || fail "not logged"
ok "heartbeats failing: table statements held $((held_at - revoked)) s later, while the lease was still running"

psql -X -qtA "$app" -c "SELECT count(*) FROM ingest_idempotency" >"$work/held.out" 2>&1 &
held=$!
sleep 0.5
kill -0 "$held" 2>/dev/null || fail "not held: $(cat "$work/held.out")"
q "GRANT INSERT, UPDATE ON pgshunt.proxies TO shunt_trust" >/dev/null
for _ in $(seq 100); do kill -0 "$held" 2>/dev/null || break; sleep 0.1; done
kill -0 "$held" 2>/dev/null && fail "still held after the lease could be renewed"
wait "$held" || fail "the held statement failed: $(cat "$work/held.out")"
[ "$(cat "$work/held.out")" = 0 ] || fail "held statement: $(cat "$work/held.out")"
[ "$(lease_running)" = t ] || fail "lease not renewed"
[ "$(run 'SHOW PHASE' | cut -d'|' -f4)" = yes ] || fail "phase not known again"
ok "lease renewed: the held statement answered"
stop_pgshunt
echo "fleet_faults_lease: ok"
