#!/bin/bash
# MIGRATE PREPARE's SQL (proxy/sql/schema.sql and prepare.sql) straight against
# PostgreSQL, never through pgshunt: the control schema and pgshunt.set_phase; the
# runbook's LIKE ... INCLUDING ALL failing; migrate_prepare on the production shape
# (next partitioned, its primary key, indexes, defaults, partitions with no gap and no
# default, the buffer, the mirror helpers and their key lock, a second run changing
# nothing, all-or-nothing on failure); its refusals with their SQLSTATEs; a second
# table shape (serial id shared with next, unique index extended, partial index, a
# dropped column, daily partitions).
# Everything lives in a schema of its own (prep_PID), dropped at the end.
# Needs the environment of tests/integration/run.sh (SHUNT_SERVER_PORT).
set -euo pipefail

: "${SHUNT_SERVER_PORT:?}"
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
dsn="host=127.0.0.1 port=$SHUNT_SERVER_PORT dbname=shunt_test user=shunt_admin password=admin-secret"
s=prep_$$
role=prep_app_$$
export PGCONNECT_TIMEOUT=10
# Unqualified names in this test are the test schema's.
export PGOPTIONS="-c search_path=$s,public"
. tests/integration/lib.sh

cleanup() {
	psql -X -q "$dsn" -c "DROP SCHEMA IF EXISTS $s CASCADE" -c "DROP ROLE IF EXISTS $role" \
		>/dev/null 2>&1 || true
}
trap 'cleanup; lib_cleanup' EXIT

# q ARGS...: psql on the server, unaligned, tuples only, quiet, stop on error.
q() { psql -X -q -At -v ON_ERROR_STOP=1 "$dsn" "$@"; }
# qf: the same with the SQL on stdin.
qf() { q -f -; }

# expect_error NAME SQLSTATE MESSAGE-PART SQL: SQL fails with that SQLSTATE and message.
expect_error() {
	local out rc=0
	out=$(q -v VERBOSITY=verbose -c "$4" 2>&1) || rc=$?
	[ "$rc" -ne 0 ] || fail "$1: succeeded, output: $out"
	case $out in
	*"ERROR:  $2: "*) ;;
	*) fail "$1: no SQLSTATE $2 in: $out" ;;
	esac
	case $out in
	*"$3"*) ;;
	*) fail "$1: message without '$3': $out" ;;
	esac
	ok "$1 ($2: $(grep -m1 '^psql.*ERROR:\|^ERROR:' <<<"$out" | sed 's/.*ERROR:  [0-9A-Z]*: //'))"
}

install() {
	local sql
	sql=$(cat "$root/proxy/sql/schema.sql"; echo; cat "$root/proxy/sql/prepare.sql")
	# As pgshunt sends them: both scripts in one simple Query (one implicit transaction).
	q -c "$sql" >/dev/null
}

# ------------------------------------------------------------------ install
install
install
q -1 -f "$root/proxy/sql/schema.sql" >/dev/null
q -1 -f "$root/proxy/sql/prepare.sql" >/dev/null
expect_eq "state rows" "$(q -c "SELECT count(*) FROM pgshunt.state")" 1
expect_eq "schema version" "$(q -c "SELECT version FROM pgshunt.schema_version")" 2
expect_eq "control tables" "$(q -c "SELECT count(*) FROM pg_class WHERE relnamespace = 'pgshunt'::regnamespace
	AND relkind = 'r' AND relname IN ('state', 'phase_log', 'proxies', 'jobs', 'conflicts', 'schema_version')")" 6
for f in "set_phase(text,boolean,boolean,text,text)" "partitions_ensure(regclass,text,timestamptz,integer)" \
	"migrate_prepare(regclass,text,text,name,text,integer,name[])"; do
	expect_eq "function $f" "$(q -c "SELECT to_regprocedure('pgshunt.$f') IS NOT NULL")" t
done
expect_eq "search_path set on every pgshunt function" "$(q -c "SELECT count(*) FROM pg_proc
	WHERE pronamespace = 'pgshunt'::regnamespace
	  AND NOT coalesce(proconfig @> '{\"search_path=pg_catalog, pgshunt\"}', false)")" 0
ok "schema.sql and prepare.sql install, twice, also as one simple Query"

# The state keeps exactly one row.
expect_error "state: no second row" 23505 'duplicate key value violates unique constraint "state_pkey"' \
	"INSERT INTO pgshunt.state DEFAULT VALUES"
expect_error "state: no DELETE" 23000 "pgshunt.state must keep exactly one row" \
	"BEGIN; DELETE FROM pgshunt.state; ROLLBACK"
expect_error "state: no TRUNCATE" 23000 "pgshunt.state must keep exactly one row" \
	"BEGIN; TRUNCATE pgshunt.state; ROLLBACK"
