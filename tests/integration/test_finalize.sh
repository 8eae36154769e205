#!/usr/bin/env bash
# SET PHASE finalized across two proxies under load: the fleet is held (new
# transactions' statements on the table wait, transactions already open finish and
# hold back their proxy's acknowledgement), the table is renamed to <table>_old and
# next_table takes its name in one transaction with the phase, the held statements go
# on; no client statement fails, the hold lasts less than its 10 s limit.  Then: a
# second SET PHASE finalized renames nothing, and there is no way back.
#
# The load: inserts and reads of the table through both proxies, each acknowledged
# insert checked present exactly once afterwards.
set -euo pipefail
. tests/integration/lib.sh
. tests/integration/lib_fleet.sh

fleet_start "fin_$$" 300
# To cutover with next holding every row (standing in for the backfill).
fleet_to_cutover
[ "$(q "SELECT version FROM pgshunt.schema_version")" = 2 ] || fail "schema version"
before_next=$(keyset ingest_idempotency_next)
before_old=$(keyset ingest_idempotency)
ok "cutover, next_table complete ($before_next)"

out=$(on "$app_a" "INSERT INTO ingest_idempotency (site_id, idempotency_key, request_hash) VALUES ('load', 'probe', '\\x00')") ||
	fail "an insert in cutover: $out"

# Workers, each its own client connection per statement, until told to stop.
load_worker() { # name conninfo
	local n=0 sql out want
	while [ ! -e "$work/stop" ]; do
		n=$((n + 1))
		sql="INSERT INTO ingest_idempotency (site_id, idempotency_key, request_hash) VALUES ('load', '$1-$n', '\\x01') RETURNING idempotency_key"
		want="$1-$n"
		if out=$(psql -X -qtA "$2" -c "$sql" 2>&1) && [ "$out" = "$want" ]; then
			echo "$1-$n" >>"$work/acked.$1"
		else
			echo "$1-$n: $out" >>"$work/errors"
		fi
		out=$(psql -X -qtA "$2" -c "SELECT count(*) FROM ingest_idempotency WHERE site_id = 'load' AND idempotency_key = '$1-$n'" 2>&1)
		[ "$out" = 1 ] || echo "$1-$n read back: $out" >>"$work/errors"
	done
}
: >"$work/errors"
workers=()
for w in a1 a2; do load_worker "$w" "$app_a" & workers+=($!); done
for w in b1 b2; do load_worker "$w" "$app_b" & workers+=($!); done
fleet_pids+=("${workers[@]}")
sleep 1

# A transaction open on B before the hold: it must finish, and B acknowledges the hold
# only then.
coproc TXB { psql -X -qtA "$app_b" 2>&1; }
exec {txb_in}>&"${TXB[1]}" {txb_out}<&"${TXB[0]}"
echo "BEGIN; INSERT INTO ingest_idempotency (site_id, idempotency_key, request_hash) VALUES ('load', 'inflight', '\\x02') RETURNING idempotency_key;" >&"$txb_in"
read -r -t 10 line <&"$txb_out" || fail "no answer in B's transaction"
[ "$line" = inflight ] || fail "B's transaction: $line"

start=$(date +%s%N)
psql -X -qtA -v VERBOSITY=verbose "$console_a" -c 'SET PHASE finalized' >"$work/set.out" 2>&1 &
setter=$!
fleet_pids+=("$setter")
wait_hold
# A transaction begun during the hold is served until it names the table; then it
# waits, and is re-pinned to finalized when the hold ends (it must not hold back the
# fleet's acknowledgement of finalized: it stays open past SET PHASE's return).
coproc TXA { psql -X -qtA "$app_a" 2>&1; }
exec {txa_in}>&"${TXA[1]}" {txa_out}<&"${TXA[0]}"
echo "BEGIN; SELECT 'began';" >&"$txa_in"
read -r -t 5 line <&"$txa_out" || fail "a transaction begun during the hold was held before naming the table"
[ "$line" = began ] || fail "transaction begun during the hold: $line"
echo "SELECT 'ingest_idempotency in a transaction begun during the hold';" >&"$txa_in"
if read -r -t 1 line <&"$txa_out"; then fail "a statement on the table in a transaction begun during the hold was served: $line"; fi
# A new transaction's statement on the table waits; one without it is served.
psql -X -qtA "$app_a" -c "SELECT 'ingest_idempotency held'" >"$work/held.out" 2>&1 &
held=$!
[ "$(timeout 5 psql -X -qtA "$app_a" -c "SELECT 6 * 7")" = 42 ] || fail "a statement not naming the table waited"
sleep 1
kill -0 "$held" 2>/dev/null || fail "a new statement on the table was served during the hold: $(cat "$work/held.out")"
[ "$(on "$console_a" 'SHOW CLIENTS' | cut -d'|' -f7 | grep -c '^paused$')" -ge 2 ] ||
	fail "SHOW CLIENTS does not show the held sessions paused: $(on "$console_a" 'SHOW CLIENTS')"
