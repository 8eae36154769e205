#!/usr/bin/env bash
# guard_direct_writes: from dual_write on, the database refuses writes to the table,
# next_table and buffer_table that do not come through pgshunt; through pgshunt they
# work, and so does a connection of pgshunt's own jobs that sets pgshunt.via.  Back to
# passthrough, or the key turned off by a reload, and the triggers are gone.
set -euo pipefail

. tests/integration/lib.sh

own_database "guard_$$"
psql -X -q "$direct" -c "SELECT seed_ingest_idempotency(100)" >/dev/null
start_pgshunt "control_dsn = $direct" "guard_direct_writes = on"

db() { psql -X -qtA "$direct" -c "$1"; }
run() { psql -X -qtA -F'|' "$console" -c "$1"; }
guards() { db "SELECT count(*) FROM pg_trigger WHERE tgname = 'pgshunt_guard'"; }
wait_guards() { # count
	for _ in $(seq 100); do [ "$(guards)" = "$1" ] && return 0; sleep 0.1; done
	fail "$(guards) guard triggers, want $1"
}
expect_refused() { # conninfo sql
	local out
	if out=$(psql -X -qtA -v VERBOSITY=verbose "$1" -c "$2" 2>&1); then
		fail "not refused: $2: $out"
	fi
	grep -q "ERROR:  42501: pgshunt guard: " <<<"$out" || fail "$2: want 42501 pgshunt guard, got: $out"
	echo "ok: refused: $2"
}
ins() { echo "INSERT INTO $1 (site_id, idempotency_key, request_hash) VALUES ('g', '$2', '\\x01')"; }

run "MIGRATE PREPARE" >/dev/null
sleep 1.5
[ "$(guards)" = 0 ] || fail "guard triggers in passthrough"
db "$(ins ingest_idempotency direct-passthrough)" >/dev/null
ok "passthrough: no guard, a direct insert works"

run "SET PHASE dual_write" >/dev/null
wait_guards 3
expect_refused "$direct" "$(ins ingest_idempotency direct-1)"
expect_refused "$direct" "$(ins ingest_idempotency_next direct-2)"
expect_refused "$direct" "INSERT INTO ingest_fallback_buffer SELECT * FROM ingest_fallback_buffer LIMIT 0"
expect_refused "$direct" "UPDATE ingest_idempotency SET status = 'failed' WHERE site_id = 'g'"
expect_refused "$direct" "DELETE FROM ingest_idempotency_next"
expect_refused "$direct" "TRUNCATE ingest_idempotency_next"
out=$(psql -X -qtA "$direct" -c "$(ins ingest_idempotency direct-3)" 2>&1 || true)
grep -q 'HINT:  Connect through pgshunt' <<<"$out" || fail "no hint: $out"
[ "$(db "SELECT count(*) FROM ingest_idempotency WHERE idempotency_key LIKE 'direct-%' AND idempotency_key <> 'direct-passthrough'")" = 0 ] ||
	fail "a refused direct insert left a row"
ok "dual_write: direct writes to all three tables refused with 42501"

# Through pgshunt: written and mirrored, also after RESET ALL (the setting comes with
# the startup packet, so it is the session's default).
psql -X -q "$app" -c "$(ins ingest_idempotency via-1)" >/dev/null || fail "insert through pgshunt"
psql -X -qtA "$app" -c "RESET ALL" -c "$(ins ingest_idempotency via-2)" >/dev/null ||
	fail "insert through pgshunt after RESET ALL"
for k in via-1 via-2; do
	[ "$(db "SELECT count(*) FROM ingest_idempotency WHERE idempotency_key = '$k'")" = 1 ] || fail "$k not in the table"
	[ "$(db "SELECT count(*) FROM ingest_idempotency_next WHERE idempotency_key = '$k'")" = 1 ] || fail "$k not mirrored"
done
[ "$(psql -X -qtA "$app" -c "UPDATE ingest_idempotency SET status = 'completed' WHERE site_id = 'g' AND idempotency_key = 'via-1' RETURNING idempotency_key")" = via-1 ] ||
	fail "update through pgshunt"
# A client cannot switch the marker off at connect: pgshunt's comes last and wins.
PGOPTIONS='-c pgshunt.via=off' psql -X -q "$app" -c "$(ins ingest_idempotency via-3)" >/dev/null ||
	fail "insert through pgshunt with PGOPTIONS -c pgshunt.via=off"
ok "through pgshunt: inserts and updates pass, mirrored"

# pgshunt's own jobs: GUARD_SET_SQL, or GUARD_CONNINFO_OPTIONS in the conninfo.
psql -X -q "$direct" -c "SET pgshunt.via = 'on'" -c "$(ins ingest_idempotency_next job-1)" >/dev/null ||
	fail "a job connection with SET pgshunt.via = 'on' was refused"
psql -X -q "$direct options='-c pgshunt.via=on'" -c "$(ins ingest_fallback_buffer job-2)" >/dev/null ||
	fail "a job connection with options -c pgshunt.via=on was refused"
expect_refused "$direct" "SET pgshunt.via = 'off'; $(ins ingest_idempotency_next job-3)"
ok "jobs pass with pgshunt.via = on"

run "SET PHASE passthrough" >/dev/null
wait_guards 0
db "$(ins ingest_idempotency direct-after)" >/dev/null
ok "back to passthrough: triggers removed, direct writes work"

# The key turned off by a reload removes them in dual_write too.
run "SET PHASE dual_write" >/dev/null
wait_guards 3
sed -i 's/^guard_direct_writes = on$/guard_direct_writes = off/' "$work/pgshunt.ini"
kill -HUP "$pid"
wait_guards 0
db "$(ins ingest_idempotency direct-off)" >/dev/null
ok "guard_direct_writes = off by reload: triggers removed"

# Back on by reload; a stop leaves them (the fleet goes on without this proxy), and a
# proxy started with the key off removes what was left.
sed -i 's/^guard_direct_writes = off$/guard_direct_writes = on/' "$work/pgshunt.ini"
kill -HUP "$pid"
wait_guards 3
stop_pgshunt
[ "$(guards)" = 3 ] || fail "the triggers went with the proxy"
start_pgshunt "control_dsn = $direct"
wait_guards 0
ok "restarted with the key off: the triggers left are removed"
run "SET PHASE passthrough" >/dev/null
stop_pgshunt
ok "guard"
