#!/usr/bin/env bash
# Packaging: the Debian package, the systemd unit, the man pages, the container
# image recipe and the Kubernetes example.
#
#   bash tests/integration/test_packaging.sh
#
# Builds the .deb with packaging/build-deb.sh into a scratch directory, unpacks it
# with `dpkg -x` (nothing is installed), runs the packaged binary (--version, then
# started with the packaged config and with the Kubernetes ConfigMap's config, and
# stopped with SIGTERM), checks the package's contents and maintainer scripts,
# `systemd-analyze verify`s the unit in a scratch root, checks the man pages with
# groff's warnings on (and that pgshunt.ini(5) names every key of conf/conf.c),
# parses packaging/kubernetes/sidecar.yaml with python3-yaml, checks that the
# Build-Depends and the Dockerfile's build stage name the package of every header the
# sources include, that the Dockerfile's runtime stage names the package of every
# library the binary needs, and that `make pgshunt` works on the Docker build context.
#
# Needs no PostgreSQL.  Skips (exit 0) only when dpkg-buildpackage is missing;
# tests/install-deps.sh installs it (dpkg-dev, debhelper).  Also needs groff,
# python3-yaml, openssl, and systemd for `systemd-analyze` (skipped with a note
# without it).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"

if ! command -v dpkg-buildpackage >/dev/null; then
	echo "SKIP: dpkg-buildpackage is not installed (apt-get install dpkg-dev debhelper)"
	exit 0
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/pgshunt-packaging.XXXXXX")
pids=()
cleanup() {
	for p in "${pids[@]}"; do
		kill -KILL "$p" 2>/dev/null || true
	done
	rm -rf -- "$work"
}
trap cleanup EXIT

fail() {
	echo "FAIL: $*" >&2
	exit 1
}
ok() { echo "ok: $*"; }

version=$(cat VERSION)
arch=$(dpkg --print-architecture)

# --- the package ---------------------------------------------------------------
bash packaging/build-deb.sh -o "$work/deb" || fail "packaging/build-deb.sh failed"
debs=("$work"/deb/pgshunt_"$version"-*_"$arch".deb)
[ -f "${debs[0]}" ] || fail "no pgshunt_${version}-*_$arch.deb in $work/deb: $(ls "$work/deb")"
deb=${debs[0]}
ok "built $(basename "$deb")"

dpkg-deb -c "$deb" | awk '{print $6}' | sed 's|^\./|/|' >"$work/contents"
for f in /usr/bin/pgshunt /etc/pgshunt/pgshunt.ini /usr/share/doc/pgshunt/pgshunt.ini.sample \
	/usr/share/doc/pgshunt/copyright /usr/share/man/man1/pgshunt.1.gz \
	/usr/share/man/man5/pgshunt.ini.5.gz; do
	grep -qxF "$f" "$work/contents" || fail "$f is not in the package"
done
unit_in_pkg=$(grep -E '^(/usr)?/lib/systemd/system/pgshunt\.service$' "$work/contents") ||
	fail "pgshunt.service is not in the package"
ok "package holds the binary, the unit ($unit_in_pkg), the conffile, the sample and the man pages"

mkdir "$work/control"
dpkg-deb -e "$deb" "$work/control"
grep -qxF /etc/pgshunt/pgshunt.ini "$work/control/conffiles" ||
	fail "/etc/pgshunt/pgshunt.ini is not a conffile"
grep -q 'adduser --system --group' "$work/control/postinst" || fail "postinst does not create the pgshunt user"
grep -q "deb-systemd-helper enable 'pgshunt.service'" "$work/control/postinst" ||
	fail "postinst does not enable pgshunt.service (dh_installsystemd)"
# The user must exist before debhelper's snippet starts the service.
user_line=$(grep -n -m1 'adduser --system' "$work/control/postinst" | cut -d: -f1)
start_line=$(grep -n -m1 'deb-systemd-invoke' "$work/control/postinst" | cut -d: -f1)
[ "$user_line" -lt "$start_line" ] || fail "postinst starts the service before it creates the user"
depends=$(dpkg-deb -f "$deb" Depends)
for d in adduser libc6 libssl3 libpq5 libinih1; do
	grep -qE "(^|, )$d( |,|$)" <<<"$depends" || fail "Depends lacks $d: $depends"
