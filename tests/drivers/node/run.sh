#!/bin/bash
# The node driver tests (pg and postgres.js); run by tests/integration/run.sh, which
# sets PGHOST/PGPORT/PGDATABASE and SHUNT_CA_FILE.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

if [ ! -d node_modules ]; then
	npm ci --no-audit --no-fund --loglevel=error
fi

rc=0
for t in test_pg.js test_postgres.js; do
	echo "--- node $t"
	node "$t" || { rc=1; echo "--- $t FAILED"; }
done
exit "$rc"
