#!/usr/bin/env bash
# The drain: buffered rows (written here straight into the buffer, as DEGRADED inserts
# leave them) moved into the phase's write path in arrival order, duplicates of each
# conflict mode resolved as the original statement would have (plain insert -> ledger,
# DO NOTHING -> skipped, DO UPDATE -> applied), with exact counts, in dual_write and in
# cutover; the throttle measured; SHOW DRAIN's columns.
set -euo pipefail
. tests/integration/lib.sh

own_database "drain_$$"
q() { psql -X -qtA "$direct" -c "$1"; }
start_pgshunt "control_dsn = $direct" "drain_batch_rows = 100" "drain_max_rows_per_sec = 0"
c() { psql -X -qtA "$console" -c "$1" 2>&1; }
a() { psql -X -qtA "$app" -c "$1" 2>&1; }

out=$(c 'DRAIN') && fail "DRAIN without an action accepted"
grep -q 'usage: DRAIN START|PAUSE' <<<"$out" || fail "DRAIN: $out"
out=$(c 'DRAIN START PAUSE') && fail "DRAIN START PAUSE accepted"
c 'MIGRATE PREPARE' >/dev/null || fail "MIGRATE PREPARE"
c 'SET PHASE dual_write' >/dev/null || fail "SET PHASE dual_write"
[ "$(psql -X -A "$console" -c 'SHOW DRAIN' | head -n 1)" = "state|buffered|drained|inserted|duplicates|ledgered|skipped|updated|rows_per_sec|eta|runner|updated_at|error" ] ||
	fail "SHOW DRAIN columns: $(psql -X -A "$console" -c 'SHOW DRAIN' | head -n 1)"
[ "$(c 'SHOW DRAIN' | cut -d'|' -f1-3)" = "idle|0|0" ] || fail "SHOW DRAIN before any drain: $(c 'SHOW DRAIN')"

buf=ingest_fallback_buffer
cols="site_id, idempotency_key, request_hash, status, response_code"
# fill SITE: every kind of buffered row, in arrival order, for site SITE, whose keys
# e1..e5 exist already.
fill() {
	local s=$1
	q "INSERT INTO $buf (pgshunt_conflict, pgshunt_conflict_clause, $cols)
	   SELECT 'none', NULL, '$s', 'new-' || g, '\\x02', 'processing', NULL FROM generate_series(1, 300) AS g"
	q "INSERT INTO $buf (pgshunt_conflict, pgshunt_conflict_clause, $cols) VALUES
	   ('none', NULL, '$s', 'e1', '\\x03', 'processing', NULL),
	   ('nothing', NULL, '$s', 'e2', '\\x03', 'processing', NULL),
	   ('update', 'ON CONFLICT (site_id, idempotency_key) DO UPDATE SET status = excluded.status, response_code = excluded.response_code', '$s', 'e3', '\\x03', 'failed', 503),
	   ('update', NULL, '$s', 'e4', '\\x03', 'failed', 504),
	   ('update', 'DO UPDATE SET status = excluded.status WHERE ingest_idempotency.status = ''processing''', '$s', 'e5', '\\x03', 'failed', 505),
	   ('none', NULL, '$s', 'n1', '\\x04', 'processing', NULL),
	   ('none', NULL, '$s', 'n1', '\\x05', 'processing', NULL),
	   ('none', NULL, '$s', 'n2', '\\x04', 'processing', NULL),
	   ('nothing', NULL, '$s', 'n2', '\\x05', 'processing', NULL),
	   ('none', NULL, '$s', 'n3', '\\x04', 'processing', NULL),
	   ('update', 'SET response_code = excluded.response_code', '$s', 'n3', '\\x05', 'processing', 299)"
}

