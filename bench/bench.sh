#!/bin/bash
# pgshunt benchmark (not a test): see docs/BENCHMARKS.md.
#
#   make bench                                   (builds ./pgshunt first)
#   BENCH_SECONDS=10 BENCH_ROUNDS=3 bash bench/bench.sh
#
# Starts a throwaway PostgreSQL 15, PgBouncer (session mode) and pgshunt on free
# loopback ports inside one temporary directory, then measures
#   P1  pgbench -S, 8 clients, -M simple and -M prepared: direct, PgBouncer, pgshunt,
#       interleaved, median TPS of BENCH_ROUNDS rounds (target: pgshunt/PgBouncer >= 1.10);
#       also pgshunt with worker_threads = 0 (one loop), for what the relay threads bring
#   P9  RSS per idle client connection, BENCH_IDLE_CONNS of them (target: <= 64 KiB)
#   P2  callgrind instructions per forwarded query (target: pgshunt <= 0.8 x PgBouncer)
# and prints everything to stdout and to bench/results/latest.txt.
#
# Knobs (environment):
#   BENCH_SECONDS     seconds per pgbench run in P1                 (default 15)
#   BENCH_ROUNDS      interleaved rounds in P1                      (default 3)
#   BENCH_SCALE       pgbench -i scale                              (default 10)
#   BENCH_IDLE_CONNS  idle client connections in P9                 (default 200)
#   BENCH_CALLGRIND   0 skips P2                                    (default 1)
#   BENCH_CG_TX       pgbench -t of the measured P2 run             (default 2000)
#   BENCH_ONE_LOOP    0 skips the worker_threads = 0 runs of P1     (default 1)
#   PGBIN             PostgreSQL binaries      (default /usr/lib/postgresql/15/bin)
#   PGBOUNCER         PgBouncer binary         (default /usr/sbin/pgbouncer)
#
# Every process started here is stopped by its PID, and the temporary directory
# removed, on exit, failure or interruption.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)

SECONDS_PER_RUN=${BENCH_SECONDS:-15}
ROUNDS=${BENCH_ROUNDS:-3}
SCALE=${BENCH_SCALE:-10}
IDLE_CONNS=${BENCH_IDLE_CONNS:-200}
DO_CALLGRIND=${BENCH_CALLGRIND:-1}
CG_TX=${BENCH_CG_TX:-2000}
ONE_LOOP=${BENCH_ONE_LOOP:-1}
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
PGBOUNCER=${PGBOUNCER:-/usr/sbin/pgbouncer}
PY=/usr/bin/python3
CLIENTS=8
THREADS=2
P1_TARGET=1.10
P9_TARGET_KIB=64
P2_TARGET=0.80
# PostgreSQL must hold the idle clients of P9 (pgshunt is transparent: one backend
# per client), plus the reserved superuser slots and some slack.
MAX_CONNECTIONS=200
((IDLE_CONNS + 20 > MAX_CONNECTIONS)) && MAX_CONNECTIONS=$((IDLE_CONNS + 20))
PROXY_MAX_CLIENT_CONN=200
((IDLE_CONNS > PROXY_MAX_CLIENT_CONN)) && PROXY_MAX_CLIENT_CONN=$IDLE_CONNS

BENCH_NAME=bench
# shellcheck source=bench/lib.sh
. bench/lib.sh

bench_int BENCH_SECONDS "$SECONDS_PER_RUN"
bench_int BENCH_ROUNDS "$ROUNDS"
bench_int BENCH_SCALE "$SCALE"
bench_int BENCH_IDLE_CONNS "$IDLE_CONNS"
bench_int BENCH_CG_TX "$CG_TX"
bench_bool BENCH_ONE_LOOP "$ONE_LOOP"
bench_require pgbench psql "$PY"
[ -x "$PGBOUNCER" ] || die "PgBouncer not found at $PGBOUNCER"
bench_require_psycopg
if [ "$DO_CALLGRIND" != 0 ] && ! command -v valgrind >/dev/null; then
	echo "bench: valgrind not found, skipping P2" >&2
	DO_CALLGRIND=0
fi

# ---------------------------------------------------------------- processes, cleanup

bench_begin bench/results/latest.txt

# bench_sql PORT: `SELECT 1` as bench, to see that a proxy answers on PORT.
bench_sql() { psql -X -At -h 127.0.0.1 -p "$1" -U bench -d bench -c 'SELECT 1'; }

vmrss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

# ------------------------------------------------------------------ machine info

