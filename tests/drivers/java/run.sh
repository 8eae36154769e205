#!/bin/bash
# The PgJDBC driver test: compile DriverTest.java against Debian's PgJDBC
# (libpostgresql-jdbc-java) into a temporary directory and run it; run by
# tests/integration/run.sh.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
jar=${PGJDBC_JAR:-/usr/share/java/postgresql.jar}
[ -r "$jar" ] || { echo "FAIL: $jar not found (apt-get install libpostgresql-jdbc-java)" >&2; exit 1; }

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

javac -nowarn -encoding UTF-8 -d "$out" -cp "$jar" "$here/DriverTest.java"
# No exec: the trap removes the classes when java is done.
java -Xss1m -XX:+UseSerialGC -Dfile.encoding=UTF-8 -cp "$out:$jar" DriverTest