expect_error "state: phase checked" 23514 'violates check constraint "state_phase_check"' \
	"BEGIN; SELECT pgshunt.set_phase('bogus', false, false, 'test_prepare', 'bad'); ROLLBACK"

# ------------------------------------------------------------------ the production shape
q -c "CREATE SCHEMA $s" -c "CREATE ROLE $role NOLOGIN"
sed "s/public\./$s./g" "$root/tests/fixtures/ingest_schema.sql" | q -f - >/dev/null
q -c "SELECT seed_ingest_idempotency(2000, 120)" >/dev/null
q -c "GRANT SELECT, INSERT, UPDATE, DELETE ON ingest_idempotency TO $role" \
	-c "GRANT USAGE ON SCHEMA $s TO $role"
expect_eq "seeded rows" "$(q -c "SELECT count(*) FROM ingest_idempotency")" 2000

# The runbook's way fails: a unique constraint on a partitioned table needs the
# partition column.
expect_error "runbook LIKE ... INCLUDING ALL refused" 0A000 \
	"unique constraint on partitioned table must include all partitioning columns" \
	"CREATE TABLE runbook_next (LIKE ingest_idempotency INCLUDING ALL) PARTITION BY RANGE (created_at)"

prepare_prod="SELECT step, detail FROM pgshunt.migrate_prepare('ingest_idempotency', 'ingest_idempotency_next',
	'ingest_fallback_buffer', 'created_at', 'month', 3, '{site_id,idempotency_key}')"
q -c "$prepare_prod" >"$work/prepare1"
sed 's/^/    /' "$work/prepare1"
# step counts; key_lock(oid, <key types>) is shared by every table with the same key
# types, so it may be there already.
steps() {
	grep -v '|function pgshunt.key_lock(' "$1" | cut -d'|' -f1 | sort | uniq -c | awk '{print $2 "=" $1}' | paste -sd' '
}
expect_eq "first prepare: steps" "$(steps "$work/prepare1")" \
	"create_constraint=1 create_function=4 create_index=1 create_partitions=1 create_table=2 create_view=9"
grep -Eq '^(create_function|exists)\|function pgshunt.key_lock\(oid, text, text\)$' "$work/prepare1" ||
	fail "no key_lock(oid, text, text) step"
ok "migrate_prepare on the production shape"

expect_eq "next partitioned by range (created_at)" "$(q -c "SELECT pt.partstrat::text || ':' || pt.partnatts || ':' || a.attname
	FROM pg_partitioned_table pt JOIN pg_attribute a ON a.attrelid = pt.partrelid AND a.attnum = pt.partattrs[0]
	WHERE pt.partrelid = 'ingest_idempotency_next'::regclass")" "r:1:created_at"
ok "next is partitioned by range (created_at)"

expect_eq "next primary key" "$(q -c "SELECT string_agg(a.attname, ',' ORDER BY k.o)
	FROM pg_constraint c, unnest(c.conkey) WITH ORDINALITY k(n, o), pg_attribute a
	WHERE c.conrelid = 'ingest_idempotency_next'::regclass AND c.contype = 'p'
	  AND a.attrelid = c.conrelid AND a.attnum = k.n")" "site_id,idempotency_key,created_at"
expect_eq "next has no other unique index" "$(q -c "SELECT count(*) FROM pg_index
	WHERE indrelid = 'ingest_idempotency_next'::regclass AND indisunique AND NOT indisprimary")" 0
ok "next's primary key is (site_id, idempotency_key, created_at)"

expect_eq "expires_at index on next" "$(q -c "SELECT count(*) FROM pg_index i JOIN pg_attribute a
	ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
	WHERE i.indrelid = 'ingest_idempotency_next'::regclass AND NOT i.indisunique AND i.indnkeyatts = 1
	  AND a.attname = 'expires_at' AND i.indpred IS NULL AND i.indexprs IS NULL")" 1
ok "the expires_at index exists on next"

# Same columns in the same order, types, NOT NULLs and defaults (pg_get_expr of adbin).
# cols TABLE: its live columns in order, with type, NOT NULL and default.
cols() {
	q -c "SELECT string_agg(format('%s %s %s %s', a.attname, format_type(a.atttypid, a.atttypmod),
		a.attnotnull, coalesce(pg_get_expr(d.adbin, d.adrelid), '-')), ' | ' ORDER BY a.attnum)
		FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
		WHERE a.attrelid = '$1'::regclass AND a.attnum > 0 AND NOT a.attisdropped"
}
old_cols=$(cols ingest_idempotency)
next_cols=$(cols ingest_idempotency_next)
expect_eq "next's columns, NOT NULLs and defaults" "$next_cols" "$old_cols"
case $old_cols in *"created_at timestamp with time zone t now()"*"expires_at timestamp with time zone t (now() + '24:00:00'::interval)"*) ;;
*) fail "unexpected defaults on the table: $old_cols" ;; esac
checks() {
	q -c "SELECT string_agg(pg_get_constraintdef(oid), ' | ' ORDER BY conname) FROM pg_constraint
		WHERE conrelid = '$1'::regclass AND contype = 'c'"
}
expect_eq "next's CHECK constraints" "$(checks ingest_idempotency_next)" "$(checks ingest_idempotency)"
ok "next has old's columns, NOT NULLs, defaults and CHECKs"

