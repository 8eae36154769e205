# Shared by the benchmark scripts (bench/*.sh); sourced, not run.
#
#   BENCH_NAME=p4; . bench/lib.sh
#   bench_int P4_SECONDS "$SECONDS_PER_RUN"; bench_require pgbench psql "$PY"
#   bench_begin bench/results/p4.txt
#   bench_header "pgshunt benchmark P4"
#   ...
#   bench_end
#
# The checks (bench_int, bench_bool, bench_require...) come before bench_begin, so that
# a wrong knob or a missing tool stops the script before it starts anything.
# bench_begin makes $TMP, installs the traps that stop, on exit, failure or interruption,
# every process recorded in PIDS (by PID) and the PostgreSQL started by pg_start, and
# sends stdout and stderr to the terminal and to the results file; bench_end writes the
# results file, only then, so that an interrupted run leaves the previous results alone.
#
# Needs PGBIN and PY set by the caller.

die() {
	echo "$BENCH_NAME: $*" >&2
	exit 1
}

# bench_int KNOB VALUE [MIN]: die unless VALUE is a whole number >= MIN (1, or 0).
bench_int() {
	if [ "${3:-1}" = 0 ]; then
		[[ $2 =~ ^[0-9]+$ ]] || die "$1 must be a non-negative integer, not '$2'"
	else
		[[ $2 =~ ^[1-9][0-9]*$ ]] || die "$1 must be a positive integer, not '$2'"
	fi
}

# bench_bool KNOB VALUE: die unless VALUE is 0 or 1.
bench_bool() {
	[[ $2 =~ ^[01]$ ]] || die "$1 must be 0 or 1, not '$2'"
}

# bench_require CMD...: die unless ./pgshunt is built, $PGBIN holds PostgreSQL and every
# CMD is found.
bench_require() {
	local c
	[ -x ./pgshunt ] || die "./pgshunt not found: build it first (make)"
	[ -x "$PGBIN/initdb" ] || die "PostgreSQL 15 not found in $PGBIN"
	for c in "$@"; do
		command -v "$c" >/dev/null || die "$c not found"
	done
}

# bench_require_psycopg: die unless $PY can import psycopg.
bench_require_psycopg() {
	"$PY" -c 'import psycopg' 2>/dev/null || die "$PY cannot import psycopg (python3-psycopg, tests/install-deps.sh)"
}

# bench_readable FILE...: die unless every FILE can be read.
bench_readable() {
	local f
	for f in "$@"; do
		[ -r "$f" ] || die "$f not found"
	done
}

as_pg() {
	if [ "$(id -u)" = 0 ]; then
		runuser -u postgres -- "$@"
	else
		"$@"
	fi
}

alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }

# stop_pid PID SIGNAL SECONDS: signal it, wait, then SIGKILL.
stop_pid() {
	local pid=$1 sig=$2 secs=$3 i
	alive "$pid" || return 0
	kill "-$sig" "$pid" 2>/dev/null || true
	for ((i = 0; i < secs * 10; i++)); do
		alive "$pid" || break
		sleep 0.1
	done
	if alive "$pid"; then
		echo "$BENCH_NAME: pid $pid did not stop after SIG$sig, killing it" >&2
		kill -KILL "$pid" 2>/dev/null || true
	fi
	wait "$pid" 2>/dev/null || true
}

# stop_named NAME [SIGNAL [SECONDS]]: stop what PIDS[NAME] started and forget it.
stop_named() {
	local name=$1 sig=${2:-TERM} secs=${3:-15}
	[ -n "${PIDS[$name]:-}" ] || return 0
	stop_pid "${PIDS[$name]}" "$sig" "$secs"
	unset "PIDS[$name]"
}

postmaster_pid() {
	local f=$TMP/data/postmaster.pid
	if [ -r "$f" ]; then
		head -n1 "$f" | grep -E '^[0-9]+$' || true
	fi
}

bench_cleanup() {
	local rc=$? name pid
	trap - EXIT INT TERM HUP
	# Proxies first: each removes its row from pgshunt.proxies on the way out.
	for name in "${!PIDS[@]}"; do
		stop_pid "${PIDS[$name]}" TERM 15
	done
	if [ "$PG_STARTED" = 1 ]; then
		pid=$(postmaster_pid)
		if ! as_pg "$PGBIN/pg_ctl" -D "$TMP/data" -m fast -w -t 30 stop >/dev/null 2>&1; then
			[ -n "$pid" ] && stop_pid "$pid" INT 20
		fi
	fi
	if [ -n "${TEE_PID:-}" ]; then
		exec 1>&4 2>&3
		wait "$TEE_PID" 2>/dev/null || true
	fi
	rm -rf -- "$TMP"
	exit "$rc"
}