# check SITE PHASE: counters, ledger, tables after a drain of fill's rows.
check() {
	local s=$1 phase=$2
	for _ in $(seq 100); do
		[ "$(q "SELECT count(*) FROM $buf")" = 0 ] && break
		sleep 0.1
	done
	[ "$(q "SELECT count(*) FROM $buf")" = 0 ] || fail "$phase: buffer not drained: $(c 'SHOW DRAIN')"
	[ "$(q "SELECT count(*) FROM ingest_idempotency WHERE site_id = '$s'")" = 308 ] || fail "$phase: $(q "SELECT count(*) FROM ingest_idempotency WHERE site_id = '$s'") rows in old"
	[ "$(q "SELECT count(*) FROM (SELECT * FROM ingest_idempotency EXCEPT ALL SELECT * FROM ingest_idempotency_next) a")" = 0 ] &&
		[ "$(q "SELECT count(*) FROM (SELECT * FROM ingest_idempotency_next EXCEPT ALL SELECT * FROM ingest_idempotency) a")" = 0 ] ||
		fail "$phase: old and next differ"
	local got
	got=$(q "SELECT string_agg(key ->> 1 || ':' || conflict || ':' || resolution || ':' || (buffered_row ->> 'request_hash') || ':' || coalesce(existing_row ->> 'request_hash', '-'), ',' ORDER BY id) FROM pgshunt.conflicts WHERE key ->> 0 = '$s'")
	[ "$got" = 'e1:none:ledger:\x03:\x01,e4:update:ledger:\x03:\x01,n1:none:ledger:\x05:\x04' ] || fail "$phase: ledger $got"
	got=$(q "SELECT string_agg(idempotency_key || ':' || status || ':' || coalesce(response_code::text, '-') || ':' || request_hash::text, ',' ORDER BY idempotency_key) FROM ingest_idempotency WHERE site_id = '$s' AND idempotency_key NOT LIKE 'new-%'")
	[ "$got" = 'e1:completed:200:\x01,e2:completed:200:\x01,e3:failed:503:\x01,e4:completed:200:\x01,e5:completed:200:\x01,n1:processing:-:\x04,n2:processing:-:\x04,n3:processing:299:\x04' ] ||
		fail "$phase: rows after the drain: $got"
	ok "$phase: 311 buffered rows drained: 303 inserted, 8 duplicates (3 ledgered, 3 skipped, 2 updated), old = next"
}

for k in e1 e2 e3 e4 e5; do # through pgshunt: in both tables
	a "INSERT INTO ingest_idempotency (site_id, idempotency_key, request_hash, status, response_code) VALUES ('dw', '$k', '\\x01', 'completed', 200)" >/dev/null
done
fill dw
c 'DRAIN START' >/dev/null || fail "DRAIN START"
check dw dual_write
[ "$(c 'SHOW DRAIN' | cut -d'|' -f1-8)" = "running|0|311|303|8|3|3|2" ] || fail "SHOW DRAIN after dual_write: $(c 'SHOW DRAIN')"

# Cutover, as the phase tests set it: next is the primary, old the mirror.
c 'DRAIN PAUSE' >/dev/null || fail "DRAIN PAUSE"
q "SELECT pgshunt.set_phase('read_next', NULL, true, 'test', NULL)" >/dev/null
q "SELECT pgshunt.set_phase('cutover', NULL, true, 'test', NULL)" >/dev/null
for _ in $(seq 50); do
	[ "$(c 'SHOW PHASE' | cut -d'|' -f1)" = cutover ] && break
	sleep 0.1
done
q "INSERT INTO ingest_idempotency_next (site_id, idempotency_key, request_hash, status, response_code) SELECT 'co', k, '\\x01', 'completed', 200 FROM unnest(ARRAY['e1','e2','e3','e4','e5']) AS k"
q "INSERT INTO ingest_idempotency SELECT * FROM ingest_idempotency_next WHERE site_id = 'co'"
fill co
c 'DRAIN START' >/dev/null || fail "DRAIN START in cutover"
check co cutover
[ "$(c 'SHOW DRAIN' | cut -d'|' -f3-8)" = "622|606|16|6|6|4" ] || fail "SHOW DRAIN after cutover: $(c 'SHOW DRAIN')"

