#!/bin/bash
# pgshunt benchmarks P5, P6, P7 (not tests): see docs/BENCHMARKS.md.
#
#   bash bench/p567.sh            (./pgshunt must be built: make pgshunt)
#   P567_ONLY=p6 bash bench/p567.sh
#
# P5  backfill rows/s ÷ one bulk INSERT INTO next SELECT ... FROM the table, for the same
#     rows (~1 KB each), while a rate-limited foreground claim load runs through pgshunt;
#     the foreground p99 latency during the backfill is reported (target: ratio >= 0.5
#     with p99 < 100 ms).  The bulk copy runs first, directly, with no load; next is then
#     emptied and the backfill runs in dual_write with backfill_max_rows_per_sec high
#     enough not to limit it (the latency throttle stays on).
# P6  insert TPS through pgshunt with DEGRADED on ÷ with DEGRADED off, against the same
#     ratio measured directly (inserts into the buffer table ÷ into the table, no proxy),
#     same run, interleaved rounds, with the table's indexes larger than shared_buffers
#     (target: proxy ratio >= 0.9 x direct ratio).  New random keys, so every insert
#     into the table touches random pages of its primary key index.
# P7  drain rows/s with de-duplication (a tenth of the buffered rows are retries of keys
#     already in the table), unthrottled (drain_max_rows_per_sec = 1000000), then the
#     throttle's accuracy at drain_max_rows_per_sec = P7_RATE (target: >= 20k rows/s;
#     within ±10 % of the set rate).
#
# One throwaway PostgreSQL 15 per benchmark (so that one's data cannot slow the next),
# pgshunt on free ports.  Output on stdout and in bench/results/p567.txt.
#
# Knobs (environment):
#   P567_ONLY   p5, p6 or p7: run only that one                       (default: all)
#   P5_SEED     rows in the table for P5                               (default 200000)
#   P5_FG_TPS   foreground claims per second during P5                 (default 200)
#   P5_BATCH    backfill_batch_rows during P5                          (default 5000)
#   P6_SEED     rows in the table for P6 (indexes > shared_buffers)    (default 1000000)
#   P6_SECONDS  seconds per pgbench run in P6                          (default 10)
#   P6_ROUNDS   interleaved rounds in P6                               (default 3)
#   P7_ROWS     buffered rows per drain in P7                          (default 100000)
#   P7_RATE     the throttle measured in P7, rows/s                    (default 5000)
#   P7_BATCH    drain_batch_rows of the unthrottled drain              (default 1000)
#   PGBIN       PostgreSQL binaries      (default /usr/lib/postgresql/15/bin)
#
# Every process started here is stopped by its PID, and the temporary directory
# removed, on exit, failure or interruption.  Everything listens on 127.0.0.1.
set -euo pipefail

cd "$(dirname "$0")/.."

ONLY=${P567_ONLY:-}
P5_SEED=${P5_SEED:-200000}
P5_FG_TPS=${P5_FG_TPS:-200}
P5_BATCH=${P5_BATCH:-5000}
P6_SEED=${P6_SEED:-1000000}
P6_SECONDS=${P6_SECONDS:-10}
P6_ROUNDS=${P6_ROUNDS:-3}
P7_ROWS=${P7_ROWS:-100000}
P7_RATE=${P7_RATE:-5000}
P7_BATCH=${P7_BATCH:-1000}
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
PY=/usr/bin/python3
CLIENTS=8
THREADS=2

BENCH_NAME=p567
# shellcheck source=bench/lib.sh
. bench/lib.sh

for n in P5_SEED P5_FG_TPS P5_BATCH P6_SEED P6_SECONDS P6_ROUNDS P7_ROWS P7_RATE P7_BATCH; do
	bench_int "$n" "${!n}"
done
[[ -z $ONLY || $ONLY =~ ^p[567]$ ]] || die "P567_ONLY must be p5, p6 or p7, not '$ONLY'"
bench_require pgbench psql "$PY"

