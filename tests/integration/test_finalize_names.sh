#!/usr/bin/env bash
# pgshunt.finalize(), the rename of SET PHASE finalized, on names that need quoting and
# a next_table in another schema: <table>_old stays in the table's schema, next_table
# moves there under the table's name, the phase and the hold change with them.  And
# what it refuses: outside cutover, without a hold in force, a <table>_old name taken
# or too long, a missing table; none of those renames anything.
set -euo pipefail
. tests/integration/lib.sh

own_database "finnames_$$"
q() { psql -X -qtA "$direct" -c "$1"; }
refused() { # sql pattern
	local out
	if out=$(psql -X -qtA -v VERBOSITY=verbose "$direct" -c "$1" 2>&1); then fail "accepted: $1"; fi
	grep -q "ERROR:  55000:" <<<"$out" || fail "want 55000 for $1: $out"
	grep -qE -- "$2" <<<"$out" || fail "message lacks /$2/: $out"
}
psql -X -q -v ON_ERROR_STOP=1 "$direct" <<'SQL' >/dev/null
CREATE SCHEMA "Odd Schema";
CREATE SCHEMA other;
CREATE TABLE "Odd Schema"."Mixed Case" (k int PRIMARY KEY, at timestamptz NOT NULL);
INSERT INTO "Odd Schema"."Mixed Case" SELECT g, now() FROM generate_series(1, 3) g;
CREATE TABLE other."Mixed Case next" (k int, at timestamptz NOT NULL, PRIMARY KEY (k, at)) PARTITION BY RANGE (at);
CREATE TABLE other."Mixed Case next p" PARTITION OF other."Mixed Case next" DEFAULT;
INSERT INTO other."Mixed Case next" SELECT g, now() FROM generate_series(1, 5) g;
CREATE TABLE "Odd Schema".x (k int);
SQL
out=$(psql -X -q -1 -v ON_ERROR_STOP=1 "$direct" -f proxy/sql/schema.sql 2>&1) || fail "schema: $out"
old='"Odd Schema"."Mixed Case"'
next='other."Mixed Case next"'
fin() { echo "SELECT pgshunt.finalize('${1//\'/\'\'}', '${2//\'/\'\'}', 200, ${3:-0}, 'test')"; }

refused "$(fin "$old" "$next")" "the phase is passthrough, not cutover"
q "SELECT pgshunt.set_phase('cutover', NULL, false, 'test', NULL)" >/dev/null
refused "$(fin "$old" "$next")" "hold is not in force"
q "SELECT pgshunt.set_hold(30, 'test')" >/dev/null
refused "$(fin "$old" "$next" 60000)" "hold is not in force \\(or about to lapse\\)"
refused "$(fin '"Odd Schema".missing' "$next")" "does not exist"
q 'CREATE TABLE "Odd Schema"."Mixed Case_old" ()' >/dev/null
refused "$(fin "$old" "$next")" '"Odd Schema"."Mixed Case_old" already exists'
q 'DROP TABLE "Odd Schema"."Mixed Case_old"' >/dev/null
q "ALTER TABLE \"Odd Schema\".x RENAME TO \"$(printf 'y%.0s' $(seq 60))\"" >/dev/null
refused "$(fin "\"Odd Schema\".\"$(printf 'y%.0s' $(seq 60))\"" "$next")" "longer than 63 bytes"
[ "$(q "SELECT phase || '/' || (hold_until IS NOT NULL) FROM pgshunt.state")" = cutover/true ] || fail "a refusal changed the state"
[ "$(q "SELECT count(*) FROM pg_class WHERE relname IN ('Mixed Case', 'Mixed Case next')")" = 2 ] || fail "a refusal renamed"
ok "refused outside cutover, without a hold, with a missing table, a taken or too long _old name; nothing renamed"

epoch=$(q "SELECT epoch FROM pgshunt.state")
[ "$(q "$(fin "$old" "$next" 1000)")" = $((epoch + 1)) ] || fail "finalize's epoch"
[ "$(q "SELECT relkind FROM pg_class WHERE oid = to_regclass('\"Odd Schema\".\"Mixed Case\"')")" = p ] || fail "next did not take the name"
[ "$(q "SELECT count(*) FROM \"Odd Schema\".\"Mixed Case\"")" = 5 ] || fail "rows under the name"
[ "$(q "SELECT count(*) FROM \"Odd Schema\".\"Mixed Case_old\"")" = 3 ] || fail "the old table"
[ "$(q "SELECT to_regclass('other.\"Mixed Case next\"') IS NULL")" = t ] || fail "next's old name remains"
[ "$(q "SELECT phase || '/' || (hold_until IS NULL) FROM pgshunt.state")" = finalized/true ] || fail "phase and hold"
[ "$(q "SELECT note FROM pgshunt.phase_log ORDER BY id DESC LIMIT 1")" = \
	"\"Odd Schema\".\"Mixed Case\" renamed to Mixed Case_old, Mixed Case next to Mixed Case" ] || fail "phase_log note: $(q "SELECT note FROM pgshunt.phase_log ORDER BY id DESC LIMIT 1")"
refused "$(fin "$old" "$next")" "the phase is finalized, not cutover"
ok "renamed with quoting, next moved into the table's schema, phase finalized and hold ended with it"
echo "finalize_names: ok"
