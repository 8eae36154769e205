#!/bin/bash
# Relay threads (worker_threads): with 4 relays and with none, 8 pgbench clients in each
# query mode get every transaction through with none failed; SHOW STATS sums the
# relays' counters exactly (the same growth as with the main thread alone, every
# transaction counted once); SHOW CLIENTS lists the
# sessions of every relay while they run, and RELOAD, PAUSE and RESUME on the console
# while they do lose nothing; a CancelRequest reaches a relay's session;
# PAUSE holds and RESUME frees sessions on relays; SIGTERM ends them at their idle
# points and pgshunt exits with status 0.  (Every other integration test runs with the
# default, 2 relays.)
# Needs the environment of tests/integration/run.sh.
set -euo pipefail

: "${SHUNT_SERVER_PORT:?}"
. tests/integration/lib.sh

own_database shunt_workers
pgbench -i -s 1 -q "$direct" >"$work/init.out" 2>&1 || fail "pgbench -i failed: $(cat "$work/init.out")"

# show_stat NAME: one column of SHOW STATS.
show_stat() {
	psql -X -A -F'|' -P footer=off "$console" -c "SHOW STATS" |
		awk -F'|' -v col="$1" 'NR == 1 { for (i = 1; i <= NF; i++) if ($i == col) c = i }
			NR == 2 { print $c }'
}

# bench MODE: 8 clients, 250 transactions each of -S (one statement per transaction);
# every one must be processed and counted once in queries_total and xacts_total.
bench() {
	local mode=$1 q0 x0 q1 x1 out rc=0
	q0=$(show_stat queries_total) x0=$(show_stat xacts_total)
	pgbench -n -S -c 8 -j 2 -t 250 -M "$mode" "$app" >"$work/b.out" 2>&1 || rc=$?
	out=$(cat "$work/b.out")
	[ "$rc" = 0 ] || fail "pgbench -M $mode exited with $rc: $out"
	grep -q '^number of transactions actually processed: 2000/2000' <<<"$out" ||
		fail "pgbench -M $mode: not 2000/2000 transactions: $out"
	grep -q '^number of failed transactions: 0 ' <<<"$out" || fail "pgbench -M $mode: failures: $out"
	q1=$(show_stat queries_total) x1=$(show_stat xacts_total)
	# Each client's connection adds pgbench's own start-up queries: a few per client.
	[ $((q1 - q0)) -ge 2000 ] && [ $((q1 - q0)) -le 2100 ] ||
		fail "$label -M $mode: queries_total grew by $((q1 - q0)), want 2000..2100"
	[ $((x1 - x0)) -ge 2000 ] && [ $((x1 - x0)) -le 2100 ] ||
		fail "$label -M $mode: xacts_total grew by $((x1 - x0)), want 2000..2100"
	# The relays' sums must be what the single loop counts for the same work.
	local seen="$((q1 - q0)) $((x1 - x0))"
	if [ -n "${counted[$mode]:-}" ] && [ "${counted[$mode]}" != "$seen" ]; then
		fail "$label -M $mode: queries_total, xacts_total grew by $seen, by ${counted[$mode]} with worker_threads = 4"
	fi
	counted[$mode]=$seen
	ok "$label -M $mode: 2000/2000 transactions, queries_total +$((q1 - q0)), xacts_total +$((x1 - x0))"
}
declare -A counted=()

for threads in 4 0; do
	label="worker_threads = $threads"
	start_pgshunt "worker_threads = $threads" "log_level = info"
	for mode in simple extended prepared; do
		bench "$mode"
	done

	# Sessions on every relay are listed, and counted in clients_active.
	pgbench -n -S -c 8 -j 2 -T 4 "$app" >"$work/long.out" 2>&1 &
	bg=$!
	own_pids+=("$bg")
	for _ in $(seq 50); do
		n=$(psql -X -At "$console" -c "SHOW CLIENTS" | awk -F'|' '$3 == "shunt_workers"' | wc -l)
		[ "$n" -ge 8 ] && break
		sleep 0.1
	done
	[ "$n" -ge 8 ] || fail "$label: SHOW CLIENTS lists $n of pgbench's 8 sessions"
	active=$(show_stat clients_active)
	[ "$active" -ge 9 ] || fail "$label: clients_active is $active with 8 clients and the console"
	# The main thread changes what relays read (RELOAD) and holds and frees their
	# sessions (PAUSE waits for every transaction's end) while they run.
	for _ in 1 2 3; do
		psql -X -At "$console" -c "RELOAD" -c "PAUSE" -c "RESUME" >"$work/console.out" 2>&1 ||
			fail "$label: RELOAD, PAUSE, RESUME under load: $(cat "$work/console.out")"
	done
	wait "$bg" || fail "$label: pgbench -T 4 failed: $(cat "$work/long.out")"
	grep -q '^number of failed transactions: 0 ' "$work/long.out" ||
		fail "$label: failures under RELOAD, PAUSE, RESUME: $(cat "$work/long.out")"
	ok "$label: SHOW CLIENTS lists all 8 sessions; clients_active $active; RELOAD, PAUSE, RESUME under load"

	# A cancel reaches the backend of a session on a relay.
	rc=0
	timeout -s INT 2 psql -X -At "$app" -c "SELECT pg_sleep(30)" \
		>"$work/cancel.out" 2>&1 || rc=$?
	grep -q "canceling statement due to user request" "$work/cancel.out" ||
		fail "$label: pg_sleep was not cancelled (rc $rc): $(cat "$work/cancel.out")"
	ok "$label: CancelRequest reached the session's backend"

	# PAUSE holds a relay's idle session; RESUME lets its query through.
	psql -X -At "$console" -c "PAUSE" >/dev/null
	psql -X -At "$app" -c "SELECT 'resumed'" >"$work/paused.out" 2>&1 &
	held=$!
	own_pids+=("$held")
	sleep 1
	kill -0 "$held" 2>/dev/null || fail "$label: a query went through while paused: $(cat "$work/paused.out")"
	psql -X -At "$console" -c "RESUME" >/dev/null
	wait "$held" || fail "$label: the held query failed: $(cat "$work/paused.out")"
	[ "$(cat "$work/paused.out")" = resumed ] || fail "$label: held query answered $(cat "$work/paused.out")"
	ok "$label: PAUSE held a session's query, RESUME let it through"

	# SIGTERM with sessions open on the relays: they end at their idle points.
	pgbench -n -S -c 4 -j 2 -T 30 "$app" >"$work/term.out" 2>&1 &
	bg=$!
	own_pids+=("$bg")
	sleep 1
	stop_ok "$pid" 10
	pid=
	wait "$bg" || true
	grep -q "pgshunt is shutting down" "$work/term.out" ||
		fail "$label: pgbench's sessions were not told of the shutdown: $(tail -5 "$work/term.out")"
	if grep -qE 'Sanitizer|runtime error' "$work/pgshunt.log"; then
		fail "$label: sanitizer report in the log"
	fi
	ok "$label: SIGTERM ended the relays' sessions; exit status 0"
	: >"$work/pgshunt.log"
done
echo "test_workers: all ok"
