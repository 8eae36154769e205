#!/usr/bin/env bash
# The phase console commands against a database of their own: SHOW PHASE, MIGRATE
# PREPARE, SET PHASE and DEGRADED, with the phase kept in pgshunt.state.
set -euo pipefail

. tests/integration/lib.sh

own_database "phase_$$"
psql -X -q "$direct" -c "SELECT seed_ingest_idempotency(500)" >/dev/null

start_proxy() { start_pgshunt "partition_interval = month" "partition_premake = 2" "$@"; }
stop_proxy() { stop_pgshunt; }

run() { psql -X -qtA -F'|' "$console" -c "$1" 2>&1; }

expect_error() { # command sqlstate message-pattern
	local out
	if out=$(psql -X -qtA -v VERBOSITY=verbose "$console" -c "$1" 2>&1); then
		fail "$1 succeeded: $out"
	fi
	grep -q "ERROR:  $2:" <<<"$out" || fail "$1: want SQLSTATE $2, got: $out"
	grep -qE -- "$3" <<<"$out" || fail "$1: message lacks /$3/: $out"
	echo "ok: $1 -> $2"
}

# --- without control_dsn: nothing to keep the phase in ---
start_proxy
[ "$(run 'SHOW PHASE' | cut -d'|' -f1-2)" = "passthrough|off" ] || fail "SHOW PHASE without control_dsn"
expect_error "SET PHASE dual_write" 55000 "control_dsn is not set"
expect_error "MIGRATE PREPARE" 55000 "control_dsn is not set"
stop_proxy

# --- with control_dsn, before MIGRATE PREPARE ---
start_proxy "control_dsn = $direct"
wait_phase_known
[ "$(run 'SHOW PHASE')" = "passthrough|off|0|yes|public.ingest_idempotency|public.ingest_idempotency_next|public.ingest_fallback_buffer" ] ||
	fail "SHOW PHASE before prepare: $(run 'SHOW PHASE')"
expect_error "SET PHASE dual_write" 55000 "control schema does not exist: run MIGRATE PREPARE"
expect_error "SET PHASE sideways" 42601 "usage: SET PHASE"
expect_error "SET PHASE dual_write PLEASE" 42601 "usage: SET PHASE"
expect_error "DEGRADED MAYBE" 42601 "usage: DEGRADED ON\\|OFF"

# --- MIGRATE PREPARE builds next, its partitions, the buffer and the control schema ---
out=$(run 'MIGRATE PREPARE') || fail "MIGRATE PREPARE: $out"
[ "$(wc -l <<<"$out")" -ge 3 ] || fail "MIGRATE PREPARE reported too little: $out"
echo "ok: MIGRATE PREPARE ($(wc -l <<<"$out") steps)"
q() { psql -X -qtA "$direct" -c "$1"; }
[ "$(q "SELECT relkind FROM pg_class WHERE oid = 'public.ingest_idempotency_next'::regclass")" = p ] ||
	fail "next_table is not partitioned"
[ "$(q "SELECT count(*) FROM pg_inherits WHERE inhparent = 'public.ingest_idempotency_next'::regclass")" -ge 5 ] ||
	fail "too few partitions for 120 days of history + 2 ahead"
[ "$(q "SELECT to_regclass('public.ingest_fallback_buffer') IS NOT NULL")" = t ] || fail "no buffer table"
[ "$(q "SELECT phase || '/' || degraded FROM pgshunt.state")" = "passthrough/false" ] || fail "pgshunt.state"
again=$(run 'MIGRATE PREPARE') || fail "second MIGRATE PREPARE: $again"
echo "ok: MIGRATE PREPARE again"

