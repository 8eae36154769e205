#!/bin/bash
# Replication connections through PGHOST/PGPORT, as backup and change-data-capture tools
# open them:
#   - pg_basebackup -X stream: BASE_BACKUP's COPY out on one connection and the WAL
#     stream (COPY both ways, ended by the client's CopyDone) on another; the backup
#     must pass pg_verifybackup (its manifest's checksums and the WAL it needs) and
#     carry the server's system identifier;
#   - a logical replication connection (replication=database): IDENTIFY_SYSTEM and SQL;
#   - pg_recvlogical with test_decoding up to an end LSN, through pgshunt and directly
#     from a second slot made at the same point: the two outputs must be the same bytes,
#     and hold every row inserted;
#   - a replication command that fails gets the server's SQLSTATE, and the session goes
#     on;
#   - a stream holds nothing back (a pgshunt of the test's own, with a control
#     connection): SHOW CLIENTS says `streaming`, SET PHASE and PAUSE complete while it
#     runs, the stream carries the changes made meanwhile, SQL on a replication
#     connection is mirrored in dual_write like any other, and SIGTERM ends the stream
#     at once (FATAL 57P01) instead of waiting shutdown_timeout for it.
# Needs the environment of tests/integration/run.sh (wal_level = logical, and a
# replication line for shunt_admin in pg_hba.conf).
set -euo pipefail

: "${PGHOST:?}" "${PGPORT:?}" "${PGDATABASE:?}" "${SHUNT_SERVER_PORT:?}"
export PGUSER=shunt_admin PGPASSWORD=admin-secret PGCONNECT_TIMEOUT=10
. tests/integration/lib.sh

pgbin=${PGBIN:-/usr/lib/postgresql/15/bin}
slot_shunt="shunt_repl_a_$$"
slot_direct="shunt_repl_b_$$"
slot_own="shunt_repl_c_$$"
recv_pid=
table="t_repl_$$"
direct_db="host=127.0.0.1 port=$SHUNT_SERVER_PORT dbname=$PGDATABASE"

cleanup() {
	# An active slot cannot be dropped, nor the database of a slot.
	if [ -n "$recv_pid" ]; then
		kill "$recv_pid" 2>/dev/null || true
		wait "$recv_pid" 2>/dev/null || true
	fi
	psql -X -q "$shunt_admin dbname=shunt_test" -c "SELECT pg_drop_replication_slot(slot_name)
		FROM pg_replication_slots WHERE slot_name IN ('$slot_shunt', '$slot_direct', '$slot_own')" \
		>/dev/null 2>&1 || true
	psql -X -q "$shunt_admin dbname=shunt_test" -c "DROP TABLE IF EXISTS $table" \
		>/dev/null 2>&1 || true
}
trap 'cleanup; lib_cleanup' EXIT

q() { psql -X -At -v ON_ERROR_STOP=1 "$@"; }

sysid=$(q -c "SELECT system_identifier FROM pg_control_system()")
[ -n "$sysid" ] || fail "no system identifier"

# --- physical: a base backup with its WAL streamed alongside ---
rc=0
timeout 120 pg_basebackup -D "$work/base" -X stream -c fast --no-sync \
	>"$work/basebackup.out" 2>&1 || rc=$?
[ "$rc" -eq 0 ] || fail "pg_basebackup exited with $rc: $(cat "$work/basebackup.out")"
rc=0
"$pgbin/pg_verifybackup" "$work/base" >"$work/verify.out" 2>&1 || rc=$?
[ "$rc" -eq 0 ] || fail "pg_verifybackup of the backup taken through pgshunt: $(cat "$work/verify.out")"
got=$("$pgbin/pg_controldata" "$work/base" | sed -n 's/^Database system identifier: *//p')
expect_eq "system identifier of the backup" "$got" "$sysid"
ok "pg_basebackup -X stream: the backup verifies ($(du -sk "$work/base" | cut -f1) kB)"
rm -rf "$work/base"

