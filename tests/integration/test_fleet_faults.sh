#!/usr/bin/env bash
# A proxy SIGKILLed in the middle of a SET PHASE (dual_write -> read_next FORCE, after
# the write, before it acknowledged: a transaction of the older phase holds it back).
# Defined behaviour: a dead proxy is waited for until its lease lapses (10 s after its
# last heartbeat), then no longer counts: SET PHASE succeeds then, within its 30 s.
# Restarted, the proxy holds statements on the table until it has read the phase, so
# its first statement is served under read_next, never under an older phase.
#
# Then the proxy running SET PHASE finalized SIGKILLed while the fleet is held: the
# hold lapses by itself (pgshunt.state.hold_until, 15 s), the other proxy releases its
# held statements under cutover, nothing is renamed; SET PHASE finalized on the
# survivor then succeeds.
set -euo pipefail
. tests/integration/lib.sh
. tests/integration/lib_fleet.sh

fleet_start "faults_$$" 50
fleet_prepare
on "$console_a" 'SET PHASE dual_write' >/dev/null || fail "SET PHASE dual_write"
proxy_b=$(q "SELECT proxy_id FROM pgshunt.proxies WHERE proxy_id LIKE '%:$port_b:%'")

# B holds its acknowledgement back: a transaction open under dual_write.
coproc TXB { psql -X -qtA "$app_b" 2>&1; }
exec {txb_in}>&"${TXB[1]}" {txb_out}<&"${TXB[0]}"
echo "BEGIN; SELECT count(*) > 0 FROM ingest_idempotency;" >&"$txb_in"
read -r -t 10 line <&"$txb_out" || fail "no answer in B's transaction"
start=$(date +%s%N)
psql -X -qtA -v VERBOSITY=verbose "$console_a" -c 'SET PHASE read_next FORCE' >"$work/set.out" 2>&1 &
setter=$!
fleet_pids+=("$setter")
for _ in $(seq 50); do
	[ "$(q "SELECT phase FROM pgshunt.state")" = read_next ] && break
	sleep 0.1
done
[ "$(q "SELECT phase FROM pgshunt.state")" = read_next ] || fail "the phase was not written"
sleep 0.5
kill -0 "$setter" 2>/dev/null || fail "SET PHASE returned while B had not acknowledged: $(cat "$work/set.out")"
kill -KILL "$pid_b"
wait "$pid_b" 2>/dev/null || true
exec {txb_in}>&-
kill "${TXB_PID:-}" 2>/dev/null || true
killed=$(date +%s%N)
ok "B ($proxy_b) killed between the write of read_next and its acknowledgement"

wait "$setter" || fail "SET PHASE read_next FORCE after B died: $(cat "$work/set.out")"
done_at=$(date +%s%N)
[ "$(q "SELECT lease_until <= now() FROM pgshunt.proxies WHERE proxy_id = '$proxy_b'")" = t ] ||
	fail "SET PHASE returned while the dead B's lease was still running"
after_kill_ms=$(((done_at - killed) / 1000000))
total_ms=$(((done_at - start) / 1000000))
[ "$total_ms" -lt 30000 ] || fail "SET PHASE took $total_ms ms"
[ "$(on "$console_a" 'SHOW PROXIES' | grep -F "$proxy_b" | awk -F'|' '{print $NF}')" = no ] || fail "SHOW PROXIES: B alive"
ok "SET PHASE succeeded once B's lease lapsed ($after_kill_ms ms after the kill, $total_ms ms in all)"

# A row only next_table has tells which table a read came from: under read_next, next.
q "INSERT INTO ingest_idempotency_next (site_id, idempotency_key, request_hash, created_at) VALUES ('fault', 'next-only', '\\x09', now())" >/dev/null
fleet_restart_b
# The first statement, sent the moment B listens.
for _ in $(seq 200); do
	pg_isready -q -h 127.0.0.1 -p "$port_b" && break
	kill -0 "$pid_b" 2>/dev/null || fail "B exited at restart"
	sleep 0.02
