#!/usr/bin/env bash
# SHOW THRESHOLDS and its /metrics gauges against a database of their own: the
# sizes and row estimate are the catalog's, every limit is the runbook's, and the p99
# insert latency is what the proxy measures, pushed over the limits by a trigger that
# sleeps in each INSERT; the heartbeat carries it to pgshunt.proxies.
set -euo pipefail

. tests/integration/lib.sh

own_database "thr_$$"
psql -X -q "$direct" -c "SELECT seed_ingest_idempotency(3000)" >/dev/null
psql -X -q "$direct" -c "ANALYZE ingest_idempotency"
mport=$(bash "$shunt_harness" freeport)
start_pgshunt "control_dsn = $direct" "metrics_addr = 127.0.0.1:$mport" "thresholds_interval_s = 1"

show() { psql -X -qtA -F'|' "$console" -c "SHOW THRESHOLDS"; }
field() { # metric column(2=value..6=detail)
	show | awk -F'|' -v m="$1" -v c="$2" '$1 == m { print $c }'
}
scrape() { curl -sS --max-time 5 "http://127.0.0.1:$mport/metrics"; }
gauge() { scrape | awk -v k="$1" '$1 == k { print $2 }'; }
db() { psql -X -qtA "$direct" -c "$1"; }

# --- a small table: every value as the catalog says, every status ok ---
out=$(show)
echo "$out"
[ "$(field table_size 2)" = "$(db "SELECT pg_total_relation_size('ingest_idempotency')")" ] ||
	fail "table_size $(field table_size 2), catalog $(db "SELECT pg_total_relation_size('ingest_idempotency')")"
[ "$(field row_estimate 2)" = "$(db "SELECT reltuples::bigint FROM pg_class WHERE oid = 'ingest_idempotency'::regclass")" ] ||
	fail "row_estimate $(field row_estimate 2)"
[ "$(field row_estimate 2)" -gt 2000 ] || fail "row_estimate $(field row_estimate 2) after ANALYZE of 3000 rows"
idx=$(db "SELECT pg_relation_size('idx_ingest_idempotency_expires_at')")
[ "$(field expires_at_btree_size 2)" = "$idx" ] || fail "expires_at_btree_size $(field expires_at_btree_size 2), catalog $idx"
field expires_at_btree_size 6 | grep -q 'idx_ingest_idempotency_expires_at' || fail "detail lacks the index name"
[ "$(field index_size:ingest_idempotency_pkey 2)" = "$(db "SELECT pg_relation_size('ingest_idempotency_pkey')")" ] ||
	fail "index_size of the primary key"
for m in table_size row_estimate expires_at_btree_size; do
	[ "$(field $m 5)" = ok ] || fail "$m status $(field $m 5)"
done
[ "$(field table_size 3)|$(field table_size 4)" = "10737418240|107374182400" ] || fail "table_size limits"
[ "$(field row_estimate 3)|$(field row_estimate 4)" = "50000000|250000000" ] || fail "row limits"
[ "$(field insert_p99_ms 3)|$(field insert_p99_ms 4)" = "100.0|500.0" ] || fail "p99 limits"
[ "$(field expires_at_btree_size 3)|$(field expires_at_btree_size 4)" = "|10737418240" ] || fail "BRIN limit"
[ -z "$(field proxy_insert_p99_ms 2)" ] || fail "p99 $(field proxy_insert_p99_ms 2) before any insert"
field proxy_insert_p99_ms 6 | grep -q '^no INSERT in the last 60 s$' || fail "p99 detail before any insert: $(field proxy_insert_p99_ms 6)"
ok "small table: sizes and estimate as the catalog says, status ok"

# In passthrough a statement on the table is forwarded unparsed, yet an INSERT is timed
# (simple protocol: by its first word; extended: parsed in every phase).
psql -X -q "$app" -c "INSERT INTO ingest_idempotency (site_id, idempotency_key, request_hash) VALUES ('p', 'simple', '\\x00')" >/dev/null
psql -X -q "$app" -c "/* a comment */ insert INTO ingest_idempotency (site_id, idempotency_key, request_hash) VALUES ('p', 'comment', '\\x00')" >/dev/null
psql -X -q "$app" -c "SELECT count(*) FROM ingest_idempotency" >/dev/null
for _ in $(seq 30); do field proxy_insert_p99_ms 6 | grep -q '^2 INSERT' && break; sleep 0.2; done
field proxy_insert_p99_ms 6 | grep -q '^2 INSERT statement(s) in the last 60 s$' ||
	fail "passthrough INSERTs not timed: $(field proxy_insert_p99_ms 6)"
