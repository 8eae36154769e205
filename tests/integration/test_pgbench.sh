#!/bin/bash
# pgbench through PGHOST/PGPORT as the scram-sha-256 user: initialise, then 5 s of the
# TPC-B-like script with 4 clients in each query mode (simple, extended, prepared),
# asserting transactions were processed, none failed, and the balances still add up.
# Needs the environment of tests/integration/run.sh.
set -euo pipefail

: "${PGHOST:?}" "${PGPORT:?}" "${PGDATABASE:?}"
export PGUSER=shunt_scram PGPASSWORD=scram-secret PGCONNECT_TIMEOUT=10
. tests/integration/lib.sh

cleanup() {
	# Drop what pgbench -i made (pgbench_accounts, _branches, _history, _tellers).
	pgbench -i -I d >/dev/null 2>&1 || true
}
trap 'cleanup; lib_cleanup' EXIT

q() { psql -X -At -v ON_ERROR_STOP=1 "$@"; }

pgbench -i -s 1 -q >"$work/init.out" 2>&1 || fail "pgbench -i failed: $(cat "$work/init.out")"
n=$(q -c "SELECT count(*) FROM pgbench_accounts")
[ "$n" = 100000 ] || fail "pgbench_accounts has $n rows after -i -s 1, want 100000"
echo "ok - pgbench -i -s 1 (100000 accounts)"

for mode in simple extended prepared; do
	rc=0
	pgbench -n -T 5 -c 4 -j 2 -M "$mode" >"$work/$mode.out" 2>&1 || rc=$?
	out=$(cat "$work/$mode.out")
	[ "$rc" -eq 0 ] || fail "pgbench -M $mode exited with $rc: $out"
	processed=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' <<<"$out")
	[ -n "$processed" ] || fail "pgbench -M $mode printed no transaction count: $out"
	[ "$processed" -gt 0 ] || fail "pgbench -M $mode processed no transaction: $out"
	if grep -q '^number of failed transactions:' <<<"$out"; then
		grep -q '^number of failed transactions: 0 ' <<<"$out" ||
			fail "pgbench -M $mode had failed transactions: $out"
	fi
	grep -q "^query mode: $mode\$" <<<"$out" || fail "pgbench -M $mode: query mode not reported: $out"
	grep -q '^number of clients: 4$' <<<"$out" || fail "pgbench -M $mode: not 4 clients: $out"
	echo "ok - pgbench -M $mode: $processed transactions"
done

# Every transaction adds the same delta to an account, a teller, a branch and the history.
out=$(q -F' ' -c "SELECT (SELECT sum(abalance) FROM pgbench_accounts),
                          (SELECT sum(tbalance) FROM pgbench_tellers),
                          (SELECT sum(bbalance) FROM pgbench_branches),
                          (SELECT sum(delta) FROM pgbench_history),
                          (SELECT count(*) FROM pgbench_history)")
read -r a t b h count <<<"$out"
if [ "$a" != "$t" ] || [ "$t" != "$b" ] || [ "$b" != "$h" ]; then
	fail "balances do not add up (accounts, tellers, branches, history): $out"
fi
[ "$count" -gt 0 ] || fail "pgbench_history is empty"
echo "ok - balances add up over $count transactions"
echo "test_pgbench: all ok"
