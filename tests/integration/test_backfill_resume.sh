#!/usr/bin/env bash
# One runner per job across the fleet, and resumption: two proxies, the backfill taken
# by one; its backend terminated mid-run (pg_terminate_backend) and the job going on
# from its cursor; then the runner killed with SIGKILL and the other proxy resuming
# from the cursor; at the end next holds exactly old's rows (none lost, none twice).
set -euo pipefail
. tests/integration/lib.sh

rows=60000
own_database "bfresume_$$"
q() { psql -X -qtA "$direct" -c "$1"; }
q "SELECT seed_ingest_idempotency($rows)" >/dev/null
conf=("control_dsn = $direct" "backfill_batch_rows = 500" "backfill_max_rows_per_sec = 6000"
	"partition_interval = month")
start_pgshunt "${conf[@]}"
pid_a=$pid console_a=$console
pid=
mv "$work/pgshunt.ini" "$work/a.ini"
start_pgshunt "${conf[@]}"
pid_b=$pid console_b=$console
pid=
trap 'for p in "$pid_a" "$pid_b"; do [ -n "$p" ] && kill -TERM "$p" 2>/dev/null; done; sleep 0.3; lib_cleanup' EXIT
on() { psql -X -qtA "$1" -c "$2" 2>&1; }
job() { q "SELECT $1 FROM pgshunt.jobs WHERE name = 'backfill'"; }

on "$console_a" 'MIGRATE PREPARE' >/dev/null || fail "MIGRATE PREPARE"
for _ in $(seq 50); do
	[ "$(q "SELECT count(*) FROM pgshunt.proxies WHERE lease_until > now()")" = 2 ] && break
	sleep 0.2
done
on "$console_a" 'SET PHASE dual_write' >/dev/null || fail "SET PHASE dual_write"
on "$console_b" 'BACKFILL START' >/dev/null || fail "BACKFILL START"
for _ in $(seq 50); do
	[ -n "$(job runner)" ] && break
	sleep 0.1
done
runner=$(job runner)
[ -n "$runner" ] || fail "nobody runs the backfill"
[ "$(q "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgshunt job backfill'")" = 1 ] ||
	fail "more than one backfill connection"
ok "one runner: $runner"

# Its backend terminated: the batch in flight rolls back, the job goes on.
sleep 1
q "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'pgshunt job backfill'" >/dev/null
before=$(job rows_done)
for _ in $(seq 100); do
	[ "$(job rows_done)" -gt "$before" ] && break
	sleep 0.1
done
[ "$(job rows_done)" -gt "$before" ] || fail "the backfill did not go on after its backend was terminated"
grep -q 'job backfill: connection lost' "$work/pgshunt.log" || fail "the lost connection was not logged"
ok "backend terminated at $before rows: the job went on ($(job runner))"

# Its runner killed: the other proxy takes over from the cursor.
runner=$(job runner)
case $runner in
*":$pid_a") victim=$pid_a survivor=$pid_b pid_a= ;;
*":$pid_b") victim=$pid_b survivor=$pid_a pid_b= ;;
*) fail "runner $runner is neither proxy" ;;
esac
[ "$(job state)" = running ] || fail "the backfill ended before the kill: $(job state)"
kill -KILL "$victim"
wait "$victim" 2>/dev/null || true
killed_at=$(job rows_done)
for _ in $(seq 100); do
	[[ "$(job runner)" == *":$survivor" ]] && break
	sleep 0.1
done
[[ "$(job runner)" == *":$survivor" ]] || fail "the other proxy did not take over: $(job runner)"
ok "runner SIGKILLed at $killed_at rows: $(job runner) resumed"

for _ in $(seq 300); do
	[ "$(job state)" = running ] || break
	sleep 0.2
done
[ "$(job state)" = done ] || fail "backfill ended as $(job state): $(job error)"
[ "$(job rows_done)" = "$rows" ] || fail "rows_done $(job rows_done), not $rows: a batch counted twice or skipped"
[ "$(q "SELECT count(*) FROM ingest_idempotency_next")" = "$rows" ] || fail "next has $(q "SELECT count(*) FROM ingest_idempotency_next") rows"
[ "$(q "SELECT count(*) FROM (SELECT * FROM ingest_idempotency EXCEPT ALL SELECT * FROM ingest_idempotency_next) a")" = 0 ] ||
	fail "rows of old missing in next"
ok "done: next holds exactly old's $rows rows"

# The survivor stops cleanly, leaving the finished job as it is.
pid=$survivor
pid_a= pid_b=
stop_pgshunt
[ "$(job state)" = done ] || fail "state after the runner stopped: $(job state)"
