#!/usr/bin/env bash
# The HTTP endpoint on metrics_addr: /metrics (every line checked against the
# Prometheus text format 0.0.4), /healthz, /readyz (200 with the harness's server,
# 503 with a dead one), 404 and 405, and start-up failing on a taken or bad
# metrics_addr.  Each pgshunt here is one of our own, in front of SHUNT_SERVER_PORT.
set -euo pipefail
. tests/integration/lib.sh

hold_fd=
# The held session's FIFO is closed first, so that its psql ends by itself.
trap '[ -z "$hold_fd" ] || exec {hold_fd}>&- 2>/dev/null; lib_cleanup' EXIT

fail() {
	echo "FAIL: $*" >&2
	show_logs "$work"/*.log
	exit 1
}

# --- HTTP: curl when it is there, else python3's urllib (nothing gets installed) ---

# http METHOD URL OUT: the body goes to OUT; prints "STATUS CONTENT-TYPE".
if command -v curl >/dev/null 2>&1; then
	http() {
		local opts=(-sS --max-time 10 -o "$3" -w '%{http_code} %{content_type}\n')
		case $1 in
		HEAD) opts+=(-I) ;;
		POST) opts+=(--data '') ;;
		*) opts+=(-X "$1") ;;
		esac
		curl "${opts[@]}" "$2" || true
	}
else
	http() {
		/usr/bin/python3 - "$@" <<-'EOF'
			import sys, urllib.request, urllib.error
			method, url, out = sys.argv[1:4]
			req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
			try:
			    r = urllib.request.urlopen(req, timeout=10)
			    code, body, ctype = r.status, r.read(), r.headers.get("Content-Type", "")
			except urllib.error.HTTPError as e:
			    code, body, ctype = e.code, e.read(), e.headers.get("Content-Type", "")
			except OSError:
			    code, body, ctype = "000", b"", ""
			open(out, "wb").write(body)
			print(code, ctype)
		EOF
	}
fi

expect_http() { # method url status [body-pattern]
	local got ctype
	read -r got ctype < <(http "$1" "$2" "$work/body")
	[ "$got" = "$3" ] || fail "$1 $2: status $got, want $3: $(head -c 300 "$work/body" 2>/dev/null)"
	if [ $# -ge 4 ]; then
		grep -qE -- "$4" "$work/body" || fail "$1 $2: body lacks /$4/: $(head -c 300 "$work/body")"
	fi
	ok "$1 /${2#http://*/} -> $3${ctype:+ ($ctype)}"
}

# --- the text format checker: every line, or it fails ---

cat >"$work/promcheck.py" <<'EOF'
"""Check a Prometheus text exposition (format 0.0.4) line by line; dump its series as JSON.

usage: promcheck.py EXPOSITION JSON-OUT
"""
import json, re, sys

NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
FLOAT = re.compile(r"[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?|[-+]?Inf|NaN")
TYPES = {"counter", "gauge", "histogram", "summary", "untyped"}
SUFFIXES = {"histogram": ("_bucket", "_sum", "_count"), "summary": ("_sum", "_count")}


def fail(n, line, why):
    sys.exit(f"line {n}: {why}: {line!r}")


def parse_labels(n, line, s, i):
    """s[i] is '{'; returns (labels, index after '}')."""
    labels, i = {}, i + 1
    while True:
        if s.startswith("}", i):
            return labels, i + 1
        m = LABEL.match(s, i)
        if not m or not s.startswith('="', m.end()):
            fail(n, line, "bad label name or missing =\"")
        name, i, value = m.group(), m.end() + 2, []
        while True:
            if i >= len(s):
                fail(n, line, "unterminated label value")
            c = s[i]
            if c == '"':
                break
            if c == "\\":
                esc = s[i + 1 : i + 2]
                if esc not in ("\\", '"', "n"):
                    fail(n, line, f"bad escape \\{esc} in a label value")
                value.append("\n" if esc == "n" else esc)
                i += 2
                continue
            if c == "\n":
                fail(n, line, "raw newline in a label value")
            value.append(c)
            i += 1
        if name in labels:
            fail(n, line, f"label {name} twice")
        labels[name] = "".join(value)
        i += 1
        if s.startswith(",", i):
            i += 1
        elif not s.startswith("}", i):
            fail(n, line, "expected , or } after a label")


