#!/usr/bin/env bash
# SCRAM channel binding through pgshunt with TLS on both sides.
#
# tls-server-end-point binds to the hash of the server's certificate.  The shared
# pgshunt of run.sh presents the server's own certificate, so SCRAM-SHA-256-PLUS passes
# through (the driver tests cover that).  Here a pgshunt with a certificate of its own
# must withhold -PLUS, explain the failure of a client that insists on channel binding,
# and work for one that does not use it.
set -euo pipefail

bin=${PGSHUNT_BIN:-./pgshunt}
harness=tests/harness/pgserver.sh
work=$(mktemp -d /tmp/pgshunt-cb.XXXXXX)
pid=

cleanup() {
	if [ -n "$pid" ]; then kill -KILL "$pid" 2>/dev/null || true; fi
	rm -rf "$work"
}
trap cleanup EXIT

fail() {
	echo "FAIL: $*" >&2
	[ -f "$work/pgshunt.log" ] && tail -n 20 "$work/pgshunt.log" >&2
	exit 1
}

# A CA and a certificate for localhost that are not the server's.
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=other-ca" \
	-keyout "$work/ca.key" -out "$work/ca.crt" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
	-keyout "$work/proxy.key" -out "$work/proxy.csr" 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >"$work/san.ext"
openssl x509 -req -in "$work/proxy.csr" -CA "$work/ca.crt" -CAkey "$work/ca.key" \
	-CAcreateserial -days 2 -extfile "$work/san.ext" -out "$work/proxy.crt" 2>/dev/null
chmod 600 "$work/proxy.key"

port=$(bash "$harness" freeport)
cat >"$work/pgshunt.ini" <<EOF
[pgshunt]
listen_addr = 127.0.0.1
listen_port = $port
server_host = 127.0.0.1
server_port = $SHUNT_SERVER_PORT
client_tls_sslmode = prefer
client_tls_cert_file = $work/proxy.crt
client_tls_key_file = $work/proxy.key
server_tls_sslmode = verify-full
server_tls_ca_file = $SHUNT_CA_FILE
EOF
sed -i 's/^server_host = 127.0.0.1$/server_host = localhost/' "$work/pgshunt.ini"
"$bin" "$work/pgshunt.ini" 2>"$work/pgshunt.log" &
pid=$!
for _ in $(seq 100); do
	pg_isready -q -h 127.0.0.1 -p "$port" && break
	sleep 0.1
done

conn="host=localhost port=$port dbname=shunt_test user=shunt_scram password=scram-secret sslmode=verify-full sslrootcert=$work/ca.crt"

# The server offers -PLUS; pgshunt must not pass it on: a client requiring it fails.
if out=$(psql -X -qtA "$conn channel_binding=require" -c 'select 1' 2>&1); then
	fail "channel_binding=require succeeded through a proxy with its own certificate: $out"
fi
grep -q 'channel binding' <<<"$out" || fail "unexpected error for channel_binding=require: $out"

# libpq's default (prefer) over TLS says 'y': pgshunt explains what to do.
if out=$(psql -X -qtA "$conn" -c 'select 1' 2>&1); then
	fail "default channel binding over TLS to a TLS server unexpectedly worked: $out"
fi
grep -q 'SCRAM channel binding cannot cross pgshunt' <<<"$out" || fail "no clear error: $out"

# Without channel binding, SCRAM over TLS works, and so does a wrong password fail.
[ "$(psql -X -qtA "$conn channel_binding=disable" -c 'select 7')" = 7 ] || fail "SCRAM with channel_binding=disable"
if out=$(psql -X -qtA "${conn/scram-secret/wrong} channel_binding=disable" -c 'select 1' 2>&1); then
	fail "wrong password accepted"
fi
grep -q 'password authentication failed' <<<"$out" || fail "wrong password: $out"

# Plain to pgshunt, TLS beyond it: the client never asks for binding, SCRAM works.
plain="host=127.0.0.1 port=$port dbname=shunt_test user=shunt_scram password=scram-secret sslmode=disable"
[ "$(psql -X -qtA "$plain" -c 'select 8')" = 8 ] || fail "SCRAM over a plain client link"
echo "channel binding: ok"
