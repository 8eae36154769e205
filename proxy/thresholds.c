#include "proxy/thresholds.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proxy/admin.h"
#include "proxy/control.h"
#include "proxy/fleet.h"
#include "proxy/guard.h"
#include "proxy/latency.h"
#include "proxy/log.h"
#include "proxy/migrate.h"
#include "proxy/pgshunt.h"
#include "proxy/session.h"
#include "proxy/workers.h"

#define OPS_TICK_MS  1000
#define OPS_POLL_S   2 /* fleet p99, auto-DEGRADED, buffer depth, jobs */
#define AUTO_RETRY_S 30

const char *const thresholds_columns[] = {"metric", "value",  "warning", "action",
                                          "status", "detail", NULL};

static const char *const metric_names[TM__COUNT] = {
    [TM_TABLE_SIZE] = "table_size",
    [TM_ROW_ESTIMATE] = "row_estimate",
    [TM_INSERT_P99] = "insert_p99_ms",
    [TM_PROXY_P99] = "proxy_insert_p99_ms",
    [TM_EXPIRES_INDEX] = "expires_at_btree_size",
};

/* Limits by metric; < 0: none (the B-tree has only the BRIN advice at 10 GB). */
static const double limits[TM__COUNT][2] = {
    [TM_TABLE_SIZE] = {THRESH_TABLE_SIZE_WARNING, THRESH_TABLE_SIZE_ACTION},
    [TM_ROW_ESTIMATE] = {THRESH_ROWS_WARNING, THRESH_ROWS_ACTION},
    [TM_INSERT_P99] = {THRESH_P99_WARNING_MS, THRESH_P99_ACTION_MS},
    [TM_PROXY_P99] = {THRESH_P99_WARNING_MS, THRESH_P99_ACTION_MS},
    [TM_EXPIRES_INDEX] = {-1, THRESH_BRIN_INDEX_ACTION},
};

static struct ops_view view;

static struct {
	struct event *timer;
	unsigned ticks;
	uint64_t last_eval_s; /* when the catalog was last read (seconds, monotonic) */
	bool polling;         /* a poll is queued: never two at once */
	bool evaluating;
	bool fleet_known; /* the last poll read pgshunt.proxies */
	double fleet_p99; /* max over live proxies; < 0: none reported an insert */
	unsigned fleet_reporting;
	struct auto_state autost;
	bool flipping;     /* a DEGRADED change of ours is in progress */
	uint64_t retry_at; /* after a failed change, not before (s) */
	char by[400];      /* phase_log's "by" for our changes */
	char table_detail[256];
	char index_detail[512];
} ops;

const struct ops_view *ops_view(void)
{
	return &view;
}

const char *thresh_metric_name(enum thresh_metric m)
{
	return m < TM__COUNT ? metric_names[m] : "?";
}

const char *thresh_status_name(enum thresh_status s)
{
	return s == THRESH_ACTION ? "action" : s == THRESH_WARNING ? "warning" : "ok";
}

const char *ops_job_name(enum ops_job j)
{
	return j == OPS_JOB_BACKFILL ? "backfill" : "drain";
}

enum thresh_status thresh_classify(double value, double warning, double action)
{
	if (action >= 0 && value > action)
		return THRESH_ACTION;
	if (warning >= 0 && value > warning)
		return THRESH_WARNING;
	return THRESH_OK;
}

static uint64_t mono_s(void)
{
	return now_us() / 1000000u;
}

static void set_metric(enum thresh_metric m, bool known, double value)
{
	struct thresh_value *v = &view.metric[m];
	enum thresh_status before = v->known ? v->status : THRESH_OK;
	v->known = known;
	v->value = known ? value : 0;
	v->status = known ? thresh_classify(value, limits[m][0], limits[m][1]) : THRESH_OK;
	if (v->status != before)
		log_warning("threshold %s is now %s (value %.1f, warning %.0f, action %.0f)",
		            metric_names[m], thresh_status_name(v->status), v->value, limits[m][0],
		            limits[m][1]);
}