bench_header "pgshunt benchmark"
echo "pgbench:     $(pgbench --version)"
echo "pgbouncer:   $("$PGBOUNCER" --version 2>&1 | head -n1)"
echo "cc:          $(${CC:-cc} --version 2>/dev/null | head -n1)"
[ "$DO_CALLGRIND" != 0 ] && echo "valgrind:    $(valgrind --version)"
echo "settings:    BENCH_SECONDS=$SECONDS_PER_RUN BENCH_ROUNDS=$ROUNDS BENCH_SCALE=$SCALE BENCH_IDLE_CONNS=$IDLE_CONNS BENCH_CALLGRIND=$DO_CALLGRIND BENCH_CG_TX=$CG_TX BENCH_ONE_LOOP=$ONE_LOOP"
echo

# ------------------------------------------------------------------ PostgreSQL

echo "## Setup"
pg_start PGPORT_ <<EOF
max_connections = $MAX_CONNECTIONS
shared_buffers = 256MB
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
as_pg psql -X -q -v ON_ERROR_STOP=1 -h "$TMP" -p "$PGPORT_" -U postgres -d postgres \
	-c "CREATE ROLE bench LOGIN" -c "CREATE DATABASE bench OWNER bench" >/dev/null
echo "postgres:  127.0.0.1:$PGPORT_ (pid $(postmaster_pid)), shared_buffers=256MB fsync=off synchronous_commit=off max_connections=$MAX_CONNECTIONS"
t0=$(date +%s)
pgbench -i -q -s "$SCALE" -h 127.0.0.1 -p "$PGPORT_" -U bench bench >"$TMP/init.log" 2>&1 || {
	cat "$TMP/init.log"
	die "pgbench -i failed"
}
rows=$(psql -X -At -h 127.0.0.1 -p "$PGPORT_" -U bench -d bench -c 'SELECT count(*) FROM pgbench_accounts')
echo "pgbench -i -s $SCALE: $rows accounts, done in $(($(date +%s) - t0)) s"

# ------------------------------------------------------------------ the proxies

# start_pgbouncer NAME POOL_SIZE [WRAPPER...]: start PgBouncer (session mode) on a new
# port; sets BOUNCER_PORT and PIDS[NAME].
start_pgbouncer() {
	local name=$1 pool=$2 ini
	shift 2
	freeport BOUNCER_PORT
	ini=$TMP/$name.ini
	echo '"bench" ""' >"$TMP/userlist.txt"
	cat >"$ini" <<EOF
[databases]
bench = host=127.0.0.1 port=$PGPORT_ dbname=bench

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $BOUNCER_PORT
unix_socket_dir =
pool_mode = session
auth_type = trust
auth_file = $TMP/userlist.txt
default_pool_size = $pool
max_client_conn = $PROXY_MAX_CLIENT_CONN
logfile = $TMP/$name.log
pidfile = $TMP/$name.pid
log_connections = 0
log_disconnections = 0
EOF
	[ "$(id -u)" = 0 ] && chown postgres: "$ini" "$TMP/userlist.txt"
	# -u: PgBouncer refuses to run as root; it switches to postgres itself.
	local user_opt=()
	[ "$(id -u)" = 0 ] && user_opt=(-u postgres)
	"$@" "$PGBOUNCER" "${user_opt[@]}" "$ini" >"$TMP/$name.out" 2>&1 &
	PIDS[$name]=$!
	wait_up "$name" "$BOUNCER_PORT" bench_sql "$BOUNCER_PORT"
}

# start_pgshunt NAME [WRAPPER...]: start pgshunt on a new port; sets SHUNT_PORT and
# PIDS[NAME].  SHUNT_EXTRA: one more config line.
start_pgshunt() {
	local name=$1 ini
	shift
	freeport SHUNT_PORT
	ini=$TMP/$name.ini
	shunt_ini "$ini" "$SHUNT_PORT" "log_level = warning" "max_client_conn = $PROXY_MAX_CLIENT_CONN" \
		${SHUNT_EXTRA:+"$SHUNT_EXTRA"}
	"$@" "$ROOT/pgshunt" "$ini" >"$TMP/$name.log" 2>&1 &
	PIDS[$name]=$!
	wait_up "$name" "$SHUNT_PORT" bench_sql "$SHUNT_PORT"
}