# --- logical replication connection: replication commands and SQL ---
repl="dbname=$PGDATABASE replication=database"
got=$(q "$repl" -c "IDENTIFY_SYSTEM" | cut -d'|' -f1)
expect_eq "IDENTIFY_SYSTEM's systemid" "$got" "$sysid"
expect_eq "SQL on a replication connection" "$(q "$repl" -c "SELECT 40 + 2")" 42
out=$(psql -X -At "$repl" -v VERBOSITY=verbose \
	-c "START_REPLICATION SLOT no_such_slot_$$ LOGICAL 0/0" -c "SELECT 'after'" 2>&1 || true)
grep -q "ERROR:  42704:" <<<"$out" || fail "a missing slot: want SQLSTATE 42704, got: $out"
grep -qx "after" <<<"$out" || fail "the session did not go on after the error: $out"
ok "replication=database: IDENTIFY_SYSTEM, SQL, an error's SQLSTATE"

# --- logical decoding: the same changes through pgshunt as directly ---
q -c "CREATE TABLE $table (id int PRIMARY KEY, v text)" >/dev/null
pg_recvlogical -d "$PGDATABASE" --slot "$slot_shunt" --create-slot -P test_decoding \
	>"$work/create.out" 2>&1 || fail "create slot through pgshunt: $(cat "$work/create.out")"
pg_recvlogical -d "$direct_db" --slot "$slot_direct" --create-slot -P test_decoding \
	>"$work/create.out" 2>&1 || fail "create slot directly: $(cat "$work/create.out")"
q -c "INSERT INTO $table SELECT g, 'row ' || g FROM generate_series(1, 500) g" >/dev/null
q -c "UPDATE $table SET v = v || ' updated' WHERE id % 10 = 0" >/dev/null
q -c "DELETE FROM $table WHERE id > 490" >/dev/null
end=$(q -c "SELECT pg_current_wal_insert_lsn()")
# One more change past the end: its arrival is what tells pg_recvlogical it is done.
q -c "INSERT INTO $table VALUES (0, 'after the end')" >/dev/null

for via in shunt direct; do
	if [ "$via" = shunt ]; then db=$PGDATABASE s=$slot_shunt; else db=$direct_db s=$slot_direct; fi
	rc=0
	timeout 60 pg_recvlogical -d "$db" --slot "$s" --start -E "$end" -s 1 --no-loop \
		-f "$work/changes.$via" >"$work/recv.$via.out" 2>&1 || rc=$?
	[ "$rc" -eq 0 ] || fail "pg_recvlogical ($via) exited with $rc: $(cat "$work/recv.$via.out")"
done
cmp -s "$work/changes.shunt" "$work/changes.direct" ||
	fail "the changes decoded through pgshunt differ from those decoded directly:
$(diff "$work/changes.direct" "$work/changes.shunt" | head -20)"
n=$(grep -c "^table public.$table: INSERT: " "$work/changes.shunt" || true)
expect_eq "INSERTs decoded" "$n" 500
n=$(grep -c "^table public.$table: UPDATE: " "$work/changes.shunt" || true)
expect_eq "UPDATEs decoded" "$n" 50
n=$(grep -c "^table public.$table: DELETE: " "$work/changes.shunt" || true)
expect_eq "DELETEs decoded" "$n" 10
if grep -q "after the end" "$work/changes.shunt"; then
	fail "pg_recvlogical wrote a change past its end LSN"
fi
ok "pg_recvlogical: 500 inserts, 50 updates, 10 deletes, the same bytes as directly"

