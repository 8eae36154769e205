#!/bin/bash
# psql through PGHOST/PGPORT: simple queries and command tags, \copy in and out,
# startup parameters (options, client_encoding, application_name), an error's SQLSTATE,
# a multi-statement string, LISTEN/NOTIFY between two sessions, Ctrl-C,
# TLS verify-full (and a wrong CA), the unix socket, and the scram-sha-256, md5 and
# password users.
# Needs the environment of tests/integration/run.sh.
set -euo pipefail

: "${PGHOST:?}" "${PGPORT:?}" "${PGDATABASE:?}" "${SHUNT_CA_FILE:?}"
export PGUSER=shunt_trust PGCONNECT_TIMEOUT=10
unset PGPASSWORD
. tests/integration/lib.sh

table="t_psql_$$_$RANDOM"
listener_pid=""
cancel_pid=""

cleanup() {
	local p
	for p in $listener_pid $cancel_pid; do
		kill "$p" 2>/dev/null || true
		wait "$p" 2>/dev/null || true
	done
	psql -X -q -c "DROP TABLE IF EXISTS $table" >/dev/null 2>&1 || true
}
trap 'cleanup; lib_cleanup' EXIT

# q SQL...: run with psql, unaligned, tuples only, stop on error.
q() { psql -X -At -v ON_ERROR_STOP=1 "$@"; }

# --- simple queries and command tags ---
expect_eq "SELECT 1+1" "$(q -c 'SELECT 1+1')" 2
expect_eq "current_user" "$(q -c 'SELECT current_user')" shunt_trust
expect_eq "CREATE TABLE tag" "$(q -c "CREATE TABLE $table (id int PRIMARY KEY, v text)")" "CREATE TABLE"
expect_eq "INSERT tag" "$(q -c "INSERT INTO $table VALUES (1, 'a'), (2, 'b'), (3, 'c')")" "INSERT 0 3"
expect_eq "UPDATE tag" "$(q -c "UPDATE $table SET v = v || 'x' WHERE id >= 2")" "UPDATE 2"
expect_eq "DELETE tag" "$(q -c "DELETE FROM $table WHERE id = 3")" "DELETE 1"
expect_eq "rows" "$(q -F, -c "SELECT id, v FROM $table ORDER BY id")" $'1,a\n2,bx'
expect_eq "unicode" "$(q -c "SELECT 'h€llo ☃' || chr(9731)")" 'h€llo ☃☃'
ok "simple queries"

# --- startup parameters reach the server as they are ---
expect_eq "options (-c)" "$(q "options='-c statement_timeout=1234 -c search_path=pg_catalog,public'" \
	-c 'SHOW statement_timeout' -c 'SHOW search_path')" $'1234ms\npg_catalog,public'
expect_eq "client_encoding" "$(PGCLIENTENCODING=LATIN1 q -c 'SHOW client_encoding' \
	-c "SELECT convert_to(chr(233), 'UTF8') = '\\xc3a9'::bytea")" $'LATIN1\nt'
expect_eq "application_name" "$(PGAPPNAME=shunt-psql-$$ q -c 'SELECT application_name FROM
	pg_stat_activity WHERE pid = pg_backend_pid()')" "shunt-psql-$$"
ok "startup parameters"

# --- \copy in and out ---
seq 10 1009 | awk '{ printf "%d,row %d\n", $1, $1 }' >"$work/in.csv"
out=$(q -c "\\copy $table (id, v) FROM '$work/in.csv' WITH (FORMAT csv)")
expect_eq "\\copy in tag" "$out" "COPY 1000"
expect_eq "count after \\copy in" "$(q -c "SELECT count(*) FROM $table")" 1002
out=$(q -c "\\copy (SELECT id, v FROM $table WHERE id >= 10 ORDER BY id) TO '$work/out.csv' WITH (FORMAT csv)")
expect_eq "\\copy out tag" "$out" "COPY 1000"
expect_eq "\\copy out lines" "$(wc -l <"$work/out.csv")" 1000
cmp -s "$work/in.csv" "$work/out.csv" || fail "\\copy out does not match what was copied in"
# COPY TO STDOUT of a big result (several MB) in one go.
expect_eq "big COPY TO STDOUT" \
	"$(q -c "COPY (SELECT g, repeat('x', 100) FROM generate_series(1, 50000) g) TO STDOUT" | wc -l)" 50000
