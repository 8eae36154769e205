#!/usr/bin/env bash
# The whole runbook under load through two proxies, with faults: the proxy running the
# backfill is SIGKILLed mid-backfill and restarted, the backfill's backend is terminated
# mid-batch, and a third proxy, without clients, is SIGKILLed during SET PHASE cutover.  Asserted: the backfill resumes from its
# cursor and completes, VERIFY is clean, the two tables are identical before
# finalized, SET PHASE returns once the dead proxy's lease has lapsed, the restarted
# proxy serves the new phase, and at the end every insert the clients were told
# succeeded is in the final table exactly once, with no statement error on a live
# connection (I1, I2).
set -euo pipefail
. tests/integration/lib.sh

own_database "migration_$$"
q() { psql -X -qtA "$direct" -c "$1"; }
q "SELECT seed_ingest_idempotency(20000)" >/dev/null
common=("control_dsn = $direct" "backfill_batch_rows = 500" "backfill_max_rows_per_sec = 4000"
	"drain_max_rows_per_sec = 20000")

declare -A PID=() PORT=() CONSOLE=() INI=()
load_pid=
start_named() { # NAME: a proxy with the common settings; the same port on a restart
	local name=$1
	if [ -n "${PORT[$name]:-}" ]; then
		"$shunt_bin" "${INI[$name]}" 2>>"$work/$name.log" &
		PID[$name]=$!
		for _ in $(seq 100); do
			pg_isready -q -h 127.0.0.1 -p "${PORT[$name]}" && return 0
			sleep 0.1
		done
		fail "$name did not come back"
	fi
	start_pgshunt "${common[@]}"
	PID[$name]=$pid PORT[$name]=$port CONSOLE[$name]=$console
	pid=
	mv "$work/pgshunt.ini" "$work/$name.ini"
	mv "$work/pgshunt.log" "$work/$name.log"
	INI[$name]=$work/$name.ini
}
cleanup_all() {
	[ -n "$load_pid" ] && kill "$load_pid" 2>/dev/null
	for p in "${PID[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
	sleep 0.3
	for p in "${PID[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
	for n in "${!PID[@]}"; do
		grep -hE 'Sanitizer|runtime error' "$work/$n.log" 2>/dev/null | head -n 5 >&2 || true
	done
	lib_cleanup
}
trap cleanup_all EXIT
on() { psql -X -qtA -v ON_ERROR_STOP=1 "${CONSOLE[$1]}" -c "$2" 2>&1; }
wait_for() { # SECONDS SQL EXPECTED
	for _ in $(seq $(($1 * 10))); do
		[ "$(q "$2")" = "$3" ] && return 0
		sleep 0.1
	done
	return 1
}
same_tables() { # one statement, one snapshot: mirrors commit with their writes
	q "SELECT (SELECT count(*) FROM (TABLE ingest_idempotency EXCEPT ALL TABLE ingest_idempotency_next) a)
	       || ' ' || (SELECT count(*) FROM (TABLE ingest_idempotency_next EXCEPT ALL TABLE ingest_idempotency) b)"
}

start_named a
start_named b
start_named c
for _ in $(seq 100); do
	on c "MIGRATE PREPARE" >/dev/null 2>&1 && break
	sleep 0.1
done
wait_for 15 "SELECT count(*) FROM pgshunt.proxies WHERE lease_until > now()" 3 || fail "three proxies registered"
ok "three proxies registered, MIGRATE PREPARE done"

python3_load() {
	/usr/bin/python3 tests/load/ingest_load.py --clients 4 --stop "$work/stop" --out "$work/load.json" \
		--dsn "host=127.0.0.1 port=${PORT[a]} dbname=$own_db user=shunt_trust" \
		--dsn "host=127.0.0.1 port=${PORT[b]} dbname=$own_db user=shunt_trust" 2>"$work/load.log"
}
python3_load &
load_pid=$!
sleep 2