bench_begin bench/results/p567.txt

bench_header "pgshunt benchmarks P5, P6, P7"
echo "pgbench:     $(pgbench --version)"
echo "settings:    P567_ONLY=${ONLY:-all} P5_SEED=$P5_SEED P5_FG_TPS=$P5_FG_TPS P5_BATCH=$P5_BATCH P6_SEED=$P6_SEED P6_SECONDS=$P6_SECONDS P6_ROUNDS=$P6_ROUNDS P7_ROWS=$P7_ROWS P7_RATE=$P7_RATE P7_BATCH=$P7_BATCH"
echo

DB=bench
COLS="site_id, idempotency_key, request_hash, status, response_code, response_body, created_at, expires_at"

# new_server NAME < EXTRA_CONF: stop the PostgreSQL and pgshunt of the previous
# benchmark, start a fresh PostgreSQL with the table seeded (SEED rows).
new_server() {
	local seed=$1 t0
	stop_named pgshunt
	if [ "$PG_STARTED" = 1 ]; then
		as_pg "$PGBIN/pg_ctl" -D "$TMP/data" -m fast -w -t 30 stop >/dev/null
		PG_STARTED=0
		rm -rf "$TMP/data"
	fi
	pg_start PGPORT_
	ingest_db "$DB"
	t0=$(date +%s)
	sql "$PGPORT_" "$DB" "SELECT seed_ingest_idempotency($seed)" "VACUUM ANALYZE" "CHECKPOINT" >/dev/null
	echo "postgres:  127.0.0.1:$PGPORT_ (pid $(postmaster_pid)), $(sql "$PGPORT_" "$DB" "SELECT count(*) || ' rows, table ' || pg_size_pretty(pg_table_size('ingest_idempotency')) || ', indexes ' || pg_size_pretty(pg_indexes_size('ingest_idempotency')) || ', shared_buffers ' || current_setting('shared_buffers') FROM ingest_idempotency"), seeded in $(($(date +%s) - t0)) s"
}

# start_shunt EXTRA_LINE...: pgshunt in front of $DB with a control connection.
start_shunt() {
	freeport SHUNT_PORT
	shunt_ini "$TMP/pgshunt.ini" "$SHUNT_PORT" "control_dsn = host=127.0.0.1 port=$PGPORT_ dbname=$DB user=postgres" \
		"admin_users = postgres" "log_level = info" "$@"
	# Its stdout too, not the terminal: bench_end waits for the end of the tee.
	./pgshunt "$TMP/pgshunt.ini" >>"$TMP/pgshunt.log" 2>&1 &
	PIDS[pgshunt]=$!
	wait_up pgshunt "$SHUNT_PORT" console 'SHOW PHASE'
}

console() {
	psql -X -qAt -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$SHUNT_PORT" -U postgres -d pgshunt -c "$1"
}

# migrate_prepare: MIGRATE PREPARE on the console of the pgshunt of start_shunt.
migrate_prepare() { console_retry pgshunt "$TMP/console.out" console "MIGRATE PREPARE"; }

now_ms() { date +%s%3N; }

# p99_ms FROM_MS TO_MS LOGFILES...: the 99th percentile of the latencies (3rd field, µs)
# of the pgbench -l transactions that ended between FROM_MS and TO_MS, in ms.
p99_ms() {
	local from=$1 to=$2
	shift 2
	[ -e "$1" ] || {
		echo n/a
		return
	}
	cat "$@" | awk -v f="$from" -v t="$to" '{ ms = $5 * 1000 + $6 / 1000; if (ms >= f && ms <= t) print $3 }' |
		sort -n | awk '{v[NR] = $1} END {
		if (NR == 0) print "n/a"; else printf "%.1f\n", v[int(NR * 0.99 + 0.999)] / 1000 }'
}

