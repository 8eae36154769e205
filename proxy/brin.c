#include "proxy/brin.h"

#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proxy/admin.h"
#include "proxy/control.h"
#include "proxy/guard.h"
#include "proxy/log.h"
#include "proxy/pgshunt.h"
#include "proxy/pqevent.h"
#include "proxy/session.h"
#include "proxy/thresholds.h"
#include "proxy/workers.h"

#define BRIN_MAX_STEPS 2048

const char *const brin_columns[] = {"step", "detail", NULL};

/*
 * The plan, written by the database itself (format() quotes every name): a first row
 * 'index' naming the index found and its access method, then the statements in the
 * order they run.  Partitions are one level deep, as MIGRATE PREPARE builds them.
 */
static const char plan_sql[] =
    "WITH t AS (SELECT to_regclass($1) AS oid), "
    "i AS (SELECT x.indexrelid, ic.relname, n.nspname, am.amname, c.relkind, left(ic.relname, "
    "58) || '_brin' AS tmp, t.oid::regclass AS tbl FROM t JOIN pg_catalog.pg_index x ON x.indrelid "
    "= t.oid AND "
    "x.indnkeyatts = 1 JOIN pg_catalog.pg_attribute a ON a.attrelid = t.oid AND a.attnum = "
    "x.indkey[0] AND a.attname = $2 JOIN pg_catalog.pg_class ic ON ic.oid = x.indexrelid JOIN "
    "pg_catalog.pg_am am ON am.oid = ic.relam JOIN pg_catalog.pg_class c ON c.oid = t.oid JOIN "
    "pg_catalog.pg_namespace n ON n.oid = ic.relnamespace WHERE NOT x.indisunique AND ic.relname "
    "NOT LIKE '%\\_brin' ORDER BY am.amname = 'btree' DESC, ic.relname LIMIT 1), "
    "p AS (SELECT ci.indrelid::regclass AS rel, pn.nspname AS nsp, pc.relname AS idx, "
    "left(pc.relname, 58) || '_brin' AS tmp FROM i JOIN pg_catalog.pg_inherits h ON h.inhparent "
    "= i.indexrelid JOIN pg_catalog.pg_index ci ON ci.indexrelid = h.inhrelid JOIN "
    "pg_catalog.pg_class pc ON pc.oid = ci.indexrelid JOIN pg_catalog.pg_namespace pn ON pn.oid "
    "= pc.relnamespace), "
    "s(o, k, step, detail, sql) AS ("
    "SELECT 0, '', 'index', format('%I.%I (%s) on %s', nspname, relname, amname, tbl), "
    "amname::text FROM i "
    "UNION ALL SELECT 1, '', 'drop_leftover', format('%I.%I', nspname, tmp), CASE WHEN relkind = "
    "'p' THEN format('DROP INDEX IF EXISTS %I.%I', nspname, tmp) ELSE format('DROP INDEX "
    "CONCURRENTLY IF EXISTS %I.%I', nspname, tmp) END FROM i "
    "UNION ALL SELECT 2, '', 'create_brin', format('%I.%I on %s', nspname, tmp, tbl), format("
    "'CREATE INDEX CONCURRENTLY %I ON %s USING brin (%I)', tmp, tbl, $2) FROM i WHERE relkind "
    "<> 'p' "
    "UNION ALL SELECT 2, '', 'create_parent', format('%I.%I on only %s', nspname, tmp, tbl), "
    "format('CREATE INDEX %I ON ONLY %s USING brin (%I)', tmp, tbl, $2) FROM i WHERE relkind = "
    "'p' "
    "UNION ALL SELECT 3, rel::text || '1', 'drop_leftover', format('%I.%I', nsp, tmp), format("
    "'DROP INDEX CONCURRENTLY IF EXISTS %I.%I', nsp, tmp) FROM p "
    "UNION ALL SELECT 3, rel::text || '2', 'create_brin', format('%I.%I on %s', nsp, tmp, rel), "
    "format('CREATE INDEX CONCURRENTLY %I ON %s USING brin (%I)', tmp, rel, $2) FROM p "
    "UNION ALL SELECT 3, p.rel::text || '3', 'attach', format('%I.%I', p.nsp, p.tmp), format("
    "'ALTER INDEX %I.%I ATTACH PARTITION %I.%I', i.nspname, i.tmp, p.nsp, p.tmp) FROM i, p "
    "UNION ALL SELECT 4, '', 'drop_btree', format('%I.%I', nspname, relname), CASE WHEN relkind "
    "= 'p' THEN format('SET lock_timeout = ''10s''; DROP INDEX %I.%I', nspname, relname) ELSE "
    "format('DROP INDEX CONCURRENTLY %I.%I', nspname, relname) END FROM i "
    "UNION ALL SELECT 5, '', 'rename', format('%I.%I to %I', nspname, tmp, relname), format("
    "'ALTER INDEX %I.%I RENAME TO %I', nspname, tmp, relname) FROM i "
    "UNION ALL SELECT 6, rel::text, 'rename', format('%I.%I to %I', nsp, tmp, idx), format("
    "'ALTER INDEX %I.%I RENAME TO %I', nsp, tmp, idx) FROM p) "
    "SELECT step, detail, sql FROM s ORDER BY o, k";

