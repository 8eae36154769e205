#!/bin/bash
# Integration tests: a throwaway PostgreSQL 15, pgshunt in front of it, and every
# tests/integration/test_*.sh and tests/drivers/*/run.sh run against pgshunt.
#
#   bash tests/integration/run.sh [--direct] [-v] [NAME...]
#
#   --direct     no pgshunt: the tests talk to PostgreSQL itself (checks the tests)
#   -v           show the output of the tests that pass too
#   NAME...      run only the tests whose name contains one of these words
#
# Environment: PGSHUNT_BIN (default ./pgshunt, e.g. an ASan build),
# SHUNT_TEST_TIMEOUT (seconds per test, default 300).
# Ends with "N passed, N failed"; exits 1 if any test failed.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"

mode=proxy
verbose=0
filters=()
for arg in "$@"; do
	case $arg in
	--direct) mode=direct ;;
	-v | --verbose) verbose=1 ;;
	-h | --help)
		sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
		exit 0
		;;
	-*)
		echo "run.sh: unknown option $arg" >&2
		exit 2
		;;
	*) filters+=("$arg") ;;
	esac
done

test_timeout=${SHUNT_TEST_TIMEOUT:-300}
pgshunt_bin=${PGSHUNT_BIN:-./pgshunt}
pgserver=$root/tests/harness/pgserver.sh

dir=""
proxy_pid=""
test_pid=""
server_started=0

# Stop a process we started: SIGTERM, wait up to $2 seconds, then SIGKILL.
stop_process() {
	local pid=$1 secs=$2 i
	[ -n "$pid" ] || return 0
	kill -TERM "$pid" 2>/dev/null || return 0
	for ((i = 0; i < secs * 10; i++)); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	if kill -0 "$pid" 2>/dev/null; then
		echo "run.sh: process $pid did not stop within $secs s, killing it" >&2
		kill -KILL "$pid" 2>/dev/null || true
	fi
	wait "$pid" 2>/dev/null || true
}

