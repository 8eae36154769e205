/*
 * Tests of the engine's rewrite of one statement (engine_statement_text in
 * proxy/engine.c): the exact text the server runs for it in a phase.  For now the
 * system column xmax in an INSERT's RETURNING, which the claim and buffer views do not
 * have: each reference to the inserted row's xmax becomes pgshunt.xmax(true) (claim) or
 * pgshunt.xmax(false) (buffer), and nothing else does: column labels, strings, quoted
 * labels, names inside a sub-SELECT, other relations' xmax, a function call; where the
 * statement goes to the table itself xmax stays.  The other system columns are refused.
 * Also schema.table.column references, and finalized's ONLY and COPY name TO.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <pg_query.h>

#include "parser/parser.h"
#include "proxy/engine.h"
#include "proxy/pgshunt.h"
#include "rules/rules.h"

#include "tests/unit/main_stubs.h"

#define KEY_COLUMNS      "site_id,idempotency_key"
#define PARTITION_COLUMN "created_at"

/*
 * want: the whole text the server runs; "...X": a text ending with X (an upsert, whose
 * clause travels hex-encoded before RETURNING); "!X": refused, the reason containing X.
 */
static void expect(enum phase phase, bool degraded, const char *sql, const char *want)
{
	struct parse_result *r =
	    parser_parse(&shunt.tables, sql, strlen(sql), KEY_COLUMNS, PARTITION_COLUMN);
	struct rule_decision d;
	const char *reason = NULL;
	uint8_t xform;
	char *got;

	if (!r || r->status != PARSE_OK || r->nstmts != 1)
		fail_msg("%s: does not parse as one statement", sql);
	got = engine_statement_text(phase, degraded, sql, &r->stmts[0], &d, &xform, &reason);
	if (want[0] == '!') {
		if (got || !reason || !strstr(reason, want + 1))
			fail_msg("%s in %s%s: got %s (%s), expected a refusal with \"%s\"", sql,
			         phase_name(phase), degraded ? " DEGRADED" : "", got ? got : "NULL",
			         reason ? reason : "", want + 1);
	} else if (!got) {
		fail_msg("%s in %s%s: refused (%s)", sql, phase_name(phase),
		         degraded ? " DEGRADED" : "", reason ? reason : "");
	} else if (strncmp(want, "...", 3) == 0) {
		size_t n = strlen(want + 3), len = strlen(got);
		if (len < n || strcmp(got + len - n, want + 3) != 0)
			fail_msg("%s in %s%s:\n  got      %s\n  expected ...%s", sql,
			         phase_name(phase), degraded ? " DEGRADED" : "", got, want + 3);
	} else if (strcmp(got, want) != 0) {
		fail_msg("%s in %s%s:\n  got      %s\n  expected %s", sql, phase_name(phase),
		         degraded ? " DEGRADED" : "", got, want);
	}
	free(got);
	parse_result_free(r);
}