const char *thresholds_authoritative_table(void)
{
	return shunt.phase.phase == PHASE_CUTOVER ? shunt.cfg.next_table : shunt.cfg.table;
}

/* ---- this proxy's and the fleet's p99 ---- */

static void refresh_p99(void)
{
	double ms;
	uint64_t n;
	bool own = latency_p99(&ms, &n);
	set_metric(TM_PROXY_P99, own, ms);
	/*
	 * The fleet's p99 is the largest of the proxies' own: an upper bound of the p99
	 * of all their inserts together (if each has at most 1% above x, so has the
	 * union), and all a single float per heartbeat allows.  Until the fleet is read,
	 * this proxy's own figure stands for it.
	 */
	if (ops.fleet_known)
		set_metric(TM_INSERT_P99, ops.fleet_p99 >= 0, ops.fleet_p99);
	else
		set_metric(TM_INSERT_P99, own, ms);
}

/* ---- auto-DEGRADED ---- */

static void on_auto_done(const char *sqlstate, const char *msg)
{
	bool on;
	ops.flipping = false;
	if (sqlstate) {
		/* Not at every poll: a refusal (55000, 0A000) stands until something changes. */
		ops.retry_at = mono_s() + AUTO_RETRY_S;
		log_error("auto-DEGRADED: the change FAILED (%s): %s; trying again in %d s",
		          sqlstate, msg, AUTO_RETRY_S);
		return;
	}
	on = shunt.phase.degraded;
	view.auto_degrade_total[on]++;
	ops.autost = (struct auto_state){0};
	log_warning("auto-DEGRADED: DEGRADED is now %s, every live proxy acknowledged it",
	            on ? "ON" : "OFF");
}

static void auto_flip(bool on, double p99)
{
	snprintf(ops.by, sizeof(ops.by), "pgshunt auto-DEGRADED (%s)", fleet_proxy_id());
	log_warning("auto-DEGRADED: turning DEGRADED %s: the fleet's p99 insert latency (%.1f ms) "
	            "has been %s %.0f ms for %d s",
	            on ? "ON" : "OFF", p99, on ? "above" : "under",
	            on ? THRESH_P99_ACTION_MS : THRESH_P99_WARNING_MS,
	            shunt.cfg.auto_degrade_window_s);
	ops.flipping = migrate_set_degraded(on, ops.by, on_auto_done);
	if (!ops.flipping)
		log_warning(
		    "auto-DEGRADED: another phase change is in progress; trying again later");
}

enum auto_action auto_degrade_decide(struct auto_state *st, uint64_t now, double p99, bool degraded,
                                     bool auto_set, double since_flip, unsigned window)
{
	bool above = p99 > THRESH_P99_ACTION_MS;
	bool below = p99 < THRESH_P99_WARNING_MS; /* no insert at all (< 0) counts as below */
	st->above_since = above ? (st->above_since ? st->above_since : now) : 0;
	st->below_since = below ? (st->below_since ? st->below_since : now) : 0;
	/* However the latency swings, two automatic changes are two windows apart. */
	if (since_flip >= 0 && since_flip < 2.0 * window)
		return AUTO_NONE;
	if (!degraded && above && now - st->above_since >= window)
		return AUTO_ON;
	if (degraded && auto_set && below && now - st->below_since >= window)
		return AUTO_OFF;
	return AUTO_NONE;
}

/* Run by the proxy holding the lock, after each poll. */
static void auto_degrade_eval(bool auto_set, double since_flip)
{
	double p99 = ops.fleet_known ? ops.fleet_p99 : -1;
	enum auto_action a =
	    auto_degrade_decide(&ops.autost, mono_s(), p99, shunt.phase.degraded, auto_set,
	                        since_flip, (unsigned)shunt.cfg.auto_degrade_window_s);
	if (a == AUTO_NONE || ops.flipping || !shunt.phase.known || !shunt.phase.installed ||
	    mono_s() < ops.retry_at)
		return;
	auto_flip(a == AUTO_ON, p99 < 0 ? 0 : p99);
}

/* ---- the poll: fleet, leader, jobs (control schema), buffer depth (catalog) ---- */