start_pgbouncer pgbouncer 20
start_pgshunt pgshunt
echo "pgbouncer: 127.0.0.1:$BOUNCER_PORT (pid ${PIDS[pgbouncer]}), session mode, default_pool_size=20"
echo "pgshunt:   127.0.0.1:$SHUNT_PORT (pid ${PIDS[pgshunt]}), worker_threads = 2 (the default)"
declare -A PORT=([direct]=$PGPORT_ [pgbouncer]=$BOUNCER_PORT [pgshunt]=$SHUNT_PORT)
TARGETS=(direct pgbouncer pgshunt)
if [ "$ONE_LOOP" = 1 ]; then
	SHUNT_EXTRA="worker_threads = 0" start_pgshunt pgshunt-1loop
	echo "pgshunt:   127.0.0.1:$SHUNT_PORT (pid ${PIDS[pgshunt-1loop]}), worker_threads = 0 (one loop), shown as pgshunt-1loop"
	PORT[pgshunt-1loop]=$SHUNT_PORT
	TARGETS+=(pgshunt-1loop)
fi
MODES=(simple prepared)
echo

# ------------------------------------------------------------------ P1: throughput

# run_pgbench TARGET MODE SECONDS OUTFILE: prints the TPS, or FAIL.
run_pgbench() {
	local target=$1 mode=$2 secs=$3 out=$4 rc=0 tps
	pgbench -n -S -c "$CLIENTS" -j "$THREADS" -T "$secs" -M "$mode" \
		-h 127.0.0.1 -p "${PORT[$target]}" -U bench bench >"$out" 2>&1 || rc=$?
	tps=$(sed -n 's/^tps = \([0-9.]*\) .*/\1/p' "$out" | tail -n1)
	if [ "$rc" != 0 ] || [ -z "$tps" ] ||
		{ grep -q '^number of failed transactions:' "$out" &&
			! grep -q '^number of failed transactions: 0 ' "$out"; }; then
		echo FAIL
	else
		echo "$tps"
	fi
}

echo "## P1: throughput, pgbench -S -c $CLIENTS -j $THREADS -T $SECONDS_PER_RUN (-n), median of $ROUNDS interleaved rounds"
echo "# warm-up: 3 s per target and mode (not counted)"
for mode in "${MODES[@]}"; do
	for target in "${TARGETS[@]}"; do
		w=$(run_pgbench "$target" "$mode" 3 "$TMP/warmup.out")
		if [ "$w" = FAIL ]; then
			echo "# warm-up $target -M $mode FAILED:"
			sed 's/^/#   /' "$TMP/warmup.out"
		fi
	done
done
declare -A TPS=() # "target mode" -> space-separated TPS of the rounds
printf '%-6s %-9s %-13s %12s\n' round mode target tps
for ((r = 1; r <= ROUNDS; r++)); do
	for mode in "${MODES[@]}"; do
		for target in "${TARGETS[@]}"; do
			out=$TMP/p1-$r-$mode-$target.out
			tps=$(run_pgbench "$target" "$mode" "$SECONDS_PER_RUN" "$out")
			TPS["$target $mode"]+="$tps "
			printf '%-6s %-9s %-13s %12s\n' "$r" "$mode" "$target" "$tps"
			if [ "$tps" = FAIL ]; then
				echo "# pgbench against $target -M $mode failed:"
				sed 's/^/#   /' "$out" | tail -n 20
			fi
		done
	done
done
echo
printf '%-9s %12s %12s %12s %18s %16s %18s\n' mode direct pgbouncer pgshunt \
	pgshunt/pgbouncer pgshunt/direct pgbouncer/direct
P1_MET=yes
ONE_LOOP_LINES=()
for mode in "${MODES[@]}"; do
	declare -A MED=()
	for target in "${TARGETS[@]}"; do
		MED[$target]=$(tr ' ' '\n' <<<"${TPS["$target $mode"]}" | median)
	done
	sb=$(ratio "${MED[pgshunt]}" "${MED[pgbouncer]}")
	printf '%-9s %12s %12s %12s %18s %16s %18s\n' "$mode" "${MED[direct]}" "${MED[pgbouncer]}" \
		"${MED[pgshunt]}" "$sb" "$(ratio "${MED[pgshunt]}" "${MED[direct]}")" \
		"$(ratio "${MED[pgbouncer]}" "${MED[direct]}")"
	if [ "$sb" = n/a ] || awk -v r="$sb" -v t="$P1_TARGET" 'BEGIN { exit !(r < t) }'; then
		P1_MET=no
	fi
	if [ "$ONE_LOOP" = 1 ]; then
		ONE_LOOP_LINES+=("$(printf '%-9s %12s %18s %16s' "$mode" "${MED[pgshunt-1loop]}" \
			"$(ratio "${MED[pgshunt-1loop]}" "${MED[pgbouncer]}")" \
			"$(ratio "${MED[pgshunt]}" "${MED[pgshunt-1loop]}")")")
	fi
	unset MED
