#!/bin/bash
# The node driver tests (pg and postgres.js); run by tests/integration/run.sh, which
# sets PGHOST/PGPORT/PGDATABASE and SHUNT_CA_FILE.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

# Missing, or older than the lock file (a pull that added a module).
if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
	npm ci --no-audit --no-fund --loglevel=error
fi

rc=0
for t in test_pg.js test_postgres.js; do
	echo "--- node $t"
	node "$t" || { rc=1; echo "--- $t FAILED"; }
done
exit "$rc"
