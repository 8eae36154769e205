#include "proxy/migrate.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "proxy/admin.h"
#include "proxy/control.h"
#include "proxy/engine.h"
#include "proxy/fleet.h"
#include "proxy/log.h"
#include "proxy/pgshunt.h"
#include "proxy/session.h"
#include "proxy/sql.h"
#include "proxy/workers.h"
#include "rules/rules.h"

/* hold_until through to_jsonb: a version 1 schema (not upgraded yet) has no such column. */
#define STATE_SQL                                                                                  \
	"SELECT phase, epoch, degraded, coalesce((to_jsonb(s) ->> 'hold_until')::timestamptz "     \
	"> now(), false) FROM pgshunt.state s"
/*
 * Asked instead while the schema is missing (before MIGRATE PREPARE, which may come
 * weeks after the fleet is deployed): reading a table that is not there is an ERROR in
 * the server's log and a rollback in pg_stat_database, four times a second per proxy.
 */
#define SCHEMA_SQL       "SELECT to_regclass('pgshunt.state') IS NOT NULL"
#define RELOAD_RETRY_S   1
#define UNDEFINED_TABLE  "42P01"
#define INVALID_SCHEMA   "3F000"
#define NOT_IN_STATE     "55000" /* object_not_in_prerequisite_state */
#define OBJECT_IN_USE    "55006"
#define ACK_POLL_MS      100
#define ACK_TIMEOUT_MS   30000
#define LOCK_UNAVAILABLE "55P03"

/*
 * SET PHASE finalized: the fleet is held at most FINALIZE_HOLD_MS; the acknowledgements
 * of the hold may take what the rename attempts leave of it.  The database's own limit
 * on the hold (hold_until) is longer by FINALIZE_HOLD_SLACK_MS, so the fleet never
 * releases itself while this proxy still renames, yet frees itself if this proxy dies;
 * a rename needs FINALIZE_MARGIN_MS of that limit left to start.
 */
#define FINALIZE_HOLD_MS         10000
#define FINALIZE_HOLD_SLACK_MS   5000
#define FINALIZE_MARGIN_MS       2000
#define FINALIZE_LOCK_TIMEOUT_MS 200
#define FINALIZE_ATTEMPTS        5
#define FINALIZE_RETRY_PAUSE_MS  300
#define FINALIZE_ACK_MS                                                                        \
	(FINALIZE_HOLD_MS - FINALIZE_ATTEMPTS * (FINALIZE_LOCK_TIMEOUT_MS + FINALIZE_RETRY_PAUSE_MS))

const char *const migrate_phase_columns[] = {"phase",      "degraded",     "epoch",
					     "known",      "table",        "next_table",
					     "buffer_table", NULL};
const char *const migrate_prepare_columns[] = {"step", "detail", NULL};
const char *const migrate_preflight_columns[] = {"kind", "object", "detail", NULL};

/* ---- the phase in force ---- */

static struct event *reload_timer;
static struct event *ack_timer; /* SET PHASE polling the fleet's acknowledgements */

static bool is_missing_schema(const PGresult *res)
{
	const char *code = control_sqlstate(res);
	return res && (strcmp(code, UNDEFINED_TABLE) == 0 || strcmp(code, INVALID_SCHEMA) == 0);
}

/* Take pgshunt.state's row (phase, epoch, degraded) as the phase in force. */
static bool apply_state(const PGresult *res)
{
	enum phase p;
	if (!control_ok(res) || PQntuples(res) != 1 || !phase_parse(PQgetvalue(res, 0, 0), &p))
		return false;
	shunt.phase.phase = p;
	shunt.phase.epoch = strtoull(PQgetvalue(res, 0, 1), NULL, 10);
	shunt.phase.degraded = PQgetvalue(res, 0, 2)[0] == 't';
	shunt.phase.hold = PQnfields(res) > 3 && PQgetvalue(res, 0, 3)[0] == 't';
	shunt.phase.known = fleet_lease_ok();
	shunt.phase.installed = true;
	return true;
}

static void on_reload_timer(evutil_socket_t fd, short what, void *arg)
{
	WORLD_HELD();
	(void)fd;
	(void)what;
	(void)arg;
	migrate_load_phase();
}

static bool loading; /* a read of pgshunt.state is queued: polling never piles them up */
static bool relmap_loading;

static void on_relmap(const PGresult *res, void *arg)
{
	struct relmap *rm = &shunt.relmap;
	(void)arg;
	relmap_loading = false;
	if (!control_ok(res) || PQntuples(res) == 0 || PQntuples(res) > RELMAP_MAX_COLUMNS)
		return; /* next_table is not there yet: asked again at the next read */
	rm->old_oid = (uint32_t)strtoul(PQgetvalue(res, 0, 0), NULL, 10);
	rm->next_oid = (uint32_t)strtoul(PQgetvalue(res, 0, 1), NULL, 10);
	rm->n = (size_t)PQntuples(res);
	for (size_t i = 0; i < rm->n; i++) {
		rm->att[i][0] = (int16_t)atoi(PQgetvalue(res, (int)i, 3));
		rm->att[i][1] = (int16_t)atoi(PQgetvalue(res, (int)i, 2));
	}
	rm->loaded = true;
}

