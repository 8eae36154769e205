#include "proxy/admin.h"

#include <ctype.h>
#include <libpq-fe.h>
#include <event2/event.h>
#include <event2/event_struct.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "proxy/brin.h"
#include "proxy/control.h"
#include "proxy/fleet.h"
#include "proxy/jobs.h"
#include "proxy/log.h"
#include "proxy/migrate.h"
#include "proxy/mbuf.h"
#include "proxy/pgshunt.h"
#include "proxy/proto.h"
#include "proxy/session.h"
#include "proxy/thresholds.h"
#include "proxy/workers.h"

#define TEXT_OID       25
#define PAUSE_CHECK_MS 50

/* A statement or portal the console client prepared (extended protocol). */
struct admin_named {
	char *name;
	char *query;
};

struct admin_session {
	struct admin_named *stmts;  /* prepared statements, by name ("" = unnamed) */
	size_t nstmts;
	struct admin_named *portals;/* bound portals, by name */
	size_t nportals;
	bool ignore_till_sync;      /* an extended request failed: skip to Sync */
	struct pktbuf out;          /* responses being built, flushed after each batch */
	bool waiting;               /* a PAUSE is waiting for sessions to go idle */
	bool waiting_simple;        /* ... inside a simple Query: ReadyForQuery follows */
	char *waiting_rest;         /* ... and these statements of that Query still run after */
	struct event pause_timer;
	bool pause_timer_set;
	bool shutdown_requested;    /* SHUTDOWN ran: shut down once its answer is sent */
};


/* ---- result writing ---- */

