#include "proxy/fleet.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "proxy/admin.h"
#include "proxy/control.h"
#include "proxy/latency.h"
#include "proxy/jobs.h"
#include "proxy/log.h"
#include "proxy/migrate.h"
#include "proxy/pgshunt.h"
#include "proxy/session.h"
#include "proxy/workers.h"

#ifndef PGSHUNT_VERSION
#define PGSHUNT_VERSION "0.0.0"
#endif

const char *const fleet_proxies_columns[] = {"proxy_id",    "host",        "pid",
					     "version",     "acked_epoch", "inflight",
					     "heartbeat_at", "lease_until", "alive", NULL};

static struct {
	struct event *timer;
	bool beating;       /* a heartbeat is in flight: never two at once */
	bool registered;    /* the row exists (the schema was there at the last beat) */
	uint64_t last_acked;/* what the last heartbeat said, to beat early when it moves */
	int since_beat_ms;
	uint64_t beat_queued_us; /* when the heartbeat in flight was queued */
	uint64_t renewed_us;     /* when the last heartbeat that renewed the lease was queued:
				    the lease runs FLEET_LEASE_S from a moment after that */
	char id[300];
	char host[256];
} fleet;

const char *fleet_proxy_id(void)
{
	if (!fleet.id[0]) {
		if (gethostname(fleet.host, sizeof(fleet.host)) != 0)
			snprintf(fleet.host, sizeof(fleet.host), "unknown");
		fleet.host[sizeof(fleet.host) - 1] = '\0';
		snprintf(fleet.id, sizeof(fleet.id), "%s:%d:%d", fleet.host, shunt.cfg.listen_port,
			 (int)getpid());
	}
	return fleet.id;
}

uint64_t fleet_acked_epoch(uint32_t *inflight)
{
	uint64_t acked = shunt.phase.epoch;
	uint32_t busy = 0;
	for (const struct session *s = session_first(); s; s = session_next(s)) {
		if (s->state != SS_ACTIVE || session_quiet(s))
			continue;
		busy++;
		if (s->pin.known && s->pin.epoch < acked)
			acked = s->pin.epoch;
	}
	/* A job's batch runs under the epoch it started in, like a transaction. */
	uint64_t pinned = jobs_pinned_epoch();
	if (pinned && pinned < acked)
		acked = pinned;
	if (inflight)
		*inflight = busy;
	return acked;
}

static void on_beat(const PGresult *res, void *arg)
{
	(void)arg;
	fleet.beating = false;
	bool ok = control_ok(res);
	/* No control schema yet (before MIGRATE PREPARE): nothing to register in. */
	if (!ok && res && strcmp(control_sqlstate(res), "42P01") != 0 &&
	    strcmp(control_sqlstate(res), "3F000") != 0)
		log_warning("heartbeat failed: %s", control_message(res));
	if (ok && !fleet.registered)
		log_info("registered in pgshunt.proxies as %s", fleet_proxy_id());
	fleet.registered = ok;
	if (ok)
		fleet.renewed_us = fleet.beat_queued_us;
}