# The throttle: 2000 rows/s asked, measured over the drain of 8000 rows.
sed -i 's/^drain_max_rows_per_sec = .*/drain_max_rows_per_sec = 2000/' "$work/pgshunt.ini"
c 'RELOAD' >/dev/null || fail "RELOAD"
base=$(q "SELECT rows_done FROM pgshunt.jobs WHERE name = 'drain'")
q "INSERT INTO $buf ($cols) SELECT 'rate', 'r-' || g, '\\x01', 'processing', NULL FROM generate_series(1, 8000) AS g"
t0= d0=
for _ in $(seq 300); do
	IFS='|' read -r d t <<<"$(q "SELECT rows_done - $base, extract(epoch FROM clock_timestamp()) FROM pgshunt.jobs WHERE name = 'drain'")"
	if [ -z "$t0" ] && [ "$d" -ge 1000 ]; then t0=$t d0=$d; fi
	if [ -n "$t0" ] && [ "$d" -ge 7000 ]; then break; fi
	sleep 0.05
done
[ -n "$t0" ] && [ "$d" -ge 7000 ] || fail "the throttled drain did not progress: $(c 'SHOW DRAIN')"
rate=$(python3 -c "print(round(($d - $d0) / ($t - $t0)))")
[ "$rate" -ge 1800 ] && [ "$rate" -le 2200 ] || fail "drain at $rate rows/s, asked 2000"
ok "throttle: $rate rows/s measured for 2000 asked"

# Unthrottled, larger batches: the rate it reaches here (P7 wants 20k rows/s).
sed -i 's/^drain_max_rows_per_sec = .*/drain_max_rows_per_sec = 0/; s/^drain_batch_rows = .*/drain_batch_rows = 5000/' "$work/pgshunt.ini"
c 'RELOAD' >/dev/null || fail "RELOAD"
sleep 1.5
q "INSERT INTO $buf ($cols) SELECT 'fast', 'f-' || g, '\\x01', 'processing', NULL FROM generate_series(1, 60000) AS g"
start=$(date +%s%N)
for _ in $(seq 600); do
	[ "$(q "SELECT count(*) FROM $buf")" = 0 ] && break
	sleep 0.1
done
ms=$((($(date +%s%N) - start) / 1000000))
[ "$(q "SELECT count(*) FROM ingest_idempotency WHERE site_id = 'fast'")" = 60000 ] || fail "fast drain incomplete"
[ "$(q "SELECT count(*) FROM ingest_idempotency_next WHERE site_id = 'fast'")" = 60000 ] || fail "fast drain not mirrored"
ok "unthrottled: 60000 rows drained and mirrored in $ms ms ($((60000 * 1000 / (ms + 1))) rows/s)"

# Several drainers at once (the proxy's and two sessions calling the batch function):
# SKIP LOCKED shares the rows out, the key locks keep each key once.
read -r d0 i0 u0 l0 <<<"$(q "SELECT rows_done, cursor ->> 'inserted', cursor ->> 'duplicates', cursor ->> 'ledgered' FROM pgshunt.jobs WHERE name = 'drain'" | tr '|' ' ')"
q "INSERT INTO $buf ($cols) SELECT 'cc', 'cc-' || (g % 12000), '\\x01', 'processing', NULL FROM generate_series(1, 20000) AS g"
drainer() {
	for _ in $(seq 400); do
		[ "$(q "SELECT count(*) FROM $buf")" = 0 ] && return 0
		q "SELECT claimed FROM pgshunt.drain_batch('public.ingest_idempotency', 'public.ingest_idempotency_next', '$buf', '{site_id,idempotency_key}', 700, (SELECT epoch FROM pgshunt.state))" >/dev/null || return 1
	done
}
drainer & d1=$!
drainer & d2=$!
wait "$d1" || fail "drainer 1 failed"
wait "$d2" || fail "drainer 2 failed"
for _ in $(seq 50); do
	[ "$(q "SELECT count(*) FROM $buf")" = 0 ] && break
	sleep 0.1
