#!/bin/bash
# pgshunt benchmark P4 (not a test): see docs/BENCHMARKS.md, section "P4".
#
#   P4_SECONDS=10 P4_ROUNDS=3 bash bench/p4.sh        (./pgshunt must be built)
#
# P4 = throughput of the application's idempotent claim
#        INSERT ... ON CONFLICT (site_id, idempotency_key) DO NOTHING RETURNING created_at
#      in phase dual_write through pgshunt (the mirror is pgshunt.put_next(row) added to
#      the RETURNING list)
#    ÷ the same load sent directly to PostgreSQL, mirrored by an AFTER ROW trigger that
#      calls the same pgshunt.put_next / pgshunt.del_next (trigger-based dual writing,
#      as pgroll and pg-osc do it).
# Target: >= 0.8.  Also measured, for context: the same load directly, without any
# mirroring.
#
# One throwaway PostgreSQL 15 with three databases built from
# tests/fixtures/ingest_schema.sql and seeded with 200,000 rows each:
#   p4_shunt    (a) through pgshunt, MIGRATE PREPARE + SET PHASE dual_write on its console
#   p4_trigger  (b) directly, with the mirror trigger
#   p4_plain    (c) directly, no mirroring
# (one database per target, so that no target's rows turn another's inserts into
# retries: (c) inserts twice as many rows as (a) in the same time)
# Both mirrors are checked (INSERT, UPDATE, DELETE of one row) and next is backfilled
# from the table in both before measuring.  (a), (b), (c) run interleaved for
# P4_ROUNDS rounds (the order rotates each round); the medians are compared, and the
# CPU time per transaction of the server, the proxy and pgbench is reported next to the
# TPS.  Afterwards every row of each next table is compared with the table's row.
# Output on stdout and in bench/results/p4.txt.
#
# Knobs (environment):
#   P4_SECONDS   seconds per pgbench run                           (default 15)
#   P4_ROUNDS    interleaved rounds                                (default 3)
#   P4_WARMUP    seconds of the warm-up run per target, 0 = none   (default 3)
#   P4_SEED      rows seeded into each database                    (default 200000)
#   P4_BACKFILL  1: copy the table's rows into next before measuring, as a backfill
#                would (the steady state of dual_write); 0: next starts empty  (default 1)
#   P4_AUTOVACUUM 0: autovacuum off, both databases vacuumed before every round;
#                1: autovacuum on (it then lands in some runs, more often in p4_shunt,
#                which takes the rows of (a) and (c))                  (default 0)
#   P4_REWRITTEN 1 adds a target (d): directly to p4_shunt, the statement as pgshunt
#                rewrites it (RETURNING created_at, pgshunt.put_next(ingest_idempotency)),
#                which splits (a) into the proxy's cost and the mirror's (default 0)
#   PGBIN        PostgreSQL binaries      (default /usr/lib/postgresql/15/bin)
#
# Every process started here is stopped by its PID, and the temporary directory
# removed, on exit, failure or interruption.  Everything listens on 127.0.0.1.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)

SECONDS_PER_RUN=${P4_SECONDS:-15}
ROUNDS=${P4_ROUNDS:-3}
WARMUP=${P4_WARMUP:-3}
SEED=${P4_SEED:-200000}
REWRITTEN=${P4_REWRITTEN:-0}
BACKFILL=${P4_BACKFILL:-1}
AUTOVACUUM=${P4_AUTOVACUUM:-0}
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
PY=/usr/bin/python3
CLIENTS=8
THREADS=2
P4_TARGET=0.80
DB_A=p4_shunt
DB_B=p4_trigger
DB_C=p4_plain

BENCH_NAME=p4
# shellcheck source=bench/lib.sh
. bench/lib.sh

bench_int P4_SECONDS "$SECONDS_PER_RUN"
bench_int P4_ROUNDS "$ROUNDS"
bench_int P4_SEED "$SEED"
bench_int P4_WARMUP "$WARMUP" 0
bench_bool P4_REWRITTEN "$REWRITTEN"
bench_bool P4_BACKFILL "$BACKFILL"
bench_bool P4_AUTOVACUUM "$AUTOVACUUM"
bench_require pgbench psql "$PY"
bench_readable tests/fixtures/ingest_schema.sql proxy/sql/schema.sql proxy/sql/prepare.sql