static void test_xmax_claim(void **state)
{
	(void)state;
	/* The bare name, DO NOTHING: the clause cut, the view aliased with the name. */
	expect(PHASE_CUTOVER, false,
	       "INSERT INTO ingest_idempotency (site_id, idempotency_key, request_hash) VALUES "
	       "('a', 'b', '') ON CONFLICT (site_id, idempotency_key) DO NOTHING RETURNING xmax",
	       "INSERT INTO pgshunt.\"ingest_idempotency_claim_nothing\" AS ingest_idempotency "
	       "(site_id, idempotency_key, request_hash) VALUES ('a', 'b', '')  RETURNING "
	       "pgshunt.xmax(true)");
	expect(PHASE_FINALIZED, false,
	       "INSERT INTO ingest_idempotency (site_id, idempotency_key, request_hash) VALUES "
	       "('a', 'b', '') ON CONFLICT (site_id, idempotency_key) DO NOTHING RETURNING xmax",
	       "INSERT INTO pgshunt.\"ingest_idempotency_claim_nothing_final\" AS "
	       "ingest_idempotency (site_id, idempotency_key, request_hash) VALUES ('a', 'b', '')"
	       "  RETURNING pgshunt.xmax(true)");
	/* The idiom: aliased DO UPDATE, (xmax = 0); the alias and the quoted name too. */
	expect(PHASE_CUTOVER, false,
	       "INSERT INTO ingest_idempotency AS t (site_id, idempotency_key, request_hash) "
	       "VALUES ('a', 'b', '') ON CONFLICT (site_id, idempotency_key) DO UPDATE SET "
	       "status = EXCLUDED.status RETURNING t.created_at, (xmax = 0) AS inserted, "
	       "t.xmax, \"t\" . \"xmax\"::text, xmax::text::bigint",
	       "...*/  RETURNING t.created_at, (pgshunt.xmax(true) = 0) AS inserted, "
	       "pgshunt.xmax(true), pgshunt.xmax(true)::text, pgshunt.xmax(true)::text::bigint");
	expect(PHASE_FINALIZED, false,
	       "INSERT INTO ingest_idempotency AS t (site_id, idempotency_key, request_hash) "
	       "VALUES ('a', 'b', '') ON CONFLICT (site_id, idempotency_key) DO UPDATE SET "
	       "status = EXCLUDED.status RETURNING (xmax = 0) AS inserted",
	       "...*/  RETURNING (pgshunt.xmax(true) = 0) AS inserted");
	/* Without an alias, the table's name qualifies; a schema-qualified target too. */
	expect(PHASE_CUTOVER, false,
	       "INSERT INTO public.ingest_idempotency (site_id) VALUES ('a') RETURNING "
	       "ingest_idempotency.xmax <> '0' AS updated",
	       "INSERT INTO pgshunt.\"ingest_idempotency_claim\" AS ingest_idempotency (site_id) "
	       "VALUES ('a') RETURNING pgshunt.xmax(true) <> '0' AS updated");
	/* Inside a SQL-level PREPARE: offsets into the whole text. */
	expect(PHASE_CUTOVER, false,
	       "PREPARE p AS INSERT INTO ingest_idempotency (site_id) VALUES ($1) ON CONFLICT DO "
	       "NOTHING RETURNING xmax",
	       "PREPARE p AS INSERT INTO pgshunt.\"ingest_idempotency_claim_nothing\" AS "
	       "ingest_idempotency (site_id) VALUES ($1)  RETURNING pgshunt.xmax(true)");
}

static void test_xmax_not_a_reference(void **state)
{
	(void)state;
	/* Labels (after AS and bare), strings, a quoted label, another relation's xmax or
	 * a bare one inside a sub-SELECT (the subquery's), a function call: unchanged. */
	expect(PHASE_CUTOVER, false,
	       "INSERT INTO ingest_idempotency AS x (site_id) VALUES ('a') RETURNING "
	       "request_hash AS xmax, idempotency_key xmax, 'xmax' AS \"xmax\", (SELECT count(*) "
	       "FROM sites WHERE sites.xmax = 0 AND xmax = 0) AS n, xmax (1), x.xmax",
	       "INSERT INTO pgshunt.\"ingest_idempotency_claim\" AS x (site_id) VALUES ('a') "
	       "RETURNING request_hash AS xmax, idempotency_key xmax, 'xmax' AS \"xmax\", (SELECT "
	       "count(*) FROM sites WHERE sites.xmax = 0 AND xmax = 0) AS n, xmax (1), "
	       "pgshunt.xmax(true)");
	/* The qualified name reaches into a sub-SELECT; an alias hides the table's name. */
	expect(PHASE_FINALIZED, false,
	       "INSERT INTO ingest_idempotency AS x (site_id) VALUES ('a') RETURNING (SELECT "
	       "x.xmax), ingest_idempotency.xmax",
	       "INSERT INTO pgshunt.\"ingest_idempotency_claim_final\" AS x (site_id) VALUES "
	       "('a') RETURNING (SELECT pgshunt.xmax(true)), ingest_idempotency.xmax");
	/* A write that goes to the table itself keeps its xmax. */
	expect(PHASE_DUAL_WRITE, false,
	       "INSERT INTO ingest_idempotency (site_id) VALUES ('a') ON CONFLICT DO NOTHING "
	       "RETURNING xmax",
	       "INSERT INTO ingest_idempotency (site_id) VALUES ('a') ON CONFLICT DO NOTHING "
	       "RETURNING xmax, pgshunt.put_next(ingest_idempotency)");
	expect(PHASE_PASSTHROUGH, false,
	       "INSERT INTO ingest_idempotency (site_id) VALUES ('a') RETURNING xmax",
	       "INSERT INTO ingest_idempotency (site_id) VALUES ('a') RETURNING xmax");
	/* An UPDATE's RETURNING reads the table's (next's) row: not rewritten. */
	expect(PHASE_CUTOVER, false,
	       "UPDATE ingest_idempotency SET status = 'x' WHERE site_id = 'a' RETURNING xmax",
	       "UPDATE public.ingest_idempotency_next AS ingest_idempotency SET status = 'x' "
	       "WHERE site_id = 'a' RETURNING xmax, pgshunt.put_old(ingest_idempotency)");
}