done
if [ "$ONE_LOOP" = 1 ]; then
	echo
	echo "pgshunt with worker_threads = 0 (one loop), same rounds:"
	printf '%-9s %12s %18s %16s\n' mode pgshunt-1loop 1loop/pgbouncer pgshunt/1loop
	printf '%s\n' "${ONE_LOOP_LINES[@]}"
fi
echo
echo "P1 (pgshunt/pgbouncer >= $P1_TARGET in both modes): $([ "$P1_MET" = yes ] && echo MET || echo 'NOT MET')"
echo

# Free PostgreSQL's slots (PgBouncer keeps its pool open) and start fresh proxies
# for P9, so that the heap P1 left behind does not hide the cost of new clients.
stop_named pgbouncer TERM 15
stop_named pgshunt TERM 15
if [ "$ONE_LOOP" = 1 ]; then stop_named pgshunt-1loop TERM 15; fi

# ------------------------------------------------------------------ P9: memory

cat >"$TMP/idle.py" <<'EOF'
# Open N connections, run SELECT 1 on each, say "ready", then stay idle until killed.
import sys, time, psycopg
port, n, ready = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
conns = []
for i in range(n):
    c = psycopg.connect(host="127.0.0.1", port=port, user="bench", dbname="bench",
                        autocommit=True, connect_timeout=20)
    c.execute("SELECT 1").fetchone()
    conns.append(c)
open(ready, "w").write("%d\n" % len(conns))
time.sleep(600)
EOF

# idle_rss NAME PID PORT: sets RSS_BEFORE, RSS_AFTER (KiB) and RSS_PER (KiB per
# client), or all three to FAIL.
idle_rss() {
	local name=$1 pid=$2 port=$3 before after i ready
	ready=$TMP/$name.ready
	RSS_BEFORE=FAIL RSS_AFTER=FAIL RSS_PER=FAIL
	sleep 1
	before=$(vmrss_kib "$pid")
	rm -f "$ready"
	"$PY" "$TMP/idle.py" "$port" "$IDLE_CONNS" "$ready" >"$TMP/$name-idle.out" 2>&1 &
	PIDS[idle-$name]=$!
	for ((i = 0; i < 1200; i++)); do
		[ -s "$ready" ] && break
		alive "${PIDS[idle-$name]}" || break
		sleep 0.1
	done
	if [ ! -s "$ready" ]; then
		stop_named "idle-$name"
		echo "# $name: the idle clients did not all connect:"
		tail -n 5 "$TMP/$name-idle.out" | sed 's/^/#   /'
		return 0
	fi
	sleep 2
	after=$(vmrss_kib "$pid")
	stop_named "idle-$name"
	RSS_BEFORE=$before RSS_AFTER=$after
	RSS_PER=$(awk -v a="$after" -v b="$before" -v n="$IDLE_CONNS" 'BEGIN { printf "%.1f", (a - b) / n }')
}

echo "## P9: RSS per idle client: VmRSS of a freshly started proxy before and after $IDLE_CONNS"
echo "## psycopg connections that each ran SELECT 1 and then stay idle (each holds its own server connection)"
start_pgshunt pgshunt-p9
idle_rss pgshunt "${PIDS[pgshunt-p9]}" "$SHUNT_PORT"
s_before=$RSS_BEFORE s_after=$RSS_AFTER s_per=$RSS_PER
stop_named pgshunt-p9 TERM 15
# Pool as large as the client count, so that every session-mode client gets a
# server connection, as through pgshunt.
start_pgbouncer pgbouncer-p9 "$IDLE_CONNS"
idle_rss pgbouncer "${PIDS[pgbouncer-p9]}" "$BOUNCER_PORT"
b_before=$RSS_BEFORE b_after=$RSS_AFTER b_per=$RSS_PER
stop_named pgbouncer-p9 TERM 15
printf '%-10s %14s %14s %18s\n' proxy "VmRSS before" "VmRSS after" "KiB per client"
printf '%-10s %14s %14s %18s\n' pgshunt "$s_before KiB" "$s_after KiB" "$s_per"
printf '%-10s %14s %14s %18s\n' pgbouncer "$b_before KiB" "$b_after KiB" "$b_per"
echo "(PgBouncer for P9 runs with default_pool_size=$IDLE_CONNS so that each client holds a server connection)"
if [ "$s_per" != FAIL ] &&
	awk -v v="$s_per" -v t="$P9_TARGET_KIB" 'BEGIN { exit !(v <= t) }'; then
	echo "P9 (pgshunt <= $P9_TARGET_KIB KiB per idle client): MET"