kill -0 "$setter" 2>/dev/null || fail "SET PHASE finalized returned while B had a transaction open: $(cat "$work/set.out")"
[ "$(q "SELECT phase FROM pgshunt.state")" = cutover ] || fail "renamed before B's transaction ended"
# The open transaction is served to its end under cutover.
echo "SELECT count(*) FROM ingest_idempotency WHERE idempotency_key = 'inflight'; COMMIT;" >&"$txb_in"
want=1
read -r -t 5 line <&"$txb_out" || fail "B's open transaction was held"
[ "$line" = "$want" ] || fail "B's open transaction: $line"
exec {txb_in}>&-
kill "${TXB_PID:-}" 2>/dev/null || true
grep -q "held: the fleet is held for the finalize rename" "$work/pgshunt.log" || fail "the hold was not logged"
ok "during the hold: new statements on the table wait, others and open transactions are served"

wait "$setter" || fail "SET PHASE finalized: $(cat "$work/set.out")"
elapsed_ms=$((($(date +%s%N) - start) / 1000000))
wait "$held" || fail "the held statement failed: $(cat "$work/held.out")"
[ "$(cat "$work/held.out")" = "ingest_idempotency held" ] || fail "the held statement's answer: $(cat "$work/held.out")"
ok "SET PHASE finalized in $elapsed_ms ms, the held statement answered"
read -r -t 5 line <&"$txa_out" || fail "the transaction begun during the hold was not released"
[ "$line" = "ingest_idempotency in a transaction begun during the hold" ] || fail "transaction begun during the hold: $line"
echo "COMMIT;" >&"$txa_in"
exec {txa_in}>&-
kill "${TXA_PID:-}" 2>/dev/null || true
ok "a transaction begun during the hold waited at its statement on the table, went on after, open past SET PHASE's return"
sleep 1
touch "$work/stop"
for w in "${workers[@]}"; do wait "$w" || true; done

# The outcome in the database.
[ "$(q "SELECT phase FROM pgshunt.state")" = finalized ] || fail "phase"
[ "$(q "SELECT hold_until IS NULL FROM pgshunt.state")" = t ] || fail "the hold was not ended"
[ "$(q "SELECT relkind FROM pg_class WHERE oid = 'public.ingest_idempotency'::regclass")" = p ] || fail "the table is not the partitioned one"
[ "$(q "SELECT relkind FROM pg_class WHERE oid = 'public.ingest_idempotency_old'::regclass")" = r ] || fail "no ingest_idempotency_old"
[ "$(q "SELECT to_regclass('public.ingest_idempotency_next') IS NULL")" = t ] || fail "next_table's name remains"
[ "$(keyset ingest_idempotency_old | cut -d: -f1)" -ge "${before_old%%:*}" ] || fail "rows left the old table"
held_s=$(q "SELECT extract(epoch FROM f.at - h.at) FROM pgshunt.phase_log h, pgshunt.phase_log f WHERE h.note LIKE 'hold on%' AND f.to_phase = 'finalized' AND f.from_phase = 'cutover'")
awk -v s="$held_s" 'BEGIN { exit !(s < 10) }' || fail "the hold lasted $held_s s"
for c in "$console_a" "$console_b"; do
	[ "$(on "$c" 'SHOW PHASE' | cut -d'|' -f1)" = finalized ] || fail "a proxy does not serve finalized"
done
grep -q 'rename attempt 1/5' "$work/pgshunt.log" || fail "the rename attempt was not logged"
ok "renamed: ingest_idempotency is partitioned, ingest_idempotency_old kept; hold $held_s s"

errors=$(wc -l <"$work/errors")
acked=$(cat "$work"/acked.* | wc -l)
[ "$errors" = 0 ] || fail "$errors client statements failed: $(head -5 "$work/errors")"
[ "$acked" -gt 20 ] || fail "too little load: $acked statements"
cat "$work"/acked.* | sort >"$work/acked"
q "SELECT idempotency_key FROM ingest_idempotency WHERE site_id = 'load' AND idempotency_key <> 'probe' AND idempotency_key <> 'inflight' ORDER BY 1" >"$work/present"
sort -o "$work/present" "$work/present"
diff "$work/acked" "$work/present" >/dev/null || fail "acknowledged inserts and rows differ: $(diff "$work/acked" "$work/present" | head -5)"
[ "$(q "SELECT count(*) FROM ingest_idempotency WHERE idempotency_key = 'inflight'")" = 1 ] || fail "the in-flight insert"
ok "$acked acknowledged inserts, each present once, zero errors"

# Again: nothing renamed twice, the fleet's acknowledgements awaited, success.
epoch=$(q "SELECT epoch FROM pgshunt.state")
out=$(on "$console_b" 'SET PHASE finalized') || fail "SET PHASE finalized again: $out"
[ "$(q "SELECT epoch FROM pgshunt.state")" = "$epoch" ] || fail "a second SET PHASE finalized changed the state"
[ "$(q "SELECT count(*) FROM pgshunt.phase_log WHERE to_phase = 'finalized'")" = 1 ] || fail "finalized twice"
[ "$(q "SELECT relkind FROM pg_class WHERE oid = 'public.ingest_idempotency'::regclass")" = p ] || fail "renamed again"
ok "SET PHASE finalized again: nothing renamed twice"
expect_fail "$console_a" 'SET PHASE cutover' 55000 'finalized is final'
expect_fail "$console_a" 'SET PHASE cutover FORCE' 55000 'finalized is final'
ok "no step back from finalized"
echo "finalize: ok"