# ---------------------------------------------------------------- processes, cleanup

bench_begin bench/results/p4.txt

# ------------------------------------------------------------------ machine info

bench_header "pgshunt benchmark P4"
echo "pgbench:     $(pgbench --version)"
echo "settings:    P4_SECONDS=$SECONDS_PER_RUN P4_ROUNDS=$ROUNDS P4_WARMUP=$WARMUP P4_SEED=$SEED P4_BACKFILL=$BACKFILL P4_AUTOVACUUM=$AUTOVACUUM P4_REWRITTEN=$REWRITTEN"
echo

# ------------------------------------------------------------------ PostgreSQL

echo "## Setup"
# No checkpoint should land inside a measured run by the clock or by WAL volume:
# one is forced after the setup instead.
pg_start PGPORT_ <<EOF
max_connections = 100
shared_buffers = 256MB
fsync = off
synchronous_commit = off
full_page_writes = off
max_wal_size = 8GB
checkpoint_timeout = 1h
log_autovacuum_min_duration = 0
autovacuum = $([ "$AUTOVACUUM" = 1 ] && echo on || echo off)
EOF
echo "postgres:  127.0.0.1:$PGPORT_ (pid $(postmaster_pid)), shared_buffers=256MB fsync=off synchronous_commit=off full_page_writes=off"

t0=$(date +%s)
for db in "$DB_A" "$DB_B" "$DB_C"; do
	ingest_db "$db" "$SEED"
done
echo "databases: $DB_A (pgshunt), $DB_B (trigger), $DB_C (plain), each seeded with seed_ingest_idempotency($SEED) in $(($(date +%s) - t0)) s:" \
	"$(for db in "$DB_A" "$DB_B" "$DB_C"; do sql "$PGPORT_" "$db" 'SELECT count(*) FROM ingest_idempotency'; done | paste -sd/) rows"

# ------------------------------------------------------------------ A: pgshunt in dual_write

freeport SHUNT_PORT
shunt_ini "$TMP/pgshunt.ini" "$SHUNT_PORT" "admin_users = postgres" \
	"control_dsn = host=127.0.0.1 port=$PGPORT_ dbname=$DB_A user=postgres" "log_level = warning"
"$ROOT/pgshunt" "$TMP/pgshunt.ini" >"$TMP/pgshunt.log" 2>&1 &
PIDS[pgshunt]=$!
wait_up pgshunt "$SHUNT_PORT" sql "$SHUNT_PORT" "$DB_A" 'SELECT 1'

# console CMD: run one command on pgshunt's admin console.
console() {
	psql -X -qAt -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$SHUNT_PORT" -U postgres -d pgshunt -c "$1"
}
console_retry pgshunt "$TMP/prepare-a.out" console 'MIGRATE PREPARE'
console 'SET PHASE dual_write' >"$TMP/phase.out" 2>&1 || {
	cat "$TMP/phase.out" "$TMP/pgshunt.log"
	die "SET PHASE dual_write failed"
}
phase=$(console 'SHOW PHASE' | head -n1 | cut -d'|' -f1)
[ "$phase" = dual_write ] || die "pgshunt's phase is '$phase', not dual_write"
echo "pgshunt:   127.0.0.1:$SHUNT_PORT (pid ${PIDS[pgshunt]}) -> $DB_A; MIGRATE PREPARE ($(wc -l <"$TMP/prepare-a.out") steps), SHOW PHASE: $phase"

# ------------------------------------------------------------------ B: the trigger

psql -X -q -1 -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PGPORT_" -U postgres -d "$DB_B" \
	-f proxy/sql/schema.sql -f proxy/sql/prepare.sql >"$TMP/install-b.log" 2>&1 || {
	cat "$TMP/install-b.log"
	die "installing proxy/sql/schema.sql and prepare.sql in $DB_B failed"
}
sql "$PGPORT_" "$DB_B" "SELECT * FROM pgshunt.migrate_prepare('public.ingest_idempotency',
	'public.ingest_idempotency_next', 'public.ingest_fallback_buffer', 'created_at', 'month', 3,
	ARRAY['site_id','idempotency_key']::name[])" >"$TMP/prepare-b.out"
