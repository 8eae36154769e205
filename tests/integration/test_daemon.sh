#!/usr/bin/env bash
# The operator-facing lifecycle: sd_notify (READY=1 once listening with the phase
# known, STATUS=, RELOADING=1/READY=1 around SIGHUP, STOPPING=1 at SIGTERM) read from
# a NOTIFY_SOCKET of our own; -d (returns at once, session leader, pidfile, refuses a
# second start on a live pidfile, replaces a stale one, start-up errors on stderr);
# the pidfile without -d; log_syslog = on and -d read from a /dev/log of our own in a
# private mount namespace (skipped, with a note, where unshare/overlayfs are refused).
# Each pgshunt here is one of our own, in front of SHUNT_SERVER_PORT.
set -euo pipefail
. tests/integration/lib.sh

case $shunt_bin in /*) ;; *) shunt_bin=$PWD/${shunt_bin#./} ;; esac
py=/usr/bin/python3

fail() {
	echo "FAIL: $*" >&2
	show_logs "$work"/*.log "$work"/*.msgs
	exit 1
}

write_conf() { shunt_conf "$1" "$2" "shutdown_timeout = 5" "${@:3}"; } # file port [extra lines...]

# A unix datagram socket that appends every line it receives to a file: the
# service manager's NOTIFY_SOCKET, or syslog's /dev/log.
cat >"$work/dgram.py" <<'EOF'
import socket, sys
path, out = sys.argv[1:3]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(path)
with open(out, "a", buffering=1) as f:
    f.write("#listening\n")
    while True:
        for line in s.recv(65536).decode(errors="replace").splitlines():
            f.write(line + "\n")
EOF

start_listener() { # socket-path messages-file -> sets $lpid
	"$py" "$work/dgram.py" "$1" "$2" &
	lpid=$!
	own_pids+=("$lpid")
	for _ in $(seq 50); do
		grep -q '^#listening$' "$2" 2>/dev/null && return 0
		sleep 0.1
	done
	fail "the datagram listener on $1 did not start"
}

# wait_msg FILE FROM REGEX SECONDS: a line matching REGEX after line FROM; prints its number.
wait_msg() {
	local n
	for _ in $(seq $(($4 * 10))); do
		n=$(awk -v from="$2" -v re="$3" 'NR > from && $0 ~ re {print NR; exit}' "$1")
		[ -n "$n" ] && { echo "$n"; return 0; }
		sleep 0.1
	done
	return 1
}
lines() { wc -l <"$1"; }

# --- sd_notify: READY=1, STATUS=, RELOADING=1/READY=1, STOPPING=1 ---
msgs=$work/notify.msgs
start_listener "$work/notify.sock" "$msgs"
port=$(bash "$shunt_harness" freeport)
write_conf "$work/notify.ini" "$port" \
	"control_dsn = host=127.0.0.1 port=$SHUNT_SERVER_PORT dbname=shunt_test user=shunt_admin password=admin-secret"
NOTIFY_SOCKET=$work/notify.sock "$shunt_bin" "$work/notify.ini" 2>"$work/notify.log" &
pid=$!
own_pids+=("$pid")
r=$(wait_msg "$msgs" 0 '^READY=1$' 10) || fail "no READY=1 within 10 s"
pg_isready -q -h 127.0.0.1 -p "$port" || fail "READY=1 came before the listener accepts"
grep -qE '^STATUS=phase [a-z_]+, epoch [0-9]+, degraded (on|off)' "$msgs" || fail "no STATUS= with the phase"
ok "READY=1 (line $r) once listening with the phase read through control_dsn; $(grep -m1 '^STATUS=phase' "$msgs")"
from=$(lines "$msgs")
kill -HUP "$pid"
r1=$(wait_msg "$msgs" "$from" '^RELOADING=1$' 10) || fail "no RELOADING=1 after SIGHUP"
wait_msg "$msgs" "$from" '^MONOTONIC_USEC=[0-9]+$' 1 >/dev/null || fail "RELOADING=1 without MONOTONIC_USEC"
r2=$(wait_msg "$msgs" "$r1" '^READY=1$' 10) || fail "no READY=1 after the reload"
ok "SIGHUP: RELOADING=1 (line $r1), then READY=1 (line $r2)"
# A rejected reload still ends with READY=1: pgshunt serves on with the old file.
from=$(lines "$msgs")
echo "max_client_conn = many" >>"$work/notify.ini"
kill -HUP "$pid"
r1=$(wait_msg "$msgs" "$from" '^RELOADING=1$' 10) || fail "no RELOADING=1 after a bad SIGHUP"
r2=$(wait_msg "$msgs" "$r1" '^READY=1$' 10) || fail "no READY=1 after a rejected reload"
grep -q 'reload rejected' "$work/notify.log" || fail "the bad file was not rejected"
ok "rejected reload: RELOADING=1, then READY=1"
from=$(lines "$msgs")
kill -TERM "$pid"
wait_msg "$msgs" "$from" '^STOPPING=1$' 10 >/dev/null || fail "no STOPPING=1 after SIGTERM"
exited_ok "$pid" 10 "after SIGTERM"
ok "SIGTERM: STOPPING=1, exit 0"

# READY=1 waits for the phase: with control_dsn unreachable, pgshunt listens but is
# not ready, and says why in STATUS=.
: >"$msgs"
echo "#listening" >"$msgs"
dead=$(bash "$shunt_harness" freeport)
port=$(bash "$shunt_harness" freeport)
write_conf "$work/noctl.ini" "$port" "control_dsn = host=127.0.0.1 port=$dead dbname=x user=x connect_timeout=1"
NOTIFY_SOCKET=$work/notify.sock run_pgshunt "$work/noctl.ini" "$work/noctl.log" "$port"
wait_msg "$msgs" 0 '^STATUS=.*migration phase' 5 >/dev/null || fail "no STATUS= saying the phase is awaited"
sleep 1
! grep -q '^READY=1$' "$msgs" || fail "READY=1 sent while the phase is unknown"
from=$(lines "$msgs")
kill -INT "$pid"
wait_msg "$msgs" "$from" '^STOPPING=1$' 10 >/dev/null || fail "no STOPPING=1 after SIGINT"
exited_ok "$pid" 10 "after SIGINT"
ok "no READY=1 while the phase cannot be read; $(grep -m1 '^STATUS=' "$msgs"); SIGINT: STOPPING=1"
kill -TERM "$lpid"

# --- -d: detached, with a pidfile ---
port=$(bash "$shunt_harness" freeport)
pidfile=$work/run/pgshunt.pid
mkdir "$work/run"
write_conf "$work/d.ini" "$port" "pidfile = $pidfile"
start=$SECONDS
rc=0
timeout 10 "$shunt_bin" -d "$work/d.ini" >"$work/d.out" 2>&1 || rc=$?
[ "$rc" = 0 ] || fail "pgshunt -d exited with $rc: $(cat "$work/d.out")"
((SECONDS - start <= 3)) || fail "pgshunt -d took $((SECONDS - start)) s to return"
[ -s "$pidfile" ] || fail "no pidfile once pgshunt -d returned"
dpid=$(cat "$pidfile")
[[ $dpid =~ ^[0-9]+$ ]] || fail "pidfile holds '$dpid'"
own_pids+=("$dpid")
kill -0 "$dpid" 2>/dev/null || fail "pidfile names $dpid, which is not running"
[ ! -e "$pidfile.tmp" ] || fail "$pidfile.tmp left behind"
[ "$(ps -o sid= -p "$dpid" | tr -d ' ')" = "$dpid" ] || fail "the daemon is not a session leader"
pg_isready -q -h 127.0.0.1 -p "$port" || fail "the daemon does not accept connections on $port"
[ "$(psql -X -qtA "host=127.0.0.1 port=$port dbname=shunt_test user=shunt_trust" -c 'select 7')" = 7 ] ||
	fail "query through the daemon"
[ ! -s "$work/d.out" ] || fail "pgshunt -d printed: $(cat "$work/d.out")"
ok "-d returned in $((SECONDS - start)) s; pidfile names $dpid, a session leader that serves queries"

# A second start on the same pidfile fails, naming it, and leaves it alone.
port2=$(bash "$shunt_harness" freeport)
write_conf "$work/d2.ini" "$port2" "pidfile = $pidfile"
rc=0
timeout 10 "$shunt_bin" -d "$work/d2.ini" >"$work/d2.out" 2>&1 || rc=$?
[ "$rc" = 1 ] || fail "second start: exit $rc, want 1: $(cat "$work/d2.out")"
grep -qF "$pidfile" "$work/d2.out" || fail "second start does not name the pidfile: $(cat "$work/d2.out")"
! pg_isready -q -h 127.0.0.1 -p "$port2" || fail "the second instance listens"
[ "$(cat "$pidfile")" = "$dpid" ] || fail "the second start changed the pidfile"
rc=0
"$shunt_bin" "$work/d2.ini" >"$work/d3.out" 2>&1 || rc=$?
[ "$rc" = 1 ] || fail "second start without -d: exit $rc, want 1"
ok "a second start on the pidfile: exit 1, $(head -n1 "$work/d2.out")"

# SIGTERM: the daemon exits and removes its pidfile.
kill -TERM "$dpid"
wait_gone "$dpid" 10
[ ! -e "$pidfile" ] || fail "pidfile left after SIGTERM"
ok "SIGTERM: the daemon exited and removed $pidfile"

# A stale pidfile (a PID that is gone) is replaced.
sleep 30 &
dead=$!
kill -KILL "$dead"
wait "$dead" 2>/dev/null || true
echo "$dead" >"$pidfile"
rc=0
timeout 10 "$shunt_bin" -d "$work/d.ini" >"$work/d4.out" 2>&1 || rc=$?
[ "$rc" = 0 ] || fail "start over a stale pidfile: exit $rc: $(cat "$work/d4.out")"
dpid=$(cat "$pidfile")
own_pids+=("$dpid")
if [ "$dpid" = "$dead" ] || ! kill -0 "$dpid" 2>/dev/null; then
	fail "the stale pidfile was not replaced ($dpid)"
fi
pg_isready -q -h 127.0.0.1 -p "$port" || fail "not listening after replacing a stale pidfile"
kill -INT "$dpid"
wait_gone "$dpid" 10
[ ! -e "$pidfile" ] || fail "pidfile left after SIGINT"
ok "a stale pidfile (pid $dead) is replaced (pid $dpid); SIGINT removes it too"

# Start-up errors reach stderr before detaching, and the exit status says so.
write_conf "$work/busy.ini" "$SHUNT_SERVER_PORT" "pidfile = $pidfile"
rc=0
timeout 10 "$shunt_bin" -d "$work/busy.ini" >"$work/busy.out" 2>&1 || rc=$?
[ "$rc" = 1 ] || fail "-d on a port in use: exit $rc, want 1: $(cat "$work/busy.out")"
grep -q 'cannot listen on 127.0.0.1:'"$SHUNT_SERVER_PORT" "$work/busy.out" ||
	fail "-d on a port in use: stderr lacks the reason: $(cat "$work/busy.out")"
[ ! -e "$pidfile" ] || fail "pidfile written although start-up failed"
write_conf "$work/nodir.ini" "$port" "pidfile = $work/missing/dir/pgshunt.pid"
rc=0
timeout 10 "$shunt_bin" -d "$work/nodir.ini" >"$work/nodir.out" 2>&1 || rc=$?
[ "$rc" = 1 ] || fail "-d with an unwritable pidfile: exit $rc, want 1"
grep -q 'cannot write pidfile' "$work/nodir.out" || fail "no reason for the pidfile failure: $(cat "$work/nodir.out")"
! pg_isready -q -h 127.0.0.1 -p "$port" || fail "still listening after a pidfile failure"
ok "-d failures on stderr with exit 1: $(grep -o 'cannot listen.*' "$work/busy.out" | head -n1 | tr -d '"')"

# --- the pidfile without -d (a service manager's PIDFile=) ---
write_conf "$work/fg.ini" "$port" "pidfile = $pidfile"
run_pgshunt "$work/fg.ini" "$work/fg.log" "$port"
[ "$(cat "$pidfile" 2>/dev/null)" = "$pid" ] || fail "foreground pidfile holds '$(cat "$pidfile" 2>/dev/null)', want $pid"
stop_ok "$pid"
[ ! -e "$pidfile" ] || fail "foreground pidfile left after SIGTERM"
ok "without -d: the pidfile holds the PID while it runs"

# --- syslog: log_syslog = on, and -d, read from our own /dev/log ---
# In a private mount namespace with an overlay on /dev, /dev/log is ours and the
# host's /dev is untouched (it may have no /dev/log at all, or a real syslog).
syslog_test() {
	local port=$1 msgs=$work/syslog.msgs n
	mkdir "$work/ns"
	mount -t tmpfs tmpfs "$work/ns"
	mkdir "$work/ns/upper" "$work/ns/work"
	mount -t overlay overlay -o "lowerdir=/dev,upperdir=$work/ns/upper,workdir=$work/ns/work" /dev
	rm -f /dev/log
	start_listener /dev/log "$msgs"
	write_conf "$work/sys.ini" "$port" "log_syslog = on"
	run_pgshunt "$work/sys.ini" "$work/sys.log" "$port"
	kill -TERM "$pid"
	wait_gone "$pid" 10
	# Markers go in once the lines before them have arrived, so each run has its part.
	wait_msg "$msgs" 0 'pgshunt stopped' 5 >/dev/null || fail "log_syslog = on: no 'stopped' line in syslog"
	echo "#foreground-done" >>"$msgs"
	n=$(wc -l <"$msgs")
	write_conf "$work/sysd.ini" "$port" "pidfile = $work/sysd.pid"
	timeout 10 "$shunt_bin" -d "$work/sysd.ini" 2>"$work/sysd.log" || fail "pgshunt -d in the namespace"
	pid=$(cat "$work/sysd.pid")
	own_pids+=("$pid")
	kill -TERM "$pid"
	wait_gone "$pid" 10
	wait_msg "$msgs" "$n" 'pgshunt stopped' 5 >/dev/null || fail "-d: no 'stopped' line in syslog"
	echo "#daemon-done" >>"$msgs"
	n=$(wc -l <"$msgs")
	write_conf "$work/sysbusy.ini" "$SHUNT_SERVER_PORT" "log_syslog = on"
	! "$shunt_bin" "$work/sysbusy.ini" 2>"$work/sysbusy.log" || fail "pgshunt started on a port in use"
	wait_msg "$msgs" "$n" 'cannot listen' 5 >/dev/null || fail "a start-up error did not reach syslog"
}

# The namespace's shell: our processes there are killed with it, whatever happens.
ns_main() {
	set -euo pipefail
	own_pids=()
	trap 'for p in "${own_pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done' EXIT
	syslog_test "$1"
}

# Probe first: unshare and an overlay on /dev need root and a permissive container.
ns_works() {
	[ "$(id -u)" = 0 ] || return 1
	mkdir "$work/probe"
	unshare -m --propagation private sh -c "mount -t tmpfs tmpfs '$work/probe' &&
		mkdir '$work/probe/u' '$work/probe/w' &&
		mount -t overlay overlay -o 'lowerdir=/dev,upperdir=$work/probe/u,workdir=$work/probe/w' /dev" \
		2>/dev/null
}

if ns_works; then
	port=$(bash "$shunt_harness" freeport)
	export -f ns_main syslog_test start_listener write_conf shunt_conf run_pgshunt wait_listening wait_gone \
		wait_msg fail show_logs
	export shunt_bin work py SHUNT_SERVER_PORT
	# shellcheck disable=SC2016 # $1 is the inner shell's
	unshare -m --propagation private bash -c 'ns_main "$1"' ns_main "$port" ||
		fail "the syslog run in a private mount namespace failed"
	msgs=$work/syslog.msgs
	fg=$(sed -n '/^#listening$/,/^#foreground-done$/p' "$msgs")
	grep -qE '^<30>.*pgshunt\[[0-9]+\]: pgshunt [0-9.]+ ready' <<<"$fg" ||
		fail "log_syslog = on: no 'ready' line at daemon.info: $fg"
	[ ! -s "$work/sys.log" ] || fail "log_syslog = on still wrote to stderr: $(cat "$work/sys.log")"
	dm=$(sed -n '/^#foreground-done$/,/^#daemon-done$/p' "$msgs")
	grep -qE '^<30>.*pgshunt\[[0-9]+\]: pgshunt [0-9.]+ ready' <<<"$dm" || fail "-d: no 'ready' line in syslog: $dm"
	grep -qE '^<30>.*pgshunt\[[0-9]+\]: shutting down' <<<"$dm" || fail "-d: no 'shutting down' line in syslog"
	busy=$(sed -n '/^#daemon-done$/,$p' "$msgs")
	grep -qE '^<27>.*pgshunt\[[0-9]+\]: cannot listen' <<<"$busy" ||
		fail "a start-up error is not in syslog at daemon.err: $busy"
	grep -q 'level=error.*cannot listen' "$work/sysbusy.log" ||
		fail "a start-up error with log_syslog = on is not on stderr: $(cat "$work/sysbusy.log")"
	ok "syslog (facility daemon): log_syslog = on and -d log there and not on stderr; start-up errors go to both"
else
	echo "SKIP syslog: no private mount namespace with an overlay on /dev here (needs root, unshare -m and overlayfs); log_syslog not verified"
fi
# A sanitizer build reports at exit, on stderr: the foreground instances' logs.
! grep -nE 'ERROR: (Address|Leak)Sanitizer|runtime error:' "$work"/*.log || fail "sanitizer report above"
echo "daemon: ok"
