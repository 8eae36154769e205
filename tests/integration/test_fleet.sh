#!/usr/bin/env bash
# Two proxies on one database: a phase change made on one console reaches the other
# proxy, and SET PHASE returns only once every live proxy acknowledged the new epoch;
# a transaction begun under the older phase holds its proxy's acknowledgement back.
set -euo pipefail
. tests/integration/lib.sh

own_database "fleet_$$"
start_pgshunt "control_dsn = $direct"
pid_a=$pid port_a=$port console_a=$console
pid=
mv "$work/pgshunt.ini" "$work/a.ini"
start_pgshunt "control_dsn = $direct"
pid_b=$pid port_b=$port console_b=$console
pid=
others=("$pid_a" "$pid_b")
trap 'for p in "${others[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; sleep 0.3; lib_cleanup' EXIT

q() { psql -X -qtA "$direct" -c "$1"; }
on() { psql -X -qtA "$1" -c "$2" 2>&1; }

on "$console_a" 'MIGRATE PREPARE' >/dev/null || fail "MIGRATE PREPARE"
for _ in $(seq 50); do
	[ "$(q "SELECT count(*) FROM pgshunt.proxies WHERE lease_until > now()")" = 2 ] && break
	sleep 0.2
done
[ "$(q "SELECT count(*) FROM pgshunt.proxies WHERE lease_until > now()")" = 2 ] || fail "both proxies registered"
ok "both proxies in pgshunt.proxies"

# A change on A's console reaches B, and A returns once B acknowledged it.
start=$(date +%s%N)
out=$(on "$console_a" 'SET PHASE dual_write') || fail "SET PHASE dual_write on A: $out"
elapsed_ms=$((($(date +%s%N) - start) / 1000000))
epoch=$(q "SELECT epoch FROM pgshunt.state")
[ "$(q "SELECT count(*) FROM pgshunt.proxies WHERE acked_epoch >= $epoch")" = 2 ] || fail "SET PHASE returned before both acked"
[ "$(on "$console_b" 'SHOW PHASE' | cut -d'|' -f1)" = dual_write ] || fail "B does not serve dual_write"
ok "SET PHASE on A: both proxies acknowledged epoch $epoch in ${elapsed_ms} ms"

# Writes through B are mirrored now.
app_b="host=127.0.0.1 port=$port_b dbname=$own_db user=shunt_trust"
psql -X -q "$app_b" -c "INSERT INTO ingest_idempotency (site_id, idempotency_key, request_hash) VALUES ('fleet', 'b1', '\\x01')"
[ "$(q "SELECT count(*) FROM ingest_idempotency_next WHERE site_id = 'fleet'")" = 1 ] || fail "B did not mirror"
ok "B mirrors after A's switch"

# A transaction open on B under dual_write holds B's acknowledgement of the next epoch.
coproc TXB { psql -X -qtA "$app_b" 2>&1; }
exec {txb_in}>&"${TXB[1]}" {txb_out}<&"${TXB[0]}"
echo "BEGIN; SELECT count(*) >= 0 FROM ingest_idempotency;" >&"$txb_in"
read -r -t 10 line <&"$txb_out" || fail "no answer in B's transaction"
psql -X -qtA "$console_a" -c 'SET PHASE passthrough' >"$work/set.out" 2>&1 &
setter=$!
sleep 2
kill -0 "$setter" 2>/dev/null || fail "SET PHASE returned while B had a transaction of the older phase: $(cat "$work/set.out")"
# B's open transaction still mirrors: it began under dual_write (I8).
echo "INSERT INTO ingest_idempotency (site_id, idempotency_key, request_hash) VALUES ('fleet', 'b2', '\\x02'); COMMIT;" >&"$txb_in"
wait "$setter" || fail "SET PHASE passthrough after B's COMMIT: $(cat "$work/set.out")"
exec {txb_in}>&- {TXB[1]}>&-
[ "$(q "SELECT count(*) FROM ingest_idempotency_next WHERE idempotency_key = 'b2'")" = 1 ] ||
	fail "the transaction begun under dual_write was not served by it to its end"
ok "SET PHASE waited for B's transaction of the older phase, which dual_write served to its COMMIT"

# A proxy that is gone stops counting once its lease runs out; one that is alive but
# never acknowledges is named when SET PHASE gives up (not waited for here: 30 s).
kill -TERM "$pid_b"
for _ in $(seq 50); do kill -0 "$pid_b" 2>/dev/null || break; sleep 0.1; done
[ "$(q "SELECT count(*) FROM pgshunt.proxies")" = 1 ] || fail "B's row stayed after its exit"
out=$(on "$console_a" 'SET PHASE dual_write') || fail "SET PHASE with B gone: $out"
ok "B's exit removed its row; A alone acknowledges"
echo "fleet: ok"
