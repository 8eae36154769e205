#!/usr/bin/env bash
# Start-up, configuration errors, SIGHUP reload, SIGTERM graceful shutdown, SIGINT,
# console RELOAD/SHUTDOWN: each on a pgshunt instance of its own, in front of the
# harness's PostgreSQL (SHUNT_SERVER_PORT).
set -euo pipefail
. tests/integration/lib.sh

fail() {
	echo "FAIL: $*" >&2
	show_logs "$work"/*.log
	exit 1
}

expect_exit() { # expected-status config-file stderr-pattern
	local want=$1 file=$2 pattern=$3 rc=0
	"$shunt_bin" "$file" >"$work/out" 2>&1 || rc=$?
	[ "$rc" = "$want" ] || fail "$file: exit $rc, want $want: $(cat "$work/out")"
	grep -qE -- "$pattern" "$work/out" || fail "$file: output lacks /$pattern/: $(cat "$work/out")"
}

# The first extra line is line 9: the configuration errors below name it.
write_conf() { shunt_conf "$1" "$2" "shutdown_timeout = 20" "${@:3}"; } # file port [extra lines...]

app() { psql -X -qtA "host=127.0.0.1 port=$port dbname=shunt_test user=shunt_trust" "$@"; }
console() {
	PGPASSWORD=admin-secret psql -X -qtA "host=127.0.0.1 port=$port dbname=pgshunt user=shunt_admin" "$@"
}

# --- command line ---
"$shunt_bin" --version | grep -qE '^pgshunt [0-9]+\.[0-9]+\.[0-9]+$' || fail "--version"
"$shunt_bin" --help | grep -q 'Usage: pgshunt' || fail "--help"
rc=0; "$shunt_bin" >/dev/null 2>&1 || rc=$?
[ "$rc" = 2 ] || fail "no config argument: exit $rc, want 2"

# --- configuration errors stop start-up with FILE:LINE: KEY and status 2 ---
port=$(bash "$shunt_harness" freeport)
write_conf "$work/unknown.ini" "$port" "max_clients = 5"
expect_exit 2 "$work/unknown.ini" "unknown.ini:9: max_clients: unknown key"
write_conf "$work/badval.ini" "$port" "max_client_conn = lots"
expect_exit 2 "$work/badval.ini" "badval.ini:9: max_client_conn"
write_conf "$work/range.ini" "$port" "listen_port = 70000"
expect_exit 2 "$work/range.ini" "range.ini:9: listen_port"
printf '[pgshunt]\nlisten_port 6433\n' >"$work/syntax.ini"
expect_exit 2 "$work/syntax.ini" "syntax.ini:2"
expect_exit 2 "$work/missing.ini" "missing.ini"
write_conf "$work/tls.ini" "$port" "client_tls_sslmode = require" "client_tls_cert_file = /nonexistent.crt" \
	"client_tls_key_file = /nonexistent.key"
expect_exit 2 "$work/tls.ini" "nonexistent.crt"

# --- SIGHUP: reloadable keys apply, others are reported and kept, bad files rejected ---
port=$(bash "$shunt_harness" freeport)
conf=$work/reload.ini
write_conf "$conf" "$port" "max_client_conn = 40"
run_pgshunt "$conf" "$work/reload.log" "$port"
[ "$(app -c 'select 42')" = 42 ] || fail "query through the fresh instance"
[ "$(console -c 'SHOW CONFIG' | grep '^max_client_conn|' | cut -d'|' -f2)" = 40 ] || fail "SHOW CONFIG max_client_conn"
write_conf "$conf" "$port" "max_client_conn = 7" "admin_database = other"
kill -HUP "$pid"
sleep 0.5
[ "$(console -c 'SHOW CONFIG' | grep '^max_client_conn|' | cut -d'|' -f2)" = 7 ] || fail "SIGHUP did not apply max_client_conn"
grep -q 'admin_database changed but needs a restart' "$work/reload.log" || fail "no restart warning for admin_database"
echo "max_client_conn = many" >>"$conf"
kill -HUP "$pid"
sleep 0.5
grep -q 'reload rejected' "$work/reload.log" || fail "a bad file on SIGHUP was not rejected"
[ "$(app -c 'select 43')" = 43 ] || fail "sessions after a rejected reload"
write_conf "$conf" "$port" "max_client_conn = 9"
[ "$(console -c 'RELOAD')" = "" ] || true
[ "$(console -c 'SHOW CONFIG' | grep '^max_client_conn|' | cut -d'|' -f2)" = 9 ] || fail "RELOAD did not apply"

# --- SIGTERM: a transaction in progress commits, then the session is closed, then exit ---
table=lifecycle_$$
app -c "CREATE TABLE $table (v int)"
coproc TX { psql -X -qtA "host=127.0.0.1 port=$port dbname=shunt_test user=shunt_trust" 2>&1; }
own_pids+=("$TX_PID")
exec {tx_in}>&"${TX[1]}" {tx_out}<&"${TX[0]}" # bash drops TX[] when psql exits
echo "BEGIN; INSERT INTO $table VALUES (1); SELECT 'in-tx';" >&"$tx_in"
read -r -t 10 line <&"$tx_out" || fail "no answer inside the transaction"
[ "$line" = "in-tx" ] || fail "unexpected answer: $line"
kill -TERM "$pid"
sleep 0.5
kill -0 "$pid" 2>/dev/null || fail "pgshunt exited while a transaction was open"
rc=0; app -c 'select 1' >/dev/null 2>&1 || rc=$?
[ "$rc" != 0 ] || fail "a new client was accepted during shutdown"
# The session ends at its first idle point after COMMIT (a FATAL 57P01 may reach psql
# before or after its client-side \echo): the rows are what must survive.
printf 'INSERT INTO %s VALUES (2); COMMIT;\n\\echo committed\n' "$table" >&"$tx_in"
exec {tx_in}>&- {TX[1]}>&-
out=$(timeout 10 cat <&"$tx_out") || true
grep -q '^committed$' <<<"$out" || fail "COMMIT during shutdown did not complete: $out"
wait_gone "$pid" 10
direct="host=127.0.0.1 port=$SHUNT_SERVER_PORT dbname=shunt_test user=shunt_trust"
[ "$(psql -X -qtA "$direct" -c "SELECT count(*) FROM $table")" = 2 ] || fail "rows of the transaction lost"
psql -X -qtA "$direct" -c "DROP TABLE $table"

# --- console SHUTDOWN and SIGINT ---
port=$(bash "$shunt_harness" freeport)
write_conf "$work/shut.ini" "$port"
run_pgshunt "$work/shut.ini" "$work/shut.log" "$port"
console -c 'SHUTDOWN' >/dev/null 2>&1 || true
wait_gone "$pid" 10
port=$(bash "$shunt_harness" freeport)
write_conf "$work/int.ini" "$port"
run_pgshunt "$work/int.ini" "$work/int.log" "$port"
kill -INT "$pid"
wait_gone "$pid" 5
echo "lifecycle: ok"
