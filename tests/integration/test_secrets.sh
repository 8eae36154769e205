#!/usr/bin/env bash
# Secrets stay out of the log and out of SHOW CONFIG.  A pgshunt of our own at
# log_level = debug, with a password in control_dsn, carries SCRAM, md5 and
# cleartext-password logins (right and wrong passwords, with and without TLS
# towards the client) and console logins running SHOW CONFIG; then its log must
# hold no password, no SCRAM message (raw, base64 or hex), no md5 hash.  A second
# instance whose control_dsn has a wrong password must not log it either.
set -euo pipefail
. tests/integration/lib.sh

# Just the message: lib.sh's fail would add warnings from $work/pgshunt.log, here the
# log under test.
fail() {
	echo "FAIL: $*" >&2
	exit 1
}

# Every password the test uses, right or wrong.
secrets=(scram-secret md5-secret plain-secret admin-secret
	wrong-scram-pw wrong-md5-pw wrong-plain-pw wrong-admin-pw wrong-ctl-pw)

port=$(bash "$shunt_harness" freeport)
certs=${SHUNT_DIR:-}/certs
conf=$work/secrets.ini
{
	echo "[pgshunt]"
	echo "listen_addr = 127.0.0.1"
	echo "listen_port = $port"
	echo "server_host = 127.0.0.1"
	echo "server_port = $SHUNT_SERVER_PORT"
	echo "control_dsn = host=127.0.0.1 port=$SHUNT_SERVER_PORT dbname=shunt_test user=shunt_admin password=admin-secret"
	echo "admin_users = shunt_admin"
	echo "log_level = debug"
	if [ -n "${SHUNT_CA_FILE:-}" ]; then
		echo "server_tls_sslmode = verify-full"
		echo "server_tls_ca_file = $SHUNT_CA_FILE"
	else
		echo "server_tls_sslmode = disable"
	fi
	# The server's own certificate: SCRAM-SHA-256-PLUS passes through too.
	if [ -r "$certs/server.crt" ] && [ -r "$certs/server.key" ]; then
		echo "client_tls_sslmode = prefer"
		echo "client_tls_cert_file = $certs/server.crt"
		echo "client_tls_key_file = $certs/server.key"
	fi
} >"$conf"
log=$work/pgshunt.log
run_pgshunt "$conf" "$log" "$port"
first_pid=$pid

login() { # sslmode user password db [sql]
	PGPASSWORD=$3 psql -X -qtA "host=127.0.0.1 port=$port dbname=$4 user=$2 sslmode=$1" \
		-c "${5:-select 'logged-in'}" 2>&1
}

expect_ok() { # sslmode user password db sql want
	local out
	out=$(login "$1" "$2" "$3" "$4" "$5") || fail "$2 ($1): login or query failed: $out"
	grep -qF -- "$6" <<<"$out" || fail "$2 ($1): '$5' answered: $out"
}

expect_refused() { # sslmode user password db
	local out rc=0
	out=$(login "$1" "$2" "$3" "$4") || rc=$?
	[ "$rc" != 0 ] || fail "$2 ($1) got in with a wrong password"
	grep -q 'password authentication failed' <<<"$out" || fail "$2 ($1), wrong password: $out"
}

modes=(disable)
grep -q '^client_tls_sslmode = prefer' "$conf" && modes+=(require)
for mode in "${modes[@]}"; do
	expect_ok "$mode" shunt_scram scram-secret shunt_test "select 'scram ' || current_user" "scram shunt_scram"
	expect_refused "$mode" shunt_scram wrong-scram-pw shunt_test
	expect_ok "$mode" shunt_md5 md5-secret shunt_test "select 'md5 ' || current_user" "md5 shunt_md5"
	expect_refused "$mode" shunt_md5 wrong-md5-pw shunt_test
	expect_ok "$mode" shunt_plain plain-secret shunt_test "select 'plain ' || current_user" "plain shunt_plain"
	expect_refused "$mode" shunt_plain wrong-plain-pw shunt_test
	expect_ok "$mode" shunt_admin admin-secret pgshunt "SHOW CONFIG" "control_dsn|"
	expect_refused "$mode" shunt_admin wrong-admin-pw pgshunt
done
ok "SCRAM, md5 and password logins and the console, right and wrong passwords, sslmode ${modes[*]}"

# SHOW CONFIG: the control_dsn row shows the rest of the string, not the password.
cfg=$(login disable shunt_admin admin-secret pgshunt "SHOW CONFIG")
row=$(grep '^control_dsn|' <<<"$cfg") || fail "SHOW CONFIG has no control_dsn row: $cfg"
value=$(cut -d'|' -f2 <<<"$row")
grep -qF "user=shunt_admin" <<<"$value" || fail "SHOW CONFIG control_dsn lost the rest of the string: $value"
grep -qF "password=" <<<"$value" || fail "SHOW CONFIG control_dsn does not say a password is set: $value"
! grep -qF admin-secret <<<"$cfg" || fail "SHOW CONFIG shows the control_dsn password: $row"
ok "SHOW CONFIG: control_dsn = $value"