[ -n "$(field proxy_insert_p99_ms 2)" ] || fail "no p99 after INSERTs in passthrough"
ok "passthrough: INSERTs timed without parsing (p99 $(field proxy_insert_p99_ms 2) ms)"

for _ in $(seq 30); do [ -n "$(gauge 'pgshunt_threshold_value{metric="table_size"}')" ] && break; sleep 0.2; done
[ "$(gauge 'pgshunt_threshold_status{metric="table_size"}')" = 0 ] || fail "status gauge of table_size"
v=$(gauge 'pgshunt_threshold_value{metric="row_estimate"}')
[ "${v%.*}" = "$(field row_estimate 2)" ] || fail "row_estimate gauge $v"
ok "/metrics: pgshunt_threshold_value and _status"

# --- partitioned: next_table summed over its partitions (what counts at cutover) ---
psql -X -qtA "$console" -c "MIGRATE PREPARE" >/dev/null
db "INSERT INTO ingest_idempotency_next SELECT * FROM ingest_idempotency WHERE created_at > now() - interval '20 days'" >/dev/null
db "ANALYZE ingest_idempotency_next" >/dev/null
sum=$(db "SELECT sum(pg_total_relation_size(relid)) FROM pg_partition_tree('ingest_idempotency_next') WHERE isleaf")
rows=$(db "SELECT sum(greatest(reltuples, 0))::bigint FROM pg_partition_tree('ingest_idempotency_next') p JOIN pg_class c ON c.oid = p.relid WHERE isleaf")
(( sum > 0 && rows > 0 )) || fail "next_table has no partitions with rows"
# SHOW THRESHOLDS at cutover is what the partitioned table is: checked with the same
# query pgshunt runs, pointed at next_table by the phase.
db "SELECT pgshunt.set_phase('cutover', false, true, 'test', 'thresholds')" >/dev/null
for _ in $(seq 50); do [ "$(psql -X -qtA "$console" -c 'SHOW PHASE' | cut -d'|' -f1)" = cutover ] && break; sleep 0.1; done
[ "$(field table_size 2)" = "$sum" ] || fail "partitioned table_size $(field table_size 2), want the leaves' sum $sum"
[ "$(field row_estimate 2)" = "$rows" ] || fail "partitioned row_estimate $(field row_estimate 2), want $rows"
field table_size 6 | grep -q 'ingest_idempotency_next, authoritative in phase cutover' || fail "detail: $(field table_size 6)"
db "SELECT pgshunt.set_phase('dual_write', false, true, 'test', 'thresholds')" >/dev/null
for _ in $(seq 50); do [ "$(psql -X -qtA "$console" -c 'SHOW PHASE' | cut -d'|' -f1)" = dual_write ] && break; sleep 0.1; done
ok "partitioned: size and estimate summed over the partitions ($sum bytes, $rows rows)"

# --- p99 (dual_write: in passthrough the engine does not parse, so does not time, them) ---

# Inserts slowed by a trigger in the database, measured by the proxy.
slow() { # seconds each INSERT sleeps
	db "CREATE OR REPLACE FUNCTION slow_insert() RETURNS trigger LANGUAGE plpgsql AS
	    \$\$ BEGIN PERFORM pg_sleep($1); RETURN NEW; END \$\$;
	    DROP TRIGGER IF EXISTS slow_insert ON ingest_idempotency;
	    CREATE TRIGGER slow_insert BEFORE INSERT ON ingest_idempotency FOR EACH ROW EXECUTE FUNCTION slow_insert()" >/dev/null
}
insert_some() { # n prefix
	for i in $(seq "$1"); do
		psql -X -qtA "$app" -c "INSERT INTO ingest_idempotency (site_id, idempotency_key, request_hash) VALUES ('s', '$2-$i', '\\x00')" >/dev/null
	done
}
slow 0.15
insert_some 4 warn
p=$(field proxy_insert_p99_ms 2)
awk -v p="$p" 'BEGIN { exit !(p > 100 && p <= 250) }' || fail "p99 $p ms with 150 ms inserts"
[ "$(field proxy_insert_p99_ms 5)" = warning ] || fail "status $(field proxy_insert_p99_ms 5) at p99 $p"
ok "150 ms inserts: proxy p99 $p ms, warning"