out=$(on a "SET PHASE dual_write") || fail "SET PHASE dual_write: $out"
out=$(on c "BACKFILL START") || fail "BACKFILL START: $out"
wait_for 20 "SELECT rows_done > 1000 FROM pgshunt.jobs WHERE name = 'backfill'" t || fail "the backfill does not progress"
# The runner is whichever proxy took the job's lock: kill that one.
runner_pid=$(q "SELECT p.pid FROM pgshunt.jobs j JOIN pgshunt.proxies p ON p.proxy_id = j.runner WHERE j.name = 'backfill'")
runner=
for n in a b c; do [ "${PID[$n]}" = "$runner_pid" ] && runner=$n; done
[ -n "$runner" ] || fail "the backfill's runner ($runner_pid) is none of the three proxies"
kill -KILL "${PID[$runner]}"
# Clients connected to a killed proxy lose their connections: that is no error of pgshunt's.
max_disconnects=0
[ "$runner" = c ] || max_disconnects=1000
before=$(q "SELECT rows_done FROM pgshunt.jobs WHERE name = 'backfill'")
wait_for 20 "SELECT rows_done > $before FROM pgshunt.jobs WHERE name = 'backfill'" t ||
	fail "the backfill was not resumed by another proxy after its runner was killed ($before rows done)"
ok "runner (proxy $runner) SIGKILLed at $before rows; another proxy resumed the backfill from its cursor"
start_named "$runner"

victim=$(q "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND query ILIKE '%backfill%' AND pid <> pg_backend_pid() LIMIT 1")
if [ -n "$victim" ]; then
	q "SELECT pg_terminate_backend($victim)" >/dev/null
	ok "terminated the backfill's backend (pid $victim)"
fi
wait_for 120 "SELECT state FROM pgshunt.jobs WHERE name = 'backfill'" done ||
	fail "the backfill did not complete: $(on a 'SHOW BACKFILL')"
ok "backfill done: $(q "SELECT rows_done FROM pgshunt.jobs WHERE name = 'backfill'") rows"

out=$(on a "VERIFY") || fail "VERIFY: $out"
[ "$(q "SELECT state FROM pgshunt.jobs WHERE name = 'verify'")" = clean ] || fail "VERIFY is not clean: $out"
[ "$(same_tables)" = "0 0" ] || fail "old and next differ after the backfill: $(same_tables)"
ok "VERIFY clean; the two tables identical under load"

out=$(on a "SET PHASE read_next") || fail "SET PHASE read_next: $out"
sleep 1
on a "SET PHASE cutover" >"$work/cutover.out" 2>&1 &
setter=$!
sleep 0.05
kill -KILL "${PID[c]}"
start=$(date +%s)
wait "$setter" || fail "SET PHASE cutover with a proxy killed during it: $(cat "$work/cutover.out")"
ok "SET PHASE cutover returned $(($(date +%s) - start)) s after a proxy was killed during it"
start_named c
[ "$(on c 'SHOW PHASE' | cut -d'|' -f1)" = cutover ] || fail "the restarted proxy does not serve cutover"
ok "the restarted proxy learned the phase: cutover"
sleep 2
[ "$(same_tables)" = "0 0" ] || fail "old and next differ in cutover: $(same_tables)"
ok "old and next identical in cutover"

out=$(on a "SET PHASE finalized") || fail "SET PHASE finalized: $out"
[ "$(q "SELECT relkind FROM pg_class WHERE oid = 'ingest_idempotency'::regclass")" = p ] ||
	fail "ingest_idempotency is not the partitioned table after finalized"
[ -n "$(q "SELECT to_regclass('ingest_idempotency_old')")" ] || fail "ingest_idempotency_old is gone"
ok "finalized: the partitioned table carries the name, the old one is kept"
sleep 2

out=$(on b "DEGRADED ON") || fail "DEGRADED ON: $out"
sleep 3
buffered=$(q "SELECT count(*) FROM ingest_fallback_buffer")
[ "$buffered" -gt 0 ] || fail "nothing was buffered while DEGRADED"
out=$(on b "DEGRADED OFF") || fail "DEGRADED OFF: $out"
out=$(on b "DRAIN START") || fail "DRAIN START: $out"
wait_for 60 "SELECT count(*) FROM ingest_fallback_buffer" 0 || fail "the drain did not empty the buffer"
ok "DEGRADED episode: $buffered rows buffered, drained"

touch "$work/stop"
wait "$load_pid" || fail "the load failed: $(tail -n 3 "$work/load.log")"
load_pid=
/usr/bin/python3 tests/load/check_acked.py "$work/load.json" "$direct" public.ingest_idempotency \
	--max-disconnects "$max_disconnects" >"$work/check.txt" 2>&1 || fail "$(cat "$work/check.txt")"
ok "$(tr '\n' ' ' <"$work/check.txt")"