# The slot through pgshunt was confirmed up to the end: its stream was ended cleanly.
got=$(q -c "SELECT confirmed_flush_lsn >= '$end' FROM pg_replication_slots
	WHERE slot_name = '$slot_shunt'")
expect_eq "slot confirmed up to the end LSN" "$got" t
ok "the slot read through pgshunt is confirmed up to $end"

# --- a stream holds nothing back ---
own_database "repl_$$"
start_pgshunt "control_dsn = $direct"
run() { psql -X -qtA -F'|' "$console" -c "$1" 2>&1; }
wait_phase_known
run 'MIGRATE PREPARE' >/dev/null || fail "MIGRATE PREPARE: $(run 'MIGRATE PREPARE')"
psql -X -q "$shunt_admin dbname=$own_db" \
	-c "SELECT pg_create_logical_replication_slot('$slot_own', 'test_decoding')" >/dev/null
stream="host=127.0.0.1 port=$port dbname=$own_db user=shunt_admin password=admin-secret"
pg_recvlogical -d "$stream" --slot "$slot_own" --start --no-loop -s 1 -F 0 \
	-f "$work/stream.out" 2>"$work/stream.err" &
recv_pid=$!
for _ in $(seq 100); do
	grep -q '|shunt_admin|[^|]*|[^|]*|[^|]*|[^|]*|streaming|' <<<"$(run 'SHOW CLIENTS')" && break
	kill -0 "$recv_pid" 2>/dev/null || fail "pg_recvlogical ended: $(cat "$work/stream.err")"
	sleep 0.1
done
grep -q '|streaming|' <<<"$(run 'SHOW CLIENTS')" ||
	fail "SHOW CLIENTS does not show the stream: $(run 'SHOW CLIENTS')"
ok "SHOW CLIENTS: the stream is streaming"

# Without a stream counted as quiet, the acknowledgement would wait for it to end (30 s,
# then 55000 naming this proxy), and PAUSE would never return.
out=$(timeout 20 psql -X -qtA "$console" -c 'SET PHASE dual_write' 2>&1) ||
	fail "SET PHASE dual_write with a stream open: $out"
expect_eq "phase" "$(run 'SHOW PHASE' | cut -d'|' -f1)" dual_write
out=$(timeout 20 psql -X -qtA "$console" -c 'PAUSE' 2>&1) || fail "PAUSE with a stream open: $out"
out=$(run 'RESUME') || fail "RESUME: $out"
ok "SET PHASE dual_write and PAUSE complete while the stream runs"

# The application's insert, mirrored in dual_write, reaches the stream.
psql -X -qtA -v ON_ERROR_STOP=1 "$app" -c "INSERT INTO ingest_idempotency (site_id,
	idempotency_key, request_hash) VALUES ('site-r', 'repl-$$', '\\x01')" >/dev/null
for _ in $(seq 100); do
	[ "$(grep -c "repl-$$" "$work/stream.out" || true)" -ge 2 ] && break
	sleep 0.1
done
n=$(grep -c "INSERT: .*repl-$$" "$work/stream.out" || true)
expect_eq "the mirrored insert's rows in the stream (table and next)" "$n" 2
kill -0 "$recv_pid" 2>/dev/null || fail "pg_recvlogical ended: $(cat "$work/stream.err")"
ok "the stream carried the insert made through pgshunt in dual_write (2 rows)"

# SQL on a replication connection goes through the statement engine like any other.
out=$(psql -X -qtA -v ON_ERROR_STOP=1 "$stream replication=database" -c "INSERT INTO
	ingest_idempotency (site_id, idempotency_key, request_hash) VALUES ('site-r',
	'repl-sql-$$', '\\x02') ON CONFLICT DO NOTHING RETURNING idempotency_key" 2>&1) ||
	fail "INSERT on a replication connection: $out"
expect_eq "INSERT ... RETURNING on a replication connection" "$out" "repl-sql-$$"
got=$(psql -X -qtA "$direct" -c "SELECT (SELECT count(*) FROM ingest_idempotency
	WHERE idempotency_key = 'repl-sql-$$') || '/' || (SELECT count(*) FROM
	ingest_idempotency_next WHERE idempotency_key = 'repl-sql-$$')")
expect_eq "the row in the table / in next_table" "$got" "1/1"
ok "an INSERT on a replication connection is mirrored in dual_write"

stop_pgshunt
rc=0
wait "$recv_pid" || rc=$?
recv_pid=
[ "$rc" -ne 0 ] || fail "pg_recvlogical exited with 0 when its stream was cut"
grep -q "pgshunt is shutting down" "$work/stream.err" ||
	fail "pg_recvlogical was not told why: $(cat "$work/stream.err")"
ok "SIGTERM ended the stream at once (57P01), pgshunt exited"