static void test_xmax_buffer(void **state)
{
	(void)state;
	/* DEGRADED: a buffered row is reported as inserted. */
	expect(PHASE_DUAL_WRITE, true,
	       "INSERT INTO ingest_idempotency (site_id) VALUES ('a') ON CONFLICT (site_id, "
	       "idempotency_key) DO NOTHING RETURNING xmax = 0 AS inserted",
	       "INSERT INTO pgshunt.\"ingest_idempotency_buffer_nothing\" AS ingest_idempotency "
	       "(site_id) VALUES ('a')  RETURNING pgshunt.xmax(false) = 0 AS inserted");
	expect(PHASE_FINALIZED, true,
	       "INSERT INTO ingest_idempotency (site_id) VALUES ('a') RETURNING "
	       "ingest_idempotency.xmax",
	       "INSERT INTO pgshunt.\"ingest_idempotency_buffer\" AS ingest_idempotency (site_id) "
	       "VALUES ('a') RETURNING pgshunt.xmax(false)");
	expect(PHASE_CUTOVER, true,
	       "INSERT INTO ingest_idempotency (site_id, idempotency_key) VALUES ('a', 'b') ON "
	       "CONFLICT (site_id, idempotency_key) DO UPDATE SET status = EXCLUDED.status "
	       "RETURNING (xmax = 0) AS inserted",
	       "...*/  RETURNING (pgshunt.xmax(false) = 0) AS inserted");
	/* Aliased DO UPDATE cannot be buffered at all (the drain replays the clause). */
	expect(PHASE_CUTOVER, true,
	       "INSERT INTO ingest_idempotency AS t (site_id, idempotency_key) VALUES ('a', 'b') "
	       "ON CONFLICT (site_id, idempotency_key) DO UPDATE SET status = EXCLUDED.status "
	       "RETURNING (xmax = 0) AS inserted",
	       "!cannot be buffered");
}

static void test_other_system_columns(void **state)
{
	(void)state;
	/* Refused with the reason, not sent to fail with 42703 on the view. */
	expect(PHASE_FINALIZED, false,
	       "INSERT INTO ingest_idempotency (site_id) VALUES ('a') RETURNING xmin",
	       "!RETURNING xmin cannot be answered");
	expect(PHASE_FINALIZED, false,
	       "INSERT INTO ingest_idempotency AS t (site_id) VALUES ('a') RETURNING xmax, "
	       "t.tableoid::regclass",
	       "!RETURNING tableoid cannot be answered");
	expect(PHASE_DUAL_WRITE, true,
	       "INSERT INTO ingest_idempotency (site_id) VALUES ('a') RETURNING cmin, cmax",
	       "!RETURNING cmin cannot be answered");
	expect(PHASE_FINALIZED, true,
	       "INSERT INTO ingest_idempotency (site_id) VALUES ('a') RETURNING ctid",
	       "!RETURNING ctid cannot be answered");
	/* Through a view, the view's reason comes first; elsewhere in cutover ctid is
	 * refused as not unique across partitions. */
	expect(PHASE_CUTOVER, false,
	       "INSERT INTO ingest_idempotency (site_id) VALUES ('a') RETURNING ctid",
	       "!RETURNING ctid cannot be answered");
	expect(PHASE_CUTOVER, false,
	       "UPDATE ingest_idempotency SET status = 'x' WHERE ctid = '(0,1)'",
	       "!ctid is not unique");
	expect(PHASE_CUTOVER, false,
	       "INSERT INTO ingest_idempotency (site_id) VALUES ('a') RETURNING xmax, xmax, "
	       "xmax, xmax, xmax, xmax, xmax, xmax, xmax",
	       "!more than 8 times");
	/* Eight are rewritten. */
	expect(PHASE_CUTOVER, false,
	       "INSERT INTO ingest_idempotency (site_id) VALUES ('a') RETURNING xmax, xmax, "
	       "xmax, xmax, xmax, xmax, xmax, xmax",
	       "INSERT INTO pgshunt.\"ingest_idempotency_claim\" AS ingest_idempotency (site_id) "
	       "VALUES ('a') RETURNING pgshunt.xmax(true), pgshunt.xmax(true), "
	       "pgshunt.xmax(true), pgshunt.xmax(true), pgshunt.xmax(true), pgshunt.xmax(true), "
	       "pgshunt.xmax(true), pgshunt.xmax(true)");
	/* A sub-SELECT's own xmin is the subquery's business. */
	expect(PHASE_CUTOVER, false,
	       "INSERT INTO ingest_idempotency (site_id) VALUES ('a') RETURNING (SELECT "
	       "max(xmin::text) FROM sites)",
	       "INSERT INTO pgshunt.\"ingest_idempotency_claim\" AS ingest_idempotency (site_id) "
	       "VALUES ('a') RETURNING (SELECT max(xmin::text) FROM sites)");
}

