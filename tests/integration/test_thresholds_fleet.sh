#!/usr/bin/env bash
# Two proxies on one database: the p99 one measures reaches the other through the
# heartbeat (SHOW THRESHOLDS insert_p99_ms is the fleet's), exactly one of them holds
# auto-DEGRADED's decider lock, and the other takes it over when the first stops.
set -euo pipefail

. tests/integration/lib.sh

own_database "thrfleet_$$"
pid_b=
cleanup_b() {
	if [ -n "$pid_b" ]; then
		kill -TERM "$pid_b" 2>/dev/null && sleep 0.3
		kill -KILL "$pid_b" 2>/dev/null || true
	fi
	lib_cleanup
}
trap cleanup_b EXIT

common=("control_dsn = $direct" "auto_degrade = on" "auto_degrade_window_s = 600")
mport_a=$(bash "$shunt_harness" freeport)
start_pgshunt "${common[@]}" "metrics_addr = 127.0.0.1:$mport_a"
app_a=$app console_a=$console
cp "$work/pgshunt.ini" "$work/a.ini"

# The second one, by hand: lib.sh keeps one.
port_b=$(bash "$shunt_harness" freeport)
mport_b=$(bash "$shunt_harness" freeport)
sed -e "s/^listen_port = .*/listen_port = $port_b/" -e "s/^metrics_addr = .*/metrics_addr = 127.0.0.1:$mport_b/" \
	"$work/a.ini" >"$work/b.ini"
"$shunt_bin" "$work/b.ini" 2>>"$work/b.log" &
pid_b=$!
for _ in $(seq 100); do pg_isready -q -h 127.0.0.1 -p "$port_b" && break; sleep 0.1; done
console_b="host=127.0.0.1 port=$port_b dbname=pgshunt user=shunt_admin password=admin-secret"

db() { psql -X -qtA "$direct" -c "$1"; }
gauge() { curl -sS --max-time 5 "http://127.0.0.1:$1/metrics" | awk -v k="$2" '$1 == k { print $2 }'; }
field() { psql -X -qtA -F'|' "$1" -c "SHOW THRESHOLDS" | awk -F'|' -v m="$2" -v c="$3" '$1 == m { print $c }'; }

psql -X -qtA "$console_a" -c "MIGRATE PREPARE" >/dev/null
psql -X -qtA "$console_a" -c "SET PHASE dual_write" >/dev/null

leaders() { echo $(( $(gauge "$mport_a" pgshunt_auto_degrade_leader) + $(gauge "$mport_b" pgshunt_auto_degrade_leader) )); }
for _ in $(seq 50); do [ "$(leaders)" = 1 ] && break; sleep 0.2; done
[ "$(leaders)" = 1 ] || fail "$(leaders) deciders, want 1"
sleep 2.5
[ "$(leaders)" = 1 ] || fail "$(leaders) deciders after a few polls"
ok "exactly one decider of two proxies"

db "CREATE FUNCTION slow_insert() RETURNS trigger LANGUAGE plpgsql AS \$\$ BEGIN PERFORM pg_sleep(0.15); RETURN NEW; END \$\$;
    CREATE TRIGGER slow_insert BEFORE INSERT ON ingest_idempotency FOR EACH ROW EXECUTE FUNCTION slow_insert()" >/dev/null
for i in 1 2 3; do
	psql -X -q "$app_a" -c "INSERT INTO ingest_idempotency (site_id, idempotency_key, request_hash) VALUES ('f', 'a-$i', '\\x00')" >/dev/null
done
[ "$(field "$console_a" proxy_insert_p99_ms 5)" = warning ] || fail "proxy A's own p99 status $(field "$console_a" proxy_insert_p99_ms 5)"
for _ in $(seq 40); do [ "$(field "$console_b" insert_p99_ms 5)" = warning ] && break; sleep 0.2; done
p=$(field "$console_b" insert_p99_ms 2)
[ "$(field "$console_b" insert_p99_ms 5)" = warning ] || fail "proxy B sees the fleet p99 $p, status $(field "$console_b" insert_p99_ms 5)"
[ -z "$(field "$console_b" proxy_insert_p99_ms 2)" ] || fail "proxy B measured inserts it did not serve"
field "$console_b" insert_p99_ms 6 | grep -q 'largest of the 1 live proxies' || fail "detail: $(field "$console_b" insert_p99_ms 6)"
ok "proxy B shows the fleet's p99 ($p ms) measured by proxy A"

# The decider stops: the other takes the lock.
if [ "$(gauge "$mport_a" pgshunt_auto_degrade_leader)" = 1 ]; then
	stop_pgshunt
	survivor=$mport_b
else
	kill -TERM "$pid_b"; wait "$pid_b" || true; pid_b=
	survivor=$mport_a
fi
for _ in $(seq 50); do [ "$(gauge "$survivor" pgshunt_auto_degrade_leader)" = 1 ] && break; sleep 0.2; done
[ "$(gauge "$survivor" pgshunt_auto_degrade_leader)" = 1 ] || fail "the survivor did not take the decider's lock"
ok "the decider stopped: the other proxy decides"
if [ -n "$pid_b" ]; then kill -TERM "$pid_b"; wait "$pid_b" || true; pid_b=; fi
if [ -n "$pid" ]; then stop_pgshunt; fi
grep -qE 'Sanitizer|runtime error' "$work/b.log" && fail "sanitizer report in b.log"
ok "thresholds fleet"