static struct {
	bool running;
	struct session *s; /* NULL once the console went away */
	PGconn *conn;
	struct event *io;
	char *step[BRIN_MAX_STEPS];
	char *detail[BRIN_MAX_STEPS];
	char *sql[BRIN_MAX_STEPS];
	size_t n, i;     /* steps, and the one running */
	char error[600]; /* the first error of the running step */
	char sqlstate[6];
} brin;

static void drive(void);

static void plan_free(void)
{
	for (size_t i = 0; i < brin.n; i++) {
		free(brin.step[i]);
		free(brin.detail[i]);
		free(brin.sql[i]);
	}
	brin.n = brin.i = 0;
}

static void disconnect(void)
{
	if (brin.io)
		event_free(brin.io);
	brin.io = NULL;
	if (brin.conn)
		PQfinish(brin.conn);
	brin.conn = NULL;
}

static void finish(const char *sqlstate, const char *msg)
{
	struct session *s = brin.s;
	disconnect();
	if (sqlstate && brin.n == 0)
		log_warning("INDEX BRIN refused: %s", msg);
	else if (sqlstate)
		log_error("INDEX BRIN failed at step %zu of %zu: %s", brin.i, brin.n - 1, msg);
	else
		log_warning("INDEX BRIN done: %s", brin.n ? brin.detail[0] : "");
	brin.running = false;
	brin.s = NULL;
	if (s) {
		for (size_t i = 1; i < brin.i; i++) {
			const char *row[] = {brin.step[i], brin.detail[i]};
			admin_row(s, 2, row);
		}
		plan_free();
		admin_deferred_done(s, sqlstate ? NULL : "INDEX BRIN", sqlstate, msg);
		return;
	}
	plan_free();
}

static void on_io(evutil_socket_t fd, short what, void *arg)
{
	WORLD_HELD();
	(void)fd;
	(void)what;
	(void)arg;
	drive();
}

static void arm(short what)
{
	if (!pqevent_arm(&brin.io, brin.conn, what, on_io, NULL))
		finish("53200", "out of memory");
}

static bool send_step(void)
{
	if (brin.i >= brin.n) {
		finish(NULL, NULL);
		return false;
	}
	log_info("INDEX BRIN step %zu of %zu: %s %s", brin.i, brin.n - 1, brin.step[brin.i],
	         brin.detail[brin.i]);
	brin.error[0] = '\0';
	if (!PQsendQuery(brin.conn, brin.sql[brin.i])) {
		finish("08006", PQerrorMessage(brin.conn));
		return false;
	}
	return true;
}

/* Results of the running step; true when it is complete. */
static bool gather(void)
{
	if (!PQconsumeInput(brin.conn)) {
		snprintf(brin.sqlstate, sizeof(brin.sqlstate), "08006");
		snprintf(brin.error, sizeof(brin.error), "%s", PQerrorMessage(brin.conn));
		return true;
	}
	while (!PQisBusy(brin.conn)) {
		PGresult *res = PQgetResult(brin.conn);
		if (!res)
			return true;
		ExecStatusType st = PQresultStatus(res);
		if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK && !brin.error[0]) {
			const char *code = PQresultErrorField(res, PG_DIAG_SQLSTATE);
			snprintf(brin.sqlstate, sizeof(brin.sqlstate), "%s", code ? code : "XX000");
			snprintf(brin.error, sizeof(brin.error), "%s %s: %s", brin.step[brin.i],
			         brin.detail[brin.i], PQresultErrorMessage(res));
			size_t len = strlen(brin.error);
			while (len && brin.error[len - 1] == '\n')
				brin.error[--len] = '\0';
		}
		PQclear(res);
	}
	return false;
}