# Other spellings libpq accepts: spaces around '=', quoted values, a URI.  Each is
# reloaded into the running instance and must come back masked.
for dsn in "host=127.0.0.1 port=$SHUNT_SERVER_PORT dbname=shunt_test user=shunt_admin password = admin-secret" \
	"host=127.0.0.1 port=$SHUNT_SERVER_PORT dbname=shunt_test user=shunt_admin password='admin-secret x'" \
	"postgresql://shunt_admin:admin-secret@127.0.0.1:$SHUNT_SERVER_PORT/shunt_test"; do
	sed -i "s|^control_dsn = .*|control_dsn = $dsn|" "$conf"
	login disable shunt_admin admin-secret pgshunt "RELOAD" >/dev/null || fail "RELOAD with control_dsn $dsn"
	cfg=$(login disable shunt_admin admin-secret pgshunt "SHOW CONFIG")
	row=$(grep '^control_dsn|' <<<"$cfg") || fail "no control_dsn row after reload"
	! grep -qF admin-secret <<<"$cfg" || fail "SHOW CONFIG shows the password of: $row"
	grep -qF "password=********" <<<"$row" || fail "the password is not marked as set: $row"
done
sed -i "s|^control_dsn = .*|control_dsn = host=127.0.0.1 port=$SHUNT_SERVER_PORT dbname=shunt_test user=shunt_admin password=admin-secret|" "$conf"
ok "SHOW CONFIG masks the password however control_dsn spells it"

# A control_dsn with a wrong password: its failures are logged, the password is not.
port2=$(bash "$shunt_harness" freeport)
conf2=$work/wrongctl.ini
sed -e "s/^listen_port = .*/listen_port = $port2/" \
	-e "s/password=admin-secret/password=wrong-ctl-pw/" "$conf" >"$conf2"
log2=$work/wrongctl.log
run_pgshunt "$conf2" "$log2" "$port2"
for _ in $(seq 100); do
	grep -q 'control connection lost' "$log2" && break
	sleep 0.1
done
grep -q 'control connection lost' "$log2" || fail "no control connection failure logged with a wrong password"
kill -HUP "$pid"
sleep 0.3
stop_ok "$pid"
stop_ok "$first_pid"

# The logs: both instances, whole, at debug level.
check_log() { # file
	local f=$1 s hits
	for s in "${secrets[@]}"; do
		! grep -nF -- "$s" "$f" || fail "$f holds the password '$s'"
	done
	# SCRAM messages: client-first "n,,n=,r=<nonce>" ("y,,", "p=tls-server-end-point,,"
	# with channel binding), server-first "r=<nonce>,s=<salt>,i=<n>", client-final
	# "c=<binding>,r=<nonce>,p=<proof>", server-final "v=<signature>"; as they are, in
	# base64 and in hex.  Then md5 password hashes ("md5" and 32 hex digits), in hex too.
	hits=$(grep -nE \
		-e 'n,,n=|y,,n=|p=tls-server-end-point,,|c=biws|c=eSws|c=cD10' \
		-e '(^|[^A-Za-z0-9])r=[A-Za-z0-9+/]{18,}' -e ',s=[A-Za-z0-9+/]{16,}' -e ',i=[0-9]{3,}' \
		-e '(^|[^A-Za-z0-9])[pv]=[A-Za-z0-9+/]{40,}' \
		-e 'biwsbj0|eSwsbj0|cD10bHMtc2VydmVyLWVuZC1wb2ludCws|Yz1iaXdz|Yz1lU3dz|Yz1jRDEw' \
		-e '6e2c2c6e3d|792c2c6e3d|633d62697773|633d65537773|633d63443130' \
		-e 'md5[0-9a-fA-F]{32}' -e '6d6435[0-9a-fA-F]{64}' "$f" || true)
	[ -z "$hits" ] || fail "$f holds SCRAM or md5 material: $hits"
}
check_log "$log"
check_log "$log2"
! grep -nE 'ERROR: (Address|Leak)Sanitizer|runtime error:' "$log" "$log2" || fail "sanitizer report above"
grep -q 'login ok' "$log" || fail "the log shows no login: is it the right log?"
grep -q 'login failed' "$log" || fail "the log shows no failed login"
ok "the debug logs ($(wc -l <"$log") and $(wc -l <"$log2") lines) hold no password, SCRAM message or md5 hash"
echo "secrets: ok"
