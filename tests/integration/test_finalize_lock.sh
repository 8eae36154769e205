#!/usr/bin/env bash
# SET PHASE finalized when it cannot get what it needs, and when it gets it late:
#  - a proxy's transaction that stays open past the hold's limit: SET PHASE fails 55000
#    naming that proxy, the phase stays cutover, the hold is released, clients go on;
#  - a session outside pgshunt that keeps a lock on the table through every rename
#    attempt: the same, the message says the lock could not be taken;
#  - a lock released after the first attempt: a later attempt renames.
set -euo pipefail
. tests/integration/lib.sh
. tests/integration/lib_fleet.sh

fleet_start "finlock_$$" 100
fleet_to_cutover

# finalize_fails WHILE CONNINFO OUTFILE: SET PHASE finalized on A's console fails 55000
# (its output in $work/set.out, its time in $elapsed_ms), and a statement on the table
# sent through CONNINFO during its hold is released and answered (in OUTFILE).
finalize_fails() {
	local start probe setter
	start=$(date +%s%N)
	psql -X -qtA -v VERBOSITY=verbose "$console_a" -c 'SET PHASE finalized' >"$work/set.out" 2>&1 &
	setter=$!
	wait_hold
	psql -X -qtA "$2" -c "SELECT 'ingest_idempotency probe'" >"$3" 2>&1 &
	probe=$!
	fleet_pids+=("$probe")
	if wait "$setter"; then fail "SET PHASE finalized succeeded $1: $(cat "$work/set.out")"; fi
	elapsed_ms=$((($(date +%s%N) - start) / 1000000))
	grep -q 'ERROR:  55000:' "$work/set.out" || fail "want 55000: $(cat "$work/set.out")"
	wait "$probe" || fail "the held statement failed: $(cat "$3")"
	[ "$(cat "$3")" = "ingest_idempotency probe" ] || fail "held statement: $(cat "$3")"
}
after_failure() { # what
	[ "$(q "SELECT phase || '/' || (hold_until IS NULL) FROM pgshunt.state")" = "cutover/true" ] ||
		fail "$1: state after the failure: $(q "SELECT phase, hold_until FROM pgshunt.state")"
	[ "$(q "SELECT note FROM pgshunt.phase_log ORDER BY id DESC LIMIT 1")" = "hold released" ] ||
		fail "$1: the release is not in phase_log"
	for c in "$console_a" "$console_b"; do
		[ "$(on "$c" 'SHOW PHASE' | cut -d'|' -f1)" = cutover ] || fail "$1: a proxy left cutover"
	done
	[ "$(timeout 5 psql -X -qtA "$app_b" -c "SELECT 'ingest_idempotency after'")" = "ingest_idempotency after" ] ||
		fail "$1: a statement on the table after the failure"
}

# --- B has not acknowledged cutover: refused before any hold, FORCE or not ---
proxy_b=$(q "SELECT proxy_id FROM pgshunt.proxies WHERE proxy_id LIKE '%:$port_b:%'")
coproc TXB0 { psql -X -qtA "$app_b" 2>&1; }
exec {tx0_in}>&"${TXB0[1]}" {tx0_out}<&"${TXB0[0]}"
echo "BEGIN; SELECT 'open';" >&"$tx0_in"
read -r -t 10 line <&"$tx0_out" || fail "no answer in B's transaction"
q "SELECT pgshunt.set_phase('cutover', NULL, false, 'test', 'a later epoch of cutover')" >/dev/null
sleep 0.5
expect_fail "$console_a" 'SET PHASE finalized FORCE' 55000 "have not acknowledged cutover yet: $proxy_b.*FORCE does not skip this"
[ "$(q "SELECT hold_until IS NULL FROM pgshunt.state")" = t ] || fail "held although the fleet had not acknowledged cutover"
echo "COMMIT;" >&"$tx0_in"
exec {tx0_in}>&-
kill "${TXB0_PID:-}" 2>/dev/null || true
wait_acked
ok "a proxy that has not acknowledged cutover: refused, FORCE too, nothing held"