# Partitions: contiguous, from the month of the oldest row to 3 months ahead, named by
# their lower bound, no default partition.
# bounds TABLE: a WITH giving q(relname, lo, hi) for its partitions and g(hi, nlo) for
# each one's upper bound and the next one's lower bound.
bounds() {
	echo "WITH p AS (
	SELECT c.relname, regexp_match(pg_get_expr(c.relpartbound, c.oid), 'FROM \(''([^'']*)''\) TO \(''([^'']*)''\)') b
	FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = '$1'::regclass),
	q AS (SELECT relname, b[1]::timestamptz lo, b[2]::timestamptz hi FROM p),
	g AS (SELECT hi, lead(lo) OVER (ORDER BY lo) AS nlo FROM q)"
}
out=$(q -c "$(bounds ingest_idempotency_next)
	SELECT count(*), min(lo) <= (SELECT min(created_at) FROM ingest_idempotency),
	       max(hi) >= now() + interval '3 months',
	       (SELECT count(*) FROM g WHERE nlo IS NOT NULL AND nlo <> hi),
	       bool_and(relname = to_char(lo AT TIME ZONE 'UTC', '\"ingest_idempotency_next_y\"YYYY\"m\"MM')),
	       bool_and(hi = (lo AT TIME ZONE 'UTC' + interval '1 month') AT TIME ZONE 'UTC'),
	       count(*) FILTER (WHERE lo IS NULL OR hi IS NULL)
	FROM q")
IFS='|' read -r nparts covers_min covers_ahead gaps names_ok months_ok unparsed <<<"$out"
# 120 days back touch 4 or 5 months, then 3 ahead.
[ "$nparts" -ge 7 ] || fail "partitions: only $nparts (120 days back to 3 months ahead needs 7 or more)"
expect_eq "partitions parsed" "$unparsed" 0
expect_eq "partitions cover min(created_at)" "$covers_min" t
expect_eq "partitions cover now + 3 months" "$covers_ahead" t
expect_eq "partition gaps" "$gaps" 0
expect_eq "partition names <next>_yYYYYmMM" "$names_ok" t
expect_eq "partitions one month each" "$months_ok" t
expect_eq "no default partition" "$(q -c "SELECT partdefid FROM pg_partitioned_table
	WHERE partrelid = 'ingest_idempotency_next'::regclass")" 0
ok "$nparts monthly partitions, no gap, min(created_at) to now + 3 months, no default"

expect_eq "every old row finds a partition" "$(q -c "BEGIN" \
	-c "INSERT INTO ingest_idempotency_next SELECT * FROM ingest_idempotency" \
	-c "SELECT count(*) FROM ingest_idempotency_next" -c "ROLLBACK")" 2000
expect_eq "next empty again" "$(q -c "SELECT count(*) FROM ingest_idempotency_next")" 0
ok "INSERT INTO next SELECT * FROM old (rolled back) succeeds for all 2000 rows"
expect_error "a row outside every partition fails" 23514 "no partition of relation \"ingest_idempotency_next\" found for row" \
	"INSERT INTO ingest_idempotency_next (site_id, idempotency_key, request_hash, created_at)
	 VALUES ('s', 'k', '\\x00', now() + interval '2 years')"

# The buffer: pgshunt's four columns, then old's with their defaults and NOT NULLs, no
# unique index on the key, old's CHECKs kept.
buf_cols=$(cols ingest_fallback_buffer)
expect_eq "buffer columns" "$buf_cols" "pgshunt_seq bigint t nextval('ingest_fallback_buffer_pgshunt_seq_seq'::regclass) | pgshunt_at timestamp with time zone t clock_timestamp() | pgshunt_conflict text t 'none'::text | pgshunt_conflict_clause text f - | $old_cols"
expect_eq "buffer's only unique index is on pgshunt_seq" "$(q -c "SELECT string_agg(pg_get_indexdef(indexrelid), ';')
	FROM pg_index WHERE indrelid = 'ingest_fallback_buffer'::regclass AND indisunique")" \
	"CREATE UNIQUE INDEX ingest_fallback_buffer_pkey ON $s.ingest_fallback_buffer USING btree (pgshunt_seq)"
expect_eq "buffer keeps old's CHECK" "$(q -c "SELECT count(*) FROM pg_constraint WHERE conrelid = 'ingest_fallback_buffer'::regclass
	AND contype = 'c' AND pg_get_constraintdef(oid) = (SELECT pg_get_constraintdef(oid) FROM pg_constraint
	WHERE conrelid = 'ingest_idempotency'::regclass AND contype = 'c')")" 1
expect_eq "buffer takes a duplicate key" "$(q -c "BEGIN" \
	-c "INSERT INTO ingest_fallback_buffer (site_id, idempotency_key, request_hash) VALUES ('b', 'k', '\\x01'), ('b', 'k', '\\x02')" \
	-c "SELECT count(*) || ' ' || min(pgshunt_conflict) FROM ingest_fallback_buffer" -c "ROLLBACK")" "2 none"
expect_error "buffer checks pgshunt_conflict" 23514 "pgshunt_conflict_check" \
	"INSERT INTO ingest_fallback_buffer (pgshunt_conflict, site_id, idempotency_key, request_hash) VALUES ('bogus', 'b', 'k', '\\x01')"
expect_error "buffer checks old's CHECK" 23514 "ingest_idempotency_status_check" \
	"INSERT INTO ingest_fallback_buffer (site_id, idempotency_key, request_hash, status) VALUES ('b', 'k', '\\x01', 'bogus')"
ok "the buffer has pgshunt's columns, old's columns, defaults and CHECKs, no key uniqueness"

# Privileges and owner follow old.
expect_eq "next's privileges" "$(q -c "SELECT string_agg(privilege_type, ',' ORDER BY privilege_type)
	FROM pg_class c, aclexplode(c.relacl) a WHERE c.oid = 'ingest_idempotency_next'::regclass
	AND a.grantee = '$role'::regrole")" "DELETE,INSERT,SELECT,UPDATE"
expect_eq "buffer's privileges" "$(q -c "SELECT string_agg(privilege_type, ',' ORDER BY privilege_type)
	FROM pg_class c, aclexplode(c.relacl) a WHERE c.oid = 'ingest_fallback_buffer'::regclass
	AND a.grantee = '$role'::regrole")" "DELETE,INSERT,SELECT,UPDATE"
ok "next and the buffer carry old's privileges"

# ------------------------------------------------------------------ mirror helpers
same_row="SELECT count(*) FILTER (WHERE o::text = n::text) || '/' || count(n.site_id) || '/' || count(o.site_id)
	FROM ingest_idempotency o FULL JOIN ingest_idempotency_next n USING (site_id, idempotency_key)
	WHERE coalesce(o.site_id, n.site_id) = 'mirror'"

# An INSERT carrying its mirror, as the statement engine rewrites it; the defaults
# (now(), now() + 24 hours) are copied, not evaluated again.
q -c "INSERT INTO ingest_idempotency (site_id, idempotency_key, request_hash)
	VALUES ('mirror', 'k1', '\\xdead') ON CONFLICT (site_id, idempotency_key) DO NOTHING
	RETURNING created_at, pgshunt.put_next(ingest_idempotency)" >/dev/null
expect_eq "put_next copies the row" "$(q -c "$same_row")" "1/1/1"
# A seeded row, and a second put_next of the same row.
q -c "UPDATE ingest_idempotency SET site_id = 'mirror' WHERE idempotency_key = 'seed-' || md5('7')" >/dev/null
q -c "SELECT pgshunt.put_next(o) FROM ingest_idempotency o WHERE site_id = 'mirror'" >/dev/null
q -c "SELECT pgshunt.put_next(o) FROM ingest_idempotency o WHERE site_id = 'mirror'" >/dev/null
expect_eq "put_next twice keeps one row per key" "$(q -c "$same_row")" "2/2/2"
ok "put_next makes an identical row in next, and twice keeps one"

# The partition column changes: the row moves to another partition.
part_of="SELECT tableoid::regclass FROM ingest_idempotency_next WHERE site_id = 'mirror' AND idempotency_key = 'k1'"
p1=$(q -c "$part_of")
q -c "UPDATE ingest_idempotency SET created_at = created_at - interval '40 days', status = 'completed'
	WHERE site_id = 'mirror' AND idempotency_key = 'k1' RETURNING pgshunt.put_next(ingest_idempotency)" >/dev/null
p2=$(q -c "$part_of")
if [ -z "$p2" ] || [ "$p1" = "$p2" ]; then fail "the row did not move partitions: $p1 -> $p2"; fi
expect_eq "after the move" "$(q -c "$same_row")" "2/2/2"
ok "a changed created_at moves the row ($p1 -> $p2)"

q -c "DELETE FROM ingest_idempotency WHERE site_id = 'mirror' AND idempotency_key = 'k1'
	RETURNING pgshunt.del_next(ingest_idempotency)" >/dev/null
expect_eq "del_next removes the row" "$(q -c "$same_row")" "1/1/1"
expect_eq "k1 gone from next" "$(q -c "SELECT count(*) FROM ingest_idempotency_next WHERE idempotency_key = 'k1'")" 0
ok "del_next removes the row from next"

# The per-key lock: pg_advisory_xact_lock(old's oid, hashtext(site_id || chr(31) || key)),
# taken by key_lock (the finalized claim, the jobs), not by the mirror helpers: old's
# unique index orders their writes, and a lock per row fills the lock table.
locks="SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()
	    AND classid = 'ingest_idempotency'::regclass::oid AND objsubid = 2 AND mode = 'ExclusiveLock'
	    AND objid::bigint = (hashtext('mirror' || chr(31) || 'seed-' || md5('7'))::bigint & 4294967295)"
out=$(q -c "BEGIN" -c "SELECT pgshunt.key_lock('ingest_idempotency'::regclass, 'mirror', 'seed-' || md5('7'))" \
	-c "$locks" -c "ROLLBACK")
expect_eq "key lock held" "$(tail -n1 <<<"$out")" 1
out=$(q -c "BEGIN" -c "SELECT pgshunt.put_next(o) FROM ingest_idempotency o WHERE site_id = 'mirror'" \
	-c "$locks" -c "ROLLBACK")
expect_eq "no key lock taken by put_next" "$(tail -n1 <<<"$out")" 0
ok "key_lock takes the per-key advisory lock (old's oid, hashtext of the key); put_next takes none"

# The cutover direction: next written, old mirrored.
q -c "INSERT INTO ingest_idempotency_next (site_id, idempotency_key, request_hash)
	VALUES ('mirror', 'k2', '\\xbeef') RETURNING pgshunt.put_old(ingest_idempotency_next)" >/dev/null
expect_eq "put_old copies the row" "$(q -c "$same_row")" "2/2/2"
q -c "DELETE FROM ingest_idempotency_next WHERE site_id = 'mirror' AND idempotency_key = 'k2'
	RETURNING pgshunt.del_old(ingest_idempotency_next)" >/dev/null
expect_eq "del_old removes the row" "$(q -c "$same_row")" "1/1/1"
ok "put_old and del_old mirror next into old"

# An application role that owns nothing but has old's privileges can write through them.
q -c "SET ROLE $role" -c "INSERT INTO ingest_idempotency (site_id, idempotency_key, request_hash)
	VALUES ('mirror', 'k3', '\\x03') RETURNING pgshunt.put_next(ingest_idempotency)" >/dev/null
expect_eq "put_next as the application role" "$(q -c "$same_row")" "2/2/2"
ok "the mirror works for a role with old's privileges only"

# ------------------------------------------------------------------ second run
catalog_sql="SELECT md5(string_agg(x, E'\n' ORDER BY x)) FROM (
	SELECT c.oid::text || c.relname || c.relkind::text || coalesce(pg_get_expr(c.relpartbound, c.oid), '') AS x
	  FROM pg_class c WHERE c.relnamespace = '$s'::regnamespace
	UNION ALL SELECT p.oid::text || p.proname || p.prosrc || p.xmin::text FROM pg_proc p
	 WHERE p.pronamespace = 'pgshunt'::regnamespace
	UNION ALL SELECT conname || conrelid::text || pg_get_constraintdef(oid) FROM pg_constraint
	 WHERE connamespace = '$s'::regnamespace) t"