/* next_table's OID and column numbers, so reads from it can name the table. */
static void load_relmap(void)
{
	const char *params[] = {shunt.cfg.table, shunt.cfg.next_table};
	/* After the rename next_table's name is gone and its OID is the table's own. */
	if (relmap_loading || !shunt.phase.installed || shunt.phase.phase == PHASE_FINALIZED)
		return;
	relmap_loading = control_query(
		"SELECT o.attrelid::oid, n.attrelid::oid, o.attnum, n.attnum FROM pg_attribute o "
		"JOIN pg_attribute n ON n.attname = o.attname AND n.attrelid = to_regclass($2) "
		"AND NOT n.attisdropped WHERE o.attrelid = to_regclass($1) AND o.attnum > 0 AND NOT "
		"o.attisdropped",
		2, params, on_relmap, NULL);
}

/*
 * No hold in force: transactions begun during one (the rename done, given up, or
 * lapsed) have not touched the table, since their statements on it were held, so they
 * take the phase now in force.  True when there were any.
 */
static bool repin_held(void)
{
	bool any = false;
	for (struct session *t = session_first(); t; t = session_next(t)) {
		if (t->pin.hold) {
			t->pin = shunt.phase;
			any = true;
		}
	}
	return any;
}

/* What changes with the phase here, whoever changed it (the phase is known). */
static void phase_moved(const struct phase_state *before)
{
	if (shunt.phase.phase == PHASE_FINALIZED)
		shunt.relmap.loaded = false;
	if (!shunt.phase.hold && (repin_held() || before->hold))
		session_resume_all(); /* the held statements go on under the phase in force */
}

/* No control schema yet: passthrough, known, and nothing held. */
static void no_schema(const struct phase_state *before)
{
	shunt.phase = (struct phase_state){.phase = PHASE_PASSTHROUGH, .known = true};
	shunt.phase_read_us = now_us();
	if (!before->known)
		session_resume_all();
	if (!before->known || before->installed)
		log_info("no pgshunt control schema in the database yet: phase passthrough");
}

static void read_failed(const PGresult *res)
{
	log_warning("could not read the phase: %s; retrying in %d s", control_message(res),
		    RELOAD_RETRY_S);
	if (!reload_timer)
		reload_timer = evtimer_new(shunt.base, on_reload_timer, NULL);
	struct timeval tv = {RELOAD_RETRY_S, 0};
	if (reload_timer)
		evtimer_add(reload_timer, &tv);
}

static void on_state_loaded(const PGresult *res, void *arg)
{
	struct phase_state before = shunt.phase;
	(void)arg;
	loading = false;
	if (apply_state(res)) {
		shunt.phase_read_us = now_us();
		if (!shunt.phase.known)
			return; /* read, but the lease may be lapsing (fleet_lease_ok()): still held */
		phase_moved(&before);
		if (!shunt.relmap.loaded)
			load_relmap();
		if (!shunt.relmap.loaded || !before.known || before.epoch != shunt.phase.epoch)
			engine_views_load();
		if (!before.known)
			session_resume_all(); /* statements held while the phase was unknown */
		/* Polled often: say it only when another proxy (or a restart) changed it. */
		if (!before.known || before.epoch != shunt.phase.epoch) {
			log_info("phase %s, epoch %" PRIu64 ", degraded %s%s (from pgshunt.state)",
				 phase_name(shunt.phase.phase), shunt.phase.epoch,
				 shunt.phase.degraded ? "on" : "off",
				 shunt.phase.hold ? ", held for the finalize rename" : "");
			/* Acknowledge at once: a SET PHASE elsewhere is waiting for it. */
			if (before.known)
				fleet_beat_now();
		}
		return;
	}
	if (is_missing_schema(res)) {
		no_schema(&before);
		return;
	}
	read_failed(res);
}

/* The answer to SCHEMA_SQL: read the state once the schema is there. */
static void on_schema_probed(const PGresult *res, void *arg)
{
	struct phase_state before = shunt.phase;
	(void)arg;
	loading = false;
	if (!control_ok(res) || PQntuples(res) != 1) {
		read_failed(res);
		return;
	}
	if (PQgetvalue(res, 0, 0)[0] != 't') {
		no_schema(&before);
		return;
	}
	loading = control_query(STATE_SQL, 0, NULL, on_state_loaded, NULL);
	if (!loading)
		log_error("could not queue the phase query");
}

void migrate_load_phase(void)
{
	if (!control_available()) {
		/* No control connection, no migration: nothing but passthrough is safe. */
		shunt.phase = (struct phase_state){.phase = PHASE_PASSTHROUGH, .known = true};
		return;
	}
	if (loading)
		return;
	if (shunt.phase.installed)
		loading = control_query(STATE_SQL, 0, NULL, on_state_loaded, NULL);
	else
		loading = control_query(SCHEMA_SQL, 0, NULL, on_schema_probed, NULL);
	if (!loading)
		log_error("could not queue the phase query");
}

void migrate_stop(void)
{
	if (reload_timer)
		event_free(reload_timer);
	reload_timer = NULL;
	if (ack_timer)
		event_free(ack_timer);
	ack_timer = NULL;
}

