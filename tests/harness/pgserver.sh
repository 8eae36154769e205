#!/bin/bash
# A throwaway PostgreSQL 15 cluster for the integration tests.
#
#   pgserver.sh start DIR    create and start a cluster in DIR (made by the caller, e.g. mktemp -d)
#                            and write DIR/env (sourceable): PGSERVER_PORT PGSERVER_DIR
#                            PGSERVER_PID CA_FILE SERVER_CERT SERVER_KEY
#   pgserver.sh stop DIR     stop it (by the postmaster's PID) and remove DIR
#   pgserver.sh down DIR     stop it (fast shutdown, as a failover or restart would) and
#                            keep DIR
#   pgserver.sh up DIR       start a cluster that is down again, on the same port; DIR/env
#                            gets the new PGSERVER_PID
#   pgserver.sh freeport     print a TCP port that is free on 127.0.0.1
#
# The cluster listens on 127.0.0.1 and on a unix socket in DIR, has TLS on with
# certificates made in DIR/certs (ca.crt, server.crt/server.key for CN=localhost with
# SAN DNS:localhost,IP:127.0.0.1), fsync off, and these roles (all LOGIN, all with
# CREATE on database shunt_test, which shunt_trust owns):
#   shunt_trust  (trust)          shunt_scram / scram-secret (scram-sha-256)
#   shunt_md5 / md5-secret (md5)  shunt_plain / plain-secret (password)
#   shunt_admin / admin-secret    superuser (scram-sha-256)
# As root, DIR is given to user postgres and initdb/pg_ctl run as postgres.
set -euo pipefail

PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}

die() {
	echo "pgserver: $*" >&2
	exit 1
}

# Run a command as the cluster's owner.
as_owner() {
	if [ "$(id -u)" = 0 ]; then
		runuser -u postgres -- "$@"
	else
		"$@"
	fi
}

port_in_use() {
	# Both a listener (ss) and a bind test: either one says the port is taken.
	if ss -Hltn "sport = :$1" 2>/dev/null | grep -q .; then
		return 0
	fi
	! /usr/bin/python3 - "$1" <<-'EOF' 2>/dev/null
		import socket, sys
		s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
		s.bind(("127.0.0.1", int(sys.argv[1])))
		s.close()
	EOF
}

freeport() {
	local port=$((20000 + (RANDOM * 32768 + RANDOM) % 40000)) i
	for ((i = 0; i < 200; i++)); do
		if ! port_in_use "$port"; then
			echo "$port"
			return 0
		fi
		port=$((port + 1))
		((port > 60000)) && port=20000
	done
	die "no free TCP port found on 127.0.0.1"
}

# PID of the postmaster of DIR/data, or nothing.
postmaster_pid() {
	local f=$1/data/postmaster.pid pid
	[ -r "$f" ] || return 0
	pid=$(head -n1 "$f" 2>/dev/null || true)
	case $pid in
	'' | *[!0-9]*) return 0 ;;
	esac
	echo "$pid"
}

is_alive() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null; }

# Stop the postmaster with PID $1: SIGINT (fast shutdown), up to 20 s, then SIGKILL it
# and whatever children it left.
stop_pid() {
	local pid=$1 i children
	is_alive "$pid" || return 0
	children=$(ps -o pid= --ppid "$pid" 2>/dev/null || true)
	kill -INT "$pid" 2>/dev/null || true
	for ((i = 0; i < 200; i++)); do
		is_alive "$pid" || return 0
		sleep 0.1
	done
	echo "pgserver: postmaster $pid did not stop within 20 s, killing it" >&2
	kill -KILL "$pid" 2>/dev/null || true
	for c in $children; do
		kill -KILL "$c" 2>/dev/null || true
	done
	for ((i = 0; i < 50; i++)); do
		is_alive "$pid" || return 0
		sleep 0.1
	done
}

make_certs() {
	local c=$1/certs
	mkdir -p "$c"
	(
		cd "$c"
		openssl req -x509 -new -newkey rsa:2048 -nodes -days 3650 -sha256 \
			-keyout ca.key -out ca.crt -subj "/CN=pgshunt test CA" \
			-addext "basicConstraints=critical,CA:TRUE" \
			-addext "keyUsage=critical,keyCertSign,cRLSign" \
			-addext "subjectKeyIdentifier=hash"
		openssl req -new -newkey rsa:2048 -nodes -sha256 \
			-keyout server.key -out server.csr -subj "/CN=localhost"
		cat >server.ext <<-'EOF'
			basicConstraints=critical,CA:FALSE
			keyUsage=critical,digitalSignature,keyEncipherment
			extendedKeyUsage=serverAuth
			subjectAltName=DNS:localhost,IP:127.0.0.1
			subjectKeyIdentifier=hash
			authorityKeyIdentifier=keyid
		EOF
		openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
			-days 3650 -sha256 -extfile server.ext -out server.crt
		rm -f server.csr server.ext ca.srl
		chmod 0644 ca.crt server.crt
		chmod 0600 ca.key server.key
	) >"$1/certs.log" 2>&1 || {
		cat "$1/certs.log" >&2
		die "could not make the TLS certificates"
	}
}