done
read -r d1 i1 u1 l1 <<<"$(q "SELECT rows_done, cursor ->> 'inserted', cursor ->> 'duplicates', cursor ->> 'ledgered' FROM pgshunt.jobs WHERE name = 'drain'" | tr '|' ' ')"
[ "$((d1 - d0))|$((i1 - i0))|$((u1 - u0))|$((l1 - l0))" = "20000|12000|8000|8000" ] ||
	fail "concurrent drainers counted $((d1 - d0)) drained, $((i1 - i0)) inserted, $((u1 - u0)) duplicates, $((l1 - l0)) ledgered"
[ "$(q "SELECT count(*) || '/' || count(DISTINCT idempotency_key) FROM ingest_idempotency_next WHERE site_id = 'cc'")" = 12000/12000 ] ||
	fail "keys in next after concurrent drainers: $(q "SELECT count(*) || '/' || count(DISTINCT idempotency_key) FROM ingest_idempotency_next WHERE site_id = 'cc'")"
[ "$(q "SELECT count(*) FROM ingest_idempotency WHERE site_id = 'cc'")" = 12000 ] || fail "keys in old after concurrent drainers"
[ "$(q "SELECT count(*) FROM pgshunt.conflicts WHERE key ->> 0 = 'cc'")" = 8000 ] || fail "ledger after concurrent drainers"
ok "three drainers at once: 20000 rows, 12000 keys once each, 8000 duplicates ledgered"

# Finalized: the partitioned table under the table's name is the only target; a
# DO UPDATE has no unpartitioned twin to be computed on any more, so it is ledgered.
q "ALTER TABLE ingest_idempotency RENAME TO ingest_idempotency_old; ALTER TABLE ingest_idempotency_next RENAME TO ingest_idempotency"
q "SELECT pgshunt.set_phase('finalized', NULL, true, 'test', NULL)" >/dev/null
for _ in $(seq 50); do
	[ "$(c 'SHOW PHASE' | cut -d'|' -f1)" = finalized ] && break
	sleep 0.1
done
q "INSERT INTO $buf (pgshunt_conflict, pgshunt_conflict_clause, $cols) VALUES
   ('none', NULL, 'fz', 'new', '\\x01', 'processing', NULL),
   ('none', NULL, 'cc', 'cc-1', '\\x02', 'processing', NULL),
   ('update', 'DO UPDATE SET status = excluded.status', 'cc', 'cc-2', '\\x02', 'failed', NULL)"
for _ in $(seq 50); do
	[ "$(q "SELECT count(*) FROM $buf")" = 0 ] && break
	sleep 0.1
done
[ "$(q "SELECT count(*) FROM $buf")" = 0 ] || fail "finalized: buffer not drained: $(c 'SHOW DRAIN')"
[ "$(q "SELECT count(*) FROM ingest_idempotency WHERE site_id = 'fz'")|$(q "SELECT count(*) FROM ingest_idempotency_old WHERE site_id = 'fz'")" = "1|0" ] ||
	fail "finalized: the new row is not in the partitioned table only"
[ "$(q "SELECT string_agg(key ->> 1 || ':' || conflict || ':' || resolution, ',' ORDER BY id) FROM pgshunt.conflicts WHERE at > now() - interval '1 minute' AND key ->> 0 = 'cc' AND buffered_row ->> 'request_hash' = '\\x02'")" = "cc-1:none:ledger,cc-2:update:ledger" ] ||
	fail "finalized: ledger $(q "SELECT string_agg(key::text || resolution, ',') FROM pgshunt.conflicts WHERE buffered_row ->> 'request_hash' = '\\x02'")"
[ "$(q "SELECT status FROM ingest_idempotency WHERE site_id = 'cc' AND idempotency_key = 'cc-2'")" = processing ] || fail "finalized: DO UPDATE applied"
ok "finalized: new keys into the partitioned table only, duplicates ledgered"

c 'DRAIN PAUSE' >/dev/null || fail "DRAIN PAUSE"
[ "$(c 'SHOW DRAIN' | cut -d'|' -f1)" = paused ] || fail "SHOW DRAIN after PAUSE"
stop_pgshunt