before=$(q -c "$catalog_sql")
q -c "$prepare_prod" >"$work/prepare2"
expect_eq "second prepare: only 'exists'" "$(cut -d'|' -f1 "$work/prepare2" | sort -u)" exists
expect_eq "second prepare: as many steps" "$(wc -l <"$work/prepare2")" "$(wc -l <"$work/prepare1")"
expect_eq "second prepare changed nothing" "$(q -c "$catalog_sql")" "$before"
ok "a second migrate_prepare reports only 'exists' and changes nothing"

# partitions_ensure alone (the upkeep job): nothing to do, then more ahead.
expect_eq "partitions_ensure with nothing due" "$(q -c "SELECT pgshunt.partitions_ensure('ingest_idempotency_next', 'month', now(), 3)")" 0
expect_eq "partitions_ensure two more ahead" "$(q -c "SELECT pgshunt.partitions_ensure('ingest_idempotency_next', 'month', now(), 5)")" 2
expect_error "partitions_ensure refuses another interval over existing partitions" 42P17 "would overlap partition" \
	"SELECT pgshunt.partitions_ensure('ingest_idempotency_next', 'week', now(), 0)"
ok "partitions_ensure creates what is missing and only that"

# ------------------------------------------------------------------ all or nothing
q -c "CREATE TABLE atom (k text PRIMARY KEY, at timestamptz NOT NULL DEFAULT now())" \
	-c "CREATE TABLE atom_next_$(date -u +y%Ym%m) (k text)"