# The trigger: what trigger-based dual writing does, in the writing transaction, with
# pgshunt's own helpers so that both sides do the same work per row (per-key advisory
# lock, DELETE by key from next, INSERT into next).  A key change (which pgshunt
# refuses in dual_write) would also remove next's row under the old key.
sql "$PGPORT_" "$DB_B" "CREATE FUNCTION public.ingest_idempotency_mirror() RETURNS trigger
LANGUAGE plpgsql AS \$\$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pgshunt.del_next(OLD);
    ELSE
        IF TG_OP = 'UPDATE' AND (OLD.site_id, OLD.idempotency_key)
                                IS DISTINCT FROM (NEW.site_id, NEW.idempotency_key) THEN
            PERFORM pgshunt.del_next(OLD);
        END IF;
        PERFORM pgshunt.put_next(NEW);
    END IF;
    RETURN NULL;
END
\$\$" "CREATE TRIGGER ingest_idempotency_mirror
    AFTER INSERT OR UPDATE OR DELETE ON public.ingest_idempotency
    FOR EACH ROW EXECUTE FUNCTION public.ingest_idempotency_mirror()"
echo "trigger:   $DB_B: migrate_prepare ($(wc -l <"$TMP/prepare-b.out") steps), AFTER INSERT OR UPDATE OR DELETE FOR EACH ROW"
echo "           trigger ingest_idempotency_mirror: pgshunt.put_next(NEW) / pgshunt.del_next(OLD)"
parts_a=$(sql "$PGPORT_" "$DB_A" "SELECT count(*) FROM pg_inherits WHERE inhparent = 'public.ingest_idempotency_next'::regclass")
parts_b=$(sql "$PGPORT_" "$DB_B" "SELECT count(*) FROM pg_inherits WHERE inhparent = 'public.ingest_idempotency_next'::regclass")
echo "next:      $parts_a partitions in $DB_A, $parts_b in $DB_B (by month)"

# A functional check of both mirrors before measuring: insert, update, delete one row,
# and look at next after each step.
# mirror_check LABEL PORT DB (the connection the writes go through) -> prints one line
mirror_check() {
	local label=$1 port=$2 db=$3 k="p4-check-$1" got=() s
	local ins="INSERT INTO ingest_idempotency (site_id, idempotency_key, request_hash) VALUES ('p4', '$k', '\\x01')"
	local cmp="SELECT count(*) || ':' || count(*) FILTER (WHERE row(o.*)::text = row(n.*)::text)
	             FROM ingest_idempotency_next n JOIN ingest_idempotency o USING (site_id, idempotency_key)
	            WHERE n.site_id = 'p4' AND n.idempotency_key = '$k'"
	sql "$port" "$db" "$ins" >/dev/null
	got+=("$(sql "$PGPORT_" "$db" "$cmp")")
	sql "$port" "$db" "UPDATE ingest_idempotency SET status = 'completed', response_code = 200 WHERE site_id = 'p4' AND idempotency_key = '$k'" >/dev/null
	got+=("$(sql "$PGPORT_" "$db" "$cmp")")
	sql "$port" "$db" "DELETE FROM ingest_idempotency WHERE site_id = 'p4' AND idempotency_key = '$k'" >/dev/null
	got+=("$(sql "$PGPORT_" "$db" "SELECT count(*) FROM ingest_idempotency_next WHERE site_id = 'p4'")")
	s="insert ${got[0]} update ${got[1]} delete ${got[2]}"
	if [ "$s" = "insert 1:1 update 1:1 delete 0" ]; then
		echo "mirror check $label: INSERT, UPDATE and DELETE reach next (rows in next:equal to the table's = $s): ok"
	else
		echo "mirror check $label: FAILED ($s; expected insert 1:1 update 1:1 delete 0)"
		MIRROR_OK=no
	fi
}
MIRROR_OK=yes
mirror_check pgshunt "$SHUNT_PORT" "$DB_A"
mirror_check trigger "$PGPORT_" "$DB_B"
[ "$MIRROR_OK" = yes ] || die "a mirror does not work: nothing measured"