def family_of(name, types):
    if name in types:
        return name
    for kind, suffixes in SUFFIXES.items():
        for suf in suffixes:
            base = name[: -len(suf)]
            if name.endswith(suf) and types.get(base) == kind:
                return base
    return None


def check_comment(n, line, types, helps, sampled):
    parts = line.split(" ", 3)
    if len(parts) < 3 or parts[1] not in ("HELP", "TYPE"):
        return  # an ordinary comment
    kind, name = parts[1], parts[2]
    if not NAME.fullmatch(name):
        fail(n, line, f"bad metric name in # {kind}")
    if kind == "HELP":
        if name in helps:
            fail(n, line, "second # HELP")
        helps.add(name)
        return
    if len(parts) != 4 or parts[3] not in TYPES:
        fail(n, line, "# TYPE without a known type")
    if name in types:
        fail(n, line, "second # TYPE")
    if name in sampled:
        fail(n, line, "# TYPE after samples of the family")
    types[name] = parts[3]


def check_sample(n, line, types, series, sampled):
    m = NAME.match(line)
    if not m:
        fail(n, line, "bad metric name")
    name, i, labels = m.group(), m.end(), {}
    if line.startswith("{", i):
        labels, i = parse_labels(n, line, line, i)
    rest = line[i:]
    if not rest.startswith(" "):
        fail(n, line, "no space before the value")
    fields = rest.strip(" ").split(" ")
    if not 1 <= len(fields) <= 2 or not FLOAT.fullmatch(fields[0]):
        fail(n, line, "value is not a float")
    if len(fields) == 2 and not re.fullmatch(r"-?[0-9]+", fields[1]):
        fail(n, line, "timestamp is not an integer")
    family = family_of(name, types)
    if family is None:
        fail(n, line, f"{name} has no preceding # TYPE")
    sampled.add(family)
    key = name + ("{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}" if labels else "")
    if key in series:
        fail(n, line, "duplicate series")
    series[key] = float(fields[0])


def main():
    raw = open(sys.argv[1], "rb").read()
    text = raw.decode("utf-8")
    if not text.endswith("\n"):
        sys.exit("the exposition does not end with a newline")
    types, helps, series, sampled = {}, set(), {}, set()
    for n, line in enumerate(text[:-1].split("\n"), 1):
        if line.startswith("#"):
            check_comment(n, line, types, helps, sampled)
        elif line.strip():
            check_sample(n, line, types, series, sampled)
    missing_help = set(types) - helps
    if missing_help:
        sys.exit(f"families without # HELP: {sorted(missing_help)}")
    json.dump({"types": types, "series": series}, open(sys.argv[2], "w"))
    print(f"{len(series)} series in {len(types)} families")


main()
EOF

scrape() { # url: /metrics into $work/metrics.txt, checked, series into $work/metrics.json
	local got ctype summary
	read -r got ctype < <(http GET "$1" "$work/metrics.txt")
	[ "$got" = 200 ] || fail "GET $1: status $got"
	[ "$ctype" = "text/plain; version=0.0.4; charset=utf-8" ] || fail "GET $1: Content-Type $ctype"
	summary=$(/usr/bin/python3 "$work/promcheck.py" "$work/metrics.txt" "$work/metrics.json" 2>&1) ||
		fail "/metrics is not valid text format 0.0.4: $summary"
	echo "$summary"
}

val() { # series key, e.g. 'pgshunt_phase{phase="passthrough"}': its value as an integer
	/usr/bin/python3 -c '
import json, sys
d = json.load(open(sys.argv[1]))["series"]
v = d.get(sys.argv[2])
print("missing" if v is None else (int(v) if v == int(v) else v))' "$work/metrics.json" "$1"
}