# bench_begin RESULTS_FILE
bench_begin() {
	TMP=$(mktemp -d "/tmp/pgshunt-$BENCH_NAME.XXXXXX")
	PG_STARTED=0
	declare -gA PIDS=()
	trap bench_cleanup EXIT
	trap 'exit 130' INT
	trap 'exit 143' TERM
	trap 'exit 129' HUP
	mkdir -p "$(dirname "$1")"
	RESULTS=$1
	PARTIAL=$TMP/$(basename "$1")
	exec 3>&2 4>&1
	exec > >(tee "$PARTIAL") 2>&1
	TEE_PID=$!
	USED_PORTS=" "
}

# bench_end: the closing lines, then the results file written from the whole output
# (the tee is flushed by closing our end of it first: a process still running must not
# hold the terminal's stdout, or this waits for it).
bench_end() {
	echo "loadavg at end: $(cut -d' ' -f1-3 /proc/loadavg)"
	echo "# done $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
	exec 1>&4 2>&3
	wait "$TEE_PID" 2>/dev/null || true
	TEE_PID=
	cp "$PARTIAL" "$RESULTS"
	echo "$BENCH_NAME: results written to $RESULTS"
}

# freeport VAR: set VAR to a TCP port free on 127.0.0.1 and not handed out before.
freeport() {
	local p
	while :; do
		p=$("$PY" -c 'import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
		[[ $USED_PORTS == *" $p "* ]] || break
	done
	USED_PORTS+="$p "
	printf -v "$1" '%s' "$p"
}

# sql PORT DB SQL...: run statements as postgres, tuples only, stop at the first error.
sql() {
	local port=$1 db=$2
	shift 2
	local args=() s
	for s in "$@"; do args+=(-c "$s"); done
	psql -X -qAt -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres -d "$db" "${args[@]}"
}

median() { # numbers on stdin (FAIL lines ignored) -> median, or FAIL
	grep -E '^[0-9.]+$' | sort -g | awk '{v[NR] = $1}
		END { if (NR == 0) print "FAIL";
		      else if (NR % 2) printf "%.1f\n", v[(NR + 1) / 2];
		      else printf "%.1f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

ratio() { # A B -> A/B with 2 decimals, or n/a
	awk -v a="$1" -v b="$2" 'BEGIN { if (a + 0 > 0 && b + 0 > 0) printf "%.2f\n", a / b; else print "n/a" }'
}

# bench_header TITLE: the first lines of every results file: "# TITLE — <date>", then
# machine_info (the caller adds its own tools and settings).
bench_header() {
	echo "# $1 — $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
	echo
	machine_info
}

# machine_info: the machine part of the header every result file starts with.
machine_info() {
	echo "## Machine"
	echo "host:        $(uname -n) ($(uname -srm))"
	echo "os:          $(sed -n 's/^PRETTY_NAME="\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' /etc/os-release)"
	echo "cpu:         $(lscpu | sed -n 's/^Model name: *//p' | head -n1), nproc=$(nproc)$(lscpu | grep -q '^Hypervisor vendor' && echo ", virtualised ($(lscpu | sed -n 's/^Hypervisor vendor: *//p'))")"
	echo "memory:      $(free -m | awk '/^Mem:/ {print $2 " MiB"}')"
	echo "loadavg:     $(cut -d' ' -f1-3 /proc/loadavg) (at start)"
	echo "pgshunt:     $(./pgshunt --version 2>&1 | head -n1), git $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD 2>/dev/null || echo ' (+ uncommitted changes)')"
	echo "pgshunt bin: $(stat -c '%s bytes, built %y' ./pgshunt | cut -d. -f1)"
	echo "postgres:    $("$PGBIN/postgres" --version)"
}

# pg_start PORT_VAR < EXTRA_CONF: initdb in $TMP/data (trust on 127.0.0.1 and the
# socket in $TMP), append the lines on stdin to postgresql.conf, start it.
pg_start() {
	local port
	[ "$(id -u)" = 0 ] && chown postgres: "$TMP"
	chmod 0755 "$TMP"
	freeport "$1"
	port=${!1}
	as_pg "$PGBIN/initdb" -D "$TMP/data" -U postgres -A trust -E UTF8 --locale=C.UTF-8 --no-sync \
		>"$TMP/initdb.log" 2>&1 || {
		cat "$TMP/initdb.log"
		die "initdb failed"
	}
	{
		echo
		echo "# --- pgshunt bench $BENCH_NAME ---"
		echo "listen_addresses = '127.0.0.1'"
		echo "port = $port"
		echo "unix_socket_directories = '$TMP'"
		cat
	} >>"$TMP/data/postgresql.conf"
	cat >"$TMP/data/pg_hba.conf" <<-EOF
		local all all               trust
		host  all all 127.0.0.1/32  trust
	EOF
	as_pg touch "$TMP/postgres.log"
	PG_STARTED=1
	as_pg "$PGBIN/pg_ctl" -D "$TMP/data" -l "$TMP/postgres.log" -w -t 60 start >"$TMP/pg_ctl.log" 2>&1 || {
		cat "$TMP/pg_ctl.log" "$TMP/postgres.log"
		die "PostgreSQL did not start"
	}
}

# ingest_db DB [SEED]: create DB from tests/fixtures/ingest_schema.sql in the PostgreSQL
# of pg_start, with SEED rows in ingest_idempotency (seed_ingest_idempotency) if given.
ingest_db() {
	sql "$PGPORT_" postgres "CREATE DATABASE $1"
	psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PGPORT_" -U postgres -d "$1" \
		-f tests/fixtures/ingest_schema.sql >"$TMP/schema-$1.log" 2>&1 || {
		cat "$TMP/schema-$1.log"
		die "tests/fixtures/ingest_schema.sql failed in $1"
	}
	if [ -n "${2:-}" ]; then
		sql "$PGPORT_" "$1" "SELECT seed_ingest_idempotency($2)" >/dev/null
	fi
}

# shunt_ini FILE PORT [LINE...]: a pgshunt configuration listening on 127.0.0.1:PORT in
# front of the PostgreSQL of pg_start, plus LINEs.
shunt_ini() {
	local file=$1 port=$2 line
	shift 2
	{
		echo "[pgshunt]"
		echo "listen_addr = 127.0.0.1"
		echo "listen_port = $port"
		echo "server_host = 127.0.0.1"
		echo "server_port = $PGPORT_"
		echo "server_tls_sslmode = disable"
		for line in "$@"; do echo "$line"; done
	} >"$file"
}

# wait_up NAME PORT CMD...: wait until CMD succeeds (30 s at most) while the process
# PIDS[NAME] starts; if it exits first or nothing answers, show the end of its output
# ($TMP/NAME.out, $TMP/NAME.log) and die.
wait_up() {
	local name=$1 port=$2 i
	shift 2
	for ((i = 0; i < 300; i++)); do
		"$@" >/dev/null 2>&1 && return 0
		alive "${PIDS[$name]}" || break
		sleep 0.1
	done
	tail -n 20 "$TMP/$name.out" "$TMP/$name.log" 2>/dev/null || true
	alive "${PIDS[$name]}" || die "$name exited during start-up"
	die "$name on port $port does not answer"
}

# console_retry NAME OUT CMD...: retry CMD, a command on the console of PIDS[NAME] whose
# last argument is the command's text, for 15 s until it succeeds (the control
# connection comes up asynchronously); its output goes to OUT.  If it keeps failing,
# show OUT and the end of $TMP/NAME.log and die.
console_retry() {
	local name=$1 out=$2 i
	shift 2
	for ((i = 0; i < 150; i++)); do
		"$@" >"$out" 2>&1 && return 0
		sleep 0.1
	done
	cat "$out"
	tail -n 20 "$TMP/$name.log"
	die "${*: -1} on $name's console failed"
}

# log_errors NAME: the errors and sanitizer reports in $TMP/NAME.log (the last ten), if any.
log_errors() {
	if grep -qiE 'level=(error|fatal)|Sanitizer' "$TMP/$1.log"; then
		echo "# $1 logged errors:"
		grep -iE 'level=(error|fatal)|Sanitizer' "$TMP/$1.log" | tail -n 10 | sed 's/^/#   /'
	fi
}