# --- a transaction on B that outlasts the hold ---
coproc TXB { psql -X -qtA "$app_b" 2>&1; }
exec {txb_in}>&"${TXB[1]}" {txb_out}<&"${TXB[0]}"
echo "BEGIN; SELECT 'open';" >&"$txb_in"
read -r -t 10 line <&"$txb_out" || fail "no answer in B's transaction"
finalize_fails "with B's transaction open" "$app_a" "$work/probe1"
grep -q "did not acknowledge the hold" "$work/set.out" || fail "message: $(cat "$work/set.out")"
grep -qF "$proxy_b" "$work/set.out" || fail "B ($proxy_b) not named: $(cat "$work/set.out")"
grep -q "the phase stays cutover and the hold is released" "$work/set.out" || fail "message: $(cat "$work/set.out")"
[ "$elapsed_ms" -lt 11000 ] || fail "gave up after $elapsed_ms ms, more than the hold's limit"
after_failure "open transaction"
# B's transaction was never disturbed: it goes on under cutover, then ends.
echo "SELECT 'ingest_idempotency still'; COMMIT;" >&"$txb_in"
read -r -t 5 line <&"$txb_out" || fail "B's transaction after the failure"
[ "$line" = "ingest_idempotency still" ] || fail "B's transaction: $line"
exec {txb_in}>&-
kill "${TXB_PID:-}" 2>/dev/null || true
ok "an open transaction past the limit: 55000 naming $proxy_b after $elapsed_ms ms, hold released"
wait_acked

# --- a lock held outside pgshunt through every attempt ---
coproc LOCKER { psql -X -qtA "$direct" 2>&1; }
exec {lk_in}>&"${LOCKER[1]}" {lk_out}<&"${LOCKER[0]}"
echo "BEGIN; LOCK TABLE ingest_idempotency IN ACCESS SHARE MODE; SELECT 'locked';" >&"$lk_in"
read -r -t 10 line <&"$lk_out" || fail "no lock"
[ "$line" = locked ] || fail "locker: $line"
finalize_fails "under the lock" "$app_b" "$work/probe2"
grep -q "could not lock public.ingest_idempotency" "$work/set.out" || fail "message: $(cat "$work/set.out")"
grep -q 'rename attempt 5/5 failed' "$work/pgshunt.log" || fail "five attempts not logged"
[ "$elapsed_ms" -lt 10000 ] || fail "gave up after $elapsed_ms ms"
after_failure "lock"
[ "$(q "SELECT to_regclass('public.ingest_idempotency_old') IS NULL AND to_regclass('public.ingest_idempotency_next') IS NOT NULL")" = t ] ||
	fail "names changed although the rename failed"
echo "COMMIT;" >&"$lk_in"
exec {lk_in}>&-
kill "${LOCKER_PID:-}" 2>/dev/null || true
ok "a lock through every attempt: 55000 after $elapsed_ms ms, five attempts logged, names unchanged"
wait_acked

# --- a lock released between attempts ---
psql -X -qtA "$direct" -c "BEGIN; LOCK TABLE ingest_idempotency_next IN ACCESS SHARE MODE; SELECT pg_sleep(0.5); COMMIT" >/dev/null 2>&1 &
locker=$!
fleet_pids+=("$locker")
for _ in $(seq 50); do
	[ "$(q "SELECT count(*) FROM pg_locks WHERE relation = 'public.ingest_idempotency_next'::regclass AND granted")" -gt 0 ] && break
	sleep 0.05
done
lines_before=$(grep -c 'rename attempt' "$work/pgshunt.log")
out=$(on "$console_a" 'SET PHASE finalized') || fail "SET PHASE finalized after the lock went: $out"
wait "$locker" || true
tail -n +1 "$work/pgshunt.log" | grep 'rename attempt' | tail -n +$((lines_before + 1)) | grep -q 'attempt 1/5 failed' ||
	fail "the first attempt did not meet the lock"
[ "$(q "SELECT phase FROM pgshunt.state")" = finalized ] || fail "not finalized"
[ "$(q "SELECT relkind FROM pg_class WHERE oid = 'public.ingest_idempotency'::regclass")" = p ] || fail "not renamed"
ok "a lock released between attempts: renamed at a later attempt"
echo "finalize_lock: ok"