expect_error "a taken partition name fails the whole prepare" 42P07 "exists and is not a partition of $s.atom_next" \
	"SELECT * FROM pgshunt.migrate_prepare('atom', 'atom_next', 'atom_buffer', 'at', 'month', 1, '{k}')"
expect_eq "nothing left behind" "$(q -c "SELECT to_regclass('atom_next') IS NULL AND to_regclass('atom_buffer') IS NULL
	AND to_regprocedure('pgshunt.put_next($s.atom)') IS NULL")" t
ok "a failed migrate_prepare leaves nothing behind"

# ------------------------------------------------------------------ refusals
q -c "CREATE TABLE nopart (site_id text, idempotency_key text, PRIMARY KEY (site_id, idempotency_key))" \
	-c "CREATE TABLE nouniq (id bigserial PRIMARY KEY, site_id text NOT NULL, idempotency_key text NOT NULL,
	    created_at timestamptz NOT NULL)" \
	-c "CREATE INDEX ON nouniq (site_id, idempotency_key)" \
	-c "CREATE UNIQUE INDEX ON nouniq (site_id, idempotency_key) WHERE id > 0" \
	-c "CREATE TABLE texttime (site_id text, idempotency_key text, created_at text, PRIMARY KEY (site_id, idempotency_key))" \
	-c "CREATE TABLE plain_next (LIKE ingest_idempotency)" \
	-c "CREATE TABLE other_next (LIKE ingest_idempotency) PARTITION BY RANGE (expires_at)"
