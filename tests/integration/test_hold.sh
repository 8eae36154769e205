#!/usr/bin/env bash
# I7: a pgshunt that does not know the phase in force holds statements on the table
# (and only those) until it does: here its control_dsn is wrong at start, then fixed
# by a reload.
set -euo pipefail
. tests/integration/lib.sh

own_database "hold_$$"
start_pgshunt "control_dsn = host=127.0.0.1 port=1 dbname=$own_db user=shunt_trust connect_timeout=2"
run() { psql -X -qtA "$console" -c "$1" 2>&1; }

[ "$(run 'SHOW PHASE' | cut -d'|' -f4)" = no ] || fail "the phase is known without a control connection"

# A statement on the table waits; one that does not name it is served at once.
psql -X -qtA "$app" -c "SELECT count(*) FROM ingest_idempotency" >"$work/held.out" 2>&1 &
held=$!
[ "$(timeout 10 psql -X -qtA "$app" -c "SELECT 6 * 7")" = 42 ] || fail "a statement not naming the table was held"
sleep 1
kill -0 "$held" 2>/dev/null || fail "a statement on the table was served with the phase unknown: $(cat "$work/held.out")"
grep -q 'held: the phase in force is not known' "$work/pgshunt.log" || fail "the hold was not logged"
ok "held a statement on the table, served one that does not name it"

# The control connection comes back (a reload with the right control_dsn): released.
sed -i "s|^control_dsn = .*|control_dsn = $direct|" "$work/pgshunt.ini"
kill -HUP "$pid"
wait_gone "$held" 10 "the held statement was not released once the phase was known"
wait "$held" || fail "the held statement failed: $(cat "$work/held.out")"
[ "$(cat "$work/held.out")" = 0 ] || fail "the held statement's answer: $(cat "$work/held.out")"
[ "$(run 'SHOW PHASE' | cut -d'|' -f4)" = yes ] || fail "the phase is still unknown"
ok "released with the right answer once the phase was read"
stop_pgshunt
echo "hold: ok"
