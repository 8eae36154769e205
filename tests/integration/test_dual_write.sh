#!/usr/bin/env bash
# dual_write end to end, in a database of its own: writes through pgshunt land in the
# table and, identically, in next_table; the client sees what PostgreSQL says; what
# cannot be mirrored is refused with 0A000; statements prepared before the switch are
# prepared again behind the client's back.
set -euo pipefail

. tests/integration/lib.sh

own_database "dual_$$"
q() { psql -X -qtA "$direct" -c "$1"; }
q "SELECT seed_ingest_idempotency(1000)" >/dev/null
metrics_port=$(bash "$shunt_harness" freeport)
start_pgshunt "control_dsn = $direct" "log_level = debug" "metrics_addr = 127.0.0.1:$metrics_port"
a() { psql -X -qtA -v VERBOSITY=verbose "$app" "$@" 2>&1; }
c() { psql -X -qtA "$console" -c "$1" 2>&1; }

# A statement prepared while in passthrough, kept open across the switch (psycopg).
cat >"$work/prepared.py" <<'EOF'
import sys, psycopg
conn = psycopg.connect(sys.argv[1], autocommit=True)
sql = ("INSERT INTO ingest_idempotency (site_id, idempotency_key, request_hash) "
       "VALUES (%s, %s, %s) ON CONFLICT (site_id, idempotency_key) DO NOTHING RETURNING created_at")
cur = conn.execute(sql, ("py", "before", b"\x01"), prepare=True)
print("prepared", cur.fetchone() is not None, flush=True)
sys.stdin.readline()
cur = conn.execute(sql, ("py", "after", b"\x02"), prepare=True)
print("after", [d.name for d in cur.description], cur.rowcount, cur.fetchone() is not None, flush=True)
cur = conn.execute(sql, ("py", "after", b"\x02"), prepare=True)
print("retry", cur.rowcount, cur.fetchone(), flush=True)
cur = conn.execute("UPDATE ingest_idempotency SET status = 'completed' WHERE site_id = %s", ("py",))
print("update", cur.description, cur.rowcount, flush=True)
EOF
coproc PY { /usr/bin/python3 -u "$work/prepared.py" "$app" 2>&1; }
exec {py_in}>&"${PY[1]}" {py_out}<&"${PY[0]}"
read -r -t 20 line <&"$py_out" || fail "psycopg did not start"
[ "$line" = "prepared True" ] || fail "psycopg before the switch: $line"

# --- into dual_write ---
out=$(c 'MIGRATE PREPARE') || fail "MIGRATE PREPARE: $out"
out=$(c 'SET PHASE dual_write') || fail "SET PHASE dual_write: $out"
[ "$(c 'SHOW PHASE' | cut -d'|' -f1)" = dual_write ] || fail "SHOW PHASE after the switch"
t_switch=$(q "SELECT now()")
ok "dual_write"

# --- the application's statements, simple protocol ---
ins="INSERT INTO ingest_idempotency (site_id, idempotency_key, request_hash) VALUES ('s1', 'k1', '\\x01') ON CONFLICT (site_id, idempotency_key) DO NOTHING RETURNING created_at"
out=$(a -c "$ins")
grep -qE '^[0-9]{4}-' <<<"$out" || fail "first claim returned no created_at: $out"
[ "$(a -c "$ins")" = "" ] || fail "retry of the claim returned a row"
[ "$(psql -X -v VERBOSITY=verbose "$app" -c "$ins" | tail -n 1)" = "INSERT 0 0" ] || fail "retry tag"
ok "claim: a row the first time, INSERT 0 0 after"

out=$(a -c "INSERT INTO ingest_idempotency (site_id, idempotency_key, request_hash, status) VALUES ('s1', 'k1', '\\x01', 'processing')") && fail "duplicate plain insert succeeded"
grep -q "23505" <<<"$out" || fail "duplicate plain insert: $out"
grep -q 'ingest_idempotency_pkey' <<<"$out" || fail "duplicate plain insert names no constraint: $out"
ok "plain duplicate: 23505 on ingest_idempotency_pkey"

