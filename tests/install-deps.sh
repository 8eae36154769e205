#!/bin/sh
# Install what pgshunt needs to build and test (Debian 12, as root).  Idempotent:
# only missing packages are installed, and `apt-get update` runs only when some are.
# Then `npm ci` for the node driver tests when their node_modules is missing or stale.
#
#   sh tests/install-deps.sh
set -eu

cd "$(dirname "$0")/.."

pkgs="build-essential pkg-config clang libevent-dev libssl-dev libpq-dev libpg-query-dev
libinih-dev libcjson-dev uthash-dev libcmocka-dev libsystemd-dev postgresql-15 postgresql-client-15
pgbouncer python3-psycopg libpostgresql-jdbc-java default-jdk-headless nodejs npm valgrind
openssl procps iproute2 dpkg-dev debhelper systemd python3-yaml groff-base man-db curl"

have() { command -v "$1" >/dev/null 2>&1; }

missing=""
for p in $pkgs; do
	case $p in
	# node may come from elsewhere (e.g. nodesource, which bundles npm): accept it.
	nodejs | npm) if have node && have npm; then continue; fi ;;
	default-jdk-headless) if have javac; then continue; fi ;;
	esac
	status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
	case $status in
	*" installed") ;;
	*) missing="$missing $p" ;;
	esac
done

did=""
if [ -n "$missing" ]; then
	if [ "$(id -u)" != 0 ]; then
		echo "install-deps: missing packages:$missing (run as root to install them)" >&2
		exit 1
	fi
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq >/dev/null
	# shellcheck disable=SC2086
	apt-get install -y -qq --no-install-recommends $missing >/dev/null
	did="installed:$missing"
fi

# Missing, or older than the lock file (a pull that added a module).
node=tests/drivers/node
if [ ! -d $node/node_modules ] || [ $node/package-lock.json -nt $node/node_modules/.package-lock.json ]; then
	if ! have npm; then
		echo "install-deps: npm not found, cannot install the node driver tests' modules" >&2
		exit 1
	fi
	(cd tests/drivers/node && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
	did="${did:+$did; }npm ci in tests/drivers/node"
fi

echo "install-deps: ${did:-nothing to do, all dependencies present}"