prep() { # table next partition-column keys
	echo "SELECT * FROM pgshunt.migrate_prepare('$1', '$2', 'refused_buffer', '$3', 'month', 1, '$4')"
}
expect_error "refused: no partition column" 42703 "table $s.nopart has no column \"created_at\"" \
	"$(prep nopart nopart_next created_at '{site_id,idempotency_key}')"
expect_error "refused: no such key column" 42703 "table $s.ingest_idempotency has no column \"request_id\"" \
	"$(prep ingest_idempotency refused_next created_at '{site_id,request_id}')"
expect_error "refused: no unique index on the key" 0A000 \
	"table $s.nouniq has no primary key or unique index on exactly (site_id, idempotency_key)" \
	"$(prep nouniq nouniq_next created_at '{site_id,idempotency_key}')"
expect_error "refused: a key that is not the whole unique key" 0A000 \
	"table $s.ingest_idempotency has no primary key or unique index on exactly (site_id)" \
	"$(prep ingest_idempotency refused_next created_at '{site_id}')"
expect_error "refused: partition column not a time type" 0A000 \
	"partition column \"created_at\" of table $s.texttime is of type text" \
	"$(prep texttime texttime_next created_at '{site_id,idempotency_key}')"
expect_error "refused: next exists, not partitioned" 0A000 \
	"next table $s.plain_next exists but is not partitioned by range on \"created_at\"" \
	"$(prep ingest_idempotency plain_next created_at '{site_id,idempotency_key}')"
expect_error "refused: next exists, partitioned on another column" 0A000 \
	"next table $s.other_next exists but is not partitioned by range on \"created_at\"" \
	"$(prep ingest_idempotency other_next created_at '{site_id,idempotency_key}')"
long=$(printf 'n%.0s' $(seq 54))
expect_error "refused: next table name too long for its partitions" 42622 \
	"next table name '$long' is longer than 53 bytes" "$(prep ingest_idempotency "$long" created_at '{site_id,idempotency_key}')"
expect_error "refused: buffer table name over 63 bytes" 42622 \
	"buffer table name '$long$long' is longer than 63 bytes" \
	"SELECT * FROM pgshunt.migrate_prepare('ingest_idempotency', 'x_next', '$long$long', 'created_at', 'month', 1, '{site_id,idempotency_key}')"
expect_error "refused: bad interval" 22023 "partition interval must be day, week or month" \
	"SELECT * FROM pgshunt.migrate_prepare('ingest_idempotency', 'x_next', 'x_buf', 'created_at', 'year', 1, '{site_id,idempotency_key}')"
expect_eq "refusals left nothing" "$(q -c "SELECT count(*) FROM pg_class WHERE relnamespace = '$s'::regnamespace
	AND relname IN ('nopart_next', 'refused_next', 'nouniq_next', 'texttime_next', 'refused_buffer', 'x_next', 'x_buf')")" 0