tags=$(psql -X "$app" -c "UPDATE ingest_idempotency SET status = 'completed', response_code = 200, response_body = '{\"a\": 1}' WHERE site_id = 's1' AND idempotency_key = 'k1'" -c "INSERT INTO ingest_idempotency (site_id, idempotency_key, request_hash) VALUES ('s1', 'k2', '\\x02'), ('s1', 'k3', '\\x03')" -c "DELETE FROM ingest_idempotency WHERE site_id = 's1' AND idempotency_key = 'k3' AND status = 'processing'" -c "DELETE FROM ingest_idempotency WHERE site_id = 'nobody'")
[ "$tags" = $'UPDATE 1\nINSERT 0 2\nDELETE 1\nDELETE 0' ] || fail "command tags: $tags"
ok "tags: UPDATE 1, INSERT 0 2, DELETE 1, DELETE 0"

out=$(a -c "UPDATE ingest_idempotency SET status = 'failed' WHERE site_id = 's1' RETURNING idempotency_key, status" | sort)
[ "$out" = $'k1|failed\nk2|failed' ] || fail "UPDATE ... RETURNING: $out"
out=$(a -c "SELECT 1; INSERT INTO ingest_idempotency (site_id, idempotency_key, request_hash) VALUES ('s1', 'k4', '\\x04') RETURNING *; SELECT 2")
[ "$(wc -l <<<"$out")" = 3 ] && grep -q '^s1|k4|' <<<"$out" || fail "multi-statement with RETURNING *: $out"
ok "RETURNING lists and multi-statement strings"

# --- refusals ---
refused() { # sql
	local out
	out=$(a -c "$1") && fail "not refused: $1"
	grep -q "0A000" <<<"$out" || fail "refusal without 0A000: $1: $out"
	grep -q "public.ingest_idempotency in phase dual_write" <<<"$out" || fail "refusal names no table/phase: $out"
}
refused "UPDATE ingest_idempotency SET idempotency_key = 'x' WHERE site_id = 's1'"
refused "TRUNCATE ingest_idempotency"
refused "ALTER TABLE ingest_idempotency ADD COLUMN x int"
refused "WITH d AS (DELETE FROM ingest_idempotency WHERE site_id = 's1' RETURNING *) SELECT count(*) FROM d"
refused "INSERT INTO ingest_idempotency_next SELECT * FROM ingest_idempotency LIMIT 1"
out=$(printf 's9\tk9\t\\\\x09\n' | a -c "COPY ingest_idempotency (site_id, idempotency_key, request_hash) FROM STDIN") && fail "COPY FROM accepted"
grep -q 0A000 <<<"$out" || fail "COPY FROM: $out"
ok "refusals: key UPDATE, TRUNCATE, ALTER, writable CTE, next_table, COPY FROM"

out=$(a -c "BEGIN" -c "INSERT INTO ingest_idempotency (site_id, idempotency_key, request_hash) VALUES ('tx', 'k', '\\x00')" -c "TRUNCATE ingest_idempotency" -c "SELECT 1" -c "ROLLBACK")
grep -q "25P02" <<<"$out" || fail "a refusal inside a transaction did not abort it: $out"
[ "$(q "SELECT count(*) FROM ingest_idempotency WHERE site_id = 'tx'")" = 0 ] || fail "rolled back insert is in old"
[ "$(q "SELECT count(*) FROM ingest_idempotency_next WHERE site_id = 'tx'")" = 0 ] || fail "rolled back insert is in next"
ok "a refusal aborts the transaction; nothing of it stays in either table"

# --- SQL-level PREPARE / EXECUTE ---
out=$(a -c "PREPARE claim(text, text) AS INSERT INTO ingest_idempotency AS i (site_id, idempotency_key, request_hash) VALUES (\$1, \$2, '\\x05') ON CONFLICT (site_id, idempotency_key) DO NOTHING RETURNING i.idempotency_key" -c "EXECUTE claim('sql', 'p1')" -c "EXECUTE claim('sql', 'p1')" -c "EXECUTE claim('sql', 'p2')")
[ "$out" = $'p1\np2' ] || fail "PREPARE/EXECUTE: $out"
# A name DEALLOCATEd and PREPAREd again for another statement is no longer ours.
out=$(a -c "PREPARE p2 AS INSERT INTO ingest_idempotency (site_id, idempotency_key, request_hash) VALUES ('sql', 'p3', '\x05')" -c "DEALLOCATE p2" -c "PREPARE p2 AS SELECT 42" -c "EXECUTE p2" -c "DISCARD ALL" -c "PREPARE p2 AS SELECT 43" -c "EXECUTE p2")
[ "$out" = $'42\n43' ] || fail "DEALLOCATE / DISCARD ALL and a new PREPARE of the name: $out"
[ "$(q "SELECT count(*) FROM ingest_idempotency WHERE idempotency_key = 'p3'")" = 0 ] || fail "a deallocated statement ran"
ok "SQL PREPARE/EXECUTE, DEALLOCATE, DISCARD ALL"

