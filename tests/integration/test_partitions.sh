#!/usr/bin/env bash
# Partition upkeep: PARTITIONS MAINTAIN premakes partition_premake intervals ahead,
# drops what partition_retention lets go (never the current interval), reports a
# partition it cannot lock as 'retry' instead of waiting; SHOW PARTITIONS lists bounds,
# rows and sizes; after the rename of finalized it keeps the partitioned table under
# the table's name.  A row whose created_at has no partition is refused, and neither
# table keeps it.
set -euo pipefail
. tests/integration/lib.sh

own_database "parts_$$"
q() { psql -X -qtA "$direct" -c "$1"; }
q "SELECT seed_ingest_idempotency(3000, 150)" >/dev/null
start_pgshunt "control_dsn = $direct" "partition_interval = month" "partition_premake = 2"
c() { psql -X -qtA "$console" -c "$1" 2>&1; }
hold_pid=
trap '[ -n "$hold_pid" ] && kill "$hold_pid" 2>/dev/null; lib_cleanup' EXIT
setting() { # KEY VALUE: change the file and RELOAD
	sed -i "/^$1 = /d" "$work/pgshunt.ini"
	echo "$1 = $2" >>"$work/pgshunt.ini"
	c 'RELOAD' >/dev/null || fail "RELOAD"
}
month() { q "SELECT to_char(date_trunc('month', now() AT TIME ZONE 'UTC') + interval '$1 month', 'YYYY-MM-DD')"; }

c 'MIGRATE PREPARE' >/dev/null || fail "MIGRATE PREPARE"
[ "$(psql -X -A "$console" -c 'SHOW PARTITIONS' | head -n 1)" = "table|partition|from|to|est_rows|size|bytes" ] ||
	fail "SHOW PARTITIONS columns"
[ "$(psql -X -A "$console" -c 'PARTITIONS MAINTAIN' | head -n 1)" = "action|partition|detail" ] ||
	fail "PARTITIONS MAINTAIN columns"
n0=$(c 'SHOW PARTITIONS' | wc -l)
last=$(c 'SHOW PARTITIONS' | tail -n 1 | cut -d'|' -f4)
[[ "$last" == "$(month 3) 00:00:00+00" ]] || fail "last partition ends at $last, not $(month 3)"
[ "$n0" -ge 7 ] || fail "$n0 partitions for 150 days of history and 2 months ahead"
ok "SHOW PARTITIONS: $n0 partitions up to $last"

# More ahead.
setting partition_premake 4
out=$(c 'PARTITIONS MAINTAIN') || fail "PARTITIONS MAINTAIN: $out"
[ "$(grep -c '^create|' <<<"$out")" = 2 ] || fail "premake 4 made: $out"
grep -q "^create|public.ingest_idempotency_next_y$(month 4 | tr -d - | cut -c1-6 | sed 's/^\(....\)/\1m/')|\[$(month 4) 00:00:00+00, $(month 5) 00:00:00+00)" <<<"$out" ||
	fail "the partition for $(month 4): $out"
[ "$(c 'SHOW PARTITIONS' | tail -n 1 | cut -d'|' -f4)" = "$(month 5) 00:00:00+00" ] || fail "after premake 4"
out=$(c 'PARTITIONS MAINTAIN')
[ "$(grep -c '^create|' <<<"$out")" = 0 ] && grep -q '^premake|' <<<"$out" || fail "second run made more: $out"
ok "premake: 2 more partitions, then nothing to do"

# Rows land in the partitions (estimates come from ANALYZE).
c 'SET PHASE dual_write' >/dev/null || fail "SET PHASE dual_write"
c 'BACKFILL START' >/dev/null || fail "BACKFILL START"
for _ in $(seq 100); do
	[ "$(q "SELECT state FROM pgshunt.jobs WHERE name = 'backfill'")" = done ] && break
	sleep 0.1
done
q "ANALYZE ingest_idempotency_next"
[ "$(c 'SHOW PARTITIONS' | awk -F'|' '{s += $5} END {print s}')" = 3000 ] || fail "estimated rows: $(c 'SHOW PARTITIONS')"

# Before finalized, retention would make next differ from the table: skipped.
setting partition_retention '90 days'
out=$(c 'PARTITIONS MAINTAIN') || fail "PARTITIONS MAINTAIN with retention in dual_write: $out"
grep -q '^skip|public.ingest_idempotency_next|partition_retention applies once finalized' <<<"$out" || fail "retention before finalized: $out"
grep -q '^drop|' <<<"$out" && fail "dropped before finalized: $out"
setting partition_retention ''
ok "retention before finalized: skipped, nothing dropped"

# No partition for a row: refused, naming the table and the value; neither table has it.
out=$(psql -X -qtA -v VERBOSITY=verbose "$app" -c "INSERT INTO ingest_idempotency (site_id, idempotency_key, request_hash, created_at) VALUES ('far', 'future', '\\x01', '2300-01-01 00:00:00+00')" 2>&1) &&
	fail "a row without a partition was accepted"