#define AUTO_LOCK "pg_catalog.hashtextextended('pgshunt:auto_degrade', 0)"
#define HOLDS_AUTO_LOCK                                                                            \
	"EXISTS (SELECT 1 FROM pg_catalog.pg_locks WHERE locktype = 'advisory' AND pid = "         \
	"pg_catalog.pg_backend_pid() AND objsubid = 1 AND ((classid::bigint << 32) | "             \
	"objid::bigint) = " AUTO_LOCK ")"

/*
 * The session advisory lock makes one proxy the decider; it goes with its control
 * connection, so another takes over when that proxy dies.  Held once, not stacked:
 * pg_try_advisory_lock() would count every poll.
 */
static const char poll_sql[] =
    "SELECT (SELECT max(insert_p99_ms) FROM pgshunt.proxies WHERE lease_until > now()), "
    "(SELECT count(insert_p99_ms) FROM pgshunt.proxies WHERE lease_until > now()), "
    "CASE WHEN $1::boolean THEN CASE WHEN " HOLDS_AUTO_LOCK " THEN true ELSE "
    "pg_catalog.pg_try_advisory_lock(" AUTO_LOCK ") END WHEN " HOLDS_AUTO_LOCK " THEN NOT "
    "pg_catalog.pg_advisory_unlock(" AUTO_LOCK ") ELSE false END, "
    "(SELECT coalesce(changed_by LIKE 'pgshunt auto-DEGRADED%', false) FROM pgshunt.state), "
    "(SELECT extract(epoch FROM now() - max(at))::float8 FROM pgshunt.phase_log WHERE by LIKE "
    "'pgshunt auto-DEGRADED%'), "
    "b.state, b.rows_done, b.rows_total, d.state, d.rows_done, d.rows_total "
    "FROM (SELECT 1) AS one LEFT JOIN pgshunt.jobs AS b ON b.name = 'backfill' "
    "LEFT JOIN pgshunt.jobs AS d ON d.name = 'drain'";

/* Exact up to the cap (query_to_xml runs a count over the regclass's quoted name). */
static const char buffer_sql[] =
    "SELECT CASE WHEN to_regclass($1) IS NOT NULL THEN (pg_catalog.xpath('/row/n/text()', "
    "pg_catalog.query_to_xml(format('SELECT count(*) AS n FROM (SELECT 1 FROM %s LIMIT %s) "
    "AS b', to_regclass($1), $2::int), false, true, '')))[1]::text::bigint END, "
    "(SELECT reltuples::bigint FROM pg_catalog.pg_class WHERE oid = to_regclass($1))";

static uint64_t u64_or0(const PGresult *res, int col)
{
	return PQgetisnull(res, 0, col) ? 0 : strtoull(PQgetvalue(res, 0, col), NULL, 10);
}

static void read_job(const PGresult *res, enum ops_job j, int col)
{
	bool present = !PQgetisnull(res, 0, col);
	view.job[j].present = present;
	snprintf(view.job[j].state, sizeof(view.job[j].state), "%s",
	         present ? PQgetvalue(res, 0, col) : "");
	view.job[j].rows_done = u64_or0(res, col + 1);
	view.job[j].rows_total = u64_or0(res, col + 2);
}

static void on_poll(const PGresult *res, void *arg)
{
	(void)arg;
	ops.polling = false;
	if (!control_ok(res) || PQntuples(res) != 1) {
		/* No control schema yet (or no connection): no fleet, no jobs, no decider. */
		ops.fleet_known = false;
		view.auto_degrade_leader = false;
		memset(view.job, 0, sizeof(view.job));
		refresh_p99();
		return;
	}
	ops.fleet_known = true;
	ops.fleet_p99 = PQgetisnull(res, 0, 0) ? -1 : strtod(PQgetvalue(res, 0, 0), NULL);
	ops.fleet_reporting = (unsigned)atoi(PQgetvalue(res, 0, 1));
	bool leader = PQgetvalue(res, 0, 2)[0] == 't';
	if (leader != view.auto_degrade_leader)
		log_info("auto-DEGRADED: this proxy %s the decider",
		         leader ? "is now" : "is no longer");
	view.auto_degrade_leader = leader;
	bool auto_set = PQgetvalue(res, 0, 3)[0] == 't';
	double since_flip = PQgetisnull(res, 0, 4) ? -1 : strtod(PQgetvalue(res, 0, 4), NULL);
	read_job(res, OPS_JOB_BACKFILL, 5);
	read_job(res, OPS_JOB_DRAIN, 8);
	refresh_p99();
	if (leader && shunt.cfg.auto_degrade)
		auto_degrade_eval(auto_set, since_flip);
}

