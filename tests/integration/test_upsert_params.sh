#!/usr/bin/env bash
# ON CONFLICT (site_id, idempotency_key) DO UPDATE with $n parameters in its SET list or
# WHERE (what ORMs send: `DO UPDATE SET status = $4, response_code = $5 WHERE t.status
# <> $6`), in cutover and in finalized, where it goes through the claim view: answers
# through pgshunt identical to the original table's (tests/integration/upsert_params.py
# against a reference database that is never migrated: tags, RowDescription, rows,
# ParameterDescription, errors), the rows identical afterwards, and in cutover the
# table and next_table identical row for row.  A parameter sent in binary format and
# used in the clause is refused (0A000, "pgshunt refuses ..."), the session usable
# after it.
#
# --direct (SHUNT_MODE=direct): no pgshunt; a second database never migrated stands in
# for it, to check the statements and the comparison themselves.
set -euo pipefail

. tests/integration/lib.sh

own_database "upt_$$"
reference_database "uptref_$$"

seed_both
q() { psql -X -qtA -v ON_ERROR_STOP=1 "$direct" -c "$1"; }

helper() { # PHASE MODE [APP]
	timeout -k 5 50 /usr/bin/python3 tests/integration/upsert_params.py "${3:-$app}" "$direct" "$ref" "$1" "$2"
}

if [ "${SHUNT_MODE:-proxy}" = direct ]; then
	helper cutover direct "$direct" || fail "the statements differ between two plain databases (cutover's)"
	helper finalized direct "$direct" || fail "the statements differ between two plain databases (finalized's)"
	ok "direct: two databases never migrated answer the statements alike"
	exit 0
fi

start_pgshunt "control_dsn = $direct"
c() { psql -X -qtA "$console" -c "$1" 2>&1 || fail "$1: $(psql -X -qtA "$console" -c "$1" 2>&1)"; }
# The table and next_table: how many keys differ (missing on one side, or any column).
tables_differ() {
	q "SELECT count(*) FROM ingest_idempotency o FULL JOIN ingest_idempotency_next n
	   USING (site_id, idempotency_key) WHERE o IS NULL OR n IS NULL OR row(o.*)::text <> row(n.*)::text"
}

c 'MIGRATE PREPARE' >/dev/null
c 'SET PHASE dual_write' >/dev/null
# What the backfill does, in one go.
q "INSERT INTO ingest_idempotency_next SELECT * FROM ingest_idempotency FOR SHARE ON CONFLICT DO NOTHING" >/dev/null
c 'SET PHASE read_next FORCE' >/dev/null
c 'SET PHASE cutover' >/dev/null
[ "$(tables_differ)" = 0 ] || fail "the table and next_table differ before the upserts"

# Both phases run, each on keys of its own, so that finalized reports too when cutover
# differed; the test fails at the end.
failed=()
if helper cutover proxy; then
	ok "cutover: upserts with parameters in DO UPDATE answered as the table"
else
	failed+=("cutover (answers)")
fi
d=$(tables_differ)
if [ "$d" = 0 ]; then
	ok "cutover: the table and next_table identical after the upserts"
else
	echo "$d keys differ between the table and next_table after the upserts in cutover" >&2
	failed+=("cutover (next_table)")
fi

out=$(c 'SET PHASE finalized') || fail "SET PHASE finalized: $out"
[ "$(q "SELECT relkind FROM pg_class WHERE oid = 'ingest_idempotency'::regclass")" = p ] || fail "the rename"
if helper finalized proxy; then
	ok "finalized: upserts with parameters in DO UPDATE answered as the table"
else
	failed+=("finalized (answers)")
fi
[ "$(q "SELECT count(*) FROM ingest_idempotency_old WHERE site_id = 'upt-finalized'")" = 0 ] ||
	failed+=("finalized (wrote the old table)")

stop_pgshunt
[ ${#failed[@]} = 0 ] || fail "upserts with parameters in DO UPDATE, differences in: ${failed[*]}"