ok "refusals are clear and leave nothing behind"

# ------------------------------------------------------------------ a second table shape
qf >/dev/null <<'SQL'
CREATE TABLE payments (
    id          bigserial,
    tenant      text,
    request_id  uuid DEFAULT gen_random_uuid(),
    payload     jsonb,
    legacy      integer,
    amount      numeric(12,2),
    inserted_at timestamptz DEFAULT clock_timestamp(),
    PRIMARY KEY (tenant, request_id)
);
ALTER TABLE payments DROP COLUMN legacy;
CREATE UNIQUE INDEX payments_id_key ON payments (id);
CREATE INDEX payments_big_idx ON payments (tenant, inserted_at) WHERE amount >= 1000;
INSERT INTO payments (tenant, payload, amount, inserted_at)
SELECT 't' || (g % 5), jsonb_build_object('n', g), g * 10, now() - g * interval '1 hour'
FROM generate_series(1, 100) AS g;
SQL
q -c "SELECT step, detail FROM pgshunt.migrate_prepare('payments', 'payments_next', 'payments_buffer',
	'inserted_at', 'day', 2, '{tenant,request_id}')" >"$work/prepare3" 2>"$work/prepare3.err"
sed 's/^/    /' "$work/prepare3"
grep -q 'WARNING:  partition column "inserted_at" of table '"$s"'.payments allows NULL' "$work/prepare3.err" ||
	fail "no warning about the nullable inserted_at: $(cat "$work/prepare3.err")"
expect_eq "second shape: steps" "$(steps "$work/prepare3")" \
	"create_constraint=1 create_function=4 create_index=2 create_partitions=1 create_table=2 create_view=9"
grep -Eq '^(create_function|exists)\|function pgshunt.key_lock\(oid, text, uuid\)$' "$work/prepare3" ||
	fail "no key_lock(oid, text, uuid) step"
ok "migrate_prepare on the second shape (key tenant, request_id; daily partitions)"

expect_eq "payments_next primary key" "$(q -c "SELECT string_agg(a.attname, ',' ORDER BY k.o)
	FROM pg_constraint c, unnest(c.conkey) WITH ORDINALITY k(n, o), pg_attribute a
	WHERE c.conrelid = 'payments_next'::regclass AND c.contype = 'p'
	  AND a.attrelid = c.conrelid AND a.attnum = k.n")" "tenant,request_id,inserted_at"
expect_eq "unique index on id extended with inserted_at" "$(q -c "SELECT string_agg(a.attname, ',' ORDER BY k.o)
	FROM pg_index i, unnest(i.indkey::int2[]) WITH ORDINALITY k(n, o), pg_attribute a
	WHERE i.indrelid = 'payments_next'::regclass AND i.indisunique AND NOT i.indisprimary
	  AND a.attrelid = i.indrelid AND a.attnum = k.n")" "id,inserted_at"
expect_eq "partial index kept" "$(q -c "SELECT pg_get_expr(indpred, indrelid) FROM pg_index
	WHERE indrelid = 'payments_next'::regclass AND indpred IS NOT NULL")" \
	"$(q -c "SELECT pg_get_expr(indpred, indrelid) FROM pg_index WHERE indrelid = 'payments'::regclass AND indpred IS NOT NULL")"
expect_eq "partial index columns" "$(q -c "SELECT pg_get_indexdef(indexrelid, 1, false) || ',' || pg_get_indexdef(indexrelid, 2, false)
	FROM pg_index WHERE indrelid = 'payments_next'::regclass AND indpred IS NOT NULL")" "tenant,inserted_at"
p_old_cols=$(cols payments)
expect_eq "payments_next columns and defaults (the dropped column is not carried)" \
	"$(cols payments_next)" \
	"${p_old_cols/inserted_at timestamp with time zone f/inserted_at timestamp with time zone t}"
case $p_old_cols in *"id bigint t nextval('payments_id_seq'::regclass)"*) ;;
*) fail "payments id default: $p_old_cols" ;; esac
expect_eq "payments_next has no dropped column" "$(q -c "SELECT count(*) FROM pg_attribute
	WHERE attrelid = 'payments_next'::regclass AND attisdropped")" 0