static void drive(void)
{
	if (PQstatus(brin.conn) != CONNECTION_OK && brin.i == 0) {
		switch (PQconnectPoll(brin.conn)) {
		case PGRES_POLLING_READING:
			arm(EV_READ);
			return;
		case PGRES_POLLING_WRITING:
			arm(EV_WRITE);
			return;
		case PGRES_POLLING_OK:
			PQsetnonblocking(brin.conn, 1);
			brin.i = 1; /* row 0 describes the index */
			if (!send_step())
				return;
			break;
		default:
			finish("08006", PQerrorMessage(brin.conn));
			return;
		}
	}
	if (PQflush(brin.conn) == 1) {
		arm(EV_READ | EV_WRITE);
		return;
	}
	if (!gather()) {
		arm(EV_READ);
		return;
	}
	if (brin.error[0]) {
		char msg[700];
		snprintf(msg, sizeof(msg),
		         "%s (the B-tree is dropped only once the BRIN index is "
		         "complete; INDEX BRIN again cleans up and goes on)",
		         brin.error);
		finish(brin.sqlstate, msg);
		return;
	}
	brin.i++;
	if (send_step())
		drive();
}

static void start_connection(void)
{
	static const char *const keys[] = {"dbname", "application_name", "options", NULL};
	const char *values[] = {shunt.cfg.control_dsn, "pgshunt INDEX BRIN", GUARD_CONNINFO_OPTIONS,
	                        NULL};
	brin.conn = PQconnectStartParams(keys, values, 1);
	if (!brin.conn || PQstatus(brin.conn) == CONNECTION_BAD) {
		finish("08006", brin.conn ? PQerrorMessage(brin.conn) : "out of memory");
		return;
	}
	drive();
}

static bool take_plan(const PGresult *res)
{
	for (int r = 0; r < PQntuples(res) && r < BRIN_MAX_STEPS; r++) {
		brin.step[r] = strdup(PQgetvalue(res, r, 0));
		brin.detail[r] = strdup(PQgetvalue(res, r, 1));
		brin.sql[r] = strdup(PQgetvalue(res, r, 2));
		brin.n = (size_t)r + 1;
		if (!brin.step[r] || !brin.detail[r] || !brin.sql[r])
			return false;
	}
	return PQntuples(res) <= BRIN_MAX_STEPS;
}

static void on_plan(const PGresult *res, void *arg)
{
	(void)arg;
	if (!control_ok(res)) {
		finish(control_sqlstate(res), control_message(res));
		return;
	}
	if (PQntuples(res) == 0) {
		char msg[512];
		snprintf(msg, sizeof(msg),
		         "INDEX BRIN: %s has no index on %s alone (or does not "
		         "exist): nothing to swap",
		         thresholds_authoritative_table(), THRESH_BRIN_COLUMN);
		finish("55000", msg);
		return;
	}
	if (strcmp(PQgetvalue(res, 0, 2), "btree") != 0) {
		char msg[512];
		snprintf(msg, sizeof(msg), "INDEX BRIN: the index on %s is not a B-tree: %s",
		         THRESH_BRIN_COLUMN, PQgetvalue(res, 0, 1));
		finish("55000", msg);
		return;
	}
	if (!take_plan(res)) {
		finish("53200", "out of memory (or too many partitions)");
		return;
	}
	log_warning("INDEX BRIN: replacing %s by a BRIN index, %zu steps", brin.detail[0],
	            brin.n - 1);
	start_connection();
}

bool brin_cmd_index(struct session *s, struct admin_result *r, const char *args)
{
	(void)args;
	if (!control_available()) {
		admin_res_error(r, "55000",
		                "control_dsn is not set: INDEX BRIN needs pgshunt's own "
		                "connections");
		return false;
	}
	if (brin.running) {
		admin_res_error(r, "55006", "INDEX BRIN is already running");
		return false;
	}
	const char *params[] = {thresholds_authoritative_table(), THRESH_BRIN_COLUMN};
	if (!control_query(plan_sql, 2, params, on_plan, &brin)) {
		admin_res_error(r, "53200", "out of memory");
		return false;
	}
	brin.running = true;
	brin.s = s;
	r->deferred = true;
	return true;
}

void brin_session_gone(struct session *s)
{
	if (brin.s == s)
		brin.s = NULL;
}

void brin_stop(void)
{
	brin.s = NULL;
	if (brin.running && brin.conn)
		log_warning("INDEX BRIN interrupted by the shutdown at step %zu of %zu", brin.i,
		            brin.n - 1);
	disconnect();
	plan_free();
	brin.running = false;
}