cat >"$TMP/claim.pgbench" <<'EOF'
\set k random(1, 1000000000)
INSERT INTO ingest_idempotency (site_id, idempotency_key, request_hash) VALUES ('site-' || (:k % 500), 'bench-' || :k, '\x00') ON CONFLICT (site_id, idempotency_key) DO NOTHING RETURNING created_at;
EOF

# ------------------------------------------------------------------ P5

p5() {
	echo "## P5: backfill vs one bulk INSERT ... SELECT, $P5_SEED rows"
	new_server "$P5_SEED" <<-EOF
		shared_buffers = 256MB
		max_wal_size = 8GB
		checkpoint_timeout = 1h
	EOF
	start_shunt "backfill_batch_rows = $P5_BATCH" "backfill_max_rows_per_sec = 10000000"
	migrate_prepare

	local t0 t1 bulk_ms rows
	t0=$(now_ms)
	rows=$(sql "$PGPORT_" "$DB" "WITH c AS (INSERT INTO ingest_idempotency_next ($COLS) SELECT $COLS FROM ingest_idempotency RETURNING 1) SELECT count(*) FROM c")
	t1=$(now_ms)
	bulk_ms=$((t1 - t0))
	sql "$PGPORT_" "$DB" "TRUNCATE ingest_idempotency_next" "VACUUM ANALYZE" "CHECKPOINT" >/dev/null
	local bulk_rate
	bulk_rate=$(awk -v r="$rows" -v ms="$bulk_ms" 'BEGIN { printf "%.0f", r * 1000 / ms }')
	echo "bulk:      INSERT INTO ingest_idempotency_next SELECT ... FROM ingest_idempotency: $rows rows in $bulk_ms ms = $bulk_rate rows/s (no load)"

	console "SET PHASE dual_write" >/dev/null
	mkdir -p "$TMP/p5log"
	pgbench -n -c 4 -j 2 -R "$P5_FG_TPS" -T 36000 -M prepared -l --log-prefix="$TMP/p5log/fg" \
		-f "$TMP/claim.pgbench" -h 127.0.0.1 -p "$SHUNT_PORT" -U postgres "$DB" \
		>"$TMP/p5fg.out" 2>&1 &
	PIDS[p5fg]=$!
	local fg0
	fg0=$(now_ms)
	sleep 3
	alive "${PIDS[p5fg]}" || {
		cat "$TMP/p5fg.out"
		die "the foreground load did not start"
	}
	t0=$(now_ms)
	console "BACKFILL START" >/dev/null
	local state="" i
	for ((i = 0; i < 36000; i++)); do
		state=$(sql "$PGPORT_" "$DB" "SELECT state FROM pgshunt.jobs WHERE name = 'backfill'")
		[ "$state" = done ] && break
		case $state in running | idle | '') ;; *) die "the backfill ended in state '$state'" ;; esac
		sleep 0.1
	done
	t1=$(now_ms)
	local before_p99 during_p99 done_rows bf_ms bf_rate
	sleep 1 # pgbench writes its log in blocks: let the last transactions reach it
	stop_named p5fg TERM 5
	before_p99=$(p99_ms "$fg0" "$t0" "$TMP"/p5log/fg*)
	during_p99=$(p99_ms "$t0" "$t1" "$TMP"/p5log/fg*)
	done_rows=$(sql "$PGPORT_" "$DB" "SELECT rows_done FROM pgshunt.jobs WHERE name = 'backfill'")
	bf_ms=$((t1 - t0))
	bf_rate=$(awk -v r="$done_rows" -v ms="$bf_ms" 'BEGIN { printf "%.0f", r * 1000 / ms }')
	local missing
	missing=$(sql "$PGPORT_" "$DB" "SELECT count(*) FROM ingest_idempotency o WHERE NOT EXISTS (SELECT 1 FROM ingest_idempotency_next n WHERE (n.site_id, n.idempotency_key) = (o.site_id, o.idempotency_key))")
	echo "backfill:  $done_rows rows in $bf_ms ms = $bf_rate rows/s (backfill_batch_rows = $P5_BATCH), with $P5_FG_TPS claims/s through pgshunt (dual_write)"
	echo "           foreground p99: $before_p99 ms before, $during_p99 ms during the backfill; rows of the table missing from next afterwards: $missing"
	local r
	r=$(ratio "$bf_rate" "$bulk_rate")
	echo "P5 backfill/bulk = $r (target >= 0.5 with p99 < 100 ms): $(awk -v r="$r" -v p="$during_p99" 'BEGIN { print (r + 0 >= 0.5 && p + 0 < 100) ? "MET" : "NOT MET" }')"
	[ "$missing" = 0 ] || echo "P5: the backfill left $missing rows out of next: a defect"
	echo
}