grep -q 'ingest_idempotency_next' <<<"$out" && grep -q '2300-01-01' <<<"$out" || fail "refusal names no table or value: $out"
[ "$(q "SELECT count(*) FROM ingest_idempotency WHERE site_id = 'far'")" = 0 ] || fail "old kept the refused row"
[ "$(q "SELECT count(*) FROM ingest_idempotency_next WHERE site_id = 'far'")" = 0 ] || fail "next kept the refused row"
ok "no partition: $(head -n 1 <<<"$out" | cut -c1-90)"

# After the rename of finalized: the partitioned table under the table's name.
q "SELECT pgshunt.set_phase('read_next', NULL, true, 'test', NULL)" >/dev/null
q "SELECT pgshunt.set_phase('cutover', NULL, true, 'test', NULL)" >/dev/null
q "ALTER TABLE ingest_idempotency RENAME TO ingest_idempotency_old; ALTER TABLE ingest_idempotency_next RENAME TO ingest_idempotency"
q "SELECT pgshunt.set_phase('finalized', NULL, true, 'test', NULL)" >/dev/null
for _ in $(seq 50); do
	[ "$(c 'SHOW PHASE' | cut -d'|' -f1)" = finalized ] && break
	sleep 0.1
done
setting partition_premake 6
out=$(c 'PARTITIONS MAINTAIN') || fail "PARTITIONS MAINTAIN after finalized: $out"
[ "$(grep -c '^create|public.ingest_idempotency_y' <<<"$out")" = 2 ] || fail "premake after finalized: $out"
[ "$(c 'SHOW PARTITIONS' | cut -d'|' -f1 | sort -u)" = ingest_idempotency ] || fail "SHOW PARTITIONS after finalized: $(c "SHOW PARTITIONS")"
[ "$(c 'SHOW PARTITIONS' | tail -n 1 | cut -d'|' -f4)" = "$(month 7) 00:00:00+00" ] || fail "premake 6 after finalized"
ok "finalized: the partitions of public.ingest_idempotency kept up (next's old names left alone)"

# A partition that cannot be locked is retried, not waited for.
setting partition_retention '90 days'
psql -X -q "$direct application_name=holder" -c "BEGIN; LOCK TABLE ingest_idempotency IN ACCESS SHARE MODE; SELECT pg_sleep(30)" >/dev/null 2>&1 &
hold_pid=$!
for _ in $(seq 50); do
	[ "$(q "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation WHERE c.relname = 'ingest_idempotency' AND l.mode = 'AccessShareLock' AND l.granted")" -ge 1 ] && break
	sleep 0.1
done
start=$(date +%s%N)
out=$(c 'PARTITIONS MAINTAIN') || fail "PARTITIONS MAINTAIN under a lock: $out"
ms=$((($(date +%s%N) - start) / 1000000))
grep -q '^retry|.*lock timeout' <<<"$out" || fail "no retry under a lock: $out"
grep -q '^drop|' <<<"$out" && fail "dropped under a lock: $out"
[ "$ms" -lt 5000 ] || fail "PARTITIONS MAINTAIN waited $ms ms for the lock"
q "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'holder'" >/dev/null
wait "$hold_pid" 2>/dev/null || true
hold_pid=
ok "a locked table: 'retry' after $ms ms, nothing dropped"

# Retention: whole months older than 90 days go, their rows with them; the rest stay.
setting partition_retention '90 days'
before=$(q "SELECT count(*) FROM ingest_idempotency")
expect=$(q "SELECT count(*) FROM ingest_idempotency WHERE created_at < date_trunc('month', now() - interval '90 days')")
out=$(c 'PARTITIONS MAINTAIN') || fail "PARTITIONS MAINTAIN with retention: $out"
drops=$(grep -c '^drop|' <<<"$out" || true)
[ "$drops" -ge 1 ] || fail "nothing dropped: $out"
[ "$(q "SELECT count(*) FROM ingest_idempotency")" = "$((before - expect))" ] || fail "rows left after retention"
[ "$(q "SELECT count(*) FROM pgshunt.partitions_list('ingest_idempotency') WHERE hi <= now() - interval '90 days'")" = 0 ] ||
	fail "a partition older than the retention is left"
[ "$(q "SELECT min(lo) <= now() - interval '90 days' FROM pgshunt.partitions_list('ingest_idempotency')")" = t ] ||
	fail "a partition within the retention was dropped"
ok "retention 90 days: $drops partitions dropped ($expect rows), the rest kept"

# Retention shorter than the interval never takes the current month.
setting partition_retention '1 hour'
c 'PARTITIONS MAINTAIN' >/dev/null || fail "PARTITIONS MAINTAIN, retention 1 hour"
[ "$(q "SELECT count(*) FROM pgshunt.partitions_list('ingest_idempotency') WHERE lo <= now() AND hi > now()")" = 1 ] ||
	fail "the current month's partition was dropped"
ok "retention 1 hour: the current month's partition stays"

stop_pgshunt