static void res_row(struct admin_result *r, size_t n, const char *const *values);
static void res_error(struct admin_result *r, const char *sqlstate, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void write_row_description(struct pktbuf *b, const char *const *columns)
{
	uint16_t n = 0;
	while (columns[n])
		n++;
	pktbuf_start(b, 'T');
	pktbuf_put_uint16(b, n);
	for (uint16_t i = 0; i < n; i++) {
		pktbuf_put_string(b, columns[i]);
		pktbuf_put_uint32(b, 0);        /* table oid */
		pktbuf_put_uint16(b, 0);        /* column number */
		pktbuf_put_uint32(b, TEXT_OID); /* every value is text */
		pktbuf_put_uint16(b, 0xffff);   /* typlen -1 */
		pktbuf_put_uint32(b, 0xffffffff);
		pktbuf_put_uint16(b, 0); /* text format */
	}
	pktbuf_finish(b);
}

void admin_res_row(struct admin_result *r, size_t n, const char *const *values)
{
	res_row(r, n, values);
}

void admin_row(struct session *s, size_t n, const char *const *values)
{
	struct admin_result r = {.out = &s->admin->out};
	res_row(&r, n, values);
}

static void res_row(struct admin_result *r, size_t n, const char *const *values)
{
	pktbuf_start(r->out, 'D');
	pktbuf_put_uint16(r->out, (uint16_t)n);
	for (size_t i = 0; i < n; i++) {
		if (!values[i]) {
			pktbuf_put_uint32(r->out, 0xffffffff);
			continue;
		}
		size_t len = strlen(values[i]);
		pktbuf_put_uint32(r->out, (uint32_t)len);
		pktbuf_put_bytes(r->out, values[i], len);
	}
	pktbuf_finish(r->out);
	r->rows++;
}

void admin_res_error(struct admin_result *r, const char *sqlstate, const char *fmt, ...)
{
	char msg[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	res_error(r, sqlstate, "%s", msg);
}

static void res_error(struct admin_result *r, const char *sqlstate, const char *fmt, ...)
{
	char msg[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	pktbuf_error(r->out, "ERROR", sqlstate, msg, NULL, NULL);
	stats_here->errors_total++;
	r->failed = true;
}

static const char *fmt_u64(char *buf, size_t len, uint64_t v)
{
	snprintf(buf, len, "%llu", (unsigned long long)v);
	return buf;
}

static const char *fmt_time(char *buf, size_t len, time_t t)
{
	struct tm tm;
	gmtime_r(&t, &tm);
	strftime(buf, len, "%Y-%m-%d %H:%M:%S+00", &tm);
	return buf;
}

static const char *tx_name(char status)
{
	switch (status) {
	case 'I':
		return "idle";
	case 'T':
		return "in transaction";
	case 'E':
		return "failed transaction";
	default:
		return "unknown";
	}
}

/* ---- the commands ---- */

static bool cmd_show_help(struct session *s, struct admin_result *r, const char *args);

static const char *const help_columns[] = {"command", "description", NULL};
static const char *const clients_columns[] = {"id",    "user",       "database", "addr",
					      "port",  "tls",        "state",    "tx_status",
					      "connect_time", "queries", "backend_pid", NULL};
static const char *const servers_columns[] = {"id",        "client_id", "backend_pid", "addr",
					      "port",      "tls",       "state",       "tx_status",
					      "pending_responses", "connect_time", NULL};
static const char *const stats_columns[] = {
	"clients_active", "clients_total", "queries_total", "xacts_total",
	"bytes_received", "bytes_sent",    "query_time_us", "errors_total",
	"refused_total",  "cancels_total", "uptime_s",      NULL};
static const char *const config_columns[] = {"key", "value", "default", "reloadable",
					     "description", NULL};

/* A replication stream is active for as long as it lasts: say what it is doing. */
static const char *client_state(const struct session *s)
{
	if (s->parked)
		return "paused";
	if (s->state == SS_ACTIVE && s->respq.copy_both)
		return "streaming";
	return session_state_name(s->state);
}

static bool cmd_show_clients(struct session *self, struct admin_result *r, const char *args)
{
	char id[16], port[16], when[32], queries[24], pid[16];
	(void)self;
	(void)args;
	for (struct session *s = session_first(); s; s = session_next(s)) {
		if (s->state == SS_CLOSED)
			continue;
		snprintf(id, sizeof(id), "%u", s->id);
		snprintf(port, sizeof(port), "%d", s->client_port);
		snprintf(pid, sizeof(pid), "%u", s->server_pid);
		const char *v[] = {id,
				   s->user ? s->user : "",
				   s->database ? s->database : "",
				   s->client_addr,
				   port,
				   conn_tls_describe(&s->client),
				   client_state(s),
				   tx_name(s->tx_status),
				   fmt_time(when, sizeof(when), s->connect_time),
				   fmt_u64(queries, sizeof(queries), s->queries),
				   s->server_pid ? pid : NULL};
		res_row(r, sizeof(v) / sizeof(v[0]), v);
	}
	return true;
}

static bool cmd_show_servers(struct session *self, struct admin_result *r, const char *args)
{
	char id[16], port[16], when[32], pid[16], pending[16];
	(void)self;
	(void)args;
	for (struct session *s = session_first(); s; s = session_next(s)) {
		if (!conn_is_open(&s->server))
			continue;
		snprintf(id, sizeof(id), "%u", s->id);
		snprintf(port, sizeof(port), "%d", shunt.cfg.server_port);
		snprintf(pid, sizeof(pid), "%u", s->server_pid);
		snprintf(pending, sizeof(pending), "%u", s->respq.count);
		const char *v[] = {id,
				   id,
				   s->server_pid ? pid : NULL,
				   shunt.cfg.server_host,
				   port,
				   conn_tls_describe(&s->server),
				   session_state_name(s->state),
				   tx_name(s->tx_status),
				   pending,
				   fmt_time(when, sizeof(when), s->connect_time)};
		res_row(r, sizeof(v) / sizeof(v[0]), v);
	}
	return true;
}

static bool cmd_show_stats(struct session *self, struct admin_result *r, const char *args)
{
	char b[11][24];
	static struct stats total; /* every thread's counters */
	const struct stats *st = &total;
	(void)self;
	(void)args;
	stats_total(&total);
	const char *v[] = {fmt_u64(b[0], 24, atomic_load(&shunt.nclients)),
			   fmt_u64(b[1], 24, st->clients_total),
			   fmt_u64(b[2], 24, st->queries_total),
			   fmt_u64(b[3], 24, st->xacts_total),
			   fmt_u64(b[4], 24, st->bytes_received),
			   fmt_u64(b[5], 24, st->bytes_sent),
			   fmt_u64(b[6], 24, st->query_time_us),
			   fmt_u64(b[7], 24, st->errors_total),
			   fmt_u64(b[8], 24, st->refused_total),
			   fmt_u64(b[9], 24, st->cancels_total),
			   fmt_u64(b[10], 24, (uint64_t)(time(NULL) - shunt.started))};
	res_row(r, sizeof(v) / sizeof(v[0]), v);
	return true;
}

/*
 * Values that must never be shown: the password inside control_dsn.  The conninfo is
 * parsed by libpq itself (key=value with any spacing and quoting, or a URI) and
 * written back with the password masked, so no spelling of it slips through.
 */
static void redact_dsn(const char *dsn, char *out, size_t len)
{
	char *err = NULL;
	PQconninfoOption *opts = PQconninfoParse(dsn, &err);
	size_t o = 0;
	out[0] = '\0';
	if (!opts) {
		PQfreemem(err);
		snprintf(out, len, "%s", dsn[0] ? "(unparsable: not shown)" : "");
		return;
	}
	for (PQconninfoOption *opt = opts; opt->keyword && o < len; opt++) {
		if (!opt->val)
			continue;
		bool secret = strcmp(opt->keyword, "password") == 0;
		int n = snprintf(out + o, len - o, "%s%s=%s", o ? " " : "", opt->keyword,
				 secret ? "********" : opt->val);
		o += n > 0 ? (size_t)n : 0;
	}
	PQconninfoFree(opts);
}

static bool cmd_show_config(struct session *self, struct admin_result *r, const char *args)
{
	char value[1024], def[1024], shown[1024];
	struct pgshunt_config defaults;
	(void)self;
	(void)args;
	conf_defaults(&defaults);
	for (size_t i = 0; i < conf_key_count(); i++) {
		const struct conf_key *k = conf_key_at(i);
		conf_format(&shunt.cfg, k, value, sizeof(value));
		conf_format(&defaults, k, def, sizeof(def));
		if (strcmp(k->name, "control_dsn") == 0)
			redact_dsn(value, shown, sizeof(shown));
		else
			snprintf(shown, sizeof(shown), "%s", value);
		const char *v[] = {k->name, shown, def, k->reloadable ? "yes" : "no", k->doc};
		res_row(r, 5, v);
	}
	conf_free(&defaults);
	return true;
}

static bool cmd_reload(struct session *s, struct admin_result *r, const char *args)
{
	char err[512];
	(void)args;
	if (!pgshunt_reload(err, sizeof(err))) {
		res_error(r, "F0000", "reload failed: %s", err);
		return false;
	}
	slog(LOG_LEVEL_INFO, s->prefix, "RELOAD done");
	return true;
}

static bool all_sessions_idle(void)
{
	for (struct session *s = session_first(); s; s = session_next(s))
		if (s->state == SS_ACTIVE && !session_quiet(s))
			return false;
	return true;
}

static bool cmd_pause(struct session *s, struct admin_result *r, const char *args)
{
	(void)args;
	if (!shunt.paused)
		slog(LOG_LEVEL_INFO, s->prefix, "PAUSE: holding new requests at transaction ends");
	shunt.paused = true;
	if (!all_sessions_idle()) {
		struct admin_session *a = s->admin;
		struct timeval tv = {0, PAUSE_CHECK_MS * 1000};
		evtimer_add(&a->pause_timer, &tv);
		a->pause_timer_set = true;
		r->deferred = true;
	}
	return true;
}

static bool cmd_resume(struct session *s, struct admin_result *r, const char *args)
{
	(void)r;
	(void)args;
	if (shunt.paused)
		slog(LOG_LEVEL_INFO, s->prefix, "RESUME");
	shunt.paused = false;
	session_resume_all();
	return true;
}

static bool cmd_shutdown(struct session *s, struct admin_result *r, const char *args)
{
	(void)r;
	(void)args;
	slog(LOG_LEVEL_INFO, s->prefix, "SHUTDOWN requested");
	s->admin->shutdown_requested = true;
	return true;
}

static bool cmd_noop(struct session *s, struct admin_result *r, const char *args)
{
	(void)s;
	(void)r;
	(void)args;
	return true;
}

static const struct admin_cmd commands[] = {
	{"SHOW HELP", help_columns, cmd_show_help, "list the console commands", false},
	{"SHOW CLIENTS", clients_columns, cmd_show_clients, "client connections and their state", false},
	{"SHOW SERVERS", servers_columns, cmd_show_servers, "server connections, one per client", false},
	{"SHOW STATS", stats_columns, cmd_show_stats, "counters since start", false},
	{"SHOW CONFIG", config_columns, cmd_show_config, "every setting, its default and reloadability", false},
	{"SHOW PHASE", migrate_phase_columns, migrate_cmd_show_phase,
	 "the migration phase in force, DEGRADED, the epoch and the tables", false},
	{"SHOW PROXIES", fleet_proxies_columns, fleet_cmd_show_proxies,
	 "the proxies of the fleet: acknowledged epoch, transactions in flight, lease", false},
	{"SHOW PREFLIGHT", migrate_preflight_columns, migrate_cmd_preflight,
	 "what pgshunt cannot see: views, functions, triggers, foreign keys, publications, other sessions",
	 false},
	{"SHOW THRESHOLDS", thresholds_columns, thresholds_cmd_show,
	 "the runbook's thresholds: table size, rows, p99 insert latency, indexes, BRIN advice",
	 false},
	{"INDEX BRIN", brin_columns, brin_cmd_index,
	 "replace the B-tree on expires_at by a BRIN index, concurrently, on its own connection",
	 false},
	{"SHOW BACKFILL", jobs_backfill_columns, jobs_cmd_show_backfill,
	 "the backfill: state, progress, rate, ETA, cursor, runner", false},
	{"SHOW VERIFY", jobs_verify_columns, jobs_cmd_show_verify,
	 "the last VERIFY: state, progress, first differing keys", false},
	{"SHOW DRAIN", jobs_drain_columns, jobs_cmd_show_drain,
	 "the drain: buffered rows, drained, duplicates, ledgered, rate, ETA", false},
	{"SHOW PARTITIONS", jobs_partitions_columns, jobs_cmd_show_partitions,
	 "the partitions of the partitioned table: bounds, estimated rows, size", false},
	{"BACKFILL", NULL, jobs_cmd_backfill,
	 "BACKFILL START|PAUSE|RESUME|CANCEL: copy old's rows into next_table (dual_write)", true},
	{"VERIFY", jobs_verify_result_columns, jobs_cmd_verify,
	 "compare the table and next_table key range by key range; answers when done", false},
	{"DRAIN", NULL, jobs_cmd_drain, "DRAIN START|PAUSE: move buffer_table's rows into the table",
	 true},
	{"PARTITIONS MAINTAIN", jobs_maintain_columns, jobs_cmd_partitions_maintain,
	 "premake partitions ahead and drop those past partition_retention", false},
	{"MIGRATE PREPARE", migrate_prepare_columns, migrate_cmd_prepare,
	 "build next_table, its partitions, buffer_table and the pgshunt schema (idempotent)", false},
	{"SET PHASE", NULL, migrate_cmd_set_phase,
	 "SET PHASE <phase> [FORCE]: one step forward or back", true},
	{"DEGRADED", NULL, migrate_cmd_degraded, "DEGRADED ON|OFF: inserts to buffer_table", true},
	{"RELOAD", NULL, cmd_reload, "re-read the config file (as SIGHUP)", false},
	{"PAUSE", NULL, cmd_pause, "hold new requests; returns once every session is idle", false},
	{"RESUME", NULL, cmd_resume, "release what PAUSE held", false},
	{"SHUTDOWN", NULL, cmd_shutdown, "stop accepting clients; exit when sessions finish", false},
	/* Drivers wrap statements in transactions; the console has none to offer. */
	{"BEGIN", NULL, cmd_noop, "accepted and ignored: the console is not transactional", false},
	{"START TRANSACTION", NULL, cmd_noop, "accepted and ignored", false},
	{"COMMIT", NULL, cmd_noop, "accepted and ignored", false},
	{"END", NULL, cmd_noop, "accepted and ignored", false},
	{"ROLLBACK", NULL, cmd_noop, "accepted and ignored", false},
	{"ABORT", NULL, cmd_noop, "accepted and ignored", false},
};

static bool cmd_show_help(struct session *s, struct admin_result *r, const char *args)
{
	(void)s;
	(void)args;
	for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
		const char *v[] = {commands[i].words, commands[i].help};
		res_row(r, 2, v);
	}
	return true;
}

size_t admin_command_count(void)
{
	return sizeof(commands) / sizeof(commands[0]);
}

const struct admin_cmd *admin_command_at(size_t i)
{
	return i < admin_command_count() ? &commands[i] : NULL;
}

/* Does text start with these words (case-insensitive, any whitespace between)? */
static bool match_words(const char *words, const char *text, const char **rest)
{
	const char *w = words, *t = text;
	while (*w) {
		size_t wl = strcspn(w, " ");
		while (isspace((unsigned char)*t))
			t++;
		if (strncasecmp(w, t, wl) != 0)
			return false;
		t += wl;
		if (*t && !isspace((unsigned char)*t))
			return false;
		w += wl;
		while (*w == ' ')
			w++;
	}
	while (isspace((unsigned char)*t))
		t++;
	*rest = t;
	return true;
}

const struct admin_cmd *admin_lookup(const char *stmt, const char **args)
{
	for (size_t i = 0; i < admin_command_count(); i++) {
		if (match_words(commands[i].words, stmt, args) &&
		    (**args == '\0' || commands[i].takes_args))
			return &commands[i];
	}
	return NULL;
}

/* ---- running statements ---- */

static void stmt_trim(char *stmt)
{
	size_t n = strlen(stmt);
	while (n > 0 && isspace((unsigned char)stmt[n - 1]))
		stmt[--n] = '\0';
}

/* Run one statement; the caller writes RowDescription first when it wants one. */
static void run_statement(struct session *s, struct pktbuf *out, const char *stmt, bool describe,
			  struct admin_result *r)
{
	const char *args;
	memset(r, 0, sizeof(*r));
	r->out = out;
	const struct admin_cmd *cmd = admin_lookup(stmt, &args);
	if (!cmd) {
		res_error(r, "42601", "unknown pgshunt console command: \"%.200s\" (SHOW HELP lists them)",
			  stmt);
		return;
	}
	if (describe && cmd->columns)
		write_row_description(out, cmd->columns);
	if (!cmd->run(s, r, args) || r->failed)
		return;
	if (cmd->columns)
		snprintf(r->tag, sizeof(r->tag), "SHOW");
	else
		snprintf(r->tag, sizeof(r->tag), "%s", cmd->words);
	if (!r->deferred)
		pktbuf_command_complete(out, r->tag);
}

static void admin_defer(struct session *s, bool simple, const char *rest);

/*
 * Run the statements of a simple Query from text on; false when one deferred.  whole:
 * text is the entire Query (an empty one gets EmptyQueryResponse), not what is left of
 * it after a PAUSE.
 */
static bool run_simple(struct session *s, char *text, bool whole)
{
	struct admin_session *a = s->admin;
	char *p = text;
	bool any = false;
	while (p && *p) {
		char *semi = strchr(p, ';');
		if (semi)
			*semi = '\0';
		stmt_trim(p);
		while (isspace((unsigned char)*p))
			p++;
		char *next = semi ? semi + 1 : NULL;
		if (*p == '\0') {
			p = next;
			continue;
		}
		any = true;
		struct admin_result r;
		run_statement(s, &a->out, p, true, &r);
		if (r.failed)
			break;
		if (r.deferred) {
			admin_defer(s, true, next ? next : "");
			return false;
		}
		p = next;
	}
	if (!any && whole) {
		pktbuf_start(&a->out, 'I');
		pktbuf_finish(&a->out);
	}
	pktbuf_ready(&a->out, 'I');
	return true;
}

static bool admin_flush(struct session *s)
{
	struct admin_session *a = s->admin;
	if (!pktbuf_ok(&a->out)) {
		session_fatal(s, "53200", "out of memory");
		return false;
	}
	bool ok = a->out.len == 0 || session_send_client(s, a->out.data, a->out.len);
	pktbuf_reset(&a->out);
	return ok;
}

/* A command answers later (PAUSE, or one that waits for the server): hold the input. */
static void admin_defer(struct session *s, bool simple, const char *rest)
{
	struct admin_session *a = s->admin;
	a->waiting = true;
	a->waiting_simple = simple;
	free(a->waiting_rest);
	a->waiting_rest = strdup(rest);
}

/*
 * The deferred command is done: its CommandComplete (tag) or its error goes out, the
 * rest of its simple Query runs (not after an error), and the held input is answered.
 * Called from timers and control callbacks, so it reaps the session itself.
 */
void admin_deferred_done(struct session *s, const char *tag, const char *sqlstate,
			 const char *msg)
{
	struct admin_session *a = s->admin;
	a->waiting = false;
	if (tag) {
		pktbuf_command_complete(&a->out, tag);
	} else {
		pktbuf_error(&a->out, "ERROR", sqlstate, msg, NULL, NULL);
		stats_here->errors_total++;
		if (!a->waiting_simple)
			a->ignore_till_sync = true;
	}
	if (a->waiting_simple) {
		char *rest = a->waiting_rest;
		a->waiting_rest = NULL;
		if (!tag || !rest)
			pktbuf_ready(&a->out, 'I');
		bool done = !tag || !rest || run_simple(s, rest, false);
		free(rest);
		if (!done && a->waiting) {
			admin_flush(s);
			session_reap(s);
			return;
		}
	}
	if (admin_flush(s))
		admin_process(s);
	session_reap(s);
}

static void on_pause_check(evutil_socket_t fd, short what, void *arg)
{
	WORLD_HELD();
	struct session *s = arg;
	struct admin_session *a = s->admin;
	(void)fd;
	(void)what;
	a->pause_timer_set = false;
	if (shunt.paused && !all_sessions_idle()) {
		struct timeval tv = {0, PAUSE_CHECK_MS * 1000};
		evtimer_add(&a->pause_timer, &tv);
		a->pause_timer_set = true;
		return;
	}
	admin_deferred_done(s, "PAUSE", NULL, NULL);
}

/* ---- the extended protocol ---- */

static struct admin_named *named_find(struct admin_named *v, size_t n, const char *name)
{
	for (size_t i = 0; i < n; i++)
		if (strcmp(v[i].name, name) == 0)
			return &v[i];
	return NULL;
}

static bool named_set(struct admin_named **v, size_t *n, const char *name, const char *query)
{
	struct admin_named *e = named_find(*v, *n, name);
	char *q = strdup(query);
	if (!q)
		return false;
	if (e) {
		free(e->query);
		e->query = q;
		return true;
	}
	struct admin_named *grown = realloc(*v, sizeof(**v) * (*n + 1));
	char *nm = strdup(name);
	if (!grown || !nm) {
		free(q);
		free(nm);
		if (grown)
			*v = grown;
		return false;
	}
	*v = grown;
	grown[*n].name = nm;
	grown[*n].query = q;
	(*n)++;
	return true;
}

static void named_remove(struct admin_named *v, size_t *n, const char *name)
{
	struct admin_named *e = named_find(v, *n, name);
	if (!e)
		return;
	free(e->name);
	free(e->query);
	*e = v[--(*n)];
}

static void named_free(struct admin_named *v, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		free(v[i].name);
		free(v[i].query);
	}
	free(v);
}

static void ext_error(struct session *s, const char *sqlstate, const char *msg)
{
	pktbuf_error(&s->admin->out, "ERROR", sqlstate, msg, NULL, NULL);
	stats_here->errors_total++;
	s->admin->ignore_till_sync = true;
}

static void ext_parse(struct session *s, struct mbuf *m)
{
	struct admin_session *a = s->admin;
	const char *name, *query;
	if (!mbuf_get_string(m, &name) || !mbuf_get_string(m, &query))
		return ext_error(s, "08P01", "malformed Parse message");
	if (name[0] && named_find(a->stmts, a->nstmts, name))
		return ext_error(s, "42P05", "prepared statement already exists");
	if (!named_set(&a->stmts, &a->nstmts, name, query))
		return ext_error(s, "53200", "out of memory");
	pktbuf_start(&a->out, '1');
	pktbuf_finish(&a->out);
}

static void ext_bind(struct session *s, struct mbuf *m)
{
	struct admin_session *a = s->admin;
	const char *portal, *stmt;
	if (!mbuf_get_string(m, &portal) || !mbuf_get_string(m, &stmt))
		return ext_error(s, "08P01", "malformed Bind message");
	struct admin_named *st = named_find(a->stmts, a->nstmts, stmt);
	if (!st)
		return ext_error(s, "26000", "prepared statement does not exist");
	if (!named_set(&a->portals, &a->nportals, portal, st->query))
		return ext_error(s, "53200", "out of memory");
	pktbuf_start(&a->out, '2');
	pktbuf_finish(&a->out);
}

static void ext_describe(struct session *s, struct mbuf *m)
{
	struct admin_session *a = s->admin;
	uint8_t what;
	const char *name, *args;
	if (!mbuf_get_byte(m, &what) || !mbuf_get_string(m, &name) || (what != 'S' && what != 'P'))
		return ext_error(s, "08P01", "malformed Describe message");
	struct admin_named *e = what == 'S' ? named_find(a->stmts, a->nstmts, name)
					    : named_find(a->portals, a->nportals, name);
	if (!e)
		return ext_error(s, what == 'S' ? "26000" : "34000",
				 what == 'S' ? "prepared statement does not exist"
					     : "portal does not exist");
	if (what == 'S') {
		pktbuf_start(&a->out, 't');
		pktbuf_put_uint16(&a->out, 0);
		pktbuf_finish(&a->out);
	}
	char *q = strdup(e->query);
	if (!q)
		return ext_error(s, "53200", "out of memory");
	char *semi = strchr(q, ';');
	if (semi)
		*semi = '\0';
	stmt_trim(q);
	const struct admin_cmd *cmd = admin_lookup(q, &args);
	free(q);
	if (cmd && cmd->columns) {
		write_row_description(&a->out, cmd->columns);
	} else {
		pktbuf_start(&a->out, 'n');
		pktbuf_finish(&a->out);
	}
}

static bool ext_execute(struct session *s, struct mbuf *m)
{
	struct admin_session *a = s->admin;
	const char *portal;
	if (!mbuf_get_string(m, &portal)) {
		ext_error(s, "08P01", "malformed Execute message");
		return true;
	}
	struct admin_named *p = named_find(a->portals, a->nportals, portal);
	if (!p) {
		ext_error(s, "34000", "portal does not exist");
		return true;
	}
	char *q = strdup(p->query);
	if (!q) {
		ext_error(s, "53200", "out of memory");
		return true;
	}
	char *semi = strchr(q, ';');
	if (semi)
		*semi = '\0';
	stmt_trim(q);
	const char *start = q;
	while (isspace((unsigned char)*start))
		start++;
	struct admin_result r;
	if (*start == '\0') {
		pktbuf_start(&a->out, 'I');
		pktbuf_finish(&a->out);
		free(q);
		return true;
	}
	run_statement(s, &a->out, start, false, &r);
	free(q);
	if (r.failed)
		a->ignore_till_sync = true;
	if (r.deferred) {
		admin_defer(s, false, "");
		return false;
	}
	return true;
}

static void ext_close(struct session *s, struct mbuf *m)
{
	struct admin_session *a = s->admin;
	uint8_t what;
	const char *name;
	if (!mbuf_get_byte(m, &what) || !mbuf_get_string(m, &name))
		return ext_error(s, "08P01", "malformed Close message");
	if (what == 'S')
		named_remove(a->stmts, &a->nstmts, name);
	else
		named_remove(a->portals, &a->nportals, name);
	pktbuf_start(&a->out, '3');
	pktbuf_finish(&a->out);
}

/* One whole message; false to stop processing (closed, or a PAUSE waits). */
static bool admin_message(struct session *s, char type, const uint8_t *body, uint32_t len)
{
	struct admin_session *a = s->admin;
	struct mbuf m;
	mbuf_init(&m, body, len);

	if (type == 'X') {
		session_close(s, "console client terminated the session");
		return false;
	}
	if (type == 'S') {
		a->ignore_till_sync = false;
		pktbuf_ready(&a->out, 'I');
		return true;
	}
	if (a->ignore_till_sync && type != 'Q')
		return true;
	switch (type) {
	case 'Q': {
		const char *text;
		if (!mbuf_get_string(&m, &text)) {
			session_fatal(s, "08P01", "malformed Query message");
			return false;
		}
		char *copy = strdup(text);
		if (!copy) {
			session_fatal(s, "53200", "out of memory");
			return false;
		}
		bool done = run_simple(s, copy, true);
		free(copy);
		return done;
	}
	case 'P':
		ext_parse(s, &m);
		return true;
	case 'B':
		ext_bind(s, &m);
		return true;
	case 'D':
		ext_describe(s, &m);
		return true;
	case 'E':
		return ext_execute(s, &m);
	case 'C':
		ext_close(s, &m);
		return true;
	case 'H':
		return true;
	default:
		session_fatal(s, "08P01", "invalid message type %d for the pgshunt console",
			      (int)(uint8_t)type);
		return false;
	}
}

bool admin_process(struct session *s)
{
	struct admin_session *a = s->admin;
	struct iobuf *in = &s->client.in;
	uint32_t limit = (uint32_t)shunt.cfg.max_message_size;
	while (!a->waiting && iobuf_len(in) > 0 && s->state == SS_ADMIN) {
		char type;
		uint32_t total;
		enum frame_status fs = proto_frame(iobuf_head(in), iobuf_len(in), limit, &type, &total);
		if (fs == FRAME_INCOMPLETE)
			break;
		if (fs != FRAME_OK) {
			session_fatal(s, "08P01", "invalid message length");
			return false;
		}
		if (total > iobuf_len(in)) {
			if (!iobuf_reserve(in, total - iobuf_len(in))) {
				session_fatal(s, "53200", "out of memory");
				return false;
			}
			break;
		}
		/* Consumed before it runs: what it starts may finish before it returns. */
		uint8_t *msg = malloc(total);
		if (!msg) {
			session_fatal(s, "53200", "out of memory");
			return false;
		}
		memcpy(msg, iobuf_head(in), total);
		iobuf_consume(in, total);
		bool more = admin_message(s, type, msg + 5, total - 5);
		free(msg);
		if (s->state == SS_CLOSED)
			return false;
		if (!more)
			break;
	}
	if (!admin_flush(s))
		return false;
	/* The answer to SHUTDOWN is out; now the session may be closed with the rest. */
	if (a->shutdown_requested) {
		a->shutdown_requested = false;
		pgshunt_shutdown();
	}
	return s->state != SS_CLOSED;
}

bool admin_begin(struct session *s)
{
	s->admin = calloc(1, sizeof(*s->admin));
	if (!s->admin) {
		session_fatal(s, "53200", "out of memory");
		return false;
	}
	pktbuf_init(&s->admin->out);
	evtimer_assign(&s->admin->pause_timer, shunt.base, on_pause_check, s);
	slog(LOG_LEVEL_INFO, s->prefix, "admin console session");
	return true;
}

void admin_free(struct session *s)
{
	struct admin_session *a = s->admin;
	if (!a)
		return;
	if (a->pause_timer_set)
		event_del(&a->pause_timer);
	control_forget(s);
	migrate_session_gone(s);
	brin_session_gone(s);
	jobs_session_gone(s);
	named_free(a->stmts, a->nstmts);
	named_free(a->portals, a->nportals);
	pktbuf_free(&a->out);
	free(a->waiting_rest);
	free(a);
	s->admin = NULL;
}