done
ok "conffile, postinst (user before start), Depends: $depends"

# Every library header the sources include comes from a package that
# packaging/debian/control's Build-Depends and the Dockerfile's build stage name.
build_depends=$(sed -n '/^Build-Depends:/,/^[A-Z][A-Za-z-]*:/{/^Build-Depends:/p;/^[[:space:]]/p}' \
	packaging/debian/control | sed 's/^Build-Depends://' | tr ',' '\n' | awk '{print $1}')
build_stage=$(awk '/^FROM /{stage++} stage==1' packaging/Dockerfile)
cflags=$(pkg-config --cflags libevent_core openssl libpq 2>/dev/null || true)
headers=$(
	shopt -s nullglob
	cat proxy/*.[ch] conf/*.[ch] parser/*.[ch] rules/*.[ch] |
	sed -n 's/^#include <\([^>]*\)>.*/\1/p' | sort -u)
dev_pkgs=""
for h in $headers; do
	# shellcheck disable=SC2086
	path=$(printf '#include <%s>\n' "$h" | cc -E $cflags -x c - 2>/dev/null |
		sed -n "s|^# [0-9]* \"\(/[^\"]*/$h\)\".*|\1|p" | sed -n 1p) || true
	[ -n "$path" ] || fail "<$h>, included by the sources, is not installed"
	# The compiler's own headers (stdarg.h, ...) come with build-essential.
	case $path in /usr/include/*) ;; *) continue ;; esac
	pkg=$(dpkg -S "$path" 2>/dev/null | sed -n '1s/:.*//p') || true
	case $pkg in "" | libc6-dev | linux-libc-dev) continue ;; esac
	grep -qxF "$pkg" <<<"$build_depends" ||
		fail "packaging/debian/control: Build-Depends lacks $pkg (for <$h>)"
	grep -qE "[[:space:]]$pkg([[:space:]]|\$)" <<<"$build_stage" ||
		fail "packaging/Dockerfile: the build stage does not install $pkg (for <$h>)"
	case " $dev_pkgs " in *" $pkg "*) ;; *) dev_pkgs="$dev_pkgs $pkg" ;; esac
done
ok "Build-Depends and the Dockerfile's build stage cover the headers' packages:$dev_pkgs"

# --- the packaged binary --------------------------------------------------------
pkgroot=$work/root
dpkg -x "$deb" "$pkgroot"
bin=$pkgroot/usr/bin/pgshunt
out=$("$bin" --version) || fail "pgshunt --version exited with $?"
[ "$out" = "pgshunt $version" ] || fail "pgshunt --version printed '$out', want 'pgshunt $version'"
"$bin" --help | grep -q 'Usage: pgshunt' || fail "pgshunt --help shows no usage"
ok "packaged binary: $out"

freeport() { bash tests/harness/pgserver.sh freeport; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# http_status PORT PATH: the status code of GET PATH on 127.0.0.1:PORT.
http_status() {
	local line
	exec 3<>"/dev/tcp/127.0.0.1/$1" || return 1
	printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' "$2" >&3
	IFS= read -r -t 5 line <&3 || line=""
	exec 3<&-
	line=${line%$'\r'}
	local code
	read -r _ code _ <<<"$line"
	echo "${code:-none}"
}

# run_config NAME FILE [METRICS_PORT]: start the packaged binary on FILE, wait until
# it accepts connections on its listen_port, check /healthz when a metrics port is
# given and the binary serves it, then SIGTERM: it must exit with status 0.
run_config() {
	local name=$1 file=$2 mport=${3:-} lport pid i rc=0 log=$work/$1.log
	lport=$(sed -n 's/^listen_port *= *//p' "$file" | tail -n1)
	"$bin" "$file" >"$log" 2>&1 &
	pid=$!
	pids+=("$pid")
	for ((i = 0; ; i++)); do
		kill -0 "$pid" 2>/dev/null || { wait "$pid" || rc=$?; fail "$name: pgshunt exited ($rc) at start: $(cat "$log")"; }
		port_open "$lport" && break
		((i < 100)) || fail "$name: pgshunt not listening on $lport after 10 s: $(cat "$log")"
		sleep 0.1
	done
	if [ -n "$mport" ] && grep -q /healthz "$bin"; then
		local st
		st=$(http_status "$mport" /healthz) || st=unreachable
		[ "$st" = 200 ] || fail "$name: GET /healthz on $mport answered $st: $(cat "$log")"
		st=$(http_status "$mport" /readyz) || st=unreachable
		# No PostgreSQL here: not ready (503) is the expected answer, but any answer will do.
		case $st in 200 | 503) ;; *) fail "$name: GET /readyz on $mport answered $st" ;; esac
		echo "    $name: /healthz 200, /readyz $st"
	fi
	kill -TERM "$pid"
	for ((i = 0; i < 100; i++)); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	kill -0 "$pid" 2>/dev/null && fail "$name: pgshunt still running 10 s after SIGTERM"
	wait "$pid" || rc=$?
	[ "$rc" = 0 ] || fail "$name: pgshunt exited with $rc after SIGTERM: $(cat "$log")"
	ok "$name: the packaged binary starts on it, listens on $lport and stops cleanly on SIGTERM"
}