static void on_buffer(const PGresult *res, void *arg)
{
	(void)arg;
	if (!control_ok(res) || PQntuples(res) != 1 || PQgetisnull(res, 0, 0)) {
		view.buffer_known = false;
		return;
	}
	uint64_t counted = u64_or0(res, 0);
	double est = PQgetisnull(res, 0, 1) ? 0 : strtod(PQgetvalue(res, 0, 1), NULL);
	view.buffer_known = true;
	view.buffer_rows =
	    counted < THRESH_BUFFER_COUNT_CAP || est < (double)counted ? counted : (uint64_t)est;
}

static void poll(void)
{
	char cap[16];
	snprintf(cap, sizeof(cap), "%d", THRESH_BUFFER_COUNT_CAP);
	const char *p1[] = {shunt.cfg.auto_degrade ? "true" : "false"};
	const char *p2[] = {shunt.cfg.buffer_table, cap};
	/* Before MIGRATE PREPARE there is no pgshunt.jobs to read, nor a buffer. */
	if (ops.polling || !control_connected() || !shunt.phase.installed)
		return;
	ops.polling = control_query(poll_sql, 1, p1, on_poll, &ops);
	if (ops.polling && !control_query(buffer_sql, 2, p2, on_buffer, &ops))
		log_warning("could not queue the buffer depth query");
}

/* ---- the catalog: sizes, row estimate, indexes ---- */

/*
 * One row for the table (summed over its leaf partitions: a partitioned parent has no
 * storage of its own, and pg_partition_tree() says nothing of a plain table, which is
 * its own only leaf), then one per index of it (a partitioned index summed likewise),
 * flagged when it is a single-column index on THRESH_BRIN_COLUMN.
 */
static const char catalog_sql[] =
    "WITH t AS (SELECT to_regclass($1) AS oid), leaf AS (SELECT c.oid, c.reltuples FROM t JOIN "
    "pg_catalog.pg_class c ON (c.oid = t.oid AND c.relkind <> 'p') OR c.oid IN (SELECT relid "
    "FROM pg_catalog.pg_partition_tree(t.oid) WHERE isleaf)) "
    "SELECT 'table' AS kind, $1 AS name, (SELECT coalesce(sum(pg_catalog.pg_total_relation_size("
    "oid)), 0) FROM leaf)::bigint AS bytes, (SELECT coalesce(sum(greatest(reltuples, 0)), 0) "
    "FROM leaf)::bigint AS rows, format('%s partition(s), %s never analyzed', (SELECT "
    "count(*) FROM leaf WHERE NOT EXISTS (SELECT 1 FROM t WHERE t.oid = leaf.oid)), (SELECT "
    "count(*) FROM leaf WHERE reltuples < 0)) AS detail, NULL::text AS am, false AS flag "
    "FROM t WHERE t.oid IS NOT NULL "
    "UNION ALL SELECT 'index', i.indexrelid::regclass::text, (SELECT coalesce(sum("
    "pg_catalog.pg_relation_size(x)), 0) FROM (SELECT relid FROM pg_catalog.pg_partition_tree("
    "i.indexrelid) WHERE isleaf UNION SELECT i.indexrelid) AS l(x))::bigint, NULL, "
    "pg_catalog.pg_get_indexdef(i.indexrelid), am.amname, "
    "i.indnkeyatts = 1 AND i.indkey[0] = (SELECT attnum FROM pg_catalog.pg_attribute a WHERE "
    "a.attrelid = t.oid AND a.attname = $2 AND NOT a.attisdropped) "
    "FROM t JOIN pg_catalog.pg_index i ON i.indrelid = t.oid JOIN pg_catalog.pg_class ic ON "
    "ic.oid = i.indexrelid JOIN pg_catalog.pg_am am ON am.oid = ic.relam "
    "ORDER BY kind DESC, name";