# The backfill (not built into pgshunt yet) would copy the table into next while
# dual_write mirrors the new writes: do it here, identically in both databases, so
# that the measured runs see next as it is during most of dual_write.  It also keeps
# the runs clear of a planner trap of an empty next (docs/BENCHMARKS.md, P4).
if [ "$BACKFILL" = 1 ]; then
	t0=$(date +%s)
	cols="site_id, idempotency_key, request_hash, status, response_code, response_body, created_at, expires_at"
	for db in "$DB_A" "$DB_B"; do
		sql "$PGPORT_" "$db" "INSERT INTO ingest_idempotency_next ($cols) SELECT $cols FROM ingest_idempotency" >/dev/null
	done
	echo "backfill:  INSERT INTO ingest_idempotency_next SELECT ... FROM ingest_idempotency in both databases:" \
		"$(sql "$PGPORT_" "$DB_A" 'SELECT count(*) FROM ingest_idempotency_next') and" \
		"$(sql "$PGPORT_" "$DB_B" 'SELECT count(*) FROM ingest_idempotency_next') rows in next, $(($(date +%s) - t0)) s"
else
	echo "backfill:  none (P4_BACKFILL=0): next starts empty"
fi
for db in "$DB_A" "$DB_B" "$DB_C"; do
	sql "$PGPORT_" "$db" "VACUUM ANALYZE" >/dev/null
done
sql "$PGPORT_" postgres "CHECKPOINT" >/dev/null
echo

# ------------------------------------------------------------------ the load

cat >"$TMP/claim.pgbench" <<'EOF'
\set k random(1, 10000000)
INSERT INTO ingest_idempotency (site_id, idempotency_key, request_hash) VALUES ('site-' || (:k % 500), 'bench-' || :k, '\x00') ON CONFLICT (site_id, idempotency_key) DO NOTHING RETURNING created_at;
EOF
# (d): what pgshunt sends the server for the claim in dual_write (docs/ENGINE.md).
cat >"$TMP/rewritten.pgbench" <<'EOF'
\set k random(1, 10000000)
INSERT INTO ingest_idempotency (site_id, idempotency_key, request_hash) VALUES ('site-' || (:k % 500), 'bench-' || :k, '\x00') ON CONFLICT (site_id, idempotency_key) DO NOTHING RETURNING created_at, pgshunt.put_next(ingest_idempotency);
EOF

TARGETS=(pgshunt trigger plain)
[ "$REWRITTEN" = 1 ] && TARGETS+=(rewritten)
declare -A PORT=([pgshunt]=$SHUNT_PORT [trigger]=$PGPORT_ [plain]=$PGPORT_ [rewritten]=$PGPORT_)
declare -A DB=([pgshunt]=$DB_A [trigger]=$DB_B [plain]=$DB_C [rewritten]=$DB_A)
declare -A SCRIPT=([pgshunt]=claim [trigger]=claim [plain]=claim [rewritten]=rewritten)
declare -A DESC=(
	[pgshunt]="(a) pgshunt, dual_write, $DB_A"
	[trigger]="(b) direct + mirror trigger, $DB_B"
	[plain]="(c) direct, no mirroring, $DB_C"
	[rewritten]="(d) direct, pgshunt's rewrite, $DB_A"
)

bench_rows() { sql "$PGPORT_" "$1" "SELECT count(*) FROM ingest_idempotency WHERE idempotency_key LIKE 'bench-%'"; }

