#!/usr/bin/env bash
# The jobs on another key shape: an (integer, uuid) primary key, a date partition
# column by week, an identity column (GENERATED ALWAYS) and a generated column.
# Backfill in odd-sized batches, VERIFY clean then dirty naming the key, and a drain
# with a duplicate: the keys' types travel through the cursor and the ledger intact.
set -euo pipefail
. tests/integration/lib.sh

own_database "bfshape_$$"
q() { psql -X -qtA -v ON_ERROR_STOP=1 "$direct" -c "$1"; }
psql -X -q -v ON_ERROR_STOP=1 "$direct" <<'SQL'
CREATE TABLE public.events (
    id bigint GENERATED ALWAYS AS IDENTITY,
    tenant integer NOT NULL,
    key uuid NOT NULL,
    amount numeric(12,2) NOT NULL,
    doubled numeric GENERATED ALWAYS AS (amount * 2) STORED,
    created_on date NOT NULL DEFAULT current_date,
    PRIMARY KEY (tenant, key)
);
INSERT INTO public.events (tenant, key, amount, created_on)
SELECT g % 17, md5(g::text)::uuid, g / 100.0, current_date - (g % 70)
  FROM generate_series(1, 5000) AS g;
SQL
start_pgshunt "control_dsn = $direct" "table = public.events" "next_table = public.events_next" \
	"buffer_table = public.events_buffer" "key_columns = tenant, key" "partition_column = created_on" \
	"partition_interval = week" "backfill_batch_rows = 97" "backfill_max_rows_per_sec = 0" \
	"drain_batch_rows = 50" "drain_max_rows_per_sec = 0"
c() { psql -X -qtA "$console" -c "$1" 2>&1; }

c 'MIGRATE PREPARE' >/dev/null || fail "MIGRATE PREPARE: $(c 'MIGRATE PREPARE')"
c 'SET PHASE dual_write' >/dev/null || fail "SET PHASE dual_write"
c 'BACKFILL START' >/dev/null || fail "BACKFILL START"
for _ in $(seq 200); do
	[ "$(q "SELECT state FROM pgshunt.jobs WHERE name = 'backfill'")" = running ] || break
	sleep 0.1
done
[ "$(c 'SHOW BACKFILL' | cut -d'|' -f1,2)" = "done|5000" ] || fail "SHOW BACKFILL: $(c 'SHOW BACKFILL')"
[ "$(q "SELECT count(*) FROM (SELECT * FROM events EXCEPT ALL SELECT * FROM events_next) a")|$(q "SELECT count(*) FROM events_next")" = "0|5000" ] ||
	fail "next differs from the table after the backfill"
last=$(q "SELECT (tenant, key)::text FROM events ORDER BY tenant DESC, key DESC LIMIT 1")
[ "$(c 'SHOW BACKFILL' | cut -d'|' -f7)" = "$(q "SELECT jsonb_build_array(tenant::text, key::text)::text FROM events ORDER BY tenant DESC, key DESC LIMIT 1")" ] ||
	fail "cursor $(c 'SHOW BACKFILL' | cut -d'|' -f7), last key $last"
ok "backfill over (integer, uuid): 5000 rows in batches of 97, identical, cursor at the last key"

[ "$(c 'VERIFY' | cut -d'|' -f1,5)" = "clean|0" ] || fail "VERIFY: $(c 'VERIFY')"
q "UPDATE events_next SET amount = amount + 1 WHERE tenant = 3 AND key = md5('3')::uuid"
out=$(c 'VERIFY')
[ "$(cut -d'|' -f1,5 <<<"$out")" = "dirty|1" ] || fail "VERIFY after a change: $out"
grep -q "\[{\"key\": \[\"3\", \"$(q "SELECT md5('3')::uuid")\"\], \"kind\": \"different\"}\]" <<<"$out" || fail "VERIFY names: $out"
q "UPDATE events_next SET amount = amount - 1 WHERE tenant = 3 AND key = md5('3')::uuid"
ok "VERIFY clean, then dirty naming (3, $(q "SELECT md5('3')::uuid"))"

# The drain: identity values and key types kept; a duplicate ledgered with its key.
q "INSERT INTO events_buffer (tenant, key, amount, created_on) VALUES (99, md5('new')::uuid, 1.5, current_date), (3, md5('3')::uuid, 7, current_date)"
c 'DRAIN START' >/dev/null || fail "DRAIN START"
for _ in $(seq 100); do
	[ "$(q "SELECT count(*) FROM events_buffer")" = 0 ] && break
	sleep 0.1
done
[ "$(q "SELECT count(*) FROM events_buffer")" = 0 ] || fail "buffer not drained: $(c 'SHOW DRAIN')"
[ "$(q "SELECT count(*) FROM (SELECT * FROM events EXCEPT ALL SELECT * FROM events_next) a")|$(q "SELECT doubled FROM events WHERE tenant = 99")" = "0|3.00" ] ||
	fail "the drained row differs between the tables"
[ "$(q "SELECT key::text || '|' || conflict FROM pgshunt.conflicts")" = "[3, \"$(q "SELECT md5('3')::uuid")\"]|none" ] ||
	fail "ledger: $(q "SELECT key::text || '|' || conflict FROM pgshunt.conflicts")"
ok "drain: the new row in both tables, the duplicate ledgered under its (integer, uuid) key"
stop_pgshunt
