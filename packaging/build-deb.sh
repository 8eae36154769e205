#!/usr/bin/env bash
# Build the pgshunt Debian package from this source tree, without touching it.
#
#   bash packaging/build-deb.sh [-o OUTDIR]
#
# dpkg-buildpackage wants debian/ at the top of the source tree, and the tree keeps
# its packaging in packaging/debian/.  So this script copies the tree (the files git
# tracks plus the new ones it does not ignore; without git, everything but build/,
# ./pgshunt and .git) into a scratch directory, puts packaging/debian there as debian/
# and packaging/pgshunt.service as debian/pgshunt.service, runs
# `dpkg-buildpackage -us -uc -b` there, and copies the .deb files, .changes and
# .buildinfo to OUTDIR (default build/deb/, emptied of earlier pgshunt packages first),
# with the build's output as OUTDIR/pgshunt-build.log.
#
# Needs dpkg-dev, debhelper and the Build-Depends of packaging/debian/control.  The
# build runs the unit tests (`make unit`); DEB_BUILD_OPTIONS=nocheck
# DEB_BUILD_PROFILES=nocheck skips them and their build dependency (libcmocka-dev).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
outdir=$root/build/deb

while [ $# -gt 0 ]; do
	case $1 in
	-o)
		[ $# -ge 2 ] || { echo "build-deb: -o needs a directory" >&2; exit 2; }
		outdir=$2
		shift 2
		;;
	-h | --help)
		sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'
		exit 0
		;;
	*)
		echo "build-deb: unknown argument $1 (see --help)" >&2
		exit 2
		;;
	esac
done

die() {
	echo "build-deb: $*" >&2
	exit 1
}

command -v dpkg-buildpackage >/dev/null || die "dpkg-buildpackage not found: apt-get install dpkg-dev debhelper"
command -v dh >/dev/null || die "dh not found: apt-get install debhelper"

# From `make deb`: the scratch build is a build of its own, not part of the caller's.
unset MAKEFLAGS MFLAGS MAKELEVEL MAKEOVERRIDES

cd "$root"
version=$(cat VERSION)
changelog_version=$(dpkg-parsechangelog -l packaging/debian/changelog -S Version)
[ "${changelog_version%-*}" = "$version" ] ||
	die "VERSION says $version but packaging/debian/changelog says $changelog_version:" \
		"add a changelog entry for $version-1 (dch -c packaging/debian/changelog -v $version-1)"

work=$(mktemp -d "${TMPDIR:-/tmp}/pgshunt-deb.XXXXXX")
trap 'rm -rf -- "$work"' EXIT
src=$work/pgshunt-$version
mkdir "$src"

# The source tree, without build products.
if command -v git >/dev/null && git -C "$root" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
	# Tracked files deleted in the working tree are skipped, quietly.
	git -C "$root" ls-files -z --cached --others --exclude-standard |
		tar -C "$root" --null -T - --ignore-failed-read -cf - 2>/dev/null |
		tar -C "$src" -xf -
else
	tar -C "$root" --exclude=./.git --exclude=./build --exclude=./pgshunt \
		--exclude=./tests/drivers/node/node_modules -cf - . | tar -C "$src" -xf -
fi
rm -rf "$src/debian"
cp -a packaging/debian "$src/debian"
cp packaging/pgshunt.service "$src/debian/pgshunt.service"

# A .PHONY install without a rule would "succeed" and package nothing.
dry_run=$(make -C "$src" -n install DESTDIR=/nonexistent PREFIX=/usr 2>&1 || true)
if ! grep -q /nonexistent/usr/bin <<<"$dry_run"; then
	die "the Makefile has no install target that installs \$(DESTDIR)\$(PREFIX)/bin/pgshunt"
fi

echo "build-deb: building pgshunt $changelog_version in $src"
mkdir -p "$outdir"
rm -f "$outdir"/pgshunt_* "$outdir"/pgshunt-dbgsym_* "$outdir"/pgshunt-build.log
log=$outdir/pgshunt-build.log
if ! (cd "$src" && dpkg-buildpackage -us -uc -b -jauto) >"$log" 2>&1; then
	tail -n 60 "$log" >&2
	die "dpkg-buildpackage failed (last lines above; the whole log is $log)"
fi

shopt -s nullglob
built=("$work"/*.deb "$work"/*.changes "$work"/*.buildinfo)
[ ${#built[@]} -gt 0 ] || die "dpkg-buildpackage produced no package"
cp "${built[@]}" "$outdir"/
for f in "${built[@]}"; do
	echo "build-deb: $outdir/$(basename "$f")"
done