/* Take the catalog's answer into the view; the index rows stay in res for SHOW. */
static void apply_catalog(const PGresult *res)
{
	bool table = false, btree = false;
	double btree_bytes = 0;
	ops.index_detail[0] = '\0';
	for (int i = 0; i < PQntuples(res); i++) {
		const char *kind = PQgetvalue(res, i, 0);
		double bytes = strtod(PQgetvalue(res, i, 2), NULL);
		if (strcmp(kind, "table") == 0) {
			table = true;
			set_metric(TM_TABLE_SIZE, true, bytes);
			set_metric(TM_ROW_ESTIMATE, true, strtod(PQgetvalue(res, i, 3), NULL));
			snprintf(ops.table_detail, sizeof(ops.table_detail), "%s",
			         PQgetvalue(res, i, 4));
			continue;
		}
		if (PQgetvalue(res, i, 6)[0] != 't')
			continue;
		if (strcmp(PQgetvalue(res, i, 5), "btree") == 0 &&
		    (!btree || bytes > btree_bytes)) {
			btree = true;
			btree_bytes = bytes;
			snprintf(ops.index_detail, sizeof(ops.index_detail), "%s: %s",
			         PQgetvalue(res, i, 1), PQgetvalue(res, i, 4));
		} else if (!btree) {
			snprintf(ops.index_detail, sizeof(ops.index_detail), "%s is %s already",
			         PQgetvalue(res, i, 1), PQgetvalue(res, i, 5));
		}
	}
	if (!table) {
		set_metric(TM_TABLE_SIZE, false, 0);
		set_metric(TM_ROW_ESTIMATE, false, 0);
		snprintf(ops.table_detail, sizeof(ops.table_detail), "%s does not exist",
		         thresholds_authoritative_table());
	}
	set_metric(TM_EXPIRES_INDEX, btree, btree_bytes);
	ops.last_eval_s = mono_s();
}

static bool queue_catalog(control_cb cb, void *arg)
{
	const char *params[] = {thresholds_authoritative_table(), THRESH_BRIN_COLUMN};
	return control_query(catalog_sql, 2, params, cb, arg);
}

static void on_catalog(const PGresult *res, void *arg)
{
	(void)arg;
	ops.evaluating = false;
	if (control_ok(res))
		apply_catalog(res);
	else if (res)
		log_warning("thresholds: reading the catalog failed: %s", control_message(res));
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
	WORLD_HELD();
	(void)fd;
	(void)what;
	(void)arg;
	latency_tick();
	ops.ticks++;
	guard_tick();
	if (!control_available())
		return;
	if (ops.ticks % OPS_POLL_S == 0)
		poll();
	if (!ops.evaluating && control_connected() &&
	    (!ops.last_eval_s ||
	     mono_s() - ops.last_eval_s >= (uint64_t)shunt.cfg.thresholds_interval_s))
		ops.evaluating = queue_catalog(on_catalog, &ops);
}

void thresholds_start(void)
{
	struct timeval tv = {OPS_TICK_MS / 1000, (OPS_TICK_MS % 1000) * 1000};
	for (int m = 0; m < TM__COUNT; m++)
		view.metric[m].known = false;
	latency_tick(); /* the baseline: what came before is not in the window */
	ops.timer = event_new(shunt.base, -1, EV_PERSIST, on_tick, NULL);
	if (ops.timer)
		event_add(ops.timer, &tv);
}

void thresholds_stop(void)
{
	if (ops.timer)
		event_free(ops.timer);
	ops.timer = NULL;
	guard_stop();
}

/* ---- SHOW THRESHOLDS ---- */