/*
 * schema.table.column of the table (what some ORMs write for every column) where the
 * table's mention becomes next_table or a view aliased with the table's name: the schema
 * goes.  Left alone: the client's own alias (PostgreSQL refuses the reference on the
 * table too), other tables' columns, phases that keep the name.
 */
static void test_qualified_columns(void **state)
{
	(void)state;
	expect(PHASE_READ_NEXT, false,
	       "SELECT \"public\".\"ingest_idempotency\".\"status\", public.ingest_idempotency.* "
	       "FROM \"public\".\"ingest_idempotency\" WHERE "
	       "\"public\".\"ingest_idempotency\".\"site_id\" = $1",
	       "SELECT \"ingest_idempotency\".\"status\", ingest_idempotency.* FROM "
	       "public.ingest_idempotency_next AS \"ingest_idempotency\" WHERE "
	       "\"ingest_idempotency\".\"site_id\" = $1");
	/* The catalog too, and blanks around the dots. */
	expect(PHASE_CUTOVER, false,
	       "SELECT db . public . ingest_idempotency . status FROM ingest_idempotency",
	       "SELECT  ingest_idempotency . status FROM public.ingest_idempotency_next AS "
	       "ingest_idempotency");
	expect(PHASE_CUTOVER, false,
	       "INSERT INTO public.ingest_idempotency (site_id) VALUES ('a') RETURNING "
	       "public.ingest_idempotency.created_at",
	       "INSERT INTO pgshunt.\"ingest_idempotency_claim\" AS ingest_idempotency (site_id) "
	       "VALUES ('a') RETURNING ingest_idempotency.created_at");
	expect(PHASE_CUTOVER, false,
	       "INSERT INTO public.ingest_idempotency (site_id) VALUES ('a') RETURNING "
	       "public.ingest_idempotency.xmax = 0 AS inserted, public.ingest_idempotency.site_id",
	       "INSERT INTO pgshunt.\"ingest_idempotency_claim\" AS ingest_idempotency (site_id) "
	       "VALUES ('a') RETURNING pgshunt.xmax(true) = 0 AS inserted, "
	       "ingest_idempotency.site_id");
	expect(PHASE_FINALIZED, false,
	       "INSERT INTO ingest_idempotency (site_id) VALUES ('a') RETURNING "
	       "public.ingest_idempotency.created_at",
	       "INSERT INTO pgshunt.\"ingest_idempotency_claim_final\" AS ingest_idempotency "
	       "(site_id) VALUES ('a') RETURNING ingest_idempotency.created_at");
	expect(PHASE_CUTOVER, false,
	       "UPDATE public.ingest_idempotency SET status = 'x' WHERE "
	       "public.ingest_idempotency.site_id = 'a'",
	       "UPDATE public.ingest_idempotency_next AS ingest_idempotency SET status = 'x' WHERE "
	       "ingest_idempotency.site_id = 'a' RETURNING pgshunt.put_old(ingest_idempotency)");
	/* Left alone: an alias of the client's, another table, a phase that keeps names. */
	expect(PHASE_READ_NEXT, false,
	       "SELECT public.ingest_idempotency.status FROM ingest_idempotency AS i",
	       "SELECT public.ingest_idempotency.status FROM public.ingest_idempotency_next AS i");
	expect(PHASE_READ_NEXT, false,
	       "SELECT public.sites.name FROM public.sites JOIN ingest_idempotency USING (site_id)",
	       "SELECT public.sites.name FROM public.sites JOIN public.ingest_idempotency_next AS "
	       "ingest_idempotency USING (site_id)");
	expect(PHASE_DUAL_WRITE, false,
	       "SELECT public.ingest_idempotency.status FROM ingest_idempotency",
	       "SELECT public.ingest_idempotency.status FROM ingest_idempotency");
}

