# Two pgshunts on one database, for the fleet tests (test_finalize*.sh,
# test_fleet_faults.sh, test_rollback.sh).  Source after lib.sh.
#
#   fleet_start DB ROWS  own_database DB with ROWS rows (seed_ingest_idempotency), then
#                        proxies A and B with control_dsn; sets $pid_a $pid_b, $app_a
#                        $app_b, $console_a $console_b; the EXIT trap stops both
#   fleet_restart_b      start B again (after it was killed); sets $pid_b and the rest
#   q SQL                a query straight to the database, tuples only
#   on CONNINFO SQL      a query through a pgshunt, tuples only, errors on stdout
#   wait_acked           until every live proxy acknowledged pgshunt.state's epoch
#   fleet_prepare        MIGRATE PREPARE on A's console, then both proxies registered
#   fleet_to_cutover     fleet_prepare, then dual_write, read_next and cutover
#   wait_hold            until pgshunt.state has a hold (SET PHASE finalized's)
#   expect_fail CONN SQL SQLSTATE PATTERN   the statement fails that way

fleet_pids=()
fleet_cleanup() {
	for p in "${fleet_pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
	sleep 0.3
	for p in "${fleet_pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
	lib_cleanup
}

q() { psql -X -qtA "$direct" -c "$1"; }
on() { psql -X -qtA -v VERBOSITY=verbose "$1" -c "$2" 2>&1; }

expect_fail() { # conninfo sql sqlstate pattern
	local out
	if out=$(on "$1" "$2"); then
		fail "$2 succeeded: $out"
	fi
	grep -q "ERROR:  $3:" <<<"$out" || fail "$2: want SQLSTATE $3, got: $out"
	grep -qE -- "$4" <<<"$out" || fail "$2: message lacks /$4/: $out"
}

fleet_start_one() { # name
	start_pgshunt "control_dsn = $direct"
	fleet_pids+=("$pid")
	mv "$work/pgshunt.ini" "$work/$1.ini"
	# shellcheck disable=SC2034
	case $1 in
	a) pid_a=$pid port_a=$port app_a=$app console_a=$console ;;
	b) pid_b=$pid port_b=$port app_b=$app console_b=$console ;;
	esac
	pid=
}

fleet_start() { # db rows
	own_database "$1"
	psql -X -q "$direct" -c "SELECT seed_ingest_idempotency($2)" >/dev/null
	trap fleet_cleanup EXIT
	fleet_start_one a
	fleet_start_one b
}

fleet_restart_b() {
	"$shunt_bin" "$work/b.ini" 2>>"$work/pgshunt.log" &
	pid_b=$!
	fleet_pids+=("$pid_b")
}

live_proxies() { q "SELECT count(*) FROM pgshunt.proxies WHERE lease_until > now()"; }

wait_acked() {
	for _ in $(seq 100); do
		[ "$(q "SELECT count(*) FROM pgshunt.proxies p, pgshunt.state s WHERE p.lease_until > now() AND coalesce(p.acked_epoch, 0) < s.epoch")" = 0 ] && return 0
		sleep 0.1
	done
	fail "the fleet did not acknowledge epoch $(q "SELECT epoch FROM pgshunt.state")"
}

wait_registered() { # count
	for _ in $(seq 100); do
		[ "$(live_proxies)" = "$1" ] && return 0
		sleep 0.1
	done
	fail "want $1 live proxies, have $(live_proxies)"
}

# The table's key set and row count, to compare two tables.
keyset() { q "SELECT count(*) || ':' || coalesce(md5(string_agg(site_id || '/' || idempotency_key, ',' ORDER BY site_id, idempotency_key)), '') FROM $1"; }

# MIGRATE PREPARE on A's console; then both proxies have registered in pgshunt.proxies.
fleet_prepare() {
	on "$console_a" 'MIGRATE PREPARE' >/dev/null || fail "MIGRATE PREPARE"
	wait_registered 2
}

# A hold in pgshunt.state (SET PHASE finalized holds the fleet), within 5 s.
wait_hold() {
	for _ in $(seq 50); do
		[ "$(q "SELECT hold_until IS NOT NULL FROM pgshunt.state")" = t ] && return 0
		sleep 0.1
	done
	fail "no hold in pgshunt.state"
}

# fleet_prepare, then dual_write, read_next (FORCE: no backfill) and cutover, next
# holding every row of the table (copied, standing in for the backfill).
fleet_to_cutover() {
	fleet_prepare
	on "$console_a" 'SET PHASE dual_write' >/dev/null || fail "SET PHASE dual_write"
	q "INSERT INTO ingest_idempotency_next SELECT * FROM ingest_idempotency ON CONFLICT DO NOTHING" >/dev/null
	on "$console_a" 'SET PHASE read_next FORCE' >/dev/null || fail "SET PHASE read_next"
	local out
	out=$(on "$console_b" 'SET PHASE cutover') ||
		fail "SET PHASE cutover (a build that does not serve it yet must be the test build, make asan): $out"
	wait_acked
}

# Insert workers: each its own connection per statement through the proxy given,
# acknowledged keys in $work/acked.NAME, failures in $work/errors, until $work/stop.
insert_worker() { # name conninfo
	local n=0 out
	while [ ! -e "$work/stop" ]; do
		n=$((n + 1))
		if out=$(psql -X -qtA "$2" -c "INSERT INTO ingest_idempotency (site_id, idempotency_key, request_hash) VALUES ('load', '$1-$n', '\\x01') RETURNING idempotency_key" 2>&1) &&
			[ "$out" = "$1-$n" ]; then
			echo "$1-$n" >>"$work/acked.$1"
		else
			echo "$1-$n: $out" >>"$work/errors"
		fi
	done
}
load_start() { # name=conninfo...
	rm -f "$work/stop"
	: >>"$work/errors"
	load_pids=()
	local w
	for w in "$@"; do
		insert_worker "${w%%=*}" "${w#*=}" &
		load_pids+=($!)
		fleet_pids+=($!)
	done
}
load_stop() {
	touch "$work/stop"
	local p
	for p in "${load_pids[@]}"; do wait "$p" || true; done
	[ ! -s "$work/errors" ] || fail "client statements failed: $(head -5 "$work/errors")"
}
# Every acknowledged insert is in TABLE exactly once.
all_acked_in() { # table
	cat "$work"/acked.* 2>/dev/null | sort >"$work/acked"
	q "SELECT idempotency_key FROM $1 WHERE site_id = 'load' ORDER BY 1" | sort >"$work/present"
	diff -q "$work/acked" "$work/present" >/dev/null ||
		fail "acknowledged inserts vs rows of $1: $(diff "$work/acked" "$work/present" | head -5)"
}
