#!/bin/bash
# The C integration test of the core relay and the console (tests/integration/core_test.c,
# cmocka + libpq + raw sockets): simple/extended/pipelined queries, COPY, big rows,
# LISTEN/NOTIFY, cancel, a terminated backend, authentication and TLS, bad protocol
# input, client_login_timeout, max_client_conn, and the admin console.
# Needs the environment of tests/integration/run.sh; exits with the test's status.
set -euo pipefail

: "${PGHOST:?}" "${PGPORT:?}" "${PGDATABASE:?}" "${SHUNT_SERVER_PORT:?}" "${SHUNT_CA_FILE:?}"
export SHUNT_ADMIN_DB=${SHUNT_ADMIN_DB:-pgshunt} SHUNT_MODE=${SHUNT_MODE:-proxy}

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
bin=$root/build/tests/integration/core_test
src=$root/tests/integration/core_test.c

# Normally `make integration` built it; build it here when it is missing or stale.
if [ ! -x "$bin" ] || [ "$src" -nt "$bin" ]; then
	make -s -C "$root" build/tests/integration/core_test >&2 || {
		echo "test_core: could not build $bin" >&2
		exit 1
	}
fi

exec "$bin"