/*
 * $n in a claim's DO UPDATE clause: a CTE that updates nothing keeps the clause where
 * its parameters get their types; the clause itself travels hex-encoded (its $n as
 * chr(30) n chr(30)), so only the statement's head and tail are compared here.
 */
static void test_upsert_params(void **state)
{
	(void)state;
	struct parse_result *r;
	struct rule_decision d;
	const char *reason = NULL;
	uint8_t xform;
	static const char sql[] =
	    "INSERT INTO ingest_idempotency AS t (site_id, idempotency_key, request_hash) VALUES "
	    "($1, $2, '') ON CONFLICT (site_id, idempotency_key) DO UPDATE SET response_code = $3 "
	    "WHERE t.status <> $4 RETURNING t.status";
	static const char head_cut[] =
	    "WITH pgshunt_types AS (UPDATE public.ingest_idempotency_next AS t SET  response_code "
	    "= $3  FROM public.ingest_idempotency_next AS excluded WHERE false AND ( t.status <> "
	    "$4)) INSERT INTO pgshunt.\"ingest_idempotency_claim_upsert\" AS t";
	static const char head_fin[] =
	    "WITH pgshunt_types AS (UPDATE public.ingest_idempotency AS t SET  response_code = $3 "
	    " FROM public.ingest_idempotency AS excluded WHERE false AND ( t.status <> $4)) "
	    "INSERT INTO pgshunt.\"ingest_idempotency_claim_upsert_final\" AS t";
	/* "response_code = \x1e3\x1e" and "t.status <> \x1e4\x1e" in hex */
	static const char set_hex[] = "726573706f6e73655f636f6465203d201e331e";
	static const char where_hex[] = "742e737461747573203c3e201e341e";
	for (int final = 0; final < 2; final++) {
		r = parser_parse(&shunt.tables, sql, strlen(sql), KEY_COLUMNS, PARTITION_COLUMN);
		assert_non_null(r);
		char *got = engine_statement_text(final ? PHASE_FINALIZED : PHASE_CUTOVER, false, sql,
						  &r->stmts[0], &d, &xform, &reason);
		if (!got)
			fail_msg("refused: %s", reason ? reason : "");
		const char *head = final ? head_fin : head_cut;
		if (strncmp(got, head, strlen(head)) != 0)
			fail_msg("got      %s\nexpected %s...", got, head);
		assert_non_null(strstr(got, set_hex));
		assert_non_null(strstr(got, where_hex));
		assert_non_null(strstr(got, "*/  RETURNING t.status"));
		free(got);
		parse_result_free(r);
	}
	/* A WITH of the client's own: the CTE joins its list. */
	expect(PHASE_CUTOVER, false,
	       "WITH v AS (SELECT 1) INSERT INTO ingest_idempotency (site_id, idempotency_key, "
	       "request_hash) VALUES ('a', 'b', '') ON CONFLICT (site_id, idempotency_key) DO "
	       "UPDATE SET status = $1 RETURNING status",
	       "...*/  RETURNING status");
	r = parser_parse(&shunt.tables,
			 "WITH RECURSIVE v AS (SELECT 1) INSERT INTO ingest_idempotency (site_id) "
			 "VALUES ('a') ON CONFLICT (site_id, idempotency_key) DO UPDATE SET status = "
			 "$1",
			 strlen("WITH RECURSIVE v AS (SELECT 1) INSERT INTO ingest_idempotency (site_id) "
				"VALUES ('a') ON CONFLICT (site_id, idempotency_key) DO UPDATE SET "
				"status = $1"),
			 KEY_COLUMNS, PARTITION_COLUMN);
	assert_non_null(r);
	char *got = engine_statement_text(PHASE_CUTOVER, false,
					  "WITH RECURSIVE v AS (SELECT 1) INSERT INTO ingest_idempotency "
					  "(site_id) VALUES ('a') ON CONFLICT (site_id, idempotency_key) "
					  "DO UPDATE SET status = $1",
					  &r->stmts[0], &d, &xform, &reason);
	assert_non_null(got);
	assert_non_null(strstr(got, "WITH RECURSIVE pgshunt_types AS (UPDATE "));
	assert_non_null(strstr(got, "WHERE false),  v AS (SELECT 1) INSERT INTO pgshunt."));
	free(got);
	parse_result_free(r);
	/* A 0x1E of the client's own would pass for a parameter: refused. */
	expect(PHASE_CUTOVER, false,
	       "INSERT INTO ingest_idempotency (site_id) VALUES ('a') ON CONFLICT (site_id, "
	       "idempotency_key) DO UPDATE SET status = '\x1e" "1\x1e'",
	       "!control character 0x1E");
	/* A SQL-level PREPARE: its EXECUTE's values are expressions pgshunt does not run. */
	expect(PHASE_FINALIZED, false,
	       "PREPARE p AS INSERT INTO ingest_idempotency (site_id) VALUES ($1) ON CONFLICT "
	       "(site_id, idempotency_key) DO UPDATE SET status = $1",
	       "!SQL-level PREPARE");
	expect(PHASE_FINALIZED, false,
	       "PREPARE p AS INSERT INTO ingest_idempotency (site_id) VALUES ($1) ON CONFLICT "
	       "(site_id, idempotency_key) DO UPDATE SET status = 'x'",
	       "...*/ ");
	/* DEGRADED still refuses them: the drain replays the clause as written. */
	expect(PHASE_CUTOVER, true,
	       "INSERT INTO ingest_idempotency (site_id) VALUES ('a') ON CONFLICT (site_id, "
	       "idempotency_key) DO UPDATE SET status = $1",
	       "!cannot be buffered");
}