type_of() {
	/usr/bin/python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["types"].get(sys.argv[2], "missing"))' \
		"$work/metrics.json" "$1"
}

# --- instances ---

write_conf() { # file listen-port server-port metrics-addr
	cat >"$1" <<-EOF
		[pgshunt]
		listen_addr = 127.0.0.1
		listen_port = $2
		server_host = 127.0.0.1
		server_port = $3
		server_tls_sslmode = disable
		metrics_addr = $4
		shutdown_timeout = 5
	EOF
}

# start NAME SERVER-PORT: a pgshunt in front of SERVER-PORT, with $work/NAME.ini and
# $work/NAME.log, listening on new ports; sets $port, $mport (metrics), $base (its URL)
# and $pid once both ports accept connections.
start() {
	port=$(bash "$shunt_harness" freeport)
	mport=$(bash "$shunt_harness" freeport)
	base=http://127.0.0.1:$mport
	write_conf "$work/$1.ini" "$port" "$2" "127.0.0.1:$mport"
	"$shunt_bin" "$work/$1.ini" 2>"$work/$1.log" &
	pid=$!
	own_pids+=("$pid")
	for _ in $(seq 100); do
		if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null &&
			(exec 3<>"/dev/tcp/127.0.0.1/$mport") 2>/dev/null; then
			return 0
		fi
		kill -0 "$pid" 2>/dev/null || fail "pgshunt exited at start: $(cat "$work/$1.log")"
		sleep 0.1
	done
	fail "pgshunt did not listen on $port and $mport (metrics) within 10 s"
}

# SIGTERM, then a clean exit: status 0 and no sanitizer report (an ASan build checks
# leaks at exit, metrics_stop() included).
stop_clean() { # pid log
	stop_ok "$1" 15
	if grep -qE 'ERROR: (Address|Leak)Sanitizer|runtime error:' "$2"; then
		fail "sanitizer report in $2"
	fi
}

expect_exit() { # status config pattern
	local rc=0
	timeout 10 "$shunt_bin" "$2" >"$work/exit.out" 2>&1 || rc=$?
	[ "$rc" = "$1" ] || fail "$2: exit $rc, want $1: $(tail -n 5 "$work/exit.out")"
	grep -qE -- "$3" "$work/exit.out" || fail "$2: output lacks /$3/: $(tail -n 5 "$work/exit.out")"
}

# --- a healthy instance ---

start good "$SHUNT_SERVER_PORT"
good_pid=$pid
ok "pgshunt $good_pid with metrics on 127.0.0.1:$mport"

app="host=127.0.0.1 port=$port dbname=shunt_test user=shunt_trust"
queries=0
for i in 1 2 3; do
	[ "$(psql -X -qtA "$app" -c "select $i * 10")" = $((i * 10)) ] || fail "query $i through pgshunt"
	queries=$((queries + 1))
done
out=$(psql -X -qtA "$app" <<-'EOF'
	select 'a';
	select 'b';
	select count(*) from generate_series(1, 100);
EOF
)
[ "$out" = $'a\nb\n100' ] || fail "three queries in one session: $out"
queries=$((queries + 3))
ok "$queries queries through pgshunt in 4 connections"

# Hold one idle session open: psql waits on a FIFO we keep open.
mkfifo "$work/hold.in"
psql -X -qtA "$app" <"$work/hold.in" >"$work/hold.out" 2>&1 &
own_pids+=("$!")
exec {hold_fd}>"$work/hold.in"
echo "select 'held';" >&"$hold_fd"
for _ in $(seq 50); do
	grep -q '^held$' "$work/hold.out" && break
	sleep 0.1
done
grep -q '^held$' "$work/hold.out" || fail "the held session did not answer: $(cat "$work/hold.out")"
queries=$((queries + 1))