else
	echo "P9 (pgshunt <= $P9_TARGET_KIB KiB per idle client): NOT MET"
fi
echo

# ------------------------------------------------------------------ P2: instructions

if [ "$DO_CALLGRIND" != 0 ]; then
	CG_TX2=$((CG_TX * 2))
	echo "## P2: instructions per forwarded query under callgrind"
	echo "## pgbench -n -S -c 1 -M simple: one run of -t $CG_TX and one of -t $CG_TX2, each through a fresh proxy process;"
	echo "## all-in = whole-process Ir / queries (start-up, one connection, $CG_TX queries, shutdown);"
	echo "## marginal = (Ir[-t $CG_TX2] - Ir[-t $CG_TX]) / $CG_TX (the cost of one more query)"

	# cg_run KIND TX: run the proxy under callgrind, drive TX queries, stop it; sets IR
	# to its instruction count, or FAIL.
	cg_run() {
		local kind=$1 tx=$2 name=cg-$1-$2 port pid out ir rc=0
		out=$TMP/$name.callgrind
		local vg=(valgrind --tool=callgrind --callgrind-out-file="$out" --dump-instr=no
			--vgdb=no --log-file="$TMP/$name.vglog")
		# Callgrind creates its output file at start (as root here) and writes it at
		# exit, after PgBouncer has switched to postgres: give the file to postgres.
		: >"$out"
		[ "$(id -u)" = 0 ] && chown postgres: "$out"
		if [ "$kind" = pgshunt ]; then
			start_pgshunt "$name" "${vg[@]}"
			port=$SHUNT_PORT
		else
			start_pgbouncer "$name" 20 "${vg[@]}"
			port=$BOUNCER_PORT
		fi
		pgbench -n -S -c 1 -t "$tx" -M simple -h 127.0.0.1 -p "$port" -U bench bench \
			>"$TMP/$name.pgbench" 2>&1 || rc=$?
		stop_named "$name" TERM 60
		ir=$(sed -n 's/^summary: *\([0-9]*\).*/\1/p' "$out" 2>/dev/null | head -n1)
		if [ "$rc" != 0 ] || [ -z "$ir" ]; then
			echo "# callgrind run $name failed (pgbench rc $rc):"
			tail -n 5 "$TMP/$name.pgbench" "$TMP/$name.vglog" 2>/dev/null | sed 's/^/#   /'
			IR=FAIL
		else
			IR=$ir
		fi
	}
	declare -A IRS=()
	for kind in pgshunt pgbouncer; do
		cg_run "$kind" "$CG_TX"
		IRS[$kind-1]=$IR
		cg_run "$kind" "$CG_TX2"
		IRS[$kind-2]=$IR
	done
	printf '%-10s %16s %16s %16s %18s\n' proxy "Ir -t $CG_TX" "Ir -t $CG_TX2" "all-in Ir/query" "marginal Ir/query"
	declare -A ALLIN=() MARG=()
	for kind in pgshunt pgbouncer; do
		a=${IRS[$kind-1]} b=${IRS[$kind-2]}
		ALLIN[$kind]=$(awk -v a="$a" -v n="$CG_TX" 'BEGIN { if (a ~ /^[0-9]+$/) printf "%.0f", a / n; else print "FAIL" }')
		MARG[$kind]=$(awk -v a="$a" -v b="$b" -v n="$CG_TX" 'BEGIN { if (a ~ /^[0-9]+$/ && b ~ /^[0-9]+$/) printf "%.0f", (b - a) / n; else print "FAIL" }')
		printf '%-10s %16s %16s %16s %18s\n' "$kind" "$a" "$b" "${ALLIN[$kind]}" "${MARG[$kind]}"
	done
	r_allin=$(ratio "${ALLIN[pgshunt]}" "${ALLIN[pgbouncer]}")
	r_marg=$(ratio "${MARG[pgshunt]}" "${MARG[pgbouncer]}")
	echo "pgshunt/pgbouncer: all-in $r_allin, marginal $r_marg"
	if [ "$r_marg" != n/a ] && awk -v r="$r_marg" -v t="$P2_TARGET" 'BEGIN { exit !(r <= t) }'; then
		echo "P2 (pgshunt <= $P2_TARGET x pgbouncer instructions per query, marginal): MET"
	else
		echo "P2 (pgshunt <= $P2_TARGET x pgbouncer instructions per query, marginal): NOT MET"
	fi
	echo
fi

bench_end