static const char *fmt_num(char *buf, size_t len, bool known, double v, bool ms)
{
	if (!known)
		return NULL;
	if (ms)
		snprintf(buf, len, "%.1f", v);
	else
		snprintf(buf, len, "%.0f", v);
	return buf;
}

static void show_metric(struct session *s, enum thresh_metric m, const char *detail)
{
	char value[32], warn[32], act[32];
	const struct thresh_value *v = &view.metric[m];
	bool ms = m == TM_INSERT_P99 || m == TM_PROXY_P99;
	const char *row[] = {metric_names[m],
	                     fmt_num(value, sizeof(value), v->known, v->value, ms),
	                     fmt_num(warn, sizeof(warn), limits[m][0] >= 0, limits[m][0], ms),
	                     fmt_num(act, sizeof(act), limits[m][1] >= 0, limits[m][1], ms),
	                     thresh_status_name(v->status),
	                     detail};
	admin_row(s, 6, row);
}

static void show_p99(struct session *s)
{
	char d[256];
	double ms = 0;
	uint64_t n = 0;
	bool own = latency_p99(&ms, &n);
	if (ops.fleet_known)
		snprintf(d, sizeof(d),
		         "the largest of the %u live proxies that had inserts in their "
		         "last %d s (pgshunt.proxies.insert_p99_ms)",
		         ops.fleet_reporting, LATENCY_WINDOW_S);
	else
		snprintf(d, sizeof(d),
		         "this proxy's alone: the fleet is not readable (no control "
		         "schema or connection)");
	show_metric(s, TM_INSERT_P99, d);
	if (own)
		snprintf(d, sizeof(d), "%" PRIu64 " INSERT statement(s) in the last %d s", n,
		         LATENCY_WINDOW_S);
	else
		snprintf(d, sizeof(d), "no INSERT in the last %d s", LATENCY_WINDOW_S);
	show_metric(s, TM_PROXY_P99, d);
}

static void on_show(const PGresult *res, void *arg)
{
	struct session *s = arg;
	char d[640], bytes[32];
	if (!control_ok(res)) {
		admin_deferred_done(s, NULL, control_sqlstate(res), control_message(res));
		return;
	}
	apply_catalog(res);
	refresh_p99();
	snprintf(d, sizeof(d), "%s, authoritative in phase %s: %s",
	         thresholds_authoritative_table(), phase_name(shunt.phase.phase), ops.table_detail);
	show_metric(s, TM_TABLE_SIZE, d);
	show_metric(s, TM_ROW_ESTIMATE, "pg_class.reltuples summed over the partitions");
	show_p99(s);
	if (view.metric[TM_EXPIRES_INDEX].status == THRESH_ACTION)
		snprintf(d, sizeof(d), "%s; over 10 GB: run INDEX BRIN to swap it for a BRIN index",
		         ops.index_detail);
	else
		snprintf(d, sizeof(d), "%s",
		         ops.index_detail[0] ? ops.index_detail
		                             : "no index on " THRESH_BRIN_COLUMN);
	show_metric(s, TM_EXPIRES_INDEX, d);
	for (int i = 0; i < PQntuples(res); i++) {
		if (strcmp(PQgetvalue(res, i, 0), "index") != 0)
			continue;
		char name[300];
		snprintf(name, sizeof(name), "index_size:%s", PQgetvalue(res, i, 1));
		snprintf(bytes, sizeof(bytes), "%s", PQgetvalue(res, i, 2));
		const char *row[] = {name, bytes, NULL, NULL, "ok", PQgetvalue(res, i, 4)};
		admin_row(s, 6, row);
	}
	admin_deferred_done(s, "SHOW", NULL, NULL);
}

bool thresholds_cmd_show(struct session *s, struct admin_result *r, const char *args)
{
	(void)args;
	if (!control_available()) {
		admin_res_error(r, "55000",
		                "control_dsn is not set: SHOW THRESHOLDS reads the "
		                "catalog over pgshunt's own connection");
		return false;
	}
	if (!queue_catalog(on_show, s)) {
		admin_res_error(r, "53200", "out of memory");
		return false;
	}
	r->deferred = true;
	return true;
}