write_conf() {
	local dir=$1 port=$2
	cat >>"$dir/data/postgresql.conf" <<-EOF

		# --- pgshunt test harness ---
		listen_addresses = '127.0.0.1'
		port = $port
		unix_socket_directories = '$dir'
		max_connections = 200
		shared_buffers = 32MB
		fsync = off
		synchronous_commit = off
		full_page_writes = off
		wal_level = logical
		ssl = on
		ssl_cert_file = '$dir/certs/server.crt'
		ssl_key_file = '$dir/certs/server.key'
		ssl_ca_file = '$dir/certs/ca.crt'
		password_encryption = 'scram-sha-256'
		log_line_prefix = '%m [%p] %q%u@%d '
		log_connections = on
		log_disconnections = on
	EOF
	{
		echo "# pgshunt test harness"
		echo "local all postgres trust"
		echo "local all all trust"
		local role method
		for role in shunt_trust:trust shunt_scram:scram-sha-256 shunt_md5:md5 \
			shunt_plain:password shunt_admin:scram-sha-256; do
			method=${role#*:}
			role=${role%%:*}
			for kind in hostssl host; do
				printf '%-8s all %-12s %-14s %s\n' "$kind" "$role" 127.0.0.1/32 "$method"
				printf '%-8s all %-12s %-14s %s\n' "$kind" "$role" ::1/128 "$method"
			done
		done
		# Backup and change-data-capture tools (tests/integration/test_replication.sh).
		for kind in hostssl host; do
			printf '%-8s replication shunt_admin 127.0.0.1/32 scram-sha-256\n' "$kind"
		done
	} >"$dir/data/pg_hba.conf"
}

setup_sql() {
	cat <<-'EOF'
		\set ON_ERROR_STOP on
		SET password_encryption = 'scram-sha-256';
		CREATE ROLE shunt_trust LOGIN;
		CREATE ROLE shunt_scram LOGIN PASSWORD 'scram-secret';
		CREATE ROLE shunt_plain LOGIN PASSWORD 'plain-secret';
		CREATE ROLE shunt_admin LOGIN SUPERUSER PASSWORD 'admin-secret';
		SET password_encryption = 'md5';
		CREATE ROLE shunt_md5 LOGIN PASSWORD 'md5-secret';
		RESET password_encryption;
		CREATE DATABASE shunt_test OWNER shunt_trust;
		GRANT CONNECT, CREATE, TEMPORARY ON DATABASE shunt_test
			TO shunt_trust, shunt_scram, shunt_md5, shunt_plain, shunt_admin;
		\connect shunt_test
		GRANT USAGE, CREATE ON SCHEMA public
			TO shunt_trust, shunt_scram, shunt_md5, shunt_plain, shunt_admin;
		DO $$
		BEGIN
			IF (SELECT count(*) FROM pg_authid WHERE rolname = 'shunt_md5'
			    AND rolpassword LIKE 'md5%') <> 1 THEN
				RAISE EXCEPTION 'shunt_md5 password is not stored as md5';
			END IF;
			IF (SELECT count(*) FROM pg_authid WHERE rolname IN ('shunt_scram', 'shunt_admin')
			    AND rolpassword LIKE 'SCRAM-SHA-256$%') <> 2 THEN
				RAISE EXCEPTION 'SCRAM passwords are not stored as SCRAM';
			END IF;
		END $$;
	EOF
}

log_tail() {
	local f
	for f in "$1/postgres.log" "$1/initdb.log"; do
		if [ -s "$f" ]; then
			echo "--- tail of $f ---" >&2
			tail -n 30 "$f" >&2
		fi
	done
}

cmd_start() {
	local dir=$1 port pid ok=0
	[ -d "$dir" ] || die "start: $dir is not a directory (the caller creates it, e.g. with mktemp -d)"
	dir=$(cd "$dir" && pwd)
	[ -x "$PGBIN/initdb" ] || die "PostgreSQL 15 not found in $PGBIN"
	[ -e "$dir/data" ] && die "start: $dir/data already exists"

	make_certs "$dir"
	if [ "$(id -u)" = 0 ]; then
		chown -R postgres: "$dir"
		chmod 0700 "$dir"
	fi

	if ! as_owner "$PGBIN/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 \
		--locale=C.UTF-8 --no-sync >"$dir/initdb.log" 2>&1; then
		log_tail "$dir"
		die "initdb failed"
	fi

	# A port can be taken between the check and the start: try a few.
	for _ in 1 2 3; do
		port=$(freeport)
		cp "$dir/data/postgresql.conf" "$dir/postgresql.conf.orig" 2>/dev/null || true
		write_conf "$dir" "$port"
		as_owner touch "$dir/postgres.log"
		touch "$dir/.starting"
		if as_owner "$PGBIN/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 60 start \
			>"$dir/pg_ctl.log" 2>&1; then
			rm -f "$dir/.starting"
			ok=1
			break
		fi
		rm -f "$dir/.starting"
		pid=$(postmaster_pid "$dir")
		[ -n "$pid" ] && stop_pid "$pid"
		if ! grep -q "could not bind\|Address already in use" "$dir/postgres.log" 2>/dev/null; then
			break
		fi
		echo "pgserver: port $port was taken, trying another" >&2
		mv "$dir/postgresql.conf.orig" "$dir/data/postgresql.conf"
	done
	rm -f "$dir/postgresql.conf.orig"
	if [ "$ok" != 1 ]; then
		cat "$dir/pg_ctl.log" >&2 || true
		log_tail "$dir"
		die "could not start PostgreSQL in $dir"
	fi

	pid=$(postmaster_pid "$dir")
	is_alive "$pid" || {
		log_tail "$dir"
		die "postmaster is not running after start"
	}

	if ! setup_sql | as_owner "$PGBIN/psql" -X -q -h "$dir" -p "$port" -U postgres \
		-d postgres >"$dir/setup.log" 2>&1; then
		cat "$dir/setup.log" >&2
		log_tail "$dir"
		stop_pid "$pid"
		die "could not create the test roles and database"
	fi

	cat >"$dir/env" <<-EOF
		PGSERVER_PORT=$port
		PGSERVER_DIR=$dir
		PGSERVER_PID=$pid
		CA_FILE=$dir/certs/ca.crt
		SERVER_CERT=$dir/certs/server.crt
		SERVER_KEY=$dir/certs/server.key
	EOF
	chmod 0644 "$dir/env"
	echo "pgserver: PostgreSQL running on 127.0.0.1:$port (pid $pid, dir $dir)" >&2
}

cmd_stop() {
	local dir=$1 pid i
	if [ -z "$dir" ] || [ "$dir" = / ]; then
		die "stop: bad directory '$dir'"
	fi
	if [ ! -d "$dir" ]; then
		return 0
	fi
	pid=$(postmaster_pid "$dir")
	# Interrupted while pg_ctl was starting: give postgres a moment to write its PID file.
	if [ -z "$pid" ] && [ -e "$dir/.starting" ]; then
		for ((i = 0; i < 50; i++)); do
			sleep 0.1
			pid=$(postmaster_pid "$dir")
			[ -n "$pid" ] && break
		done
	fi
	if [ -z "$pid" ] && [ -r "$dir/env" ]; then
		pid=$(sed -n 's/^PGSERVER_PID=\([0-9]*\)$/\1/p' "$dir/env")
	fi
	if [ -n "$pid" ]; then
		stop_pid "$pid"
		if is_alive "$pid"; then
			die "stop: postmaster $pid is still running; $dir not removed"
		fi
	fi
	rm -rf -- "$dir"
}

cmd_down() {
	local dir=$1 pid
	pid=$(postmaster_pid "$dir")
	[ -n "$pid" ] || die "down: no postmaster in $dir"
	stop_pid "$pid"
	is_alive "$pid" && die "down: postmaster $pid is still running"
	return 0
}

cmd_up() {
	local dir=$1 pid
	[ -r "$dir/env" ] || die "up: $dir/env not found (start the cluster first)"
	pid=$(postmaster_pid "$dir")
	if [ -n "$pid" ] && is_alive "$pid"; then
		die "up: the cluster in $dir is running (postmaster $pid)"
	fi
	if ! as_owner "$PGBIN/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 60 start \
		>"$dir/pg_ctl.log" 2>&1; then
		cat "$dir/pg_ctl.log" >&2 || true
		log_tail "$dir"
		die "could not start PostgreSQL in $dir again"
	fi
	pid=$(postmaster_pid "$dir")
	sed -i "s/^PGSERVER_PID=.*/PGSERVER_PID=$pid/" "$dir/env"
}

case ${1:-} in
start | stop | down | up)
	[ $# -eq 2 ] || die "usage: $0 $1 DIR"
	"cmd_$1" "$2"
	;;
freeport)
	freeport
	;;
*)
	die "usage: $0 start DIR | stop DIR | down DIR | up DIR | freeport"
	;;
esac