slow 0.6
insert_some 2 act
p=$(field proxy_insert_p99_ms 2)
awk -v p="$p" 'BEGIN { exit !(p > 500 && p <= 1000) }' || fail "p99 $p ms with 600 ms inserts"
[ "$(field proxy_insert_p99_ms 5)" = action ] || fail "status $(field proxy_insert_p99_ms 5) at p99 $p"
# The heartbeat (every 2 s) carries it to pgshunt.proxies; the fleet's is the max.
for _ in $(seq 40); do
	f=$(db "SELECT max(insert_p99_ms) FROM pgshunt.proxies WHERE lease_until > now()")
	awk -v p="$f" 'BEGIN { exit !(p > 500) }' && break
	sleep 0.2
done
awk -v p="$f" 'BEGIN { exit !(p > 500) }' || fail "pgshunt.proxies.insert_p99_ms $f"
for _ in $(seq 20); do [ "$(field insert_p99_ms 5)" = action ] && break; sleep 0.3; done
[ "$(field insert_p99_ms 5)" = action ] || fail "fleet p99 status $(field insert_p99_ms 5)"
for _ in $(seq 20); do [ "$(gauge 'pgshunt_threshold_status{metric="insert_p99_ms"}')" = 2 ] && break; sleep 0.3; done
[ "$(gauge 'pgshunt_threshold_status{metric="insert_p99_ms"}')" = 2 ] || fail "p99 status gauge"
ok "600 ms inserts: p99 $p ms, action; heartbeat $f ms; gauge 2"

# The window holds 60 s: fast inserts now do not hide the slow ones (2 in 11 > 1%).
db "DROP TRIGGER slow_insert ON ingest_idempotency" >/dev/null
insert_some 3 fast
[ "$(field proxy_insert_p99_ms 5)" = action ] || fail "status $(field proxy_insert_p99_ms 5) with slow inserts in the window"
field proxy_insert_p99_ms 6 | grep -q '^11 INSERT statement(s) in the last 60 s$' || fail "detail: $(field proxy_insert_p99_ms 6)"
ok "the slow inserts stay in the 60 s window"

# --- the jobs' progress and the buffer's depth, read every 2 s ---
# (a state no runner acts on: 'running' would start a real backfill)
db "INSERT INTO pgshunt.jobs (name, state, rows_done, rows_total) VALUES ('backfill', 'paused', 40, 100),
    ('drain', 'paused \"x\"', 7, NULL)" >/dev/null
db "INSERT INTO ingest_fallback_buffer SELECT * FROM ingest_fallback_buffer LIMIT 0" >/dev/null
cols=$(db "SELECT string_agg(quote_ident(attname), ', ' ORDER BY attnum) FROM pg_attribute WHERE attrelid = 'ingest_idempotency'::regclass AND attnum > 0 AND NOT attisdropped")
db "INSERT INTO ingest_fallback_buffer ($cols) SELECT $cols FROM ingest_idempotency LIMIT 3" >/dev/null ||
	fail "could not fill the buffer"
buffered=$(db "SELECT count(*) FROM ingest_fallback_buffer")
for _ in $(seq 30); do [ "$(gauge pgshunt_buffer_rows)" = "$buffered" ] && break; sleep 0.2; done
[ "$(gauge pgshunt_buffer_rows)" = "$buffered" ] || fail "pgshunt_buffer_rows $(gauge pgshunt_buffer_rows), buffer has $buffered"
[ "$(gauge 'pgshunt_job_rows_done{job="backfill"}')" = 40 ] || fail "backfill rows_done"
[ "$(gauge 'pgshunt_job_rows_total{job="backfill"}')" = 100 ] || fail "backfill rows_total"
[ "$(gauge 'pgshunt_job_state{job="backfill",state="paused"}')" = 1 ] || fail "backfill state"
[ "$(gauge 'pgshunt_job_rows_total{job="drain"}')" = 0 ] || fail "drain rows_total unknown is not 0"
[ "$(scrape | grep -c '^pgshunt_job_state{job="drain",state="paused \\"x\\""} 1$')" = 1 ] ||
	fail "drain state label not escaped: $(scrape | grep pgshunt_job_state)"
ok "/metrics: buffer rows $buffered, backfill 40/100 paused, drain state escaped"

# --- malformed: SHOW THRESHOLDS takes no argument ---
if out=$(psql -X -qtA "$console" -c "SHOW THRESHOLDS now" 2>&1); then fail "SHOW THRESHOLDS now: $out"; fi
grep -q 42601 <<<"$(psql -X -qtA -v VERBOSITY=verbose "$console" -c "SHOW THRESHOLDS now" 2>&1)" || fail "SHOW THRESHOLDS now: not 42601"
stop_pgshunt
ok "thresholds"