# ------------------------------------------------------------------ P6

p6() {
	echo "## P6: DEGRADED vs normal inserts, $P6_SEED rows, indexes larger than shared_buffers"
	new_server "$P6_SEED" <<-EOF
		shared_buffers = 32MB
		max_wal_size = 8GB
		checkpoint_timeout = 1h
		autovacuum = off
	EOF
	start_shunt
	migrate_prepare
	cat >"$TMP/buffer.pgbench" <<-'EOF'
		\set k random(1, 1000000000)
		INSERT INTO ingest_fallback_buffer (pgshunt_conflict, site_id, idempotency_key, request_hash) VALUES ('nothing', 'site-' || (:k % 500), 'bench-' || :k, '\x00') RETURNING created_at;
	EOF
	declare -A tps=()
	local round target port script out v
	for ((round = 1; round <= P6_ROUNDS; round++)); do
		for target in table buffer normal degraded; do
			case $target in
			table) port=$PGPORT_ script=claim ;;
			buffer) port=$PGPORT_ script=buffer ;;
			normal)
				port=$SHUNT_PORT script=claim
				console "DEGRADED OFF" >/dev/null
				;;
			degraded)
				port=$SHUNT_PORT script=claim
				console "DEGRADED ON" >/dev/null
				;;
			esac
			out=$TMP/p6-$target-$round.out
			pgbench -n -c "$CLIENTS" -j "$THREADS" -T "$P6_SECONDS" -M prepared -f "$TMP/$script.pgbench" \
				-h 127.0.0.1 -p "$port" -U postgres "$DB" >"$out" 2>&1 || true
			v=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' "$out" | head -n1)
			tps[$target]+="${v:-FAIL} "
			printf 'round %d  %-9s %10s tps\n' "$round" "$target" "${v:-FAIL}"
		done
	done
	console "DEGRADED OFF" >/dev/null
	local m_table m_buffer m_normal m_degraded rd rp
	m_table=$(tr ' ' '\n' <<<"${tps[table]}" | median)
	m_buffer=$(tr ' ' '\n' <<<"${tps[buffer]}" | median)
	m_normal=$(tr ' ' '\n' <<<"${tps[normal]}" | median)
	m_degraded=$(tr ' ' '\n' <<<"${tps[degraded]}" | median)
	rd=$(ratio "$m_buffer" "$m_table")
	rp=$(ratio "$m_degraded" "$m_normal")
	echo "medians: direct table $m_table, direct buffer $m_buffer (ratio $rd); pgshunt normal $m_normal, pgshunt DEGRADED $m_degraded (ratio $rp)"
	echo "buffered rows: $(sql "$PGPORT_" "$DB" "SELECT count(*) FROM ingest_fallback_buffer"); indexes now $(sql "$PGPORT_" "$DB" "SELECT pg_size_pretty(pg_indexes_size('ingest_idempotency'))")"
	local r
	r=$(ratio "$rp" "$rd")
	echo "P6 (pgshunt DEGRADED/normal) / (direct buffer/table) = $r (target >= 0.9): $(awk -v r="$r" 'BEGIN { print (r + 0 >= 0.9) ? "MET" : "NOT MET" }')"
	echo
}