# The four sessions before it have ended; pgshunt may take a moment to see them go.
for _ in $(seq 50); do
	scrape "$base/metrics" >/dev/null
	[ "$(val pgshunt_client_connections)" = 1 ] && break
	sleep 0.1
done
ok "/metrics parses: $(scrape "$base/metrics")"

for fam in pgshunt_up pgshunt_build_info pgshunt_start_time_seconds pgshunt_client_connections \
	pgshunt_server_connections pgshunt_paused pgshunt_phase pgshunt_phase_epoch \
	pgshunt_degraded pgshunt_phase_known pgshunt_control_connected; do
	[ "$(type_of "$fam")" = gauge ] || fail "$fam: type $(type_of "$fam"), want gauge"
done
for fam in pgshunt_clients_accepted_total pgshunt_clients_refused_total pgshunt_queries_total \
	pgshunt_transactions_total pgshunt_received_bytes_total pgshunt_sent_bytes_total \
	pgshunt_query_seconds_total pgshunt_errors_total pgshunt_cancel_requests_total; do
	[ "$(type_of "$fam")" = counter ] || fail "$fam: type $(type_of "$fam"), want counter"
done
for fam in pgshunt_threshold_value pgshunt_threshold_status pgshunt_auto_degrade_leader \
	pgshunt_job_rows_done pgshunt_job_rows_total pgshunt_job_state; do
	[ "$(type_of "$fam")" = gauge ] || fail "$fam: type $(type_of "$fam"), want gauge"
done
[ "$(type_of pgshunt_auto_degrade_total)" = counter ] || fail "pgshunt_auto_degrade_total: type $(type_of pgshunt_auto_degrade_total)"
ok "every family present with its type"