ok "\\copy in and out"

# --- an error with its SQLSTATE ---
rc=0
out=$(q -c '\set VERBOSITY verbose' -c "INSERT INTO $table VALUES (1, 'dup')" 2>&1) || rc=$?
[ "$rc" -ne 0 ] || fail "duplicate insert succeeded"
case $out in
*"ERROR:  23505: duplicate key value violates unique constraint"*) ;;
*) fail "duplicate insert: no SQLSTATE 23505 in: $out" ;;
esac
rc=0
out=$(q -c '\set VERBOSITY verbose' -c "SELECT * FROM no_such_table_$$" 2>&1) || rc=$?
[ "$rc" -ne 0 ] || fail "select from a missing table succeeded"
case $out in
*"ERROR:  42P01: relation \"no_such_table_$$\" does not exist"*) ;;
*) fail "missing table: no SQLSTATE 42P01 in: $out" ;;
esac
ok "errors with SQLSTATE"

# --- a multi-statement string (one simple Query message) ---
out=$(q -c "INSERT INTO $table VALUES (2000, 'm1'); INSERT INTO $table VALUES (2001, 'm2'); SELECT count(*) FROM $table WHERE id >= 2000")
expect_eq "multi-statement result" "$out" $'INSERT 0 1\nINSERT 0 1\n2'
expect_eq "multi-statement selects" "$(q -c 'SELECT 1; SELECT 2; SELECT 3')" $'1\n2\n3'
# An error in the middle rolls back the whole implicit transaction.
rc=0
out=$(q -c "INSERT INTO $table VALUES (2002, 'm3'); SELECT 1/0; INSERT INTO $table VALUES (2003, 'm4')" 2>&1) || rc=$?
[ "$rc" -ne 0 ] || fail "multi-statement string with 1/0 succeeded"
case $out in *"division by zero"*) ;; *) fail "multi-statement error: $out" ;; esac
expect_eq "multi-statement rollback" "$(q -c "SELECT count(*) FROM $table WHERE id >= 2000")" 2
ok "multi-statement strings"

# --- LISTEN/NOTIFY between two sessions ---
channel="ch_psql_$$"
app="listener_$$_$RANDOM"
mkfifo "$work/fifo"
PGAPPNAME=$app psql -X -At <"$work/fifo" >"$work/listener.out" 2>&1 &
listener_pid=$!
exec 3>"$work/fifo"
echo "LISTEN $channel;" >&3
# Wait until the listener has run LISTEN (it is idle with LISTEN as its last query).
for ((i = 0; ; i++)); do
	n=$(q -c "SELECT count(*) FROM pg_stat_activity WHERE application_name = '$app' AND state = 'idle' AND query LIKE 'LISTEN%'")
	[ "$n" = 1 ] && break
	((i < 100)) || fail "the listener session did not LISTEN within 10 s: $(cat "$work/listener.out")"
	sleep 0.1
done
expect_eq "NOTIFY tag" "$(q -c "NOTIFY $channel, 'hello $$'")" NOTIFY
echo "SELECT 'listener done';" >&3
exec 3>&-
wait_gone "$listener_pid" 10 "the listener psql did not exit"
wait "$listener_pid" || fail "the listener psql failed: $(cat "$work/listener.out")"
listener_pid=""
grep -q "^Asynchronous notification \"$channel\" with payload \"hello $$\" received from server process with PID [0-9]*\.$" \
	"$work/listener.out" || fail "no notification in the listener's output: $(cat "$work/listener.out")"
grep -q "^listener done$" "$work/listener.out" || fail "listener output: $(cat "$work/listener.out")"
ok "LISTEN/NOTIFY"

# --- Ctrl-C: psql sends a CancelRequest for the query it runs ---
psql -X -At -v VERBOSITY=verbose -c "SELECT pg_sleep(30)" >"$work/cancel.out" 2>&1 &
cancel_pid=$!
# Wait until the query runs on the server, then interrupt psql as Ctrl-C would.
for ((i = 0; i < 100; i++)); do
	[ "$(q -c "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)'
		AND state = 'active'")" = 1 ] && break
	sleep 0.1
