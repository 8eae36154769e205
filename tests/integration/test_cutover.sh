#!/usr/bin/env bash
# cutover, finalized and DEGRADED end to end, in databases of their own: answers through
# pgshunt identical to the original table's (tests/integration/compare.py, against a
# reference database that is never migrated); in cutover the table and next_table
# identical row for row; a 30k-row DELETE through the mirror helpers; the claim views
# surviving the rename; DEGRADED inserts in the buffer with their conflict mode.
set -euo pipefail

. tests/integration/lib.sh

own_database "cut_$$"
reference_database "cutref_$$"

seed_both
q() { psql -X -qtA -v ON_ERROR_STOP=1 "$direct" -c "$1"; }

start_pgshunt "control_dsn = $direct"
c() { psql -X -qtA "$console" -c "$1" 2>&1 || fail "$1: $(psql -X -qtA "$console" -c "$1" 2>&1)"; }
a() { psql -X -qtA -v VERBOSITY=verbose "$app" -c "$1" 2>&1; }
compare() { # SET PHASE [SITE]
	/usr/bin/python3 tests/integration/compare.py "$app" "$direct" "$ref" "$1" ${3:-} || fail "compare $1 in $2"
}
# The table and next_table: the same keys, every column equal (I5).
same_tables() {
	local d
	d=$(q "SELECT count(*) FROM ingest_idempotency o FULL JOIN ingest_idempotency_next n
	       USING (site_id, idempotency_key) WHERE o IS NULL OR n IS NULL OR row(o.*)::text <> row(n.*)::text")
	[ "$d" = 0 ] || fail "$d keys differ between the table and next_table ($1)"
}

c 'MIGRATE PREPARE' >/dev/null
c 'SET PHASE dual_write' >/dev/null
# What the backfill does, in one go (the mirror keeps next current from here on).
q "INSERT INTO ingest_idempotency_next SELECT * FROM ingest_idempotency FOR SHARE ON CONFLICT DO NOTHING" >/dev/null
same_tables "after the backfill"

# The hourly expiry, 30k rows in one DELETE: with an advisory lock per mirrored row it
# exhausted the shared lock table ("out of shared memory", 53200).
expire_30k() {
	local out
	q "INSERT INTO ingest_idempotency SELECT 'exp', 'e' || g, '', 'completed', 200, NULL, now(), now() - interval '1 hour'
	   FROM generate_series(1, 30000) AS g" >/dev/null
	q "INSERT INTO ingest_idempotency_next SELECT * FROM ingest_idempotency WHERE site_id = 'exp' ON CONFLICT DO NOTHING" >/dev/null
	out=$(a "DELETE FROM ingest_idempotency WHERE expires_at < now()") || true
	[ "$out" = "" ] || fail "30k-row DELETE in $1: $out"
	[ "$(q "SELECT (SELECT count(*) FROM ingest_idempotency WHERE site_id = 'exp') + (SELECT count(*) FROM ingest_idempotency_next WHERE site_id = 'exp')")" = 0 ] ||
		fail "the 30k-row DELETE in $1 left rows"
	same_tables "after the 30k-row DELETE in $1"
	ok "$1: a 30k-row DELETE goes through (no lock per row)"
}
expire_30k dual_write

# RETURNING xmax of an upsert through the claim view, under a SAVEPOINT: what the
# table says -- the subtransaction's id for the row updated (the xmin of the version
# it wrote, not the top-level id), 0 for the row inserted.  The same script, through
# pgshunt and on the reference, must print the same.
xmax_savepoint() {
	local script got want
	script="INSERT INTO ingest_idempotency (site_id, idempotency_key, request_hash) VALUES ('xmax', '1', '');
BEGIN;
SELECT pg_current_xact_id()::text AS top \\gset
SAVEPOINT s;
INSERT INTO ingest_idempotency AS t (site_id, idempotency_key, request_hash) VALUES ('xmax', '1', '') ON CONFLICT (site_id, idempotency_key) DO UPDATE SET status = 'failed' RETURNING xmax::text AS upd \\gset
INSERT INTO ingest_idempotency AS t (site_id, idempotency_key, request_hash) VALUES ('xmax', '2', '') ON CONFLICT (site_id, idempotency_key) DO UPDATE SET status = 'failed' RETURNING t.xmax::text AS ins \\gset
SELECT :'upd' = xmin::text, :'upd' <> :'top', :'ins' FROM ingest_idempotency WHERE site_id = 'xmax' AND idempotency_key = '1';
ROLLBACK;
DELETE FROM ingest_idempotency WHERE site_id = 'xmax';"
	got=$(psql -X -qtA -v ON_ERROR_STOP=1 "$app" <<<"$script" 2>&1) || fail "RETURNING xmax in $1: $got"
	want=$(psql -X -qtA -v ON_ERROR_STOP=1 "$ref" <<<"$script" 2>&1) || fail "RETURNING xmax on the reference: $want"
	[ "$want" = "t|t|0" ] || fail "the reference says $want (PostgreSQL's xmax under a SAVEPOINT)"
	[ "$got" = "$want" ] || fail "RETURNING xmax under a SAVEPOINT in $1: $got, the table says $want"
	ok "$1: RETURNING xmax of an upsert under a SAVEPOINT as the table's (the subtransaction's id, 0 for an insert)"
}
# The same statements in the phases before: the mirror's answers are the table's too.
compare claim dual_write dual_write
same_tables "after the statements of compare.py in dual_write"
c 'SET PHASE read_next FORCE' >/dev/null
compare claim read_next read_next
same_tables "after the statements of compare.py in read_next"
ok "dual_write, read_next: answers identical to the original table's, the two tables identical"

# Statements prepared in read_next (SQL-level and protocol-level), executed in cutover:
# made again behind the client's back, as claims.
cat >"$work/prepared.py" <<'PY'
import sys, psycopg
conn = psycopg.connect(sys.argv[1], autocommit=True)
conn.execute("PREPARE ins (text) AS INSERT INTO ingest_idempotency (site_id, idempotency_key, request_hash)"
             " VALUES ('prep', $1, '') ON CONFLICT (site_id, idempotency_key) DO NOTHING RETURNING idempotency_key")
sql = "INSERT INTO ingest_idempotency (site_id, idempotency_key, request_hash) VALUES ('prep', %s, '')"
conn.execute(sql, ("rn",), prepare=True)
print("prepared", flush=True)
sys.stdin.readline()
got = [conn.execute("EXECUTE ins ('co')").fetchall(), conn.execute("EXECUTE ins ('co')").fetchall()]
assert got == [[("co",)], []], got
conn.execute(sql, ("co2",), prepare=True)
try:
    conn.execute(sql, ("co2",), prepare=True)
    raise SystemExit("a duplicate through a statement prepared in read_next went in")
except psycopg.errors.UniqueViolation as e:
    assert e.diag.constraint_name == "ingest_idempotency_pkey", e.diag.constraint_name
cur = conn.execute("SELECT 1; INSERT INTO ingest_idempotency (site_id, idempotency_key, request_hash)"
                   " VALUES ('prep', 'multi', '') RETURNING idempotency_key; SELECT 2")
rows = []
while True:
    rows.append((cur.statusmessage, cur.fetchall()))
    if not cur.nextset():
        break
assert rows == [("SELECT 1", [(1,)]), ("INSERT 0 1", [("multi",)]), ("SELECT 1", [(2,)])], rows
print("done", flush=True)
PY
coproc PY { /usr/bin/python3 -u "$work/prepared.py" "$app" 2>&1; }
exec {py_in}>&"${PY[1]}" {py_out}<&"${PY[0]}"
read -r -t 20 line <&"$py_out" || fail "psycopg did not start"
[ "$line" = prepared ] || fail "psycopg in read_next: $line"

c 'SET PHASE cutover' >/dev/null
ok "cutover, over $(q "SELECT count(*) FROM ingest_idempotency_next") rows"

echo go >&"$py_in"
out=$(cat <&"$py_out")
[ "$out" = done ] || fail "statements prepared in read_next, executed in cutover: $out"
[ "$(q "SELECT string_agg(idempotency_key, ' ' ORDER BY idempotency_key) FROM ingest_idempotency_next WHERE site_id = 'prep'")" = "co co2 multi rn" ] ||
	fail "prepared claims: next holds $(q "SELECT string_agg(idempotency_key, ' ') FROM ingest_idempotency_next WHERE site_id = 'prep'")"
ok "cutover: SQL-level and protocol-level statements prepared in read_next claim through the view; a claim inside a multi-statement Query"
same_tables "after the prepared claims"
# The reference never saw these rows.
q "DELETE FROM ingest_idempotency WHERE site_id = 'prep'; DELETE FROM ingest_idempotency_next WHERE site_id = 'prep'" >/dev/null

# --- cutover: the client sees what the table says ---
compare cutover cutover
same_tables "after the statements of compare.py"
ok "cutover: answers identical to the original table's, the two tables identical"

# Defaults are evaluated once, for both tables: the claim's row is the stored row.
a "INSERT INTO ingest_idempotency (site_id, idempotency_key, request_hash) VALUES ('def', 'k1', '\\x01'), ('def', 'k2', '\\x02')" >/dev/null
[ "$(q "SELECT count(*) FROM ingest_idempotency o JOIN ingest_idempotency_next n USING (site_id, idempotency_key)
       WHERE o.site_id = 'def' AND o.created_at = n.created_at AND o.expires_at = n.expires_at")" = 2 ] ||
	fail "defaults differ between the table and next_table"
ok "cutover: now() defaults equal in both tables"

# Refused: what would split the tables or break the key (0A000, named table and phase).
refused() {
	local out
	out=$(a "$1") && fail "not refused in $2: $1"
	grep -q "0A000" <<<"$out" || fail "refusal without 0A000: $1: $out"
	grep -q "public.ingest_idempotency in phase $2" <<<"$out" || fail "refusal names no table/phase: $out"
}
for ph in cutover; do
	refused "INSERT INTO ingest_idempotency (site_id, idempotency_key, request_hash) VALUES ('r', '1', '') ON CONFLICT (site_id, idempotency_key) DO UPDATE SET idempotency_key = 'x'" $ph
	refused "INSERT INTO ingest_idempotency (site_id, idempotency_key, request_hash) VALUES ('r', '1', '') ON CONFLICT (site_id, idempotency_key) DO UPDATE SET response_code = (SELECT count(*) FROM ingest_idempotency)" $ph
	refused "PREPARE up AS INSERT INTO ingest_idempotency (site_id, idempotency_key, request_hash) VALUES (\$1, '1', '') ON CONFLICT (site_id, idempotency_key) DO UPDATE SET status = \$1" $ph
	refused "INSERT INTO ingest_idempotency (site_id, idempotency_key, request_hash) VALUES ('r', '1', '') ON CONFLICT (site_id, idempotency_key) DO UPDATE SET status = 'failed';
	         INSERT INTO ingest_idempotency (site_id, idempotency_key, request_hash) VALUES ('r', '2', '') ON CONFLICT (site_id, idempotency_key) DO UPDATE SET status = 'completed'" $ph
	refused "UPDATE ingest_idempotency SET idempotency_key = 'x' WHERE site_id = 'def'" $ph
	refused "UPDATE ingest_idempotency SET created_at = now() WHERE site_id = 'def'" $ph
	refused "MERGE INTO ingest_idempotency t USING (SELECT 1) s ON false WHEN NOT MATCHED THEN DO NOTHING" $ph
	refused "WITH d AS (DELETE FROM ingest_idempotency WHERE site_id = 'def' RETURNING *) SELECT count(*) FROM d" $ph
	refused "TRUNCATE ingest_idempotency" $ph
	refused "COPY ingest_idempotency FROM STDIN" $ph
done
# A SQL-level PREPARE of a DO UPDATE: its EXECUTEs carry the clause (the view reads it
# from the query being run); two DO UPDATEs of one string with the same clause.  The
# same psql session through pgshunt and on the reference prints the same.
upsert_session='PREPARE up AS INSERT INTO ingest_idempotency AS t (site_id, idempotency_key, request_hash) VALUES ($1, $2, $3) ON CONFLICT (site_id, idempotency_key) DO UPDATE SET response_code = coalesce(t.response_code, 0) + 1 RETURNING idempotency_key, response_code, (xmax = 0) AS inserted;
EXECUTE up('"'"'r'"'"', '"'"'p1'"'"', '"'"''"'"');
EXECUTE up('"'"'r'"'"', '"'"'p1'"'"', '"'"''"'"');
DEALLOCATE up;
INSERT INTO ingest_idempotency (site_id, idempotency_key, request_hash) VALUES ('"'"'r'"'"', '"'"'p2'"'"', '"'"''"'"') ON CONFLICT (site_id, idempotency_key) DO UPDATE SET status = '"'"'failed'"'"' RETURNING status\; INSERT INTO ingest_idempotency (site_id, idempotency_key, request_hash) VALUES ('"'"'r'"'"', '"'"'p2'"'"', '"'"''"'"') ON CONFLICT (site_id, idempotency_key) DO UPDATE SET status = '"'"'failed'"'"' RETURNING status;
DELETE FROM ingest_idempotency WHERE site_id = '"'"'r'"'"' AND idempotency_key IN ('"'"'p1'"'"', '"'"'p2'"'"');'
got=$(psql -X -qtA -v ON_ERROR_STOP=1 "$app" <<<"$upsert_session" 2>&1) || fail "SQL-level PREPARE of a DO UPDATE: $got"
want=$(psql -X -qtA -v ON_ERROR_STOP=1 "$ref" <<<"$upsert_session" 2>&1) || fail "the same on the reference: $want"
[ "$got" = "$want" ] || fail "SQL-level PREPARE of a DO UPDATE: got '$got', the table says '$want'"
[ "$(wc -l <<<"$got")" -ge 4 ] || fail "SQL-level PREPARE of a DO UPDATE answered too little: $got"
ok "cutover: a SQL-level PREPARE of a DO UPDATE and two same DO UPDATEs in one string, as on the table: $(tr "\n" " " <<<"$got")"

# One key twice in a bulk upsert of 1,100 keys (past the 1,024 the claim keeps per
# statement): 21000 as on the table, and nothing written.
bulk="INSERT INTO ingest_idempotency (site_id, idempotency_key, request_hash) SELECT 'bulk', 'b' || g, ''::bytea FROM generate_series(1, 1100) AS g UNION ALL SELECT 'bulk', 'b1', ''::bytea ON CONFLICT (site_id, idempotency_key) DO UPDATE SET status = 'failed'"
got=$(psql -X -qtA -v VERBOSITY=verbose "$app" -c "$bulk" 2>&1 | grep -o 'ERROR:  [0-9A-Z]*' || true)
want=$(psql -X -qtA -v VERBOSITY=verbose "$ref" -c "$bulk" 2>&1 | grep -o 'ERROR:  [0-9A-Z]*' || true)
[ "$want" = "ERROR:  21000" ] || fail "the reference says '$want' for one key twice in a bulk upsert"
[ "$got" = "$want" ] || fail "one key twice in a bulk upsert: '$got', the table says '$want'"
[ "$(q "SELECT count(*) FROM ingest_idempotency WHERE site_id = 'bulk'")" = 0 ] || fail "the failed bulk upsert wrote rows"
ok "cutover: one key twice in a bulk upsert of 1,100 keys fails with 21000, as on the table"

# $n in DO UPDATE's clause: the values travel to the trigger (tests/integration/
# test_upsert_params.sh has the whole comparison); psycopg sends an int in binary.  A
# binary value of a type pgshunt does not write as text (interval) is refused.
/usr/bin/python3 - "$app" <<'PY' || fail "DO UPDATE with a parameter in its SET list"
import datetime, sys, psycopg
sql = ("INSERT INTO ingest_idempotency AS t (site_id, idempotency_key, request_hash) VALUES ('r', '3', '')"
       " ON CONFLICT (site_id, idempotency_key) DO UPDATE SET response_code = %s RETURNING response_code")
with psycopg.connect(sys.argv[1], autocommit=True) as c:
    assert c.execute(sql, (7,)).fetchall() == [(None,)]
    assert c.execute(sql, (8,)).fetchall() == [(8,)]
    try:
        c.execute("INSERT INTO ingest_idempotency AS t (site_id, idempotency_key, request_hash) VALUES ('r', '3', '')"
                  " ON CONFLICT (site_id, idempotency_key) DO UPDATE SET expires_at = t.expires_at + %s",
                  (datetime.timedelta(hours=1),))
        raise SystemExit("binary interval not refused")
    except psycopg.errors.FeatureNotSupported as e:
        assert "binary-format parameter $1 (type OID 1186)" in str(e), str(e)
    c.execute("DELETE FROM ingest_idempotency WHERE site_id = 'r' AND idempotency_key = '3'")
PY
# The trigger reads DO UPDATE's clause from the statement pgshunt sends, and nowhere else.
for bad in "" "/*pgshunt:upsert:74*/ /*pgshunt:upsert:75*/"; do
	out=$(psql -X -qtA "$direct" -c "INSERT INTO pgshunt.ingest_idempotency_claim_upsert (site_id, idempotency_key, request_hash) VALUES ('def', 'k1', '') $bad" 2>&1) &&
		fail "an upsert through the view without its one clause went through"
	grep -q "pgshunt: ON CONFLICT DO UPDATE through a claim view needs the statement pgshunt sent" <<<"$out" ||
		fail "upsert without its clause: $out"
done
# A clause that is not one (odd hex, one part only) fails the statement, writes nothing.
for bad in "/*pgshunt:upsert:7*/" "/*pgshunt:upsert:74*/"; do
	psql -X -qtA "$direct" -c "INSERT INTO pgshunt.ingest_idempotency_claim_upsert (site_id, idempotency_key, request_hash, response_code) VALUES ('def', 'k1', '', 99) $bad" >/dev/null 2>&1 &&
		fail "an upsert with the clause $bad went through"
done
[ "$(q "SELECT count(*) FROM ingest_idempotency WHERE response_code = 99")" = 0 ] || fail "a malformed upsert clause wrote"
[ "$(q "SELECT count(*) FROM ingest_idempotency WHERE site_id = 'r'")" = 0 ] || fail "a refused statement wrote"
ok "cutover: DO UPDATE changing the key, SQL-level PREPARE of DO UPDATE with \$n in its clause, two different clauses in one query, key updates, MERGE, writable CTE, TRUNCATE, COPY FROM refused"

# A transaction: a duplicate fails it, ROLLBACK leaves neither table written.
out=$(psql -X -qtA "$app" -c "BEGIN" -c "INSERT INTO ingest_idempotency (site_id, idempotency_key, request_hash) VALUES ('tx', '1', '')" \
	-c "INSERT INTO ingest_idempotency (site_id, idempotency_key, request_hash) VALUES ('tx', '1', '')" -c "COMMIT" 2>&1) || true
grep -q 23505 <<<"$out" || grep -q 'duplicate key' <<<"$out" || fail "duplicate inside a transaction: $out"
[ "$(q "SELECT (SELECT count(*) FROM ingest_idempotency WHERE site_id = 'tx') + (SELECT count(*) FROM ingest_idempotency_next WHERE site_id = 'tx')")" = 0 ] ||
	fail "a failed transaction left rows"
ok "cutover: a failed transaction writes neither table"
xmax_savepoint cutover

expire_30k cutover

# --- DEGRADED in cutover: inserts to the buffer, answered as the table would ---
c 'DEGRADED ON' >/dev/null
compare degraded "DEGRADED"
modes=$(q "SELECT string_agg(pgshunt_conflict || ':' || idempotency_key, ',' ORDER BY pgshunt_seq) FROM ingest_fallback_buffer WHERE site_id = 'cmp-degraded'")
want="nothing:a,none:b,nothing:c,nothing:d,none:g1,none:g2,none:g3,none:g4,none:g5,nothing:p1,none:p2,update:u1,update:u2"
[ "$modes" = "$want" ] || fail "buffer holds $modes, want $want"
[ "$(q "SELECT count(*) FROM ingest_idempotency WHERE site_id = 'cmp-degraded'")" = 0 ] || fail "DEGRADED wrote the table"
out=$(psql -X -A -t -q "$app" -c "INSERT INTO ingest_idempotency (site_id, idempotency_key, request_hash) VALUES ('cmp-degraded', 'a', '\\x09') ON CONFLICT (site_id, idempotency_key) DO NOTHING RETURNING idempotency_key" -c "SELECT 1" 2>&1)
[ "$out" = $'a\n1' ] || fail "DO NOTHING in DEGRADED: $out"
# A constraint fails as on the table (SQLSTATE, constraint), but names the buffer.
out=$(a "INSERT INTO ingest_idempotency (site_id, idempotency_key, request_hash, status) VALUES ('cmp-degraded', 'e', '', 'bogus')") &&
	fail "a CHECK violation was buffered"
grep -q '23514' <<<"$out" && grep -q 'ingest_idempotency_status_check' <<<"$out" || fail "CHECK violation in DEGRADED: $out"
clauses=$(q "SELECT string_agg(pgshunt_conflict_clause, ' | ' ORDER BY pgshunt_seq) FROM ingest_fallback_buffer WHERE site_id = 'cmp-degraded' AND pgshunt_conflict = 'update'")
[ "$clauses" = "ON CONFLICT (site_id, idempotency_key) DO UPDATE SET status = EXCLUDED.status | ON CONFLICT (site_id, idempotency_key) DO UPDATE SET request_hash = EXCLUDED.request_hash" ] ||
	fail "buffered DO UPDATE clauses: $clauses"
[ "$(q "SELECT count(*) FROM ingest_fallback_buffer WHERE pgshunt_conflict <> 'update' AND pgshunt_conflict_clause IS NOT NULL")" = 0 ] ||
	fail "a clause recorded for an insert that had no DO UPDATE"
refused "INSERT INTO ingest_idempotency AS t (site_id, idempotency_key, request_hash) VALUES ('r', '1', '') ON CONFLICT (site_id, idempotency_key) DO UPDATE SET status = 'failed'" cutover
refused "INSERT INTO ingest_idempotency (site_id, idempotency_key, request_hash) VALUES ('r', '1', '') ON CONFLICT (site_id, idempotency_key) DO UPDATE SET site_id = 'x'" cutover
c 'DEGRADED OFF' >/dev/null
ok "DEGRADED: tags and RETURNING as the table's, every insert in the buffer with its conflict mode and DO UPDATE's clause; aliased or key-changing DO UPDATE refused"

# --- finalized: SET PHASE renames (held fleet-wide), then the claim alone ---
out=$(c 'SET PHASE finalized' 2>&1) || fail "SET PHASE finalized: $out"
[ "$(q "SELECT relkind FROM pg_class WHERE oid = 'ingest_idempotency'::regclass")" = p ] || fail "the rename"
# The same statements, from scratch: another site, the reference reset to match.
q "DELETE FROM ingest_idempotency WHERE site_id LIKE 'cmp-%'" >/dev/null
psql -X -qtA "$ref" -c "DELETE FROM ingest_idempotency WHERE site_id LIKE 'cmp-%'; DELETE FROM ingest_idempotency WHERE site_id IN ('def', 'tx')" >/dev/null
q "DELETE FROM ingest_idempotency WHERE site_id IN ('def', 'tx')" >/dev/null
compare claim finalized
[ "$(q "SELECT count(*) FROM ingest_idempotency_old WHERE site_id = 'cmp-claim'")" = 0 ] || fail "finalized wrote the old table"
refused "INSERT INTO ingest_idempotency (site_id, idempotency_key, request_hash) VALUES ('r', '1', '') ON CONFLICT (site_id, idempotency_key) DO UPDATE SET created_at = now()" finalized
refused "UPDATE ingest_idempotency SET idempotency_key = 'x' WHERE site_id = 'seed-1'" finalized
xmax_savepoint finalized
ok "finalized: the claim views survive the rename, answers identical to the original table's"

stop_pgshunt