# ------------------------------------------------------------------ P7

# fill_buffer N: N rows into the buffer, one in ten a retry of a key already in the table.
fill_buffer() {
	sql "$PGPORT_" "$DB" "INSERT INTO ingest_fallback_buffer (pgshunt_conflict, $COLS)
		SELECT 'nothing', t.site_id, CASE WHEN g % 10 = 0 THEN t.idempotency_key ELSE 'drain-' || g || '-' || t.idempotency_key END,
		       t.request_hash, t.status, t.response_code, t.response_body, now(), now() + interval '1 day'
		  FROM generate_series(1, $1) AS g
		  JOIN (SELECT *, row_number() OVER () - 1 AS n FROM ingest_idempotency) AS t ON t.n = (g * 7919) % 50000" >/dev/null
}

# drain_once: DRAIN START, wait until the buffer is empty; prints "rows ms".
drain_once() {
	local before t0 t1 i left
	before=$(sql "$PGPORT_" "$DB" "SELECT count(*) FROM ingest_fallback_buffer")
	t0=$(now_ms)
	console "DRAIN START" >/dev/null
	for ((i = 0; i < 36000; i++)); do
		left=$(sql "$PGPORT_" "$DB" "SELECT count(*) FROM ingest_fallback_buffer")
		[ "$left" = 0 ] && break
		sleep 0.05
	done
	t1=$(now_ms)
	console "DRAIN PAUSE" >/dev/null 2>&1 || true
	echo "$before $((t1 - t0))"
}

p7() {
	echo "## P7: drain, $P7_ROWS buffered rows, a tenth of them retries of existing keys"
	new_server 50000 <<-EOF
		shared_buffers = 256MB
		max_wal_size = 8GB
		checkpoint_timeout = 1h
	EOF
	start_shunt "drain_batch_rows = $P7_BATCH" "drain_max_rows_per_sec = 1000000"
	migrate_prepare
	local rows ms rate dups
	fill_buffer "$P7_ROWS"
	read -r rows ms <<<"$(drain_once)"
	rate=$(awk -v r="$rows" -v ms="$ms" 'BEGIN { printf "%.0f", r * 1000 / ms }')
	dups=$(sql "$PGPORT_" "$DB" "SELECT count(*) FROM ingest_idempotency WHERE idempotency_key LIKE 'drain-%'")
	echo "unthrottled (drain_batch_rows = $P7_BATCH): $rows rows drained in $ms ms = $rate rows/s ($dups new rows in the table, $((rows - dups)) retries skipped)"
	echo "P7 drain rate = $rate rows/s (target >= 20000): $(awk -v r="$rate" 'BEGIN { print (r + 0 >= 20000) ? "MET" : "NOT MET" }')"

	stop_named pgshunt
	start_shunt "drain_batch_rows = 500" "drain_max_rows_per_sec = $P7_RATE"
	fill_buffer "$P7_ROWS"
	read -r rows ms <<<"$(drain_once)"
	rate=$(awk -v r="$rows" -v ms="$ms" 'BEGIN { printf "%.0f", r * 1000 / ms }')
	local err
	err=$(awk -v r="$rate" -v s="$P7_RATE" 'BEGIN { printf "%+.1f", (r - s) * 100 / s }')
	echo "throttled at $P7_RATE rows/s: $rows rows in $ms ms = $rate rows/s ($err %)"
	echo "P7 throttle accuracy = $err % (target within ±10 %): $(awk -v e="$err" 'BEGIN { print (e + 0 >= -10 && e + 0 <= 10) ? "MET" : "NOT MET" }')"
	echo
}

for b in p5 p6 p7; do
	if [ -z "$ONLY" ] || [ "$ONLY" = "$b" ]; then
		"$b"
	fi
done

bench_end