# --- SET PHASE: one step at a time, and only into phases this pgshunt can serve ---
expect_error "SET PHASE read_next" 55000 "one step at a time"
expect_error "SET PHASE passthrough" 55000 "already"
out=$(run "DEGRADED ON"); [ -z "$out" ] || fail "DEGRADED ON: $out"
out=$(run "DEGRADED OFF"); [ -z "$out" ] || fail "DEGRADED OFF: $out"
[ "$(q "SELECT phase FROM pgshunt.state")" = passthrough ] || fail "a refused change was written"
# Data preconditions: a missing buffer_table stops dual_write, FORCE skips the check.
q "ALTER TABLE public.ingest_fallback_buffer RENAME TO moved_away" >/dev/null
expect_error "SET PHASE dual_write" 55000 "buffer_table public.ingest_fallback_buffer does not exist"
out=$(run "SET PHASE dual_write FORCE"); [ -z "$out" ] || fail "SET PHASE dual_write FORCE: $out"
grep -q 'FORCE: data preconditions SKIPPED' "$work/pgshunt.log" || fail "FORCE was not logged loudly"
[ "$(q "SELECT forced FROM pgshunt.phase_log ORDER BY id DESC LIMIT 1")" = t ] || fail "phase_log forced"
out=$(run "SET PHASE passthrough"); [ -z "$out" ] || fail "back from a forced dual_write: $out"
q "ALTER TABLE public.moved_away RENAME TO ingest_fallback_buffer" >/dev/null
out=$(run "SET PHASE dual_write"); [ -z "$out" ] || fail "SET PHASE dual_write: $out"
[ "$(q "SELECT phase FROM pgshunt.state")" = dual_write ] || fail "dual_write not written"
expect_error "SET PHASE read_next" 55000 "backfill has not completed"
expect_error "SET PHASE cutover" 55000 "one step at a time"
out=$(run "SET PHASE read_next FORCE"); [ -z "$out" ] || fail "SET PHASE read_next FORCE: $out"
out=$(run "SET PHASE cutover"); [ -z "$out" ] || fail "SET PHASE cutover: $out"
expect_error "SET PHASE dual_write" 55000 "one step at a time"
out=$(run "SET PHASE read_next"); [ -z "$out" ] || fail "back to read_next: $out"
expect_error "SET PHASE passthrough" 55000 "one step at a time"
out=$(run "SET PHASE dual_write"); [ -z "$out" ] || fail "back to dual_write: $out"
[ "$(run 'SET PHASE passthrough')" = "" ] || fail "one step back to passthrough"
[ "$(q "SELECT count(*) FROM pgshunt.phase_log WHERE to_phase = 'dual_write'")" = 3 ] || fail "phase_log: $(q 'SELECT to_phase FROM pgshunt.phase_log ORDER BY id')"

# DEGRADED OFF is a real change of nothing but the epoch: it is written and logged.
epoch0=$(q "SELECT epoch FROM pgshunt.state")
[ "$(run 'DEGRADED OFF')" = "" ] || fail "DEGRADED OFF"
epoch1=$(q "SELECT epoch FROM pgshunt.state")
[ "$epoch1" -gt "$epoch0" ] || fail "epoch did not move: $epoch0 -> $epoch1"
[ "$(run 'SHOW PHASE' | cut -d'|' -f3)" = "$epoch1" ] || fail "SHOW PHASE epoch is not the database's"
[ "$(q "SELECT count(*) FROM pgshunt.phase_log WHERE epoch = $epoch1")" = 1 ] || fail "no phase_log row"
echo "ok: DEGRADED OFF wrote epoch $epoch1"

# A restarted proxy learns the phase from the database.
stop_proxy
start_proxy "control_dsn = $direct"
for _ in $(seq 50); do
	[ "$(run 'SHOW PHASE' | cut -d'|' -f3)" = "$epoch1" ] && break
	sleep 0.1
done
[ "$(run 'SHOW PHASE' | cut -d'|' -f3)" = "$epoch1" ] || fail "restarted proxy did not read the epoch"
echo "ok: phase read back after restart"

# SHOW PREFLIGHT: what reaches the table without a pgshunt.
q "CREATE VIEW pf_view AS SELECT site_id FROM ingest_idempotency" >/dev/null
q "CREATE FUNCTION pf_cleanup() RETURNS void LANGUAGE sql AS 'DELETE FROM ingest_idempotency WHERE false'" >/dev/null
q "CREATE FUNCTION pf_trg() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NEW; END'" >/dev/null
q "CREATE TRIGGER pf_trigger BEFORE INSERT ON ingest_idempotency FOR EACH ROW EXECUTE FUNCTION pf_trg()" >/dev/null
q "CREATE TABLE pf_child (site_id text, idempotency_key text, FOREIGN KEY (site_id, idempotency_key) REFERENCES ingest_idempotency)" >/dev/null
q "CREATE PUBLICATION pf_pub FOR TABLE ingest_idempotency" >/dev/null
psql -X -q "$direct application_name=cron-job" -c "BEGIN" -c "LOCK TABLE ingest_idempotency IN ACCESS SHARE MODE" -c "SELECT pg_sleep(30)" >/dev/null 2>&1 &
locker=$!
psql -X -q "host=127.0.0.1 port=$port dbname=$own_db user=shunt_trust application_name=via-pgshunt" -c "BEGIN" -c "LOCK TABLE ingest_idempotency IN ACCESS SHARE MODE" -c "SELECT pg_sleep(30)" >/dev/null 2>&1 &
via=$!
sleep 1
pf=$(run 'SHOW PREFLIGHT') || fail "SHOW PREFLIGHT: $pf"
q "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name IN ('cron-job', 'via-pgshunt')" >/dev/null
wait "$locker" "$via" 2>/dev/null || true
for want in "view|pf_view" "function|pf_cleanup()" "trigger|pf_trigger on ingest_idempotency" "foreign key|" "publication|pf_pub" "session|.*cron-job"; do
	grep -qE "^$want" <<<"$pf" || fail "SHOW PREFLIGHT lacks /$want/: $pf"