# The packaged conffile: every key at its default (a free port instead of 6433).
cp "$pkgroot/etc/pgshunt/pgshunt.ini" "$work/default.ini"
printf '\nlisten_port = %s\n' "$(freeport)" >>"$work/default.ini"
run_config "packaged pgshunt.ini" "$work/default.ini"

# --- the systemd unit -----------------------------------------------------------
unit=packaging/pgshunt.service
cmp -s "$unit" "$pkgroot$unit_in_pkg" || fail "the packaged unit differs from $unit"
grep -qxF 'ExecStart=/usr/bin/pgshunt /etc/pgshunt/pgshunt.ini' "$unit" || fail "$unit: ExecStart"
# shellcheck disable=SC2016 # $MAINPID is systemd's, not ours
grep -qxF 'ExecReload=/bin/kill -HUP $MAINPID' "$unit" || fail "$unit: ExecReload"
grep -qxF 'User=pgshunt' "$unit" || fail "$unit: User"
stop_timeout=$(sed -n 's/^TimeoutStopSec=\([0-9]*\)$/\1/p' "$unit")
default_shutdown=$(sed -n 's/.*KEY(shutdown_timeout, CONF_INT, "\([0-9]*\)".*/\1/p' conf/conf.c)
if [ -z "$stop_timeout" ] || [ -z "$default_shutdown" ] || [ "$stop_timeout" -le "$default_shutdown" ]; then
	fail "$unit: TimeoutStopSec ($stop_timeout) must be above the default shutdown_timeout ($default_shutdown)"
fi
if command -v systemd-analyze >/dev/null; then
	# A scratch root: the unpacked package, the host's units (sysinit.target and
	# friends) and /bin/kill, so that nothing is installed on the host.
	host_units=/lib/systemd/system
	[ -d "$host_units" ] || host_units=/usr/lib/systemd/system
	cp -an "$host_units/." "$pkgroot$(dirname "$unit_in_pkg")/"
	mkdir -p "$pkgroot/bin"
	cp "$(type -P kill)" "$pkgroot/bin/kill"
	man_opt=--man=no
	# Documentation=man:... is checked with man(1), against the packaged pages.
	command -v man >/dev/null && man_opt=--man=yes
	MANPATH=$pkgroot/usr/share/man systemd-analyze verify --root="$pkgroot" "$man_opt" \
		pgshunt.service >"$work/verify.out" 2>&1 || fail "systemd-analyze verify: $(cat "$work/verify.out")"
	# verify exits 0 on unknown keys and bad values, with a message: any message fails.
	[ ! -s "$work/verify.out" ] || fail "systemd-analyze verify: $(cat "$work/verify.out")"
	ok "systemd-analyze verify $man_opt: no complaints"
	if systemd-analyze security --help 2>/dev/null | grep -q -- --offline; then
		# Exposure 0..10, printed x10 by --threshold: fail above 2.5.
		systemd-analyze security --offline=yes --threshold=25 --root="$pkgroot" \
			pgshunt.service >"$work/security.out" 2>&1 ||
			fail "systemd-analyze security: $(tail -n 3 "$work/security.out")"
		ok "systemd-analyze security: $(grep -o 'exposure level.*' "$work/security.out")"
	fi