bool migrate_cmd_show_phase(struct session *s, struct admin_result *r, const char *args)
{
	char epoch[24];
	(void)s;
	(void)args;
	snprintf(epoch, sizeof(epoch), "%" PRIu64, shunt.phase.epoch);
	const char *v[] = {phase_name(shunt.phase.phase),
			   shunt.phase.degraded ? "on" : "off",
			   epoch,
			   shunt.phase.known ? "yes" : "no",
			   shunt.cfg.table,
			   shunt.cfg.next_table,
			   shunt.cfg.buffer_table};
	admin_res_row(r, sizeof(v) / sizeof(v[0]), v);
	return true;
}

/* ---- SET PHASE and DEGRADED: one change at a time, fleet-wide state in the database ---- */

/*
 * The change in progress.  Its callbacks carry &op, not the session, so that a console
 * client that goes away cannot leave the change half-known: the database answer is
 * still applied, only the reply is dropped.
 */
static struct {
	bool busy;
	struct session *s; /* NULL once the console session is gone */
	enum phase to;
	bool degraded;
	bool force;
	bool set_phase;  /* SET PHASE (else DEGRADED) */
	uint64_t epoch;  /* the epoch written, which the fleet must acknowledge */
	int waited_ms;   /* waiting for acknowledgements so far */
	const char *tag; /* "SET PHASE" or "DEGRADED" */
	const char *by;  /* who asks when it is no console (auto-DEGRADED), for phase_log */
	migrate_done_cb done; /* told the outcome when no console asked */
} op;

