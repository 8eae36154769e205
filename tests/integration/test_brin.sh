#!/usr/bin/env bash
# INDEX BRIN: the B-tree on expires_at becomes a BRIN index of the same name, built
# concurrently on a connection of its own while writes go on; queries return the same
# rows; run again it refuses (already BRIN), and without the index it refuses too.
# Then the same on a partitioned table (the authoritative one at cutover): per
# partition and the parent.
set -euo pipefail

. tests/integration/lib.sh

own_database "brin_$$"
psql -X -q "$direct" -c "SELECT seed_ingest_idempotency(5000)" >/dev/null
start_pgshunt "control_dsn = $direct"

db() { psql -X -qtA "$direct" -c "$1"; }
run() { psql -X -qtA -F'|' "$console" -c "$1"; }
expect_error() { # command sqlstate pattern
	local out
	if out=$(psql -X -qtA -v VERBOSITY=verbose "$console" -c "$1" 2>&1); then fail "$1 succeeded: $out"; fi
	grep -q "ERROR:  $2:" <<<"$out" || fail "$1: want $2, got: $out"
	grep -qE -- "$3" <<<"$out" || fail "$1: message lacks /$3/: $out"
	echo "ok: $1 -> $2"
}
am_of() { # index -> its access method
	db "SELECT am.amname FROM pg_class c JOIN pg_am am ON am.oid = c.relam WHERE c.oid = to_regclass('$1')"
}
query='SELECT site_id, idempotency_key FROM ingest_idempotency WHERE expires_at > now() - interval '"'"'30 days'"'"' ORDER BY 1, 2'

before=$(psql -X -qtA "$app" -c "$query" | md5sum)
n_before=$(psql -X -qtA "$app" -c "SELECT count(*) FROM ingest_idempotency WHERE expires_at > now() - interval '30 days'")
[ "$(am_of idx_ingest_idempotency_expires_at)" = btree ] || fail "no B-tree to start with"

# Writes through pgshunt while the index is swapped.
(
	for i in $(seq 200); do
		psql -X -q "$app" -c "INSERT INTO ingest_idempotency (site_id, idempotency_key, request_hash, expires_at) VALUES ('b', 'w-$i', '\\x00', now() - interval '400 days')" >/dev/null || exit 1
	done
) &
writer=$!
out=$(run "INDEX BRIN") || fail "INDEX BRIN: $out"
wait "$writer" || fail "a write failed during INDEX BRIN"
echo "$out"
grep -q '^create_brin|' <<<"$out" || fail "no create_brin step: $out"
grep -q '^drop_btree|' <<<"$out" || fail "no drop_btree step: $out"
grep -q '^rename|' <<<"$out" || fail "no rename step: $out"
[ "$(am_of idx_ingest_idempotency_expires_at)" = brin ] || fail "idx_ingest_idempotency_expires_at is $(am_of idx_ingest_idempotency_expires_at)"
[ "$(db "SELECT count(*) FROM pg_index x JOIN pg_class c ON c.oid = x.indexrelid JOIN pg_am am ON am.oid = c.relam JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = x.indkey[0] WHERE x.indrelid = 'ingest_idempotency'::regclass AND a.attname = 'expires_at' AND am.amname = 'btree'")" = 0 ] ||
	fail "a B-tree on expires_at is left"
[ "$(db "SELECT bool_and(indisvalid) FROM pg_index WHERE indrelid = 'ingest_idempotency'::regclass")" = t ] || fail "an invalid index is left"
[ "$(db "SELECT count(*) FROM ingest_idempotency WHERE idempotency_key LIKE 'w-%'")" = 200 ] || fail "writes lost"
after=$(psql -X -qtA "$app" -c "$query" | md5sum)
[ "$before" = "$after" ] || fail "the query returns other rows after the swap"
# The planner may use the BRIN index: same answer with sequential scans off.
n_after=$(psql -X -qtA "$app" -c "SET enable_seqscan = off" -c "SELECT count(*) FROM ingest_idempotency WHERE expires_at > now() - interval '30 days'")
[ "$n_after" = "$n_before" ] || fail "count with the BRIN index $n_after, before $n_before"
ok "plain table: BRIN index of the same name, no B-tree, same rows ($n_before), 200 concurrent writes kept"