else
	echo "note: systemd-analyze not found, unit not verified (apt-get install systemd)"
fi

# --- the man pages --------------------------------------------------------------
for page in man1/pgshunt.1.gz man5/pgshunt.ini.5.gz; do
	zcat "$pkgroot/usr/share/man/$page" |
		LC_ALL=C.UTF-8 groff -man -Tutf8 -ww -z >"$work/groff.out" 2>&1 ||
		fail "$page: groff failed: $(cat "$work/groff.out")"
	[ ! -s "$work/groff.out" ] || fail "$page: groff warnings: $(cat "$work/groff.out")"
	if command -v man >/dev/null; then
		LC_ALL=C.UTF-8 MANWIDTH=80 man --warnings -l "$pkgroot/usr/share/man/$page" \
			2>"$work/man.err" >/dev/null || fail "man -l $page failed: $(cat "$work/man.err")"
		[ ! -s "$work/man.err" ] || fail "man -l $page: $(cat "$work/man.err")"
	fi
done
# pgshunt.ini(5) documents every key of conf/conf.c's table.
keys=$(sed -n 's/^[[:space:]]*KEY(\([a-z_0-9]*\),.*/\1/p' conf/conf.c)
[ "$(wc -w <<<"$keys")" -ge 30 ] || fail "could not read the keys of conf/conf.c"
for k in $keys; do
	grep -q "^\.BR $k " docs/man/pgshunt.ini.5 || fail "docs/man/pgshunt.ini.5 does not document $k"
done
ok "man pages: no groff warnings; pgshunt.ini(5) lists all $(wc -w <<<"$keys") keys"

# --- the Kubernetes example -----------------------------------------------------
mport=$(freeport)
lport=$(freeport)
python3 - packaging/kubernetes/sidecar.yaml "$work" "$lport" "$mport" <<'EOF' || fail "packaging/kubernetes/sidecar.yaml (above)"
import re, sys, yaml

path, work, lport, mport = sys.argv[1:5]
errors = []
def check(cond, msg):
    if not cond:
        errors.append(msg)

with open(path) as f:
    docs = [d for d in yaml.safe_load_all(f) if d is not None]
by_kind = {}
for d in docs:
    by_kind.setdefault(d.get("kind"), []).append(d)
check(sorted(by_kind) == ["ConfigMap", "Deployment", "Secret"], f"kinds: {sorted(by_kind)}")
for d in docs:
    check(d.get("apiVersion") and d.get("metadata", {}).get("name"), f"{d.get('kind')}: apiVersion and metadata.name")

dep = by_kind["Deployment"][0]
check(dep["apiVersion"] == "apps/v1", "Deployment apiVersion")
pod = dep["spec"]["template"]["spec"]
check(dep["spec"]["selector"]["matchLabels"].items() <= dep["spec"]["template"]["metadata"]["labels"].items(),
      "the selector matches the pod labels")
containers = pod.get("containers", [])
sidecars = [c for c in pod.get("initContainers", []) if c.get("restartPolicy") == "Always"]
shunt = [c for c in containers + sidecars if c["name"] == "pgshunt"]
check(len(shunt) == 1, "exactly one pgshunt container (or native sidecar)")
apps = [c for c in containers if c["name"] != "pgshunt"]
check(apps, "an application container next to pgshunt")
c = shunt[0]

ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
check("metrics" in ports, "pgshunt has a containerPort named metrics")
for probe, want in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
    get = c.get(probe, {}).get("httpGet", {})
    check(get.get("path") == want, f"{probe} is an HTTP GET of {want}")
    check(get.get("port") in ("metrics", ports.get("metrics")), f"{probe} is on the metrics port")
res = c.get("resources", {})
for kind in ("requests", "limits"):
    for r in ("cpu", "memory"):
        check(r in res.get(kind, {}), f"resources.{kind}.{r}")
sc = c.get("securityContext", {})
check(sc.get("readOnlyRootFilesystem") is True, "readOnlyRootFilesystem")
check(sc.get("allowPrivilegeEscalation") is False, "allowPrivilegeEscalation: false")
check(sc.get("runAsNonRoot") or pod.get("securityContext", {}).get("runAsNonRoot"), "runAsNonRoot")
check("ALL" in sc.get("capabilities", {}).get("drop", []), "capabilities drop ALL")