done
first=$(timeout 20 psql -X -qtA "$app_b" -c "SELECT count(*) FROM ingest_idempotency WHERE idempotency_key = 'next-only'" 2>&1) ||
	fail "B's first statement: $first"
[ "$first" = 1 ] || fail "B's first statement was not served under read_next: $first"
out=$(psql -X -qtA "$app_b" -c "INSERT INTO ingest_idempotency (site_id, idempotency_key, request_hash) VALUES ('fault', 'after-restart', '\\x0a') RETURNING idempotency_key" 2>&1) ||
	fail "insert through the restarted B: $out"
[ "$(q "SELECT (SELECT count(*) FROM ingest_idempotency WHERE idempotency_key = 'after-restart') || '/' || (SELECT count(*) FROM ingest_idempotency_next WHERE idempotency_key = 'after-restart')")" = 1/1 ] ||
	fail "the restarted B's insert was not mirrored"
[ "$(on "$console_b" 'SHOW PHASE' | cut -d'|' -f1)" = read_next ] || fail "B's phase"
wait_registered 2
ok "restarted B served its first statement under read_next (read from next, writes mirrored)"

# --- the finalizing proxy dies during the hold ---
out=$(on "$console_b" 'SET PHASE cutover') || fail "SET PHASE cutover (test build: make asan): $out"
wait_acked
coproc TXB2 { psql -X -qtA "$app_b" 2>&1; }
exec {tx2_in}>&"${TXB2[1]}" {tx2_out}<&"${TXB2[0]}"
echo "BEGIN; SELECT 'open';" >&"$tx2_in"
read -r -t 10 line <&"$tx2_out" || fail "no answer in B's transaction"
psql -X -qtA "$console_a" -c 'SET PHASE finalized' >"$work/set2.out" 2>&1 &
setter=$!
fleet_pids+=("$setter")
wait_hold
hold_until=$(q "SELECT hold_until FROM pgshunt.state")
[ -n "$hold_until" ] || fail "no hold"
psql -X -qtA "$app_b" -c "SELECT 'ingest_idempotency held'" >"$work/held.out" 2>&1 &
held=$!
fleet_pids+=("$held")
sleep 0.5
kill -KILL "$pid_a"
wait "$pid_a" 2>/dev/null || true
wait "$setter" 2>/dev/null || true
kill -0 "$held" 2>/dev/null || fail "B did not hold: $(cat "$work/held.out")"
wait "$held" || fail "the held statement failed: $(cat "$work/held.out")"
[ "$(cat "$work/held.out")" = "ingest_idempotency held" ] || fail "held statement: $(cat "$work/held.out")"
[ "$(q "SELECT now() >= '$hold_until'::timestamptz")" = t ] || fail "released before the hold lapsed"
[ "$(q "SELECT phase FROM pgshunt.state")" = cutover ] || fail "phase after the finalizer died"
[ "$(q "SELECT to_regclass('public.ingest_idempotency_old') IS NULL")" = t ] || fail "renamed"
ok "finalizer killed during the hold: B released its held statement once the hold lapsed, phase cutover"
echo "SELECT 'ingest_idempotency still'; COMMIT;" >&"$tx2_in"
read -r -t 5 line <&"$tx2_out" || fail "B's transaction after the hold lapsed"
[ "$line" = "ingest_idempotency still" ] || fail "B's transaction: $line"
exec {tx2_in}>&-
kill "${TXB2_PID:-}" 2>/dev/null || true
wait_registered 1
wait_acked
out=$(on "$console_b" 'SET PHASE finalized') || fail "SET PHASE finalized on the survivor: $out"
[ "$(q "SELECT phase FROM pgshunt.state")" = finalized ] || fail "not finalized"
[ "$(q "SELECT relkind FROM pg_class WHERE oid = 'public.ingest_idempotency'::regclass")" = p ] || fail "not renamed"
[ "$(q "SELECT count(*) FROM ingest_idempotency WHERE idempotency_key IN ('next-only', 'after-restart')")" = 2 ] ||
	fail "rows of next missing after the rename"
ok "SET PHASE finalized on the survivor"
echo "fleet_faults: ok"