# --- the extended protocol: the prepared statement from before the switch ---
echo go >&"$py_in"
read -r -t 20 line <&"$py_out" || fail "psycopg after the switch: no answer"
[ "$line" = "after ['created_at'] 1 True" ] || fail "psycopg after the switch: $line"
read -r -t 20 line <&"$py_out" || fail "psycopg retry: no answer"
[ "$line" = "retry 0 None" ] || fail "psycopg retry: $line"
read -r -t 20 line <&"$py_out" || fail "psycopg update: no answer"
[ "$line" = "update None 2" ] || fail "psycopg update: $line"
ok "psycopg: statement prepared in passthrough re-prepared for dual_write"

# --- load through the extended protocol, then the two tables compared ---
pgbench -n -c 4 -j 2 -T 5 -M prepared -f tests/fixtures/ingest_workload.pgbench "$app" >"$work/pgbench.out" 2>&1 ||
	fail "pgbench: $(tail -5 "$work/pgbench.out")"
grep -q "number of failed transactions: 0" "$work/pgbench.out" || fail "pgbench failures: $(grep failed "$work/pgbench.out")"
ok "pgbench -M prepared: $(sed -n 's/^tps = \([0-9.]*\).*/\1/p' "$work/pgbench.out") tps, 0 failed"
pgbench -n -c 2 -T 2 -M extended -f tests/fixtures/ingest_workload.pgbench "$app" >"$work/pgbench2.out" 2>&1 ||
	fail "pgbench extended: $(tail -5 "$work/pgbench2.out")"

differ=$(q "SELECT count(*) FROM ingest_idempotency_next n LEFT JOIN ingest_idempotency o USING (site_id, idempotency_key) WHERE o IS NULL OR row(o.*)::text <> row(n.*)::text")
[ "$differ" = 0 ] || fail "$differ rows of next_table are missing from or differ from the table"
missing=$(q "SELECT count(*) FROM ingest_idempotency o WHERE (o.created_at >= '$t_switch' OR o.site_id IN ('s1', 'sql')) AND NOT EXISTS (SELECT 1 FROM ingest_idempotency_next n WHERE n.site_id = o.site_id AND n.idempotency_key = o.idempotency_key)")
[ "$missing" = 0 ] || fail "$missing rows written in dual_write are not in next_table"
written=$(q "SELECT count(*) FROM ingest_idempotency_next")
[ "$written" -gt 100 ] || fail "too few rows reached next_table: $written"
ok "next_table: $written rows, each identical to the table's, none missing"

# --- read_next (forced: the backfill is not built, so next holds only what was mirrored) ---
out=$(c 'SET PHASE read_next' 2>&1) && fail "read_next without a backfill was allowed: $out"
grep -q "backfill" <<<"$out" || fail "read_next refusal does not name the backfill: $out"
out=$(c 'SET PHASE read_next FORCE') || fail "SET PHASE read_next FORCE: $out"
# A row only the table has (written around pgshunt) is invisible; reads come from next.
q "INSERT INTO ingest_idempotency (site_id, idempotency_key, request_hash) VALUES ('direct', 'only-old', '\x00')"
[ "$(a -c "SELECT count(*) FROM ingest_idempotency WHERE site_id = 'direct'")" = 0 ] || fail "read_next read the table"
n_next=$(q "SELECT count(*) FROM ingest_idempotency_next WHERE site_id = 's1'")
[ "$(a -c "SELECT count(*) FROM public.ingest_idempotency WHERE ingest_idempotency.site_id = 's1'")" = "$n_next" ] ||
	fail "qualified read in read_next"
[ "$(a -c "SELECT i.idempotency_key FROM ingest_idempotency AS i WHERE i.site_id = 's1' AND i.idempotency_key = 'k1' FOR UPDATE OF i")" = k1 ] ||
	fail "locking read with an alias"
[ "$(a -c "SELECT idempotency_key FROM ingest_idempotency WHERE site_id = 's1' AND idempotency_key = 'k1' FOR UPDATE OF ingest_idempotency SKIP LOCKED")" = k1 ] ||
	fail "FOR UPDATE OF the table's name"
