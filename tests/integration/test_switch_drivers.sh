#!/usr/bin/env bash
# Named prepared statements kept across phase switches, with real drivers, in a database
# and a pgshunt of its own.  Each driver keeps one connection and its server-side
# statements through passthrough -> dual_write -> read_next FORCE -> cutover -> read_next
# -> dual_write -> passthrough while this script switches the phase on the console
# between its stages:
#
#   postgres.js   tests/drivers/node/switch_postgres.js pgjs   (prepare: true, max: 1)
#   node-postgres tests/drivers/node/switch_postgres.js pg     (named query configs)
#   PgJDBC        tests/drivers/java/SwitchTest.java           (prepareThreshold=1,
#                                                               PreparedStatements kept open)
#
# The driver programs check what their statements return (through the driver's API and
# on the wire: same statement name bound, no new Parse, exact tags, row widths); this
# script checks the tables with psql straight to PostgreSQL: every row written after
# the switch is in ingest_idempotency_next, identical to the table's; nothing written in
# passthrough is.  A driver prints "SYNC <stage>" and waits for a line on stdin.
set -euo pipefail

. tests/integration/lib.sh

jar=${PGJDBC_JAR:-/usr/share/java/postgresql.jar}
[ -r "$jar" ] || fail "$jar not found (apt-get install libpostgresql-jdbc-java)"
[ -d tests/drivers/node/node_modules/postgres ] && [ -d tests/drivers/node/node_modules/pg ] ||
	fail "tests/drivers/node/node_modules missing (sh tests/install-deps.sh)"

own_database "switch_$$"
q() { psql -X -qtA -v ON_ERROR_STOP=1 "$direct" -c "$1"; }
q "SELECT seed_ingest_idempotency(500, 30)" >/dev/null
start_pgshunt "control_dsn = $direct"
c() { psql -X -qtA "$console" -c "$1" 2>&1; }

# The JDBC program, compiled into the scratch folder (removed at exit).
mkdir "$work/classes"
javac -nowarn -encoding UTF-8 -d "$work/classes" -cp "$jar" tests/drivers/java/SwitchTest.java ||
	fail "javac SwitchTest.java"

drv=
drv_pid=
die() {
	if [ -n "$drv_pid" ]; then kill -TERM "$drv_pid" 2>/dev/null || true; fi
	fail "$@"
}

# start_driver NAME COMMAND...: the driver's stdin and stdout are FIFOs, $to and $from.
start_driver() {
	drv=$1
	shift
	rm -f "$work/to" "$work/from"
	mkfifo "$work/to" "$work/from"
	"$@" <"$work/to" >"$work/from" 2>&1 &
	drv_pid=$!
	exec {to}>"$work/to" {from}<"$work/from"
}

# until_sync STAGE: echo the driver's lines until it prints "SYNC STAGE".
until_sync() {
	local line
	while IFS= read -r -t 40 line <&"$from"; do
		if [ "$line" = "SYNC $1" ]; then return 0; fi
		echo "    $drv: $line"
	done
	die "$drv: no 'SYNC $1' (the driver failed, ended or hung: see above)"
}

resume() { echo go >&"$to"; }

end_driver() {
	local line rc=0
	exec {to}>&-
	while IFS= read -r -t 40 line <&"$from"; do echo "    $drv: $line"; done
	wait "$drv_pid" || rc=$?
	drv_pid=
	exec {from}<&-
	[ "$rc" = 0 ] || fail "$drv exited with status $rc"
}

phase() { # NAME [FORCE]
	local out
	out=$(c "SET PHASE $*") || die "SET PHASE $*: $out"
	[ "$(c 'SHOW PHASE' | cut -d'|' -f1)" = "$1" ] || die "SHOW PHASE after SET PHASE $*: $(c 'SHOW PHASE')"
}

# keys SITE TABLE: the keys of SITE's rows in TABLE, in order.
keys() {
	q "SELECT coalesce(string_agg(idempotency_key, ' ' ORDER BY idempotency_key COLLATE \"C\"), '') FROM $2 WHERE site_id = '$1'"
}

