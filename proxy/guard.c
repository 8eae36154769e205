#include "proxy/guard.h"

#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "proxy/control.h"
#include "proxy/log.h"
#include "proxy/pgshunt.h"
#include "proxy/session.h"

#define GUARD_RETRY_S   5
#define GUARD_RECHECK_S 30

/*
 * The functions, (re)defined under the installer's advisory lock so that several
 * proxies doing it at once do not collide.  guard_sync() takes the tables' names as
 * text (they may not exist yet, or any more after finalized) and waits at most 1 s
 * for the lock CREATE TRIGGER needs: it is retried rather than left queued in front
 * of the application's writes.
 */
static const char install_sql[] =
    "DO $guard$ BEGIN "
    "PERFORM pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtextextended('pgshunt:install', 0)); "
    "CREATE OR REPLACE FUNCTION pgshunt.guard_direct_write() RETURNS trigger LANGUAGE plpgsql "
    "AS $f$ BEGIN "
    "IF coalesce(pg_catalog.current_setting('" GUARD_SETTING "', true), '') <> '" GUARD_VALUE "' "
    "THEN RAISE EXCEPTION 'pgshunt guard: % on %.% refused: during the migration this table is "
    "written through pgshunt only', TG_OP, TG_TABLE_SCHEMA, TG_TABLE_NAME USING ERRCODE = "
    "'insufficient_privilege', HINT = 'Connect through pgshunt. pgshunt''s own jobs "
    "set " GUARD_SETTING " = " GUARD_VALUE "; guard_direct_writes = off removes this guard.'; "
    "END IF; RETURN NULL; END $f$; "
    "CREATE OR REPLACE FUNCTION pgshunt.guard_sync(p_on boolean, p_tables text[]) RETURNS "
    "integer LANGUAGE plpgsql SET search_path = pg_catalog, pgshunt AS $f$ "
    "DECLARE t text; r regclass; n integer := 0; BEGIN "
    "PERFORM pg_advisory_xact_lock(hashtextextended('pgshunt:guard', 0)); "
    "PERFORM set_config('lock_timeout', '1s', true); "
    "FOREACH t IN ARRAY p_tables LOOP r := to_regclass(t); CONTINUE WHEN r IS NULL; "
    "IF p_on AND NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = r AND tgname = "
    "'" GUARD_TRIGGER "') THEN EXECUTE format('CREATE TRIGGER " GUARD_TRIGGER " BEFORE INSERT OR "
    "UPDATE OR DELETE OR TRUNCATE ON %s FOR EACH STATEMENT EXECUTE FUNCTION "
    "pgshunt.guard_direct_write()', r); n := n + 1; "
    "ELSIF NOT p_on AND EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = r AND tgname = "
    "'" GUARD_TRIGGER "') THEN EXECUTE format('DROP TRIGGER " GUARD_TRIGGER
    " ON %s', r); n := n + 1; "
    "END IF; END LOOP; RETURN n; END $f$; "
    "REVOKE ALL ON FUNCTION pgshunt.guard_sync(boolean, text[]) FROM PUBLIC; "
    "END $guard$";

static struct {
	bool busy;
	bool synced;  /* the triggers match `applied` as of `epoch` */
	bool applied; /* on or off, as last installed */
	bool started; /* the first tick has run */
	bool was_on;  /* the key was on at the last tick */
	bool remove;  /* the key is off and triggers may be left: remove them once */
	uint64_t epoch;
	uint64_t synced_us; /* when the triggers were last checked */
	uint64_t retry_at_us;
} guard;

static void on_synced(const PGresult *res, void *arg)
{
	bool *on = arg;
	guard.busy = false;
	if (!control_ok(res)) {
		log_warning("guard_direct_writes: %s the triggers failed: %s; retrying in %d s",
		            *on ? "installing" : "removing", control_message(res), GUARD_RETRY_S);
		guard.retry_at_us = now_us() + GUARD_RETRY_S * 1000000u;
		return;
	}
	if (PQntuples(res) == 1 && atoi(PQgetvalue(res, 0, 0)) > 0)
		log_warning("guard_direct_writes: %s on %s, %s, %s (phase %s): writes that do not "
		            "come through pgshunt are %s",
		            *on ? "triggers installed" : "triggers removed", shunt.cfg.table,
		            shunt.cfg.next_table, shunt.cfg.buffer_table,
		            phase_name(shunt.phase.phase), *on ? "refused" : "accepted again");
	guard.synced = true;
	guard.applied = *on;
	guard.synced_us = now_us();
	if (!*on && !shunt.cfg.guard_direct_writes)
		guard.remove = false;
}

static void on_installed(const PGresult *res, void *arg)
{
	(void)arg;
	if (!control_ok(res)) {
		guard.busy = false;
		log_warning("guard_direct_writes: defining pgshunt.guard_sync() failed: %s",
		            control_message(res));
		guard.retry_at_us = now_us() + GUARD_RETRY_S * 1000000u;
	}
}

static void sync_now(bool on)
{
	static bool target;
	target = on;
	const char *params[] = {on ? "true" : "false", shunt.cfg.table, shunt.cfg.next_table,
	                        shunt.cfg.buffer_table};
	guard.epoch = shunt.phase.epoch;
	guard.busy = control_query(install_sql, 0, NULL, on_installed, &guard);
	if (guard.busy &&
	    !control_query("SELECT pgshunt.guard_sync($1::boolean, ARRAY[$2, $3, $4])", 4, params,
	                   on_synced, &target)) {
		guard.busy = false;
		log_warning("guard_direct_writes: out of memory");
	}
}

void guard_tick(void)
{
	bool key = shunt.cfg.guard_direct_writes;
	/*
	 * Off at start (triggers a previous run left) or turned off by a reload: remove
	 * them once.  On: install or remove them as the phase moves, and check again every
	 * GUARD_RECHECK_S, so that a proxy of a mixed fleet that removed them is undone.
	 */
	if (!guard.started || (guard.was_on && !key))
		guard.remove = !key;
	guard.started = true;
	guard.was_on = key;
	if (guard.busy || !control_connected() || !shunt.phase.known || !shunt.phase.installed ||
	    now_us() < guard.retry_at_us)
		return;
	if (!key) {
		if (guard.remove)
			sync_now(false);
		return;
	}
	bool on = shunt.phase.phase != PHASE_PASSTHROUGH;
	if (guard.synced && guard.applied == on && guard.epoch == shunt.phase.epoch &&
	    now_us() - guard.synced_us < GUARD_RECHECK_S * 1000000u)
		return;
	sync_now(on);
}

void guard_stop(void)
{
	guard.busy = false;
}
