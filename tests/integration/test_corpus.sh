#!/usr/bin/env bash
# The whole statement corpus (tests/corpus/statements.txt) through pgshunt in every
# phase, against a reference database that is never migrated
# (tests/integration/corpus_compare.py: simple, unnamed extended and named prepared,
# each statement in BEGIN ... ROLLBACK on both sides).  Refusals of the phase's
# decision files must be 0A000; every other answer must be the original table's.
# DEGRADED in dual_write, cutover and finalized.  After dual_write and cutover the
# table and next_table are compared row for row.
set -euo pipefail

. tests/integration/lib.sh

own_database "corpus_$$"
reference_database "corpusref_$$"

q() { psql -X -qtA -v ON_ERROR_STOP=1 "$direct" -c "$1"; }

# The rows the corpus's literals name, with fixed timestamps where a statement compares
# with a fixed date ('2024-01-01', '2024-06-01') and now()-relative ones where it
# compares with now() (expired rows, 'processing' older than 15 minutes).  The other
# tables the corpus names (sites, orders, archive) exist too, so joins return rows.
extra="
CREATE TABLE sites (id text PRIMARY KEY, name text);
CREATE TABLE orders (id int PRIMARY KEY, site_id text, key text, idempotency_key text, note text, x text);
CREATE TABLE ingest_idempotency_archive (LIKE ingest_idempotency);
INSERT INTO sites VALUES ('a', 'A'), ('b', 'B'), ('site-42', 'forty-two'), ('site-1', 'one'), ('site-7', 'seven'), ('zz', 'no rows');
INSERT INTO orders VALUES (1, 'a', 'b', 'b', 'n1', 'a''b'), (2, 'site-42', 'evt-2024-0001', 'evt-2024-0001', NULL, NULL),
  (3, 'zz', 'nokey', 'nokey', NULL, NULL), (4, 'a', 'k1', 'k1', 'it''s in ingest_idempotency', 'a''b ingest_idempotency');
"
rows="
SELECT seed_ingest_idempotency(600, 30);
INSERT INTO ingest_idempotency VALUES
  ('a', 'b', '\\x00', 'processing', NULL, NULL, '2024-03-01 10:00+00', '2024-03-02 10:00+00'),
  ('a', 'k1', '\\x01', 'completed', 200, '{\"ok\": true}', '2024-03-01 11:00+00', '2099-01-01'),
  ('a', 'k9', '\\x02', 'failed', 502, NULL, '2023-12-20 08:00+00', '2024-01-10'),
  ('a', 'x', '\\x03', 'processing', NULL, '{\"note\": 1}', '2024-05-05 05:05+00', '2099-01-01'),
  ('b', 'k1', '\\x04', 'completed', 201, '{}', '2024-02-02 02:02+00', '2024-02-03'),
  ('site-42', 'evt-2024-0001', '\\x0a0b0c', 'processing', NULL, NULL, '2024-01-01 12:00+00', '2024-01-02 12:00+00'),
  ('site-42', 'evt-2024-0003', '\\x0d', 'failed', 500, '{\"e\": \"x\"}', '2024-01-01 09:00+00', '2024-07-01'),
  ('site-1', 'evt-1', '\\x00', 'completed', 200, NULL, '2024-04-01', '2099-01-01'),
  ('s', 'k', '', 'failed', 409, NULL, '2024-04-02', '2099-01-01'),
  ('old', 'o1', '', 'completed', 200, NULL, '2024-04-03', '2099-01-01'),
  ('multi-line', 'm', '', 'completed', 200, NULL, '2024-04-04', '2099-01-01');
UPDATE ingest_idempotency SET status = 'processing', response_code = NULL
 WHERE site_id = 'site-7' AND idempotency_key IN (SELECT idempotency_key FROM ingest_idempotency WHERE site_id = 'site-7' ORDER BY 1 LIMIT 3);
UPDATE ingest_idempotency SET expires_at = created_at - interval '1 day'
 WHERE site_id = 'site-9';
"
q "$extra" >/dev/null
psql -X -qtA -v ON_ERROR_STOP=1 "$ref" -c "$extra" >/dev/null
q "$rows" >/dev/null
# Both get the very same rows (the seed function uses now()), loaded the same way, so
# that even their heaps match.
psql -X -qtA -v ON_ERROR_STOP=1 "$direct" -c "COPY ingest_idempotency TO STDOUT" >"$work/rows.copy"
q "TRUNCATE ingest_idempotency" >/dev/null
for db in "$direct" "$ref"; do
	psql -X -qtA -v ON_ERROR_STOP=1 "$db" -c "COPY ingest_idempotency FROM STDIN" <"$work/rows.copy"
done
[ "$(q "SELECT count(*) FROM ingest_idempotency")" = "$(psql -X -qtA "$ref" -c "SELECT count(*) FROM ingest_idempotency")" ] ||
	fail "the reference did not get the same rows"
q "ANALYZE" >/dev/null
psql -X -qtA "$ref" -c "ANALYZE" >/dev/null

start_pgshunt "control_dsn = $direct"
c() { psql -X -qtA "$console" -c "$1" 2>&1 || fail "$1: $(psql -X -qtA "$console" -c "$1" 2>&1)"; }
corpus() { # PHASE DEGRADED
	/usr/bin/python3 tests/integration/corpus_compare.py "$1" "$2" "$app" "$direct" "$ref" ||
		fail "corpus in $1 (DEGRADED $2)"
	ok "corpus in $1 (DEGRADED $2): answers identical to the original table's, refusals 0A000"
}
# The table and next_table row for row, both ways (I5).
same_tables() {
	local d
	d=$(q "SELECT (SELECT count(*) FROM (SELECT * FROM ingest_idempotency EXCEPT ALL SELECT * FROM ingest_idempotency_next) a)
	            + (SELECT count(*) FROM (SELECT * FROM ingest_idempotency_next EXCEPT ALL SELECT * FROM ingest_idempotency) b)")
	[ "$d" = 0 ] || fail "$d rows differ between the table and next_table ($1)"
	ok "$1: the table and next_table identical row for row"
}

corpus passthrough 0
c 'MIGRATE PREPARE' >/dev/null
c 'SET PHASE dual_write' >/dev/null
q "INSERT INTO ingest_idempotency_next SELECT * FROM ingest_idempotency FOR SHARE ON CONFLICT DO NOTHING" >/dev/null
corpus dual_write 0
same_tables "after the corpus in dual_write"
c 'DEGRADED ON' >/dev/null
corpus dual_write 1
c 'DEGRADED OFF' >/dev/null
c 'SET PHASE read_next FORCE' >/dev/null
corpus read_next 0
c 'SET PHASE cutover' >/dev/null
corpus cutover 0
same_tables "after the corpus in cutover"
c 'DEGRADED ON' >/dev/null
corpus cutover 1
c 'DEGRADED OFF' >/dev/null
[ "$(q "SELECT count(*) FROM ingest_fallback_buffer")" = 0 ] || fail "DEGRADED statements left rows in the buffer"
out=$(c 'SET PHASE finalized' 2>&1) || fail "SET PHASE finalized: $out"
[ "$(q "SELECT relkind FROM pg_class WHERE oid = 'ingest_idempotency'::regclass")" = p ] || fail "finalized: no rename"
corpus finalized 0
c 'DEGRADED ON' >/dev/null
corpus finalized 1
c 'DEGRADED OFF' >/dev/null
[ "$(q "SELECT count(*) FROM ingest_fallback_buffer")" = 0 ] || fail "DEGRADED statements left rows in the buffer (finalized)"

stop_pgshunt