# in_next SITE KEYS: next_table holds exactly KEYS of SITE, each row identical to the table's.
in_next() {
	local got differ
	got=$(keys "$1" ingest_idempotency_next)
	[ "$got" = "$2" ] || die "$drv: next_table holds the keys [$got] of site $1, want [$2]"
	differ=$(q "SELECT string_agg(format('%s: table %s, next %s', n.idempotency_key, row(o.*)::text, row(n.*)::text), E'\n')
		FROM ingest_idempotency_next n LEFT JOIN ingest_idempotency o USING (site_id, idempotency_key)
		WHERE n.site_id = '$1' AND (o.site_id IS NULL OR row(o.*)::text <> row(n.*)::text)")
	[ -z "$differ" ] || die "$drv: rows of next_table differ from the table's:"$'\n'"$differ"
}

in_table() { # SITE KEYS
	local got
	got=$(keys "$1" ingest_idempotency)
	[ "$got" = "$2" ] || die "$drv: the table holds the keys [$got] of site $1, want [$2]"
}

# The scenario, the same for every driver; SITE keeps its rows apart from the others'.
scenario() { # NAME SITE COMMAND...
	local name=$1 site=$2 t0=$SECONDS
	shift 2
	start_driver "$name" "$@"

	until_sync passthrough
	[ "$(keys "$site" ingest_idempotency_next 2>/dev/null || true)" = "" ] || die "$name: rows in next_table before dual_write"
	in_table "$site" "pre-1 pre-2"
	out=$(c 'MIGRATE PREPARE') || die "MIGRATE PREPARE: $out"
	phase dual_write
	ok "$name: passthrough, statements named; MIGRATE PREPARE, SET PHASE dual_write"
	resume

	until_sync dual_write
	in_table "$site" "dw-1 dw-2 pre-1 pre-2"
	in_next "$site" "dw-1 dw-2 pre-2"
	ok "$name: dual_write through the statements prepared in passthrough: results right, next_table = table for dw-1 dw-2 pre-2 (pre-1 untouched since passthrough: absent)"
	phase read_next FORCE
	q "INSERT INTO ingest_idempotency (site_id, idempotency_key, request_hash) VALUES ('$site', 'direct-only', '\\x00')" >/dev/null
	q "INSERT INTO ingest_idempotency_next (site_id, idempotency_key, request_hash, status) VALUES ('$site', 'next-only', '\\x00', 'failed')" >/dev/null
	resume

	until_sync read_next
	q "DELETE FROM ingest_idempotency_next WHERE site_id = '$site' AND idempotency_key = 'next-only'" >/dev/null
	in_next "$site" "dw-1 dw-2 pre-2 rn-1"
	ok "$name: read_next FORCE: the read sees next_table's rows only (next-only yes; direct-only, pre-1 no); rn-1 mirrored"
	phase cutover
	resume

	until_sync cutover
	in_next "$site" "co-1 dw-1 dw-2 pre-2 rn-1"
	in_table "$site" "co-1 direct-only dw-1 dw-2 pre-1 pre-2 rn-1"
	ok "$name: cutover: claims through the view (co-1 once, rn-1 refused as taken), UPDATE and DELETE on next_table, all mirrored into the table"
	phase read_next
	phase dual_write
	resume

	until_sync dual_write_again
	in_next "$site" "co-1 dw-1 dw-2 dw-4 pre-2 rn-1"
	ok "$name: back to dual_write: reads from the table again; dw-4 mirrored"
	phase passthrough
	resume

	end_driver
	in_table "$site" "co-1 direct-only dw-1 dw-2 dw-4 pre-1 pre-2 pt-1 rn-1"
	[ "$(keys "$site" ingest_idempotency_next)" = "co-1 dw-1 dw-2 dw-4 pre-2 rn-1" ] ||
		die "$name: passthrough wrote to next_table: $(keys "$site" ingest_idempotency_next)"
	ok "$name: back to passthrough: nothing mirrored; driver done ($((SECONDS - t0)) s)"
}

scenario postgres.js pgjs node tests/drivers/node/switch_postgres.js pgjs 127.0.0.1 "$port" "$own_db" shunt_trust pgjs
scenario node-postgres pg node tests/drivers/node/switch_postgres.js pg 127.0.0.1 "$port" "$own_db" shunt_trust pg
scenario pgjdbc jdbc java -Xss1m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Dfile.encoding=UTF-8 \
	-cp "$work/classes:$jar" SwitchTest 127.0.0.1 "$port" "$own_db" shunt_trust jdbc

# Every row of next_table (all three drivers) is the table's row.
differ=$(q "SELECT count(*) FROM ingest_idempotency_next n LEFT JOIN ingest_idempotency o USING (site_id, idempotency_key) WHERE o.site_id IS NULL OR row(o.*)::text <> row(n.*)::text")
[ "$differ" = 0 ] || fail "$differ rows of next_table are missing from or differ from the table"
ok "next_table: $(q "SELECT count(*) FROM ingest_idempotency_next") rows, each identical to the table's"
stop_pgshunt
echo "switch_drivers: ok"
