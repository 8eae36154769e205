#!/usr/bin/env bash
# The control schema's version 1 -> 2 upgrade (pgshunt.state.hold_until for the
# finalize hold): a proxy reads the phase from a version 1 schema, MIGRATE PREPARE
# upgrades it keeping the phase and epoch, a schema newer than this pgshunt's is
# refused, and a hold whose time has passed holds nothing.
set -euo pipefail
. tests/integration/lib.sh

own_database "upgrade_$$"
q() { psql -X -qtA "$direct" -c "$1"; }
psql -X -q -1 -v ON_ERROR_STOP=1 "$direct" -f tests/fixtures/schema_v1.sql >/dev/null
q "SELECT pgshunt.set_phase('dual_write', NULL, false, 'test', 'v1')" >/dev/null
[ "$(q "SELECT version FROM pgshunt.schema_version")" = 1 ] || fail "fixture is not version 1"
epoch=$(q "SELECT epoch FROM pgshunt.state")

start_pgshunt "control_dsn = $direct"
run() { psql -X -qtA -F'|' "$console" -c "$1" 2>&1; }
wait_phase_known
[ "$(run 'SHOW PHASE' | cut -d'|' -f1,3,4)" = "dual_write|$epoch|yes" ] ||
	fail "phase read from a version 1 schema: $(run 'SHOW PHASE')"
# Served, not held: the table is readable through it.
[ "$(timeout 5 psql -X -qtA "$app" -c "SELECT count(*) FROM ingest_idempotency")" = 0 ] || fail "held on a version 1 schema"
ok "a version 1 schema: phase dual_write read, statements served"

out=$(run 'MIGRATE PREPARE') || fail "MIGRATE PREPARE over version 1: $out"
[ "$(q "SELECT version FROM pgshunt.schema_version")" = 2 ] || fail "not upgraded"
[ "$(q "SELECT count(*) FROM information_schema.columns WHERE table_schema = 'pgshunt' AND table_name = 'state' AND column_name = 'hold_until'")" = 1 ] ||
	fail "no hold_until"
[ "$(q "SELECT phase || '/' || epoch FROM pgshunt.state")" = "dual_write/$epoch" ] || fail "the upgrade changed the state"
out=$(run 'MIGRATE PREPARE') || fail "MIGRATE PREPARE again: $out"
[ "$(q "SELECT version FROM pgshunt.schema_version")" = 2 ] || fail "version after a re-run"
ok "MIGRATE PREPARE upgraded to version 2, phase and epoch kept; idempotent"

# A hold whose time is over holds nothing (a finalizer that died long ago).
q "UPDATE pgshunt.state SET hold_until = now() - interval '1 s'" >/dev/null
q "SELECT pgshunt.set_phase(NULL, NULL, false, 'test', 'past hold')" >/dev/null
sleep 0.5
[ "$(timeout 5 psql -X -qtA "$app" -c "SELECT count(*) FROM ingest_idempotency")" = 0 ] || fail "held by a past hold"
# One in the future holds: a statement on the table waits, released when it ends.
q "SELECT pgshunt.set_hold(30, 'test')" >/dev/null
sleep 0.5
psql -X -qtA "$app" -c "SELECT count(*) FROM ingest_idempotency" >"$work/held.out" 2>&1 &
held=$!
sleep 1
kill -0 "$held" 2>/dev/null || fail "not held by a hold in force: $(cat "$work/held.out")"
q "SELECT pgshunt.set_hold(0, 'test')" >/dev/null
for _ in $(seq 50); do kill -0 "$held" 2>/dev/null || break; sleep 0.1; done
wait "$held" || fail "the held statement failed: $(cat "$work/held.out")"
[ "$(cat "$work/held.out")" = 0 ] || fail "held statement: $(cat "$work/held.out")"
ok "a past hold holds nothing; one in force holds until pgshunt.set_hold(0) ends it"

q "UPDATE pgshunt.schema_version SET version = 3" >/dev/null
out=$(psql -X -qtA -v VERBOSITY=verbose "$console" -c 'MIGRATE PREPARE' 2>&1) && fail "MIGRATE PREPARE over a newer schema: $out"
grep -q "55000:.*version 3, newer than this pgshunt's (2)" <<<"$out" || fail "newer schema: $out"
ok "a schema newer than version 2 is refused"
stop_pgshunt
echo "finalize_upgrade: ok"