static void beat(void)
{
	char pid[16], epoch[24], busy[16], lease[16], p99[32];
	uint32_t inflight;
	/*
	 * A lease about to lapse makes the phase unknown: the beat that renews it goes on.
	 * No schema, no pgshunt.proxies: a beat would only be an error in the server's log.
	 */
	if (fleet.beating || !shunt.phase.installed || !control_connected())
		return;
	snprintf(pid, sizeof(pid), "%d", (int)getpid());
	fleet.last_acked = fleet_acked_epoch(&inflight);
	fleet.since_beat_ms = 0;
	fleet.beat_queued_us = now_us();
	snprintf(epoch, sizeof(epoch), "%" PRIu64, fleet.last_acked);
	snprintf(busy, sizeof(busy), "%u", inflight);
	snprintf(lease, sizeof(lease), "%d", FLEET_LEASE_S);
	/* The fleet's p99 is read from these (auto-DEGRADED, SHOW THRESHOLDS); NULL: no insert. */
	double ms;
	uint64_t samples;
	if (latency_p99(&ms, &samples))
		snprintf(p99, sizeof(p99), "%.3f", ms);
	const char *params[] = {fleet_proxy_id(), fleet.host, pid, PGSHUNT_VERSION,
				epoch, busy, lease, samples ? p99 : NULL};
	fleet.beating = control_query(
		"INSERT INTO pgshunt.proxies AS p (proxy_id, host, pid, version, acked_epoch, "
		"inflight, heartbeat_at, lease_until, insert_p99_ms) VALUES ($1, $2, $3::int, $4, "
		"$5::bigint, $6::int, now(), now() + make_interval(secs => $7::int), $8::float8) ON "
		"CONFLICT (proxy_id) DO UPDATE SET acked_epoch = excluded.acked_epoch, inflight = "
		"excluded.inflight, heartbeat_at = excluded.heartbeat_at, lease_until = "
		"excluded.lease_until, insert_p99_ms = excluded.insert_p99_ms",
		8, params, on_beat, &fleet);
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
	WORLD_HELD();
	(void)fd;
	(void)what;
	(void)arg;
	if (!control_available())
		return;
	/*
	 * I7: a proxy that has not read the phase for a lease's length may be serving a
	 * stale one; it stops (holds new table statements) until it reads it again.
	 */
	if (shunt.phase.known && now_us() - shunt.phase_read_us > (uint64_t)FLEET_LEASE_S * 1000000u) {
		shunt.phase.known = false;
		log_error("the phase was not read for %d s (lease lost): holding statements on %s "
			  "until it is",
			  FLEET_LEASE_S, shunt.cfg.table);
	}
	if (shunt.phase.known && !fleet_lease_ok()) {
		shunt.phase.known = false;
		log_error("the lease in pgshunt.proxies was not renewed for %d ms: holding "
			  "statements on %s until it is (the fleet stops waiting for this proxy "
			  "when it lapses)",
			  FLEET_LEASE_S * 1000 - FLEET_LEASE_MARGIN_MS, shunt.cfg.table);
	}
	migrate_load_phase();
	fleet.since_beat_ms += FLEET_TICK_MS;
	if (fleet.since_beat_ms >= FLEET_HEARTBEAT_MS || fleet_acked_epoch(NULL) != fleet.last_acked)
		beat();
}

bool fleet_lease_ok(void)
{
	/* Never renewed (no schema yet, or the first beat pending): nobody counts on it. */
	if (!fleet.renewed_us)
		return true;
	return now_us() - fleet.renewed_us <
	       (uint64_t)(FLEET_LEASE_S * 1000 - FLEET_LEASE_MARGIN_MS) * 1000u;
}

void fleet_beat_now(void)
{
	if (control_available())
		beat();
}

/* pgshunt.set_phase() notifies: read the phase now instead of at the next tick. */
static void on_phase_notify(const char *payload)
{
	(void)payload;
	migrate_load_phase();
}

void fleet_start(void)
{
	struct timeval tv = {0, FLEET_TICK_MS * 1000};
	if (!control_available())
		return;
	if (!control_listen("pgshunt_phase", on_phase_notify))
		log_warning("cannot LISTEN for phase changes: polling only");
	fleet_proxy_id();
	fleet.timer = event_new(shunt.base, -1, EV_PERSIST, on_tick, NULL);
	if (fleet.timer)
		event_add(fleet.timer, &tv);
}

void fleet_stop(void)
{
	if (fleet.timer)
		event_free(fleet.timer);
	fleet.timer = NULL;
	/* Leaving: the row goes, so nobody waits for this proxy's acks. */
	if (fleet.registered && control_connected()) {
		const char *params[] = {fleet_proxy_id()};
		if (!control_query("DELETE FROM pgshunt.proxies WHERE proxy_id = $1", 1, params, NULL,
				   NULL))
			log_warning("could not queue the removal of %s from pgshunt.proxies",
				    fleet_proxy_id());
	}
}

static void on_proxies(const PGresult *res, void *arg)
{
	struct session *s = arg;
	if (!control_ok(res)) {
		admin_deferred_done(s, NULL, control_sqlstate(res), control_message(res));
		return;
	}
	for (int i = 0; i < PQntuples(res); i++) {
		const char *v[9];
		for (int c = 0; c < 9; c++)
			v[c] = PQgetisnull(res, i, c) ? NULL : PQgetvalue(res, i, c);
		admin_row(s, 9, v);
	}
	admin_deferred_done(s, "SHOW", NULL, NULL);
}

bool fleet_cmd_show_proxies(struct session *s, struct admin_result *r, const char *args)
{
	(void)args;
	if (!control_available()) {
		admin_res_error(r, "55000", "control_dsn is not set: there is no fleet to show");
		return false;
	}
	if (!control_query("SELECT proxy_id, host, pid::text, version, acked_epoch::text, "
			   "inflight::text, heartbeat_at::text, lease_until::text, CASE WHEN "
			   "lease_until > now() THEN 'yes' ELSE 'no' END FROM pgshunt.proxies "
			   "ORDER BY proxy_id",
			   0, NULL, on_proxies, s)) {
		admin_res_error(r, "53200", "out of memory");
		return false;
	}
	r->deferred = true;
	return true;
}