# CPU accounting, in clock ticks, less sensitive to the machine's other load than TPS.
# The server: the postmaster's cutime + cstime (every backend it has reaped) plus the
# utime + stime of its live children (walwriter, autovacuum, pgshunt's control
# connection...); the proxy: pgshunt's utime + stime; pgbench: bash's `time`.
PM_PID=$(postmaster_pid)
HZ=$(getconf CLK_TCK)
ticks() { # PID FIELD... (fields of /proc/PID/stat counted after the command name)
	local pid=$1 line
	shift
	line=$(cat "/proc/$pid/stat" 2>/dev/null) || {
		echo 0
		return
	}
	line=${line##*) }
	awk -v f="$*" '{ n = split(f, a, " "); s = 0; for (i = 1; i <= n; i++) s += $(a[i] - 2); print s }' <<<"$line"
}
server_ticks() {
	local sum c
	sum=$(ticks "$PM_PID" 16 17)
	for c in $(pgrep -P "$PM_PID" || true); do
		sum=$((sum + $(ticks "$c" 14 15)))
	done
	echo "$sum"
}
# Wait (up to 3 s) until the postmaster has no more children than at rest, so that
# the backends of the last clients are reaped and counted in its cutime.
wait_reaped() {
	local i
	for ((i = 0; i < 30; i++)); do
		(($(pgrep -c -P "$PM_PID" || true) <= PM_CHILDREN)) && return 0
		sleep 0.1
	done
}
sleep 1
PM_CHILDREN=$(pgrep -c -P "$PM_PID" || true)

# run_pgbench TARGET SECONDS OUTFILE: sets TPS (or FAIL), TX (transactions), INS (rows
# the run inserted; TX - INS were retries that DO NOTHING skipped) and CPU_SRV,
# CPU_PRX, CPU_PGB (CPU microseconds per transaction of the server, pgshunt, pgbench).
run_pgbench() {
	local target=$1 secs=$2 out=$3 rc=0 before after s0 s1 p0 p1 pgb logpos
	before=$(bench_rows "${DB[$target]}")
	wait_reaped
	logpos=$(stat -c %s "$TMP/postgres.log")
	s0=$(server_ticks)
	p0=$(ticks "${PIDS[pgshunt]}" 14 15)
	local TIMEFORMAT='%3U %3S'
	{ time pgbench -n -c "$CLIENTS" -j "$THREADS" -T "$secs" -M prepared -f "$TMP/${SCRIPT[$target]}.pgbench" \
		-h 127.0.0.1 -p "${PORT[$target]}" -U postgres "${DB[$target]}" >"$out" 2>&1; } \
		2>"$TMP/pgbench.time" || rc=$?
	wait_reaped
	s1=$(server_ticks)
	AV=$(tail -c +$((logpos + 1)) "$TMP/postgres.log" | grep -c 'automatic \(vacuum\|analyze\)' || true)
	p1=$(ticks "${PIDS[pgshunt]}" 14 15)
	pgb=$(awk '{ print $1 + $2 }' "$TMP/pgbench.time")
	after=$(bench_rows "${DB[$target]}")
	INS=$((after - before))
	TX=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$out" | tail -n1)
	TPS=$(sed -n 's/^tps = \([0-9.]*\) .*/\1/p' "$out" | tail -n1)
	if [ "$rc" != 0 ] || [ -z "$TPS" ] || [ -z "$TX" ] || [ "$TX" = 0 ] ||
		{ grep -q '^number of failed transactions:' "$out" &&
			! grep -q '^number of failed transactions: 0 ' "$out"; }; then
		TPS=FAIL CPU_SRV=FAIL CPU_PRX=FAIL CPU_PGB=FAIL
		return 0
	fi
	CPU_SRV=$(awk -v d=$((s1 - s0)) -v hz="$HZ" -v n="$TX" 'BEGIN { printf "%.1f", d * 1e6 / hz / n }')
	CPU_PRX=$(awk -v d=$((p1 - p0)) -v hz="$HZ" -v n="$TX" 'BEGIN { printf "%.1f", d * 1e6 / hz / n }')
	CPU_PGB=$(awk -v d="$pgb" -v n="$TX" 'BEGIN { printf "%.1f", d * 1e6 / n }')
}

rounded() { # numbers on stdin -> the same, rounded to integers (FAIL stays FAIL)
	awk '{ for (i = 1; i <= NF; i++) printf "%s%s", ($i ~ /^[0-9.]+$/ ? sprintf("%.0f", $i) : $i), (i < NF ? " " : "\n") }'
}

echo "## P4: idempotent claim, pgbench -n -c $CLIENTS -j $THREADS -T $SECONDS_PER_RUN -M prepared, $ROUNDS interleaved rounds"
echo "## INSERT INTO ingest_idempotency ... VALUES ('site-' || (:k % 500), 'bench-' || :k, '\\x00')"
echo "##     ON CONFLICT (site_id, idempotency_key) DO NOTHING RETURNING created_at;   k = random(1, 10000000)"
for t in "${TARGETS[@]}"; do
	echo "#  $t = ${DESC[$t]}"
done
if ((WARMUP > 0)); then
	echo "# warm-up: $WARMUP s per target (not counted)"
	for t in "${TARGETS[@]}"; do
		run_pgbench "$t" "$WARMUP" "$TMP/warmup-$t.out"
		if [ "$TPS" = FAIL ]; then
			echo "# warm-up $t FAILED:"
			tail -n 20 "$TMP/warmup-$t.out" | sed 's/^/#   /'
		fi
	done
fi
declare -A TPSS=() CPUS=() # target -> space-separated TPS / CPU µs per transaction of the rounds
echo "# cpu = CPU microseconds per transaction: server (postgres), proxy (pgshunt), pgbench, total;"
echo "# autovacuum = automatic vacuum/analyze runs that ended during the run (postgres log)"
printf '%-6s %-9s %9s %8s %8s %8s %7s | %7s %7s %7s %7s | %s\n' round target tps tx inserted retries "lat ms" \
	"cpu srv" proxy pgbench total "autovacuum"
for ((r = 1; r <= ROUNDS; r++)); do
	if [ "$AUTOVACUUM" = 0 ]; then
		for db in "$DB_A" "$DB_B" "$DB_C"; do
			sql "$PGPORT_" "$db" "VACUUM ANALYZE" >/dev/null
		done
	fi
	# Rotate the order so that no target always runs first or last in a round.
	for ((j = 0; j < ${#TARGETS[@]}; j++)); do
		t=${TARGETS[$(((r - 1 + j) % ${#TARGETS[@]}))]}
		out=$TMP/run-$r-$t.out
		run_pgbench "$t" "$SECONDS_PER_RUN" "$out"
		TPSS[$t]+="$TPS "
		tot=$(awk -v a="$CPU_SRV" -v b="$CPU_PRX" -v c="$CPU_PGB" 'BEGIN { if (a ~ /^[0-9.]+$/) printf "%.1f", a + b + c; else print "FAIL" }')
		CPUS[$t]+="$tot "
		lat=$(sed -n 's/^latency average = \([0-9.]*\) ms.*/\1/p' "$out" | tail -n1)
		retr=$(awk -v t="${TX:-0}" -v i="$INS" 'BEGIN { if (t > 0) printf "%.1f %%", 100 * (t - i) / t; else print "n/a" }')
		printf '%-6s %-9s %9s %8s %8s %8s %7s | %7s %7s %7s %7s | %s\n' "$r" "$t" "$(rounded <<<"$TPS")" "${TX:-?}" "$INS" \
			"$retr" "${lat:-?}" "$CPU_SRV" "$CPU_PRX" "$CPU_PGB" "$tot" "$AV"
		if [ "$TPS" = FAIL ]; then
			echo "# pgbench against $t failed:"
			tail -n 20 "$out" | sed 's/^/#   /'
		fi
	done
done
echo

# ------------------------------------------------------------------ mirror verification

echo "## Mirroring after the runs: every row of next compared with the table's row (row(t.*)::text)"
# compare DB -> "next_rows|differing|table_bench_rows|bench_rows_not_in_next"
compare() {
	sql "$PGPORT_" "$1" "SELECT (SELECT count(*) FROM ingest_idempotency_next),
	       (SELECT count(*) FROM ingest_idempotency_next n
	          LEFT JOIN ingest_idempotency o USING (site_id, idempotency_key)
	         WHERE o IS NULL OR row(o.*)::text <> row(n.*)::text),
	       (SELECT count(*) FROM ingest_idempotency WHERE idempotency_key LIKE 'bench-%'),
	       (SELECT count(*) FROM ingest_idempotency o
	         WHERE o.idempotency_key LIKE 'bench-%'
	           AND NOT EXISTS (SELECT 1 FROM ingest_idempotency_next n
	                            WHERE n.site_id = o.site_id AND n.idempotency_key = o.idempotency_key))"
}
VERIFY_OK=yes
IFS='|' read -r a_next a_diff a_rows a_missing <<<"$(compare "$DB_A")"
IFS='|' read -r b_next b_diff b_rows b_missing <<<"$(compare "$DB_B")"
printf '%-12s %10s %22s %24s %22s\n' database "next rows" "differing from table" "rows the runs inserted" "of them not in next"
printf '%-12s %10s %22s %24s %22s\n' "$DB_A" "$a_next" "$a_diff" "$a_rows" "$a_missing"
printf '%-12s %10s %22s %24s %22s\n' "$DB_B" "$b_next" "$b_diff" "$b_rows" "$b_missing"
for v in a_next b_next a_rows b_rows; do
	[ "${!v}" -gt 0 ] || VERIFY_OK=no
done
for v in a_diff b_diff a_missing b_missing; do
	[ "${!v}" = 0 ] || VERIFY_OK=no
done
echo "mirroring: $([ "$VERIFY_OK" = yes ] && echo 'ok in both databases' || echo 'FAILED: the figures below do not compare equal work')"
echo

# ------------------------------------------------------------------ table

declare -A MED=() CMED=()
for t in "${TARGETS[@]}"; do
	MED[$t]=$(tr ' ' '\n' <<<"${TPSS[$t]}" | median)
	CMED[$t]=$(tr ' ' '\n' <<<"${CPUS[$t]}" | median)
done
echo "## P4: median of $ROUNDS rounds (pgbench -c $CLIENTS -j $THREADS -T $SECONDS_PER_RUN -M prepared)"
printf '%-40s %-26s %10s %16s\n' target "tps per round" "median tps" "median cpu µs/tx"
for t in "${TARGETS[@]}"; do
	printf '%-40s %-26s %10s %16s\n' "${DESC[$t]}" "$(rounded <<<"${TPSS[$t]}")" "${MED[$t]}" "${CMED[$t]}"
done
echo
p4=$(ratio "${MED[pgshunt]}" "${MED[trigger]}")
printf '%-44s %6s\n' "P4 = (a)/(b) pgshunt/trigger, TPS" "$p4"
printf '%-44s %6s\n' "(a)/(c) pgshunt/no mirroring, TPS" "$(ratio "${MED[pgshunt]}" "${MED[plain]}")"
printf '%-44s %6s\n' "(b)/(c) trigger/no mirroring, TPS" "$(ratio "${MED[trigger]}" "${MED[plain]}")"
echo "per round (a)/(b): $(for ((r = 1; r <= ROUNDS; r++)); do
	ratio "$(cut -d' ' -f"$r" <<<"${TPSS[pgshunt]}")" "$(cut -d' ' -f"$r" <<<"${TPSS[trigger]}")"
done | tr '\n' ' ')"
if [ "$REWRITTEN" = 1 ]; then
	printf '%-44s %6s\n' "(a)/(d) pgshunt/its rewrite sent directly" "$(ratio "${MED[pgshunt]}" "${MED[rewritten]}")"
	printf '%-44s %6s\n' "(d)/(b) RETURNING put_next/trigger, direct" "$(ratio "${MED[rewritten]}" "${MED[trigger]}")"
fi
printf '%-44s %6s\n' "CPU per transaction, (b)/(a) trigger/pgshunt" "$(ratio "${CMED[trigger]}" "${CMED[pgshunt]}")"
echo "(the TPS ratio a machine saturated by this load alone would give: less noisy than TPS here)"
echo
if [ "$VERIFY_OK" != yes ]; then
	echo "P4 (pgshunt/trigger >= $P4_TARGET): NOT MET (the mirror verification failed)"
elif [ "$p4" != n/a ] && awk -v r="$p4" -v t="$P4_TARGET" 'BEGIN { exit !(r >= t) }'; then
	echo "P4 (pgshunt/trigger >= $P4_TARGET): MET"
else
	echo "P4 (pgshunt/trigger >= $P4_TARGET): NOT MET"
fi
echo
log_errors pgshunt
bench_end
