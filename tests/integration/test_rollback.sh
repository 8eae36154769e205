#!/usr/bin/env bash
# Rollback one step at a time from cutover to passthrough (cutover -> read_next ->
# dual_write -> passthrough) through SET PHASE, under inserts through two proxies:
# at every step the table and next_table hold the same rows (count and key set), every
# acknowledged insert is in the table exactly once, and no client statement fails.
# (Inserts run while a phase this build serves is in force and across the switches out
# of it; in cutover only when the build serves cutover.)
set -euo pipefail
. tests/integration/lib.sh
. tests/integration/lib_fleet.sh

fleet_start "rollback_$$" 200
fleet_prepare

same_tables() { # when
	local old next
	old=$(keyset ingest_idempotency)
	next=$(keyset ingest_idempotency_next)
	[ "$old" = "$next" ] || fail "$1: the table ($old) and next_table ($next) differ"
	all_acked_in ingest_idempotency
	ok "$1: both tables $old, every acknowledged insert present once"
}

on "$console_a" 'SET PHASE dual_write' >/dev/null || fail "SET PHASE dual_write"
q "INSERT INTO ingest_idempotency_next SELECT * FROM ingest_idempotency ON CONFLICT DO NOTHING" >/dev/null
load_start a1="$app_a" b1="$app_b"
sleep 1
on "$console_b" 'SET PHASE read_next FORCE' >/dev/null || fail "SET PHASE read_next"
sleep 1
load_stop
same_tables "forward to read_next"

out=$(on "$console_a" 'SET PHASE cutover') || fail "SET PHASE cutover (the test build, make asan, enters it before it is served): $out"
wait_acked
same_tables "cutover"
served=no
if on "$app_a" "INSERT INTO ingest_idempotency (site_id, idempotency_key, request_hash) VALUES ('load', 'cutover-probe', '\\x03') RETURNING idempotency_key" >/dev/null; then
	served=yes
	echo cutover-probe >"$work/acked.probe"
	load_start a2="$app_a" b2="$app_b"
	sleep 1
else
	echo "cutover is not served by this build: no inserts while it is in force"
fi

# Back, step by step, the load running across each switch.
on "$console_b" 'SET PHASE read_next' >/dev/null || fail "rollback cutover -> read_next"
[ "$served" = yes ] || load_start a3="$app_a" b3="$app_b"
sleep 1
load_stop
same_tables "back to read_next"

load_start a5="$app_a" b5="$app_b"
sleep 0.5
on "$console_a" 'SET PHASE dual_write' >/dev/null || fail "rollback read_next -> dual_write"
sleep 1
load_stop
same_tables "back to dual_write"

load_start a6="$app_a" b6="$app_b"
sleep 0.5
on "$console_b" 'SET PHASE passthrough' >/dev/null || fail "rollback dual_write -> passthrough"
# Every insert of a transaction begun under dual_write was mirrored: until the switch
# both tables are the same; inserts after it go to the table only.
load_stop
all_acked_in ingest_idempotency
missing=$(q "SELECT count(*) FROM ingest_idempotency_next n WHERE NOT EXISTS (SELECT 1 FROM ingest_idempotency o WHERE o.site_id = n.site_id AND o.idempotency_key = n.idempotency_key)")
[ "$missing" = 0 ] || fail "next_table holds $missing rows the table does not"
[ "$(q "SELECT phase FROM pgshunt.state")" = passthrough ] || fail "not passthrough"
ok "back to passthrough: the table holds every acknowledged insert, next_table nothing else"
echo "rollback: ok"