done
grep -q 'via-pgshunt' <<<"$pf" && fail "SHOW PREFLIGHT lists a session that comes through this pgshunt: $pf"
q "DROP PUBLICATION pf_pub; DROP TABLE pf_child; DROP TRIGGER pf_trigger ON ingest_idempotency; DROP VIEW pf_view" >/dev/null
echo "ok: SHOW PREFLIGHT"

# The console answers the extended protocol too (psycopg 3 uses it).
/usr/bin/python3 - "$console" <<'EOF' || fail "SHOW PHASE over the extended protocol"
import sys, psycopg
with psycopg.connect(sys.argv[1], autocommit=True) as c:
    cur = c.execute("SHOW PHASE")
    names = [d.name for d in cur.description]
    row = cur.fetchone()
    assert names[:2] == ["phase", "degraded"], names
    assert row[0] == "passthrough" and row[1] == "off", row
    try:
        c.execute("SET PHASE read_next")
        raise SystemExit("SET PHASE read_next succeeded")
    except psycopg.Error as e:
        assert e.sqlstate == "55000", e.sqlstate
    assert c.execute("SHOW PHASE").fetchone()[0] == "passthrough"
EOF
echo "ok: extended protocol"

# SHOW PROXIES: this proxy's row, and its acknowledged epoch held back by a
# transaction that began under the older phase (I8), released when it commits.
proxy_row() { run 'SHOW PROXIES' | grep "|$pid|"; }
for _ in $(seq 50); do
	proxy_row | grep -q '|yes$' && break
	sleep 0.1
done
proxy_row | grep -q '|yes$' || fail "SHOW PROXIES lacks this proxy: $(run 'SHOW PROXIES')"
acked() { proxy_row | cut -d'|' -f5; }
epoch_now=$(q "SELECT epoch FROM pgshunt.state")
coproc TXP { psql -X -qtA "host=127.0.0.1 port=$port dbname=$own_db user=shunt_trust" 2>&1; }
exec {txp_in}>&"${TXP[1]}" {txp_out}<&"${TXP[0]}"
echo "BEGIN; SELECT count(*) >= 0 FROM ingest_idempotency;" >&"$txp_in"
read -r -t 10 line <&"$txp_out" || fail "no answer in the open transaction"
# The change waits for this proxy's own acknowledgement, which the transaction holds.
run 'DEGRADED OFF' >"$work/degraded.out" &
setter=$!
sleep 2
kill -0 "$setter" 2>/dev/null || fail "DEGRADED OFF returned while a transaction of the older epoch was open"
[ "$(acked)" = "$epoch_now" ] || fail "acked epoch moved past an open transaction: $(proxy_row)"
echo "COMMIT;" >&"$txp_in"
wait "$setter" || fail "DEGRADED OFF after COMMIT: $(cat "$work/degraded.out")"
[ -z "$(cat "$work/degraded.out")" ] || fail "DEGRADED OFF: $(cat "$work/degraded.out")"
[ "$(acked)" = "$((epoch_now + 1))" ] || fail "acked epoch did not follow after COMMIT: $(proxy_row)"
exec {txp_in}>&- {TXP[1]}>&-
echo "ok: SHOW PROXIES, acked epoch held by a transaction of the older phase"
stop_proxy
[ "$(q "SELECT count(*) FROM pgshunt.proxies")" = 0 ] || fail "the proxy's row stayed after its exit"
echo "phase: ok"
