#!/usr/bin/env bash
# Duplicate-key storms (tests/integration/storm.py) in every phase this pgshunt serves,
# in a database of its own with a pgshunt of its own.
set -euo pipefail
. tests/integration/lib.sh

own_database "storm_$$"
start_pgshunt "control_dsn = $direct"

storm() {
	/usr/bin/python3 tests/integration/storm.py "$app" "$direct" "$1" || fail "storm in $1"
}

storm passthrough
psql -X -qtA "$console" -c 'MIGRATE PREPARE' >/dev/null || fail "MIGRATE PREPARE"
psql -X -qtA "$console" -c 'SET PHASE dual_write' || fail "SET PHASE dual_write"
storm dual_write
psql -X -qtA "$console" -c 'SET PHASE read_next FORCE' || fail "SET PHASE read_next FORCE"
storm read_next
stop_pgshunt
echo "storms: ok"