[ "$(a -c "COPY (SELECT 1) TO STDOUT" -c "COPY ingest_idempotency TO STDOUT" | grep -c '^direct')" = 0 ] || fail "COPY TO read the table"
[ "$(a -c "TABLE ingest_idempotency" | grep -c '^direct')" = 0 ] || fail "TABLE read the table"
[ "$(a -c "SELECT count(*) FROM ONLY (ingest_idempotency) WHERE site_id = 'direct'")" = 0 ] || fail "ONLY (...) read the table"
/usr/bin/python3 - "$app" <<'EOF' || fail "psycopg in read_next"
import sys, psycopg
with psycopg.connect(sys.argv[1], autocommit=True) as c:
    assert c.execute("SELECT count(*) FROM ingest_idempotency WHERE site_id = %s", ("direct",)).fetchone()[0] == 0
    # RowDescription names the table the client named, not next_table (I3).
    oid, attnum = c.execute("SELECT 'ingest_idempotency'::regclass::oid, attnum FROM pg_attribute "
                            "WHERE attrelid = 'ingest_idempotency'::regclass AND attname = 'status'").fetchone()
    cur = c.execute("SELECT status FROM ingest_idempotency WHERE site_id = %s", ("s1",))
    assert (cur.pgresult.ftable(0), cur.pgresult.ftablecol(0)) == (oid, attnum), (cur.pgresult.ftable(0), oid)
    r = c.execute("INSERT INTO ingest_idempotency (site_id, idempotency_key, request_hash) VALUES (%s, %s, %s) RETURNING idempotency_key", ("rn", "k", b"\x01"))
    assert r.fetchone()[0] == "k"
    assert c.execute("SELECT count(*) FROM ingest_idempotency WHERE site_id = %s", ("rn",)).fetchone()[0] == 1
EOF
[ "$(q "SELECT count(*) FROM ingest_idempotency_next WHERE site_id = 'rn'")" = 1 ] || fail "read_next write not mirrored"
out=$(c 'SET PHASE dual_write') || fail "back to dual_write: $out"
[ "$(a -c "SELECT count(*) FROM ingest_idempotency WHERE site_id = 'direct'")" = 1 ] || fail "dual_write reads the table again"
ok "read_next: reads from next_table (plain, qualified, aliased, locking, COPY, extended), writes still mirrored; back to dual_write"

# --- what the engine did, on /metrics ---
metrics=$(/usr/bin/python3 -c "import urllib.request,sys; print(urllib.request.urlopen(sys.argv[1]).read().decode())" "http://127.0.0.1:$metrics_port/metrics")
mirrored_n=$(grep '^pgshunt_statements_total{kind="INSERT",action="mirror",phase="dual_write"}' <<<"$metrics" | awk '{print $2}')
[ "${mirrored_n:-0}" -gt 0 ] || fail "no mirrored INSERT counted: $(grep statements_total <<<"$metrics")"
grep -q '^pgshunt_statements_total{kind="SELECT",action="rename",phase="read_next"}' <<<"$metrics" || fail "no renamed read counted"
grep -qE '^pgshunt_refusals_total\{reason="TRUNCATE would empty one table only"\} [1-9]' <<<"$metrics" || fail "refusal not counted"
grep -qE '^pgshunt_parse_cache_hits_total [1-9]' <<<"$metrics" || fail "no parse cache hits"
grep -qE '^pgshunt_statement_duration_seconds_count\{kind="INSERT"\} [1-9]' <<<"$metrics" ||
	fail "no INSERT durations: $(grep duration <<<"$metrics" | head -5)"
grep -qE '^pgshunt_statement_duration_seconds_bucket\{kind="UPDATE",le="\+Inf"\} [1-9]' <<<"$metrics" ||
	fail "no UPDATE duration buckets"
ok "metrics: $mirrored_n mirrored INSERTs, renamed reads, refusals by reason, parse cache hits, durations"

# --- one step back ---
out=$(c 'SET PHASE passthrough') || fail "SET PHASE passthrough: $out"
a -c "INSERT INTO ingest_idempotency (site_id, idempotency_key, request_hash) VALUES ('back', 'k', '\\x00')" >/dev/null
[ "$(q "SELECT count(*) FROM ingest_idempotency_next WHERE site_id = 'back'")" = 0 ] || fail "passthrough still mirrors"
ok "back to passthrough: no more mirroring"
exec {py_in}>&-
stop_pgshunt
echo "dual_write: ok"