out=$(q -c "$(bounds payments_next)
	SELECT count(*), min(lo) <= (SELECT min(inserted_at) FROM payments),
	       max(hi) >= date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' + interval '3 days',
	       (SELECT count(*) FROM g WHERE nlo IS NOT NULL AND nlo <> hi),
	       bool_and(relname = to_char(lo AT TIME ZONE 'UTC', '\"payments_next_p\"YYYYMMDD')),
	       bool_and(hi = lo + interval '1 day')
	FROM q")
IFS='|' read -r nparts covers_min covers_ahead gaps names_ok days_ok <<<"$out"
expect_eq "daily partitions: cover min(inserted_at), now + 2 days ahead, no gap, names, one day each" \
	"$covers_min $covers_ahead $gaps $names_ok $days_ok" "t t 0 t t"
ok "payments_next: key + inserted_at, unique (id, inserted_at), partial index, $nparts daily partitions"

# next shares old's sequence: the mirror keeps the id, and a default id on next comes
# from the same sequence.
out=$(q -c "INSERT INTO payments (tenant, payload, amount) VALUES ('mirror', '{\"a\": 1}', 12.5)
	RETURNING id, pgshunt.put_next(payments)")
id=${out%%|*}
expect_eq "the mirrored row is identical (id, gen_random_uuid(), clock_timestamp())" "$(q -c "SELECT count(*) || '/' || count(*) FILTER (WHERE o::text = n::text)
	FROM payments o JOIN payments_next n USING (tenant, request_id) WHERE tenant = 'mirror'")" "1/1"
expect_eq "the mirrored id" "$(q -c "SELECT id FROM payments_next WHERE tenant = 'mirror'")" "$id"
expect_eq "next's id default is old's sequence" "$(q -c "INSERT INTO payments_next (tenant, amount) VALUES ('direct', 1)
	RETURNING id")" "$((id + 1))"
expect_eq "old continues after it" "$(q -c "INSERT INTO payments (tenant, amount) VALUES ('after', 1) RETURNING id")" "$((id + 2))"
q -c "UPDATE payments SET amount = 2000 WHERE tenant = 'mirror' RETURNING pgshunt.put_next(payments)" >/dev/null
expect_eq "update mirrored" "$(q -c "SELECT amount FROM payments_next WHERE tenant = 'mirror'")" "2000.00"
ok "next shares the id sequence; put_next keeps the id, the uuid and the timestamp"

q -c "SELECT step FROM pgshunt.migrate_prepare('payments', 'payments_next', 'payments_buffer',
	'inserted_at', 'day', 2, '{tenant,request_id}')" >"$work/prepare4" 2>/dev/null
expect_eq "second shape, second run" "$(sort -u "$work/prepare4")" exists
ok "the second shape's second run reports only 'exists'"

# ------------------------------------------------------------------ set_phase
read -r phase0 epoch0 deg0 <<<"$(q -F' ' -c "SELECT phase, epoch, degraded FROM pgshunt.state")"
# A real move, rolled back (the shared state must stay as it was for the other tests).
out=$(q -F' ' -c "BEGIN" -c "SELECT pgshunt.set_phase('dual_write', true, true, 'test_prepare', 'rolled back')" \
	-c "SELECT phase, epoch, degraded, changed_by FROM pgshunt.state" \
	-c "SELECT from_phase, to_phase, epoch, degraded, forced, by, note FROM pgshunt.phase_log ORDER BY id DESC LIMIT 1" \
	-c "ROLLBACK")
expect_eq "set_phase in a transaction" "$out" "$((epoch0 + 1))
dual_write $((epoch0 + 1)) t test_prepare
$phase0 dual_write $((epoch0 + 1)) t t test_prepare rolled back"
ok "set_phase moves the phase, bumps the epoch and writes phase_log"

# Committed, with the current phase (an epoch bump only), while a session listens.
out=$(psql -X -q -At "$dsn" 2>&1 <<EOF
LISTEN pgshunt_phase;
\\! psql -X -q -At "$dsn" -c "SELECT pgshunt.set_phase('$phase0', '$deg0'::boolean, false, 'test_prepare', 'epoch bump')" >$work/epoch
SELECT 'after';
EOF
)
epoch1=$(cat "$work/epoch")
expect_eq "set_phase returns the new epoch" "$epoch1" "$((epoch0 + 1))"
deg_json=false
[ "$deg0" = t ] && deg_json=true
grep -qF "Asynchronous notification \"pgshunt_phase\" with payload \"{\"phase\" : \"$phase0\", \"epoch\" : $epoch1, \"degraded\" : $deg_json}\" received from server process" <<<"$out" ||
	fail "no pgshunt_phase notification in: $out"
expect_eq "state after the bump" "$(q -F' ' -c "SELECT phase, epoch, degraded FROM pgshunt.state")" "$phase0 $epoch1 $deg0"
expect_eq "phase_log after the bump" "$(q -F' ' -c "SELECT to_phase, epoch, by, note FROM pgshunt.phase_log ORDER BY id DESC LIMIT 1")" \
	"$phase0 $epoch1 test_prepare epoch bump"
ok "set_phase notifies pgshunt_phase with phase, epoch and degraded"

echo "test_prepare: all ok"