static void op_finish(const char *sqlstate, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
static void op_wait_acks(void);
static void on_ack_timer(evutil_socket_t fd, short what, void *arg);
static void finalize_rename(void);
static void finalize_give_up(const char *sqlstate, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/* SET PHASE finalized's progress, beside op (which it is part of). */
static struct {
	bool holding;     /* the fleet is held: its acks awaited, or renaming */
	int attempt;      /* rename attempts made */
	uint64_t hold_us; /* when the hold began (now_us()) */
} fin;

static void (*op_next)(void); /* what ack_timer runs next */

/* The acknowledgements awaited are the hold's (not a phase's or DEGRADED's). */
static bool awaiting_hold(void)
{
	return fin.holding && op.set_phase && op.to == PHASE_FINALIZED;
}

static void op_finish(const char *sqlstate, const char *fmt, ...)
{
	char msg[512] = "";
	struct session *s = op.s;
	if (fmt) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(msg, sizeof(msg), fmt, ap);
		va_end(ap);
	}
	migrate_done_cb done = op.done;
	op.busy = false;
	op.s = NULL;
	op.done = NULL;
	if (done)
		done(sqlstate, msg);
	if (s)
		admin_deferred_done(s, sqlstate ? NULL : op.tag, sqlstate, msg);
}

static struct session *prepare_session;

void migrate_session_gone(struct session *s)
{
	if (op.s == s)
		op.s = NULL;
	if (prepare_session == s)
		prepare_session = NULL;
}

static void on_set_done(const PGresult *res, void *arg)
{
	(void)arg;
	if (!control_ok(res) || PQntuples(res) != 1) {
		op_finish(control_sqlstate(res), "%s failed: %s", op.tag, control_message(res));
		return;
	}
	enum phase from = shunt.phase.phase;
	shunt.phase.phase = op.to;
	shunt.phase.degraded = op.degraded;
	shunt.phase.epoch = strtoull(PQgetvalue(res, 0, 0), NULL, 10);
	if (op.force)
		log_warning("SET PHASE %s FORCE: data preconditions SKIPPED (from %s, epoch %" PRIu64
			    ")",
			    phase_name(op.to), phase_name(from), shunt.phase.epoch);
	else
		log_info("%s: phase %s, degraded %s, epoch %" PRIu64, op.tag, phase_name(op.to),
			 op.degraded ? "on" : "off", shunt.phase.epoch);
	op.epoch = shunt.phase.epoch;
	op.waited_ms = 0;
	fleet_beat_now();
	op_wait_acks();
}

static bool op_after(int ms, void (*next)(void))
{
	if (!ack_timer)
		ack_timer = evtimer_new(shunt.base, on_ack_timer, NULL);
	if (!ack_timer)
		return false;
	struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
	op_next = next;
	evtimer_add(ack_timer, &tv);
	return true;
}

/* SET PHASE returns once every live proxy acknowledged the new epoch (SPEC §6). */
static void on_acks(const PGresult *res, void *arg)
{
	(void)arg;
	if (!control_ok(res)) {
		if (awaiting_hold())
			finalize_give_up(NOT_IN_STATE, "checking the fleet's acknowledgements failed: %s",
					 control_message(res));
		else
			op_finish(control_sqlstate(res),
				  "checking the fleet's acknowledgements failed: %s",
				  control_message(res));
		return;
	}
	if (PQgetisnull(res, 0, 0)) {
		if (awaiting_hold())
			finalize_rename();
		else
			op_finish(NULL, NULL);
		return;
	}
	if (awaiting_hold() && now_us() - fin.hold_us >= (uint64_t)FINALIZE_ACK_MS * 1000) {
		finalize_give_up(NOT_IN_STATE, "these proxies did not acknowledge the hold within "
					       "%d ms (a transaction open on the table?): %s",
				 FINALIZE_ACK_MS, PQgetvalue(res, 0, 0));
		return;
	}
	if (op.waited_ms >= ACK_TIMEOUT_MS) {
		op_finish(NOT_IN_STATE, "the phase is now %s (epoch %" PRIu64 ") but these proxies "
					"have not acknowledged it within %d s: %s",
			  phase_name(op.to), op.epoch, ACK_TIMEOUT_MS / 1000, PQgetvalue(res, 0, 0));
		return;
	}
	op.waited_ms += ACK_POLL_MS;
	if (!op_after(ACK_POLL_MS, op_wait_acks)) {
		if (awaiting_hold())
			finalize_give_up("53200", "out of memory");
		else
			op_finish("53200", "out of memory");
	}
}

static void op_wait_acks(void)
{
	char epoch[24];
	snprintf(epoch, sizeof(epoch), "%" PRIu64, op.epoch);
	const char *params[] = {epoch};
	/* A proxy whose lease lapsed (dead, or cut off and holding by itself) is not waited for. */
	if (!control_query("SELECT string_agg(proxy_id || ' (acked ' || coalesce(acked_epoch::text, "
			   "'nothing') || ', ' || coalesce(inflight, 0) || ' in flight)', ', ' "
			   "ORDER BY proxy_id) FROM pgshunt.proxies WHERE lease_until > now() AND "
			   "coalesce(acked_epoch, 0) < $1::bigint",
			   1, params, on_acks, &op))
		op_finish("53200", "out of memory");
}

static void on_ack_timer(evutil_socket_t fd, short what, void *arg)
{
	WORLD_HELD();
	(void)fd;
	(void)what;
	(void)arg;
	if (op.busy && op_next)
		op_next();
}

/* ---- SET PHASE finalized: hold the fleet, rename, release (SPEC §2) ---- */

static void op_by(char *by, size_t len)
{
	snprintf(by, len, "pgshunt console (%s)", op.s ? op.s->prefix : "gone");
}

/* The phase as pgshunt.state now has it, applied here at once (the poll would, later). */
static void finalize_apply(enum phase p, uint64_t epoch, bool hold)
{
	struct phase_state before = shunt.phase;
	shunt.phase.phase = p;
	shunt.phase.epoch = epoch;
	shunt.phase.hold = hold;
	phase_moved(&before);
}

static char give_up_state[6];
static char give_up_msg[512];

static void on_released(const PGresult *res, void *arg)
{
	(void)arg;
	fin.holding = false;
	/* A rename whose answer was lost with the connection may have committed. */
	if (control_ok(res) && PQntuples(res) == 1 && PQnfields(res) == 2 &&
	    strcmp(PQgetvalue(res, 0, 1), phase_name(PHASE_FINALIZED)) == 0) {
		op.epoch = strtoull(PQgetvalue(res, 0, 0), NULL, 10);
		finalize_apply(PHASE_FINALIZED, op.epoch, false);
		log_warning("SET PHASE finalized: the rename committed although its answer was "
			    "lost (%s); phase finalized, epoch %" PRIu64,
			    give_up_msg, op.epoch);
		op.waited_ms = 0;
		fleet_beat_now();
		op_wait_acks();
		return;
	}
	if (control_ok(res) && PQntuples(res) == 1) {
		finalize_apply(shunt.phase.phase, strtoull(PQgetvalue(res, 0, 0), NULL, 10), false);
		fleet_beat_now();
		log_warning("SET PHASE finalized given up, hold released after %" PRIu64 " ms: %s",
			    (now_us() - fin.hold_us) / 1000, give_up_msg);
	} else {
		/* The database's time limit on the hold frees the fleet anyway. */
		log_error("SET PHASE finalized given up but releasing the hold failed (%s); it "
			  "lapses by itself: %s",
			  control_message(res), give_up_msg);
	}
	op_finish(give_up_state, "SET PHASE finalized failed, the phase stays %s and the hold "
				 "is released: %s",
		  phase_name(shunt.phase.phase), give_up_msg);
}

static void finalize_give_up(const char *sqlstate, const char *fmt, ...)
{
	char by[160];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(give_up_msg, sizeof(give_up_msg), fmt, ap);
	va_end(ap);
	snprintf(give_up_state, sizeof(give_up_state), "%s", sqlstate);
	op_by(by, sizeof(by));
	const char *params[] = {"0", by};
	if (!control_query("SELECT pgshunt.set_hold($1::int, $2), (SELECT phase FROM pgshunt.state)",
			   2, params, on_released, &op))
		on_released(NULL, NULL);
}

static void on_renamed(const PGresult *res, void *arg)
{
	(void)arg;
	uint64_t held_ms = (now_us() - fin.hold_us) / 1000;
	if (control_ok(res) && PQntuples(res) == 1) {
		fin.holding = false;
		op.epoch = strtoull(PQgetvalue(res, 0, 0), NULL, 10);
		finalize_apply(PHASE_FINALIZED, op.epoch, false);
		log_info("SET PHASE finalized: %s renamed to %s_old, %s to %s (attempt %d); phase "
			 "finalized, epoch %" PRIu64 ", fleet held %" PRIu64 " ms",
			 shunt.cfg.table, shunt.cfg.table, shunt.cfg.next_table, shunt.cfg.table,
			 fin.attempt, op.epoch, held_ms);
		op.waited_ms = 0;
		fleet_beat_now();
		op_wait_acks();
		return;
	}
	const char *code = control_sqlstate(res);
	log_warning("SET PHASE finalized: rename attempt %d/%d failed after %" PRIu64
		    " ms of hold: %s (%s)",
		    fin.attempt, FINALIZE_ATTEMPTS, held_ms, control_message(res), code);
	if (strcmp(code, LOCK_UNAVAILABLE) != 0) {
		finalize_give_up(strcmp(code, "08006") == 0 ? NOT_IN_STATE : code,
				 "the rename failed: %s", control_message(res));
		return;
	}
	if (fin.attempt >= FINALIZE_ATTEMPTS ||
	    held_ms + FINALIZE_RETRY_PAUSE_MS + FINALIZE_LOCK_TIMEOUT_MS > FINALIZE_HOLD_MS) {
		finalize_give_up(NOT_IN_STATE, "the rename could not lock %s or %s within %d ms in "
					       "%d attempts: another session holds a lock on one of "
					       "them (SHOW PREFLIGHT lists such sessions)",
				 shunt.cfg.table, shunt.cfg.next_table, FINALIZE_LOCK_TIMEOUT_MS,
				 fin.attempt);
		return;
	}
	if (!op_after(FINALIZE_RETRY_PAUSE_MS, finalize_rename))
		finalize_give_up("53200", "out of memory");
}

static void finalize_rename(void)
{
	char by[160], timeout[16], margin[16];
	op_by(by, sizeof(by));
	snprintf(timeout, sizeof(timeout), "%d", FINALIZE_LOCK_TIMEOUT_MS);
	snprintf(margin, sizeof(margin), "%d", FINALIZE_MARGIN_MS);
	const char *params[] = {shunt.cfg.table, shunt.cfg.next_table, timeout, margin, by};
	fin.attempt++;
	log_info("SET PHASE finalized: every live proxy holds; rename attempt %d/%d "
		 "(lock_timeout %d ms)",
		 fin.attempt, FINALIZE_ATTEMPTS, FINALIZE_LOCK_TIMEOUT_MS);
	if (!control_query("SELECT pgshunt.finalize($1, $2, $3::int, $4::int, $5)", 5, params,
			   on_renamed, &op))
		finalize_give_up("53200", "out of memory");
}

static void on_hold_set(const PGresult *res, void *arg)
{
	(void)arg;
	if (!control_ok(res) || PQntuples(res) != 1) {
		op_finish(control_sqlstate(res), "SET PHASE finalized: holding the fleet failed: %s",
			  control_message(res));
		return;
	}
	fin.holding = true;
	fin.attempt = 0;
	op.waited_ms = 0;
	fin.hold_us = now_us();
	op.epoch = strtoull(PQgetvalue(res, 0, 0), NULL, 10);
	finalize_apply(shunt.phase.phase, op.epoch, true);
	log_info("SET PHASE finalized: fleet held (epoch %" PRIu64 "): new transactions' "
		 "statements on %s wait for the rename",
		 op.epoch, shunt.cfg.table);
	fleet_beat_now();
	op_wait_acks();
}

/*
 * Before holding anyone: every live proxy acknowledged cutover (FORCE cannot skip it)
 * and the names are as the rename needs them.
 */
static const char finalize_check_sql[] =
	"SELECT coalesce((SELECT 'these proxies have not acknowledged cutover yet: ' || "
	"string_agg(p.proxy_id || ' (acked ' || coalesce(p.acked_epoch::text, 'nothing') || ')', "
	"', ' ORDER BY p.proxy_id) FROM pgshunt.proxies p, pgshunt.state s WHERE p.lease_until > "
	"now() AND coalesce(p.acked_epoch, 0) < s.epoch), CASE WHEN to_regclass($1) IS NULL THEN "
	"'table ' || $1 || ' does not exist' WHEN to_regclass($2) IS NULL THEN 'next_table ' || "
	"$2 || ' does not exist' WHEN (SELECT to_regclass(format('%I.%I', n.nspname, c.relname "
	"|| '_old')) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = "
	"to_regclass($1)) IS NOT NULL THEN $1 || '_old already exists: the old table cannot take "
	"that name' WHEN (SELECT octet_length(relname) FROM pg_class WHERE oid = to_regclass($1)) "
	"> 59 THEN 'the name ' || $1 || '_old would be longer than 63 bytes' END)";

static void finalize_begin(void);

static void on_finalize_checked(const PGresult *res, void *arg)
{
	(void)arg;
	if (!control_ok(res) || PQntuples(res) != 1) {
		op_finish(control_sqlstate(res), "checking the preconditions of finalized failed: %s",
			  control_message(res));
		return;
	}
	if (!PQgetisnull(res, 0, 0)) {
		op_finish(NOT_IN_STATE, "cannot enter finalized: %s%s", PQgetvalue(res, 0, 0),
			  op.force ? " (FORCE does not skip this)" : "");
		return;
	}
	finalize_begin();
}

static void finalize_check(void)
{
	const char *params[] = {shunt.cfg.table, shunt.cfg.next_table};
	if (op.force)
		log_warning("SET PHASE finalized FORCE: nothing to skip, the fleet and the names "
			    "are checked all the same");
	if (!control_query(finalize_check_sql, 2, params, on_finalize_checked, &op))
		op_finish("53200", "out of memory");
}

static void finalize_begin(void)
{
	char by[160], secs[16];
	op_by(by, sizeof(by));
	snprintf(secs, sizeof(secs), "%d", (FINALIZE_HOLD_MS + FINALIZE_HOLD_SLACK_MS) / 1000);
	const char *params[] = {secs, by};
	if (!control_query("SELECT pgshunt.set_hold($1::int, $2)", 2, params, on_hold_set, &op))
		op_finish("53200", "out of memory");
}

static void op_write(void)
{
	char by[160];
	if (op.by)
		snprintf(by, sizeof(by), "%s", op.by);
	else
		snprintf(by, sizeof(by), "pgshunt console (%s)", op.s ? op.s->prefix : "gone");
	const char *params[] = {phase_name(op.to), op.degraded ? "true" : "false",
				op.force ? "true" : "false", by, op.tag};
	if (!control_query("SELECT pgshunt.set_phase($1, $2::boolean, $3::boolean, $4, $5)", 5,
			   params, on_set_done, &op))
		op_finish("53200", "out of memory");
}

/* Data preconditions of the target phase (SPEC §2); FORCE skips them. */
static const char *const precondition_sql[PHASE__COUNT] = {
	[PHASE_DUAL_WRITE] = "SELECT CASE WHEN to_regclass($1) IS NULL THEN 'next_table ' || $1 "
			     "|| ' does not exist: run MIGRATE PREPARE' WHEN to_regclass($2) IS "
			     "NULL THEN 'buffer_table ' || $2 || ' does not exist: run MIGRATE "
			     "PREPARE' END",
	[PHASE_READ_NEXT] = "SELECT CASE WHEN coalesce((SELECT state FROM pgshunt.jobs WHERE name "
			    "= 'backfill'), '') <> 'done' THEN 'the backfill has not completed' "
			    "WHEN coalesce((SELECT state FROM pgshunt.jobs WHERE name = 'verify'), "
			    "'') <> 'clean' THEN 'the last VERIFY is not clean' END",
};

static void on_preconditions(const PGresult *res, void *arg)
{
	(void)arg;
	if (!control_ok(res)) {
		op_finish(control_sqlstate(res), "checking preconditions failed: %s",
			  control_message(res));
		return;
	}
	if (PQntuples(res) == 1 && !PQgetisnull(res, 0, 0)) {
		op_finish(NOT_IN_STATE, "cannot enter %s: %s (SET PHASE %s FORCE skips this check)",
			  phase_name(op.to), PQgetvalue(res, 0, 0), phase_name(op.to));
		return;
	}
	op_write();
}

static void op_check_preconditions(void)
{
	const char *sql = op.force ? NULL : precondition_sql[op.to];
	const char *params[] = {shunt.cfg.next_table, shunt.cfg.buffer_table};
	if (!sql || op.to < shunt.phase.phase) {
		op_write();
		return;
	}
	int nparams = strstr(sql, "$1") ? 2 : 0; /* only dual_write's check names the tables */
	if (!control_query(sql, nparams, nparams ? params : NULL, on_preconditions, &op))
		op_finish("53200", "out of memory");
}

static void on_current_state(const PGresult *res, void *arg)
{
	(void)arg;
	if (is_missing_schema(res)) {
		op_finish(NOT_IN_STATE, "the pgshunt control schema does not exist: run MIGRATE "
					"PREPARE first");
		return;
	}
	if (!apply_state(res)) {
		op_finish(control_sqlstate(res), "reading the phase failed: %s",
			  control_message(res));
		return;
	}
	/* What the database says wins: DEGRADED keeps its phase, SET PHASE its flag. */
	if (op.set_phase)
		op.degraded = shunt.phase.degraded;
	else
		op.to = shunt.phase.phase;
	/*
	 * Finalized again: the rename committed with the phase, but the proxy that did it
	 * may have died before the fleet acknowledged; wait for that, never rename twice.
	 */
	if (op.set_phase && op.to == PHASE_FINALIZED && shunt.phase.phase == PHASE_FINALIZED) {
		log_info("SET PHASE finalized: already finalized (epoch %" PRIu64 "), waiting for "
			 "the fleet's acknowledgements only",
			 shunt.phase.epoch);
		op.epoch = shunt.phase.epoch;
		op.waited_ms = 0;
		op_wait_acks();
		return;
	}
	/* DEGRADED keeps the phase; SET PHASE must move it by one step. */
	const char *why = op.set_phase ? phase_move_refusal(shunt.phase.phase, op.to) : NULL;
	if (why) {
		op_finish(NOT_IN_STATE, "cannot move from %s to %s: %s",
			  phase_name(shunt.phase.phase), phase_name(op.to), why);
		return;
	}
	why = rules_unservable(op.to, op.degraded);
	if (why) {
		op_finish("0A000", "this pgshunt cannot serve %s%s yet: %s", phase_name(op.to),
			  op.degraded ? " with DEGRADED on" : "", why);
		return;
	}
	if (op.set_phase && op.to == PHASE_FINALIZED) {
		finalize_check();
		return;
	}
	op_check_preconditions();
}

static bool op_begin(struct session *s, struct admin_result *r, const char *tag, enum phase to,
		     bool degraded, bool force)
{
	if (!control_available()) {
		admin_res_error(r, NOT_IN_STATE, "control_dsn is not set: pgshunt has no "
						 "connection to keep the phase in");
		return false;
	}
	if (op.busy) {
		admin_res_error(r, OBJECT_IN_USE, "another SET PHASE or DEGRADED is in progress");
		return false;
	}
	op.busy = true;
	op.s = s;
	op.by = NULL;
	op.done = NULL;
	op.tag = tag;
	op.set_phase = strcmp(tag, "SET PHASE") == 0;
	op.to = to;
	op.degraded = degraded;
	op.force = force;
	fin.holding = false;
	if (!control_query(STATE_SQL, 0, NULL, on_current_state, &op)) {
		op.busy = false;
		admin_res_error(r, "53200", "out of memory");
		return false;
	}
	r->deferred = true;
	return true;
}

bool migrate_cmd_set_phase(struct session *s, struct admin_result *r, const char *args)
{
	char name[32] = "", extra[32] = "", junk[2] = "";
	enum phase to;
	int n = sscanf(args, "%31s %31s %1s", name, extra, junk);
	if (n < 1 || n > 2 || (n == 2 && strcasecmp(extra, "FORCE") != 0) ||
	    !phase_parse(name, &to)) {
		admin_res_error(r, "42601", "usage: SET PHASE passthrough|dual_write|read_next|"
					    "cutover|finalized [FORCE]");
		return false;
	}
	/* DEGRADED is re-read with the phase, under the same lock-free single change. */
	return op_begin(s, r, "SET PHASE", to, shunt.phase.degraded, n == 2);
}

bool migrate_cmd_degraded(struct session *s, struct admin_result *r, const char *args)
{
	char word[8] = "", junk[2] = "";
	int n = sscanf(args, "%7s %1s", word, junk);
	bool on = strcasecmp(word, "ON") == 0;
	if (n != 1 || (!on && strcasecmp(word, "OFF") != 0)) {
		admin_res_error(r, "42601", "usage: DEGRADED ON|OFF");
		return false;
	}
	return op_begin(s, r, "DEGRADED", shunt.phase.phase, on, false);
}

bool migrate_set_degraded(bool on, const char *by, migrate_done_cb done)
{
	if (!control_available() || op.busy)
		return false;
	op = (__typeof__(op)){.busy = true, .tag = "DEGRADED", .to = shunt.phase.phase,
			      .degraded = on, .by = by, .done = done};
	if (!control_query(STATE_SQL, 0, NULL, on_current_state, &op)) {
		op.busy = false;
		return false;
	}
	return true;
}

/* ---- MIGRATE PREPARE ---- */

static void on_prepared(const PGresult *res, void *arg)
{
	struct session *s = arg;
	prepare_session = NULL;
	if (!control_ok(res)) {
		admin_deferred_done(s, NULL, control_sqlstate(res), control_message(res));
		return;
	}
	for (int i = 0; i < PQntuples(res); i++) {
		const char *v[] = {PQgetvalue(res, i, 0), PQgetvalue(res, i, 1)};
		admin_row(s, 2, v);
	}
	log_info("MIGRATE PREPARE done (%d steps)", PQntuples(res));
	shunt.relmap.loaded = false;
	migrate_load_phase();
	admin_deferred_done(s, "MIGRATE PREPARE", NULL, NULL);
}

static void on_installed(const PGresult *res, void *arg)
{
	struct session *s = arg;
	if (!control_ok(res)) {
		prepare_session = NULL;
		admin_deferred_done(s, NULL, control_sqlstate(res), control_message(res));
		return;
	}
	char premake[16];
	snprintf(premake, sizeof(premake), "%d", shunt.cfg.partition_premake);
	const char *interval = shunt.cfg.partition_interval == PARTITION_DAY    ? "day"
			       : shunt.cfg.partition_interval == PARTITION_WEEK ? "week"
										: "month";
	const char *params[] = {shunt.cfg.table,        shunt.cfg.next_table,
				shunt.cfg.buffer_table, shunt.cfg.partition_column,
				interval,               premake,
				shunt.cfg.key_columns};
	if (!control_query("SELECT step, detail FROM pgshunt.migrate_prepare($1::regclass, $2, $3, "
			   "$4::name, $5, $6::int, string_to_array(replace($7, ' ', ''), "
			   "',')::name[])",
			   7, params, on_prepared, s)) {
		prepare_session = NULL;
		admin_deferred_done(s, NULL, "53200", "out of memory");
	}
}

bool migrate_cmd_prepare(struct session *s, struct admin_result *r, const char *args)
{
	(void)args;
	if (!control_available()) {
		admin_res_error(r, NOT_IN_STATE, "control_dsn is not set: MIGRATE PREPARE needs "
						 "pgshunt's own connection");
		return false;
	}
	if (prepare_session) {
		admin_res_error(r, OBJECT_IN_USE, "MIGRATE PREPARE is already running");
		return false;
	}
	/* The scripts are idempotent; one simple-protocol round trip installs them. */
	size_t len = strlen(sql_schema) + strlen(sql_prepare) + strlen(sql_jobs) + 3;
	char *sql = malloc(len);
	if (!sql) {
		admin_res_error(r, "53200", "out of memory");
		return false;
	}
	snprintf(sql, len, "%s\n%s\n%s", sql_schema, sql_prepare, sql_jobs);
	bool queued = control_query(sql, 0, NULL, on_installed, s);
	free(sql);
	if (!queued) {
		admin_res_error(r, "53200", "out of memory");
		return false;
	}
	prepare_session = s;
	r->deferred = true;
	return true;
}

/* ---- SHOW PREFLIGHT: what a proxy cannot see ---- */

/*
 * Everything that reads or writes the table without passing through a pgshunt:
 * views and rules, functions whose bodies name it, triggers, foreign keys,
 * publications, and sessions that hold a lock on it or run a statement naming it and
 * are not this pgshunt's (its sessions' backends and its control connection).
 */
static const char preflight_sql[] =
	"WITH t AS (SELECT $1::regclass AS oid, (SELECT relname FROM pg_class WHERE oid = "
	"$1::regclass) AS name), mine AS (SELECT unnest($2::int[]) AS pid) "
	"SELECT 'view', v.oid::regclass::text, 'its definition reads the table' "
	"FROM t, pg_depend d JOIN pg_rewrite r ON r.oid = d.objid JOIN pg_class v ON v.oid = "
	"r.ev_class WHERE d.classid = 'pg_rewrite'::regclass AND d.refobjid = t.oid AND v.oid "
	"<> t.oid GROUP BY v.oid "
	"UNION ALL SELECT 'function', p.oid::regprocedure::text, 'its body names the table' "
	"FROM t, pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname NOT IN "
	"('pg_catalog', 'information_schema', 'pgshunt') AND p.prosrc ILIKE '%' || t.name || '%' "
	"UNION ALL SELECT 'trigger', g.tgname || ' on ' || g.tgrelid::regclass::text, "
	"pg_get_triggerdef(g.oid) FROM t, pg_trigger g WHERE g.tgrelid = t.oid AND NOT "
	"g.tgisinternal "
	"UNION ALL SELECT 'foreign key', c.conname || ' on ' || c.conrelid::regclass::text, "
	"pg_get_constraintdef(c.oid) FROM t, pg_constraint c WHERE c.contype = 'f' AND "
	"(c.conrelid = t.oid OR c.confrelid = t.oid) "
	"UNION ALL SELECT 'publication', p.pubname, CASE WHEN p.puballtables THEN 'publishes "
	"all tables' ELSE 'publishes the table' END FROM t, pg_publication p WHERE p.puballtables "
	"OR EXISTS (SELECT 1 FROM pg_publication_rel pr WHERE pr.prpubid = p.oid AND pr.prrelid = "
	"t.oid) "
	"UNION ALL SELECT 'session', a.pid::text, format('%s@%s from %s (%s), %s: %s', a.usename, "
	"a.datname, coalesce(a.client_addr::text, 'local'), a.application_name, a.state, "
	"left(regexp_replace(a.query, '\\s+', ' ', 'g'), 120)) FROM t, pg_stat_activity a WHERE "
	"a.datname = current_database() AND a.pid <> pg_backend_pid() AND a.pid NOT IN (SELECT "
	"pid FROM mine) AND (a.query ILIKE '%' || t.name || '%' OR EXISTS (SELECT 1 FROM "
	"pg_locks l WHERE l.pid = a.pid AND l.relation = t.oid))";

static void on_preflight(const PGresult *res, void *arg)
{
	struct session *s = arg;
	if (!control_ok(res)) {
		admin_deferred_done(s, NULL, control_sqlstate(res), control_message(res));
		return;
	}
	for (int i = 0; i < PQntuples(res); i++) {
		const char *v[] = {PQgetvalue(res, i, 0), PQgetvalue(res, i, 1), PQgetvalue(res, i, 2)};
		admin_row(s, 3, v);
	}
	admin_deferred_done(s, "SHOW", NULL, NULL);
}

/* '{pid,pid,...}': the backends of this pgshunt's sessions, which it can see. */
static char *own_backends(void)
{
	size_t cap = 64, len = 0;
	char *list = malloc(cap);
	if (!list)
		return NULL;
	list[len++] = '{';
	for (struct session *t = session_first(); t; t = session_next(t)) {
		if (!t->server_pid || t->state != SS_ACTIVE)
			continue;
		if (len + 16 > cap) {
			char *grown = realloc(list, cap *= 2);
			if (!grown) {
				free(list);
				return NULL;
			}
			list = grown;
		}
		len += (size_t)snprintf(list + len, cap - len, "%s%u", len > 1 ? "," : "", t->server_pid);
	}
	snprintf(list + len, cap - len, "}");
	return list;
}

bool migrate_cmd_preflight(struct session *s, struct admin_result *r, const char *args)
{
	(void)args;
	if (!control_available()) {
		admin_res_error(r, NOT_IN_STATE, "control_dsn is not set: SHOW PREFLIGHT needs "
						 "pgshunt's own connection");
		return false;
	}
	char *pids = own_backends();
	const char *params[] = {shunt.cfg.table, pids};
	bool queued = pids && control_query(preflight_sql, 2, params, on_preflight, s);
	free(pids);
	if (!queued) {
		admin_res_error(r, "53200", "out of memory");
		return false;
	}
	r->deferred = true;
	return true;
}