expect_error "INDEX BRIN" 55000 "not a B-tree: .*idx_ingest_idempotency_expires_at \\(brin\\)"
db "DROP INDEX idx_ingest_idempotency_expires_at"
expect_error "INDEX BRIN" 55000 "has no index on expires_at"
expect_error "INDEX BRIN now" 42601 "unknown pgshunt console command"
ok "refusals: already BRIN, no index, arguments"
# MIGRATE PREPARE copies the table's indexes to next_table: a B-tree again.
db "CREATE INDEX idx_ingest_idempotency_expires_at ON ingest_idempotency (expires_at)"

# --- partitioned: next_table, authoritative at cutover ---
run "MIGRATE PREPARE" >/dev/null
db "INSERT INTO ingest_idempotency_next SELECT * FROM ingest_idempotency WHERE created_at > now() - interval '20 days'" >/dev/null
nparts=$(db "SELECT count(*) FROM pg_partition_tree('ingest_idempotency_next') WHERE isleaf")
pidx=$(db "SELECT x.indexrelid::regclass FROM pg_index x JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = x.indkey[0] WHERE x.indrelid = 'ingest_idempotency_next'::regclass AND a.attname = 'expires_at' AND x.indnkeyatts = 1")
[ -n "$pidx" ] || fail "next_table has no index on expires_at"
[ "$(am_of "$pidx")" = btree ] || fail "$pidx is not a B-tree"
names_before=$(db "SELECT string_agg(c.relname, ',' ORDER BY c.relname) FROM pg_inherits h JOIN pg_class c ON c.oid = h.inhrelid WHERE h.inhparent = '$pidx'::regclass")
nquery="SELECT count(*), md5(string_agg(idempotency_key, ',' ORDER BY idempotency_key)) FROM ingest_idempotency_next WHERE expires_at > now() - interval '10 days'"
nbefore=$(db "$nquery")
db "SELECT pgshunt.set_phase('cutover', false, true, 'test', 'brin')" >/dev/null
for _ in $(seq 50); do [ "$(run 'SHOW PHASE' | cut -d'|' -f1)" = cutover ] && break; sleep 0.1; done
out=$(run "INDEX BRIN") || fail "INDEX BRIN on the partitioned table: $out"
echo "$out"
[ "$(grep -c '^create_brin|' <<<"$out")" = "$nparts" ] || fail "want $nparts create_brin steps: $out"
[ "$(grep -c '^attach|' <<<"$out")" = "$nparts" ] || fail "want $nparts attach steps"
grep -q '^create_parent|' <<<"$out" || fail "no create_parent step"
[ "$(am_of "$pidx")" = brin ] || fail "$pidx is $(am_of "$pidx") after the swap"
[ "$(db "SELECT indisvalid FROM pg_index WHERE indexrelid = '$pidx'::regclass")" = t ] || fail "the parent's BRIN index is not valid"
names_after=$(db "SELECT string_agg(c.relname, ',' ORDER BY c.relname) FROM pg_inherits h JOIN pg_class c ON c.oid = h.inhrelid WHERE h.inhparent = '$pidx'::regclass")
[ "$names_after" = "$names_before" ] || fail "partition index names $names_after, were $names_before"
[ "$(db "SELECT count(*) FROM pg_inherits h JOIN pg_class c ON c.oid = h.inhrelid JOIN pg_am am ON am.oid = c.relam WHERE h.inhparent = '$pidx'::regclass AND am.amname = 'brin'")" = "$nparts" ] ||
	fail "not every partition's index is BRIN"
[ "$(db "$nquery")" = "$nbefore" ] || fail "next_table returns other rows after the swap"
db "SELECT pgshunt.set_phase('passthrough', false, true, 'test', 'brin')" >/dev/null
ok "partitioned: $nparts partitions and the parent swapped to BRIN, names kept, same rows"
stop_pgshunt
ok "brin"