done
kill -INT "$cancel_pid"
wait_gone "$cancel_pid" 10 "psql still runs 10 s after its Ctrl-C"
rc=0
wait "$cancel_pid" || rc=$?
cancel_pid=""
[ "$rc" -ne 0 ] || fail "the cancelled query succeeded: $(cat "$work/cancel.out")"
grep -q "ERROR:  57014: canceling statement due to user request" "$work/cancel.out" ||
	fail "Ctrl-C: no 57014 in: $(cat "$work/cancel.out")"
ok "Ctrl-C cancels the query (57014)"

# --- TLS ---
tls="host=localhost port=$PGPORT dbname=$PGDATABASE user=shunt_trust"
expect_eq "verify-full" "$(q "$tls sslmode=verify-full sslrootcert=$SHUNT_CA_FILE" -c 'SELECT 42')" 42
openssl req -x509 -new -newkey rsa:2048 -nodes -days 1 -subj "/CN=wrong CA" \
	-keyout "$work/wrong.key" -out "$work/wrong.crt" >/dev/null 2>&1 || fail "openssl could not make a CA"
rc=0
out=$(q "$tls sslmode=verify-full sslrootcert=$work/wrong.crt" -c 'SELECT 42' 2>&1) || rc=$?
[ "$rc" -ne 0 ] || fail "verify-full with a wrong CA succeeded"
case $out in *"certificate verify failed"*) ;; *) fail "verify-full with a wrong CA: $out" ;; esac
# 127.0.0.1 is in the certificate's SAN too.
expect_eq "verify-full by IP" \
	"$(q "host=127.0.0.1 port=$PGPORT dbname=$PGDATABASE user=shunt_trust sslmode=verify-full sslrootcert=$SHUNT_CA_FILE" -c 'SELECT 43')" 43
expect_eq "sslmode=disable" "$(q "$tls sslmode=disable" -c 'SELECT 44')" 44
ok "TLS verify-full"

# --- the unix socket (unix_socket_dir; the harness's server has its socket there too) ---
sock="host=${SHUNT_DIR:?} port=$PGPORT dbname=$PGDATABASE"
expect_eq "over the unix socket" "$(q "$sock user=shunt_trust" -c 'SELECT current_user')" shunt_trust
expect_eq "SCRAM over the unix socket" \
	"$(PGPASSWORD=scram-secret q "$sock user=shunt_scram" -c 'SELECT current_user')" shunt_scram
if [ "$SHUNT_MODE" = proxy ]; then
	# The server's own socket trusts every role; through pgshunt the password counts.
	out=$(PGPASSWORD=wrong q "$sock user=shunt_scram" -c 'SELECT 1' 2>&1) &&
		fail "a wrong password over the unix socket succeeded"
	case $out in *"password authentication failed"*) ;; *) fail "wrong password over the socket: $out" ;; esac
fi
ok "the unix socket"

# --- password users ---
check_user() { # user right-password method
	local user=$1 pw=$2 out rc=0
	out=$(PGPASSWORD=$pw q -U "$user" -c 'SELECT current_user' 2>&1) || fail "$user with the right password: $out"
	expect_eq "$user login" "$out" "$user"
	out=$(PGPASSWORD=$pw q "sslmode=require" -U "$user" -c 'SELECT current_user' 2>&1) ||
		fail "$user with the right password over TLS: $out"
	expect_eq "$user login over TLS" "$out" "$user"
	out=$(PGPASSWORD=wrong-$pw q -U "$user" -c 'SELECT current_user' 2>&1) || rc=$?
	[ "$rc" -ne 0 ] || fail "$user with a wrong password succeeded"
	case $out in
	*"password authentication failed for user \"$user\""*) ;;
	*) fail "$user with a wrong password: $out" ;;
	esac
	ok "$user login"
}
check_user shunt_scram scram-secret
check_user shunt_md5 md5-secret
check_user shunt_plain plain-secret
check_user shunt_admin admin-secret
# The password is really needed.
rc=0
out=$(PGPASSFILE=/dev/null q -w -U shunt_scram -c 'SELECT 1' 2>&1) || rc=$?
[ "$rc" -ne 0 ] || fail "shunt_scram without a password succeeded"

# --- the session survives a long-ish result and keeps its state ---
out=$(q -c "SET application_name = 'psql_state_$$'" -c "SHOW application_name" -c "SELECT count(*) FROM generate_series(1, 200000)")
expect_eq "session state" "$out" $'SET\npsql_state_'$$$'\n200000'
ok "session state"

echo "test_psql: all ok"