# Without control_dsn: nothing measured, no jobs (their rows absent: 0), no decider.
for m in table_size row_estimate insert_p99_ms proxy_insert_p99_ms expires_at_btree_size; do
	[ "$(val "pgshunt_threshold_status{metric=\"$m\"}")" = 0 ] || fail "threshold status $m"
	[ "$(val "pgshunt_threshold_value{metric=\"$m\"}")" = missing ] || fail "threshold value $m without a catalog"
done
for j in backfill drain; do
	[ "$(val "pgshunt_job_rows_done{job=\"$j\"}")" = 0 ] || fail "rows_done of $j"
	[ "$(val "pgshunt_job_rows_total{job=\"$j\"}")" = 0 ] || fail "rows_total of $j"
done
[ "$(val pgshunt_buffer_rows)" = missing ] || fail "pgshunt_buffer_rows without a database"
for d in on off; do
	[ "$(val "pgshunt_auto_degrade_total{direction=\"$d\"}")" = 0 ] || fail "auto_degrade_total $d"
done
[ "$(val pgshunt_auto_degrade_leader)" = 0 ] || fail "a decider without control_dsn"
ok "thresholds, jobs, buffer and auto-DEGRADED families without control_dsn"

version=$("$shunt_bin" --version | cut -d' ' -f2)
[ "$(val pgshunt_up)" = 1 ] || fail "pgshunt_up $(val pgshunt_up)"
[ "$(val "pgshunt_build_info{version=\"$version\"}")" = 1 ] || fail "no build_info for $version"
started=$(val pgshunt_start_time_seconds)
now=$(date +%s)
((started <= now && started > now - 600)) || fail "pgshunt_start_time_seconds $started, now $now"
ok "pgshunt_up 1, build_info version $version, start time $started"

got=$(val pgshunt_queries_total)
((got >= queries)) || fail "pgshunt_queries_total $got < $queries queries sent"
ok "pgshunt_queries_total $got >= $queries"
got=$(val pgshunt_transactions_total)
((got >= queries)) || fail "pgshunt_transactions_total $got < $queries"
got=$(val pgshunt_clients_accepted_total)
((got >= 5)) || fail "pgshunt_clients_accepted_total $got < 5"
for c in pgshunt_received_bytes_total pgshunt_sent_bytes_total; do
	(($(val "$c") > 0)) || fail "$c is $(val "$c")"
done
ok "transactions, accepted clients and bytes counted"

[ "$(val pgshunt_client_connections)" = 1 ] ||
	fail "pgshunt_client_connections $(val pgshunt_client_connections) with one idle session held"
[ "$(val pgshunt_server_connections)" = 1 ] ||
	fail "pgshunt_server_connections $(val pgshunt_server_connections) with one idle session held"
ok "client_connections 1 and server_connections 1 with one idle session held"

[ "$(val 'pgshunt_phase{phase="passthrough"}')" = 1 ] || fail "phase passthrough is not 1"
ones=$(/usr/bin/python3 -c 'import json, sys
d = json.load(open(sys.argv[1]))["series"]
print(sum(1 for k, v in d.items() if k.startswith("pgshunt_phase{") and v == 1))' "$work/metrics.json")
[ "$ones" = 1 ] || fail "$ones phase series at 1, want exactly one"
for g in pgshunt_phase_known:1 pgshunt_degraded:0 pgshunt_paused:0 pgshunt_control_connected:0; do
	[ "$(val "${g%%:*}")" = "${g#*:}" ] || fail "${g%%:*} is $(val "${g%%:*}"), want ${g#*:}"
done
ok "phase passthrough (known), not degraded, not paused, no control connection"

exec {hold_fd}>&-
hold_fd=
for _ in $(seq 50); do
	scrape "$base/metrics" >/dev/null
	[ "$(val pgshunt_client_connections)" = 0 ] && break
	sleep 0.1
done
[ "$(val pgshunt_client_connections)" = 0 ] || fail "client_connections stays $(val pgshunt_client_connections)"
ok "client_connections back to 0 once the held session ended"

expect_http GET "$base/healthz" 200 '^ok$'
expect_http HEAD "$base/metrics" 200
for _ in $(seq 50); do
	read -r code _ < <(http GET "$base/readyz" "$work/body")
	[ "$code" = 200 ] && break
	sleep 0.1
done
expect_http GET "$base/readyz" 200 '^ready$'
expect_http GET "$base/nowhere" 404
expect_http GET "$base/metrics/extra" 404
expect_http POST "$base/metrics" 405
expect_http POST "$base/readyz" 405
stop_clean "$good_pid" "$work/good.log"
ok "SIGTERM: clean exit"

# --- a dead server: alive, not ready ---

dead=$(bash "$shunt_harness" freeport)
start dead "$dead"
dead_pid=$pid
for _ in $(seq 50); do
	http GET "$base/readyz" "$work/body" >/dev/null
	grep -q unreachable "$work/body" && break
	sleep 0.1
done
expect_http GET "$base/readyz" 503 "^not ready: server 127\\.0\\.0\\.1:$dead unreachable"
expect_http GET "$base/healthz" 200 '^ok$'
scrape "$base/metrics" >/dev/null
[ "$(val pgshunt_server_reachable)" = 0 ] || fail "pgshunt_server_reachable $(val pgshunt_server_reachable)"
ok "server_reachable 0 with the server down"
stop_clean "$dead_pid" "$work/dead.log"

# --- start-up refuses a metrics_addr it cannot use (status 1, naming metrics_addr) ---

port=$(bash "$shunt_harness" freeport)
# The harness's PostgreSQL holds its port on 127.0.0.1.
write_conf "$work/taken.ini" "$port" "$SHUNT_SERVER_PORT" "127.0.0.1:$SHUNT_SERVER_PORT"
expect_exit 1 "$work/taken.ini" "metrics_addr.*127\\.0\\.0\\.1:$SHUNT_SERVER_PORT.*(in use|cannot listen)"
ok "metrics_addr on a port in use: exit 1"
write_conf "$work/bad.ini" "$port" "$SHUNT_SERVER_PORT" "127.0.0.1"
expect_exit 1 "$work/bad.ini" 'metrics_addr.*not host:port'
ok "metrics_addr without a port: exit 1"
echo "metrics: ok"