cleanup() {
	local rc=$?
	trap - EXIT INT TERM HUP
	set +e
	# A test still running (interrupted): timeout(1) passes the signal to its process group.
	stop_process "$test_pid" 15
	test_pid=""
	stop_process "$proxy_pid" 15
	proxy_pid=""
	if [ -n "$dir" ]; then
		if [ "$server_started" = 1 ] || [ -e "$dir/data" ]; then
			bash "$pgserver" stop "$dir" || rc=1
		fi
		rm -rf -- "$dir"
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'echo "run.sh: interrupted" >&2; exit 130' INT
trap 'echo "run.sh: terminated" >&2; exit 143' TERM HUP

if [ "$mode" = proxy ]; then
	case $pgshunt_bin in /*) ;; *) pgshunt_bin=$root/${pgshunt_bin#./} ;; esac
	if [ ! -x "$pgshunt_bin" ]; then
		echo "run.sh: $pgshunt_bin not found or not executable (run make first, or use --direct)" >&2
		exit 1
	fi
fi

dir=$(mktemp -d "${TMPDIR:-/tmp}/pgshunt-it.XXXXXX")
server_started=1
bash "$pgserver" start "$dir"
# shellcheck disable=SC1091
. "$dir/env"

print_log_tail() {
	if [ -s "$dir/pgshunt.log" ]; then
		echo "--- tail of pgshunt.log ---"
		tail -n 40 "$dir/pgshunt.log"
	fi
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

if [ "$mode" = proxy ]; then
	proxy_port=$(bash "$pgserver" freeport)
	cat >"$dir/pgshunt.ini" <<-EOF
		[pgshunt]
		listen_addr = 127.0.0.1
		listen_port = $proxy_port
		unix_socket_dir = $dir
		server_host = 127.0.0.1
		server_port = $PGSERVER_PORT
		control_dsn = host=127.0.0.1 port=$PGSERVER_PORT dbname=shunt_test user=shunt_admin password=admin-secret
		admin_users = shunt_admin
		admin_database = pgshunt
		max_client_conn = 40
		client_login_timeout = 3
		max_message_size = 4MB
		log_level = debug
		client_tls_sslmode = prefer
		client_tls_cert_file = $SERVER_CERT
		client_tls_key_file = $SERVER_KEY
		server_tls_sslmode = verify-full
		server_tls_ca_file = $CA_FILE
	EOF
	"$pgshunt_bin" "$dir/pgshunt.ini" >>"$dir/pgshunt.log" 2>&1 &
	proxy_pid=$!
	for ((i = 0; ; i++)); do
		if ! kill -0 "$proxy_pid" 2>/dev/null; then
			rc=0
			wait "$proxy_pid" || rc=$?
			proxy_pid=""
			echo "run.sh: pgshunt exited with status $rc before accepting connections" >&2
			print_log_tail >&2
			exit 1
		fi
		port_open "$proxy_port" && break
		if ((i >= 100)); then
			echo "run.sh: pgshunt did not accept connections on 127.0.0.1:$proxy_port within 10 s" >&2
			print_log_tail >&2
			exit 1
		fi
		sleep 0.1
	done
	echo "run.sh: pgshunt (pid $proxy_pid) on 127.0.0.1:$proxy_port -> PostgreSQL on 127.0.0.1:$PGSERVER_PORT"
	test_port=$proxy_port
else
	echo "run.sh: direct mode, tests talk to PostgreSQL on 127.0.0.1:$PGSERVER_PORT"
	test_port=$PGSERVER_PORT
fi

# The tests' environment; nothing of the caller's libpq settings leaks in.
unset PGUSER PGPASSWORD PGPASSFILE PGSERVICE PGSERVICEFILE PGHOSTADDR PGSSLMODE \
	PGSSLROOTCERT PGSSLCERT PGSSLKEY PGOPTIONS PGAPPNAME PGCHANNELBINDING PGTARGETSESSIONATTRS \
	PGREQUIRESSL PGGSSENCMODE
export PGHOST=127.0.0.1 PGPORT=$test_port PGDATABASE=shunt_test
export SHUNT_SERVER_PORT=$PGSERVER_PORT SHUNT_CA_FILE=$CA_FILE SHUNT_ADMIN_DB=pgshunt
export SHUNT_DIR=$dir SHUNT_PROXY_PID=$proxy_pid SHUNT_MODE=$mode

tests=()
for t in tests/integration/test_*.sh tests/drivers/*/run.sh; do
	[ -f "$t" ] || continue
	if [ ${#filters[@]} -gt 0 ]; then
		match=0
		for f in "${filters[@]}"; do
			case $t in *"$f"*) match=1 ;; esac
		done
		[ "$match" = 1 ] || continue
	fi
	tests+=("$t")
done

passed=0
failed=0
for t in "${tests[@]}"; do
	name=${t#tests/}
	out=$dir/test.out
	start=$SECONDS
	# In the background so that a signal to run.sh is handled at once; timeout(1) puts
	# the test in its own process group and kills all of it when the time is up.
	timeout -k 10 "$test_timeout" bash "$t" >"$out" 2>&1 </dev/null &
	test_pid=$!
	rc=0
	wait "$test_pid" || rc=$?
	test_pid=""
	secs=$((SECONDS - start))
	if [ "$rc" -eq 0 ]; then
		passed=$((passed + 1))
		printf 'ok   %s (%ds)\n' "$name" "$secs"
		if [ "$verbose" = 1 ]; then
			sed 's/^/    /' "$out"
		fi
	else
		failed=$((failed + 1))
		why="exit status $rc"
		if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
			why="timed out after ${test_timeout}s"
		fi
		printf 'FAIL %s (%ds, %s)\n' "$name" "$secs" "$why"
		echo "--- output of $name ---"
		tail -n 100 "$out"
		if [ "$mode" = proxy ]; then
			print_log_tail
		fi
	fi
	if [ -n "$proxy_pid" ] && ! kill -0 "$proxy_pid" 2>/dev/null; then
		rc=0
		wait "$proxy_pid" || rc=$?
		proxy_pid=""
		echo "run.sh: pgshunt exited (status $rc) during $name"
		print_log_tail
	fi
done

# pgshunt itself must still be up and stop cleanly on SIGTERM (an ASan build reports
# leaks and errors at exit).
if [ "$mode" = proxy ]; then
	if [ -z "$proxy_pid" ]; then
		failed=$((failed + 1))
		echo "FAIL pgshunt exited during the run"
		print_log_tail
	else
		kill -TERM "$proxy_pid" 2>/dev/null || true
		for ((i = 0; i < 150; i++)); do
			kill -0 "$proxy_pid" 2>/dev/null || break
			sleep 0.1
		done
		if kill -0 "$proxy_pid" 2>/dev/null; then
			kill -KILL "$proxy_pid" 2>/dev/null || true
			wait "$proxy_pid" 2>/dev/null || true
			proxy_pid=""
			failed=$((failed + 1))
			echo "FAIL pgshunt shutdown (did not exit within 15 s of SIGTERM)"
			print_log_tail
		else
			rc=0
			wait "$proxy_pid" || rc=$?
			proxy_pid=""
			if [ "$rc" -eq 0 ] && ! grep -q -e "ERROR: AddressSanitizer" -e "ERROR: LeakSanitizer" -e "ThreadSanitizer" \
				-e "runtime error:" "$dir/pgshunt.log"; then
				passed=$((passed + 1))
				echo "ok   pgshunt shutdown"
			else
				failed=$((failed + 1))
				echo "FAIL pgshunt shutdown (exit status $rc)"
				print_log_tail
			fi
		fi
	fi
fi

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ] || exit 1
