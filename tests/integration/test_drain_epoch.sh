#!/usr/bin/env bash
# A drain batch runs under the epoch it started in, like a transaction (I8): while it
# waits (here on a key lock a client holds) the proxy does not acknowledge a newer
# epoch, so SET PHASE returns only after the batch; the batch finishes under its own
# phase (dual_write: the row lands in both tables).
set -euo pipefail
. tests/integration/lib.sh

own_database "drainepoch_$$"
q() { psql -X -qtA "$direct" -c "$1"; }
start_pgshunt "control_dsn = $direct"
c() { psql -X -qtA "$console" -c "$1" 2>&1; }
holder_pid= set_pid=
trap '[ -n "$holder_pid" ] && kill "$holder_pid" 2>/dev/null; [ -n "$set_pid" ] && kill "$set_pid" 2>/dev/null; lib_cleanup' EXIT

c 'MIGRATE PREPARE' >/dev/null || fail "MIGRATE PREPARE"
c 'SET PHASE dual_write' >/dev/null || fail "SET PHASE dual_write"
c 'DRAIN START' >/dev/null || fail "DRAIN START"

# A client holds the key's lock for 3 s.
psql -X -q "$direct application_name=holder" -c "BEGIN" -c "SELECT pgshunt.key_lock('ingest_idempotency'::regclass::oid, 'h'::text, 'k'::text)" -c "SELECT pg_sleep(3)" -c "COMMIT" >/dev/null &
holder_pid=$!
for _ in $(seq 50); do
	[ "$(q "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'holder' AND query LIKE '%pg_sleep%'")" = 1 ] && break
	sleep 0.05
done
q "INSERT INTO ingest_fallback_buffer (site_id, idempotency_key, request_hash) VALUES ('h', 'k', '\\x01')"
for _ in $(seq 50); do
	[ "$(q "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgshunt job drain' AND wait_event_type = 'Lock'")" = 1 ] && break
	sleep 0.05
done
[ "$(q "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgshunt job drain' AND wait_event_type = 'Lock'")" = 1 ] ||
	fail "the drain batch is not waiting for the key"
ok "a drain batch waits for a key a client holds"

start=$(date +%s%N)
psql -X -qtA "$console" -c 'SET PHASE passthrough' >"$work/set.out" 2>&1 &
set_pid=$!
sleep 1
kill -0 "$set_pid" 2>/dev/null || fail "SET PHASE returned while the batch ran: $(cat "$work/set.out")"
epoch=$(q "SELECT epoch FROM pgshunt.state")
[ "$(q "SELECT count(*) FROM pgshunt.proxies WHERE acked_epoch < $epoch")" = 1 ] || fail "the proxy acknowledged epoch $epoch during the batch"
wait "$set_pid" || fail "SET PHASE passthrough: $(cat "$work/set.out")"
set_pid=
ms=$((($(date +%s%N) - start) / 1000000))
wait "$holder_pid" || true
holder_pid=
[ "$ms" -ge 1500 ] || fail "SET PHASE returned after $ms ms, before the batch ended"
[ "$(q "SELECT count(*) FROM ingest_idempotency WHERE site_id = 'h'")|$(q "SELECT count(*) FROM ingest_idempotency_next WHERE site_id = 'h'")" = "1|1" ] ||
	fail "the batch begun in dual_write did not write both tables"
[ "$(q "SELECT count(*) FROM ingest_fallback_buffer")" = 0 ] || fail "the row is still buffered"
ok "SET PHASE waited $ms ms for the batch; the row is in both tables (dual_write, its phase)"
stop_pgshunt