volumes = {v["name"]: v for v in pod.get("volumes", [])}
mounts = {m["name"]: m["mountPath"] for m in c.get("volumeMounts", [])}
cm_name = cm_mount = tls_secret = tls_mount = None
for name, mpath in mounts.items():
    v = volumes.get(name, {})
    if "configMap" in v:
        cm_name, cm_mount = v["configMap"]["name"], mpath
        items = v["configMap"].get("items")
        check(items is None or any(i["path"] == "pgshunt.ini" for i in items), "the ConfigMap volume holds pgshunt.ini")
    if "secret" in v:
        tls_secret, tls_mount = v["secret"]["secretName"], mpath
check(cm_name is not None, "pgshunt mounts a ConfigMap")
check(tls_secret is not None, "pgshunt mounts a Secret")
args = c.get("args", []) + c.get("command", [])
check(f"{cm_mount}/pgshunt.ini" in args, f"pgshunt is started on {cm_mount}/pgshunt.ini")

cms = {d["metadata"]["name"]: d for d in by_kind["ConfigMap"]}
secrets = {d["metadata"]["name"]: d for d in by_kind["Secret"]}
check(cm_name in cms, f"ConfigMap {cm_name} is defined")
check(tls_secret in secrets, f"Secret {tls_secret} is defined")
if errors:
    sys.exit("\n".join(errors))

ini = cms[cm_name]["data"]["pgshunt.ini"]
conf = {}
for line in ini.splitlines():
    m = re.match(r"\s*([a-z_0-9]+)\s*=\s*(.*?)\s*$", line)
    if m and not line.lstrip().startswith(("#", ";")):
        conf[m.group(1)] = m.group(2)
tls_data = dict(secrets[tls_secret].get("data", {}), **secrets[tls_secret].get("stringData", {}))
for key in ("server_tls_ca_file", "client_tls_cert_file", "client_tls_key_file"):
    if conf.get(key):
        d, _, f = conf[key].rpartition("/")
        check(d == tls_mount and f in tls_data, f"{key} = {conf[key]} is a file of Secret {tls_secret} at {tls_mount}")
check(conf.get("server_tls_ca_file"), "server_tls_ca_file is set")
maddr = conf.get("metrics_addr", "")
check(maddr.rsplit(":", 1)[-1] == str(ports.get("metrics")), f"metrics_addr {maddr} is on the metrics port {ports.get('metrics')}")
check(maddr.rsplit(":", 1)[0] not in ("127.0.0.1", "localhost", "::1", "[::1]"), "metrics_addr is reachable by the kubelet (not loopback)")
lp = conf.get("listen_port", "6433")
env = {e["name"]: e.get("value", "") for a in apps for e in a.get("env", [])}
check(any(f"127.0.0.1:{lp}" in v for v in env.values()) or
      (env.get("PGHOST") == "127.0.0.1" and env.get("PGPORT") == lp),
      f"the application connects to 127.0.0.1:{lp}")
grace = pod.get("terminationGracePeriodSeconds", 30)
check(grace > int(conf.get("shutdown_timeout", "30")), f"terminationGracePeriodSeconds {grace} > shutdown_timeout")
for e in c.get("env", []):
    ref = e.get("valueFrom", {}).get("secretKeyRef")
    if ref:
        check(ref["name"] in secrets, f"env {e['name']}: Secret {ref['name']} is defined")
if errors:
    sys.exit("\n".join(errors))

# The ConfigMap's pgshunt.ini for a local run: TLS files from the test's scratch
# directory, free ports, and no server to reach.
local = {"listen_port": lport, "metrics_addr": f"127.0.0.1:{mport}", "server_host": "127.0.0.1",
         "control_dsn": ""}
out = []
for line in ini.splitlines():
    m = re.match(r"\s*([a-z_0-9]+)\s*=", line)
    if m and m.group(1) in local:
        line = f"{m.group(1)} = {local[m.group(1)]}"
    out.append(line.replace(tls_mount + "/", work + "/tls/"))
