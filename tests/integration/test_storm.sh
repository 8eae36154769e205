#!/usr/bin/env bash
# Duplicate-key storms (tests/integration/storm.py) in every phase, and in DEGRADED,
# in a database of its own with a pgshunt of its own.
set -euo pipefail
. tests/integration/lib.sh

own_database "storm_$$"
start_pgshunt "control_dsn = $direct"

storm() {
	/usr/bin/python3 tests/integration/storm.py "$app" "$direct" "$1" || fail "storm in $1"
}
c() { psql -X -qtA "$console" -c "$1" >/dev/null || fail "$1"; }

storm passthrough
c 'MIGRATE PREPARE'
c 'SET PHASE dual_write'
storm dual_write
c 'SET PHASE read_next FORCE'
storm read_next
c 'SET PHASE cutover'
storm cutover
storm mixed
c 'DEGRADED ON'
storm degraded
c 'DEGRADED OFF'
c 'SET PHASE finalized'
storm finalized
stop_pgshunt
echo "storms: ok"