/* finalized: ONLY dropped, COPY name TO as a query, the name kept as written. */
static void test_finalized_whole(void **state)
{
	(void)state;
	expect(PHASE_FINALIZED, false, "SELECT count(*) FROM ONLY (public.ingest_idempotency) t",
	       "SELECT count(*) FROM public.ingest_idempotency t");
	expect(PHASE_FINALIZED, false, "UPDATE ONLY ingest_idempotency SET status = 'x'",
	       "UPDATE ingest_idempotency SET status = 'x'");
	expect(PHASE_FINALIZED, false,
	       "COPY public.ingest_idempotency (site_id, status) TO STDOUT WITH (FORMAT csv)",
	       "COPY (SELECT site_id, status FROM public.ingest_idempotency AS ingest_idempotency) "
	       "TO STDOUT WITH (FORMAT csv)");
	expect(PHASE_FINALIZED, false,
	       "INSERT INTO ingest_idempotency (site_id) SELECT site_id FROM ONLY "
	       "ingest_idempotency",
	       "INSERT INTO pgshunt.\"ingest_idempotency_claim_final\" AS ingest_idempotency "
	       "(site_id) SELECT site_id FROM ingest_idempotency");
	expect(PHASE_FINALIZED, false, "DELETE FROM ingest_idempotency WHERE ctid = '(0,1)'",
	       "!ctid is not unique");
	expect(PHASE_FINALIZED, false, "COPY BINARY ingest_idempotency TO STDOUT",
	       "!pre-9.0 options");
}

int main(void)
{
	static const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_xmax_claim),
	    cmocka_unit_test(test_xmax_not_a_reference),
	    cmocka_unit_test(test_xmax_buffer),
	    cmocka_unit_test(test_other_system_columns),
	    cmocka_unit_test(test_qualified_columns),
	    cmocka_unit_test(test_finalized_whole),
	    cmocka_unit_test(test_upsert_params),
	};
	static char table[] = "public.ingest_idempotency";
	static char next_table[] = "public.ingest_idempotency_next";
	int failed;

	shunt.cfg.table = table;
	shunt.cfg.next_table = next_table;
	if (!parser_tables_init(&shunt.tables, table, next_table, "public.ingest_fallback_buffer"))
		return 1;
	failed = cmocka_run_group_tests_name("engine", tests, NULL, NULL);
	pg_query_exit();
	return failed;
}