open(f"{work}/k8s.ini", "w").write("\n".join(out) + "\n")
print(f"kinds {sorted(by_kind)}; pgshunt probes /healthz and /readyz on port {ports['metrics']}; "
      f"ConfigMap {cm_name} at {cm_mount}, Secret {tls_secret} at {tls_mount}")
EOF
ok "sidecar.yaml is consistent"
# Run the ConfigMap's pgshunt.ini, with a throwaway certificate for its TLS files.
mkdir "$work/tls"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
	-subj /CN=127.0.0.1 -keyout "$work/tls/tls.key" -out "$work/tls/tls.crt" 2>/dev/null ||
	fail "openssl could not make a certificate"
cp "$work/tls/tls.crt" "$work/tls/ca.crt"
run_config "sidecar.yaml's pgshunt.ini" "$work/k8s.ini" "$mport"

# --- the container image recipe -------------------------------------------------
df=packaging/Dockerfile
[ -f packaging/Dockerfile.dockerignore ] || fail "packaging/Dockerfile.dockerignore is missing"
[ "$(grep -c '^FROM debian:12-slim' "$df")" = 2 ] || fail "$df: two stages FROM debian:12-slim"
grep -q 'make pgshunt' "$df" || fail "$df: the build stage runs make pgshunt"
grep -qE '^USER [1-9][0-9]*' "$df" || fail "$df: runs as a numeric non-root USER"
grep -qxF 'ENTRYPOINT ["pgshunt"]' "$df" || fail "$df: ENTRYPOINT"
grep -qxF 'CMD ["/etc/pgshunt/pgshunt.ini"]' "$df" || fail "$df: CMD"
uid=$(sed -n 's/^USER \([0-9]*\).*/\1/p' "$df")
grep -q "runAsUser: $uid\$" packaging/kubernetes/sidecar.yaml || fail "sidecar.yaml's runAsUser is not the image's uid $uid"
# The runtime stage's packages: the second apt-get install.
runtime_pkgs=$(awk '/^FROM /{stage++} stage==2' "$df" | sed -n '/apt-get install/,/rm -rf/p' |
	grep -oE '(^|[[:space:]])lib[a-z0-9.+-]+' | awk '{print $1}' | sort -u)
[ -n "$runtime_pkgs" ] || fail "$df: no runtime packages found"
# Every library the binary needs comes from one of them (libc6 is in the base image).
for lib in $(readelf -d "$bin" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'); do
	pkg=$(dpkg -S "*/$lib" 2>/dev/null | sed -n '1s/:.*//p') || true
	[ -n "$pkg" ] || fail "no installed package ships $lib"
	[ "$pkg" = libc6 ] && continue
	grep -qxF "$pkg" <<<"$runtime_pkgs" || fail "$df: the runtime stage lacks $pkg (for $lib)"
done
if apt-cache policy libpq5 2>/dev/null | grep -q '^ *Candidate: [0-9]'; then
	for p in $runtime_pkgs; do
		apt-cache show --no-all-versions "$p" >/dev/null 2>&1 || fail "$df: no package $p in apt"
	done
fi
# The build stage, on a context filtered by Dockerfile.dockerignore, builds.
mkdir "$work/context"
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
	git ls-files -z --cached --others --exclude-standard |
		tar --null -T - --ignore-failed-read -cf - 2>/dev/null | tar -C "$work/context" -xf -
else
	tar --exclude=./tests/drivers/node/node_modules -cf - . | tar -C "$work/context" -xf -
fi
(
	cd "$work/context"
	shopt -s globstar nullglob dotglob
	while IFS= read -r pat; do
		case $pat in '' | '#'*) continue ;; esac
		# shellcheck disable=SC2086
		rm -rf -- $pat
	done <"$root/packaging/Dockerfile.dockerignore"
	[ -f conf/pgshunt.ini ] || fail "the image's context lacks conf/pgshunt.ini"
	make -s -j"$(nproc)" pgshunt >"$work/context.log" 2>&1 ||
		fail "make pgshunt fails on the Docker context: $(tail -n 20 "$work/context.log")"
)
ok "Dockerfile: runtime packages cover every NEEDED library ($(tr '\n' ' ' <<<"$runtime_pkgs"| sed 's/ $//')); the context builds"

echo "packaging: all checks passed"
