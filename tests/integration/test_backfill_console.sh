#!/usr/bin/env bash
# The job commands over the extended protocol (psycopg 3): deferred answers (BACKFILL,
# VERIFY, PARTITIONS MAINTAIN) come back with their rows and tags, errors with their
# SQLSTATE, and the connection stays usable.
set -euo pipefail
. tests/integration/lib.sh

own_database "bfconsole_$$"
q() { psql -X -qtA "$direct" -c "$1"; }
q "SELECT seed_ingest_idempotency(3000)" >/dev/null
start_pgshunt "control_dsn = $direct"
psql -X -qtA "$console" -c 'MIGRATE PREPARE' >/dev/null || fail "MIGRATE PREPARE"
psql -X -qtA "$console" -c 'SET PHASE dual_write' >/dev/null || fail "SET PHASE dual_write"
out=$(/usr/bin/python3 - "$console" 2>&1 <<'PY'
import sys, time, psycopg
c = psycopg.connect(sys.argv[1], autocommit=True)
print(c.execute("BACKFILL START").statusmessage)
for _ in range(100):
    row = c.execute("SHOW BACKFILL").fetchone()
    if row[0] == 'done':
        break
    time.sleep(0.1)
cur = c.execute("SHOW BACKFILL")
print([d.name for d in cur.description][:4], cur.fetchone()[:4])
cur = c.execute("VERIFY")
print(cur.statusmessage, cur.fetchall())
for bad in ("DRAIN NOW", "BACKFILL RESUME"):
    try:
        c.execute(bad)
    except psycopg.Error as e:
        print("error", e.sqlstate)
cur = c.execute("PARTITIONS MAINTAIN")
print(cur.statusmessage, [r[0] for r in cur.fetchall()])
PY
)
expected="BACKFILL START
['state', 'rows_done', 'rows_total', 'percent'] ('done', '3000', '3000', '100.0')
VERIFY [('clean', '3000', '3000', '3000', '0', '[]')]
error 42601
error 55000
PARTITIONS MAINTAIN ['premake']"
[ "$out" = "$expected" ] || fail "extended protocol: $out"
ok "BACKFILL, SHOW BACKFILL, VERIFY, errors and PARTITIONS MAINTAIN over the extended protocol"
stop_pgshunt
