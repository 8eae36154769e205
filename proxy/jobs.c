#include "proxy/jobs.h"

#include <ctype.h>
#include <inttypes.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "proxy/admin.h"
#include "proxy/control.h"
#include "proxy/fleet.h"
#include "proxy/guard.h"
#include "proxy/log.h"
#include "proxy/migrate.h"
#include "proxy/pgshunt.h"
#include "proxy/pqevent.h"
#include "proxy/session.h"
#include "proxy/workers.h"

#define NOT_IN_STATE           "55000"
#define OBJECT_IN_USE          "55006"
#define OUT_OF_MEMORY          "53200"
#define RETRY_ERROR_MS         5000 /* after a batch failed (the job's lock is kept) */
#define RETRY_TRANSIENT_MS     100  /* after a deadlock or a lock timeout */
#define IDLE_POLL_MS           1000 /* a drain with an empty buffer looks again after this */
#define STALE_RETRY_MS         50   /* the phase moved under a batch: read it, go again */
#define VERIFY_POLL_MS         200  /* VERIFY waiting for its result */
#define THROTTLE_CATCH_UP_US   250000u
#define MAX_VERIFY_WAITERS     8
#define PARTITION_LOCK_TIMEOUT "500ms"

const char *const jobs_backfill_columns[] = {
    "state",    "rows_done", "rows_total", "percent",    "rows_per_sec", "eta", "cursor",
    "inserted", "runner",    "started_at", "updated_at", "error",        NULL};
const char *const jobs_verify_columns[] = {
    "state",  "keys_checked", "rows_old",   "rows_next",  "differences", "first_differences",
    "cursor", "runner",       "started_at", "updated_at", "error",       NULL};
const char *const jobs_verify_result_columns[] = {
    "state", "keys_checked", "rows_old", "rows_next", "differences", "first_differences", NULL};
const char *const jobs_drain_columns[] = {
    "state",   "buffered",     "drained", "inserted", "duplicates", "ledgered", "skipped",
    "updated", "rows_per_sec", "eta",     "runner",   "updated_at", "error",    NULL};
const char *const jobs_partitions_columns[] = {"table",    "partition", "from",  "to",
                                               "est_rows", "size",      "bytes", NULL};
const char *const jobs_maintain_columns[] = {"action", "partition", "detail", NULL};

/* ---- one job: its connection, its lock, its schedule ---- */

enum jconn_state {
	JC_DOWN,
	JC_CONNECTING,
	JC_IDLE,
	JC_SENDING,
	JC_WAITING,
};

struct job;
/* res NULL: the connection was lost (and the job's lock with it). */
typedef void (*job_cb)(struct job *j, const PGresult *res);

struct job {
	const char *name;                  /* the pgshunt.jobs row; also the lock's name */
	bool exclusive;                    /* runs under the job's advisory lock */
	bool (*send_batch)(struct job *j); /* queue the next batch; false when it could not */
	const int *rate;                   /* rows/s from the config (0 or NULL: unthrottled) */
	const int *batch_rows;             /* rows a batch asks for, from the config */
	bool waits_for_rows;               /* a short batch means nothing to do yet (the drain) */
	PGconn *conn;
	enum jconn_state cstate;
	struct event *io;
	struct event *timer; /* the next batch (or retry) */
	struct event *kick;  /* sends a queued query from the loop, never from its caller */
	char *sql;           /* the query waiting for the connection, or in flight */
	char *params[8];
	int nparams;
	job_cb cb;             /* NULL: no query pending or in flight */
	PGresult *result;      /* the answer being gathered: first error or last result */
	bool held;             /* the lock is held on conn: this proxy runs the job */
	bool claiming;         /* job_claim() is in flight */
	uint64_t pinned_epoch; /* nonzero while a writing batch is in flight */
	uint64_t base_us;      /* throttle: rows since base_us are due at the set rate */
	uint64_t rows_since_base;
	uint64_t rows_here;        /* rows this proxy ran since it took the job */
	uint64_t log_us, log_rows; /* the last progress line */
	bool backing_off;          /* backfill: insert latency is above the limit */
	struct session *console;   /* PARTITIONS MAINTAIN waiting for its rows */
};

static bool backfill_send(struct job *j);
static bool verify_send(struct job *j);
static bool drain_send(struct job *j);

static struct job jobs[] = {
    {.name = "backfill",
     .exclusive = true,
     .send_batch = backfill_send,
     .rate = &shunt.cfg.backfill_max_rows_per_sec,
     .batch_rows = &shunt.cfg.backfill_batch_rows},
    {.name = "verify", .exclusive = true, .send_batch = verify_send},
    {.name = "drain",
     .exclusive = true,
     .send_batch = drain_send,
     .rate = &shunt.cfg.drain_max_rows_per_sec,
     .batch_rows = &shunt.cfg.drain_batch_rows,
     .waits_for_rows = true},
    {.name = "partitions"},
    {.name = "partitions (console)"},
};
#define NJOBS              (sizeof(jobs) / sizeof(jobs[0]))
#define PARTITIONS         (&jobs[3]) /* the timer's upkeep */
#define PARTITIONS_CONSOLE (&jobs[4]) /* PARTITIONS MAINTAIN, which waits its turn */

static struct {
	struct event *tick;
	struct event *partitions_timer;
	bool polling;           /* the 'running' jobs query is in flight */
	uint64_t insert_p99_us; /* over the last tick, 0 when too few inserts */
	uint64_t insert_seen[STATS_DURATION_BUCKETS + 1];
	struct session *verify_waiters[MAX_VERIFY_WAITERS];
	struct event *verify_timer;
	bool verify_polling;
} js;

static void jc_drive(struct job *j);
static void job_schedule(struct job *j, uint64_t delay_ms);

static void jc_on_io(evutil_socket_t fd, short what, void *arg)
{
	WORLD_HELD();
	(void)fd;
	(void)what;
	jc_drive(arg);
}

static void jc_arm(struct job *j, short what)
{
	pqevent_arm(&j->io, j->conn, what, jc_on_io, j);
}

static void jc_clear_query(struct job *j)
{
	free(j->sql);
	j->sql = NULL;
	for (int i = 0; i < j->nparams; i++)
		free(j->params[i]);
	j->nparams = 0;
	j->cb = NULL;
}

/* Close the connection: the job's lock goes with it. */
static void jc_close(struct job *j)
{
	if (j->io)
		event_free(j->io);
	j->io = NULL;
	PQclear(j->result);
	j->result = NULL;
	if (j->conn)
		PQfinish(j->conn);
	j->conn = NULL;
	j->cstate = JC_DOWN;
	j->held = false;
	j->claiming = false;
	j->pinned_epoch = 0;
}

static void jc_lost(struct job *j, const char *why)
{
	job_cb cb = j->cb;
	if (j->held)
		log_error("job %s: connection lost (%s); the job is left to the next runner",
		          j->name, why);
	jc_close(j);
	jc_clear_query(j);
	if (cb)
		cb(j, NULL);
}

static void jc_finish(struct job *j)
{
	PGresult *res = j->result;
	job_cb cb = j->cb;
	j->result = NULL;
	j->cstate = JC_IDLE;
	jc_clear_query(j);
	if (cb)
		cb(j, res);
	PQclear(res);
}

static void jc_results(struct job *j)
{
	if (!PQconsumeInput(j->conn)) {
		jc_lost(j, PQerrorMessage(j->conn));
		return;
	}
	while (!PQisBusy(j->conn)) {
		PGresult *res = PQgetResult(j->conn);
		if (!res) {
			jc_finish(j);
			return;
		}
		if (j->result && PQresultStatus(j->result) == PGRES_FATAL_ERROR) {
			PQclear(res);
			continue;
		}
		PQclear(j->result);
		j->result = res;
	}
	jc_arm(j, EV_READ);
}

static void jc_send(struct job *j)
{
	if (!PQsendQueryParams(j->conn, j->sql, j->nparams, NULL, (const char *const *)j->params,
	                       NULL, NULL, 0)) {
		jc_lost(j, PQerrorMessage(j->conn));
		return;
	}
	j->cstate = JC_SENDING;
	jc_drive(j);
}

static void jc_drive(struct job *j)
{
	switch (j->cstate) {
	case JC_DOWN:
		return;
	case JC_CONNECTING:
		switch (PQconnectPoll(j->conn)) {
		case PGRES_POLLING_READING:
			jc_arm(j, EV_READ);
			return;
		case PGRES_POLLING_WRITING:
			jc_arm(j, EV_WRITE);
			return;
		case PGRES_POLLING_OK:
			PQsetnonblocking(j->conn, 1);
			j->cstate = JC_IDLE;
			if (j->cb)
				jc_send(j);
			return;
		default:
			jc_lost(j, PQerrorMessage(j->conn));
			return;
		}
	case JC_IDLE:
		/* Nothing asked: read anyway, to notice a terminated backend. */
		if (j->cb) {
			jc_send(j);
		} else if (!PQconsumeInput(j->conn)) {
			jc_lost(j, PQerrorMessage(j->conn));
		} else {
			jc_arm(j, EV_READ);
		}
		return;
	case JC_SENDING: {
		int rc = PQflush(j->conn);
		if (rc < 0)
			jc_lost(j, PQerrorMessage(j->conn));
		else if (rc == 1)
			jc_arm(j, EV_WRITE);
		else {
			j->cstate = JC_WAITING;
			jc_results(j);
		}
		return;
	}
	case JC_WAITING:
		jc_results(j);
		return;
	}
}

/* Notices (a RAISE NOTICE, a skipped IF EXISTS) are not worth a log line above debug. */
static void jc_notice(void *arg, const char *message)
{
	const struct job *j = arg;
	log_debug("job %s: %s", j->name, message);
}

static bool jc_connect(struct job *j)
{
	/* The guard (guard_direct_writes) lets the jobs' writes through, as the clients'. */
	static const char *const keys[] = {"dbname", "application_name", "options", NULL};
	char appname[64];
	snprintf(appname, sizeof(appname), "pgshunt job %s", j->name);
	const char *values[] = {shunt.cfg.control_dsn, appname, GUARD_CONNINFO_OPTIONS, NULL};
	j->conn = PQconnectStartParams(keys, values, 1);
	if (!j->conn || PQstatus(j->conn) == CONNECTION_BAD) {
		log_warning("job %s: cannot connect: %s", j->name,
		            j->conn ? PQerrorMessage(j->conn) : "out of memory");
		if (j->conn)
			PQfinish(j->conn);
		j->conn = NULL;
		return false;
	}
	PQsetNoticeProcessor(j->conn, jc_notice, j);
	j->cstate = JC_CONNECTING;
	jc_drive(j);
	return true;
}

static void jc_on_kick(evutil_socket_t fd, short what, void *arg)
{
	WORLD_HELD();
	struct job *j = arg;
	(void)fd;
	(void)what;
	if (!j->cb)
		return;
	if (j->cstate == JC_DOWN && !jc_connect(j)) {
		job_cb cb = j->cb;
		jc_clear_query(j);
		cb(j, NULL);
	} else if (j->cstate == JC_IDLE) {
		jc_send(j);
	}
}

/*
 * Queue sql on the job's connection (connecting first when needed); one query at a
 * time.  It is sent from the loop, so cb never runs inside the caller.  False when it
 * could not be queued (cb is not called then).
 */
static bool jc_query(struct job *j, const char *sql, int nparams, const char *const *params,
                     job_cb cb)
{
	if (j->cb || nparams > 8)
		return false;
	if (!j->kick)
		j->kick = event_new(shunt.base, -1, 0, jc_on_kick, j);
	if (!j->kick)
		return false;
	j->sql = strdup(sql);
	bool ok = j->sql != NULL;
	for (int i = 0; i < nparams; i++) {
		j->params[i] = params[i] ? strdup(params[i]) : NULL;
		ok = ok && (!params[i] || j->params[i]);
	}
	j->nparams = nparams;
	if (!ok) {
		jc_clear_query(j);
		return false;
	}
	j->cb = cb;
	event_active(j->kick, 0, 0);
	return true;
}

/* ---- running a job here ---- */

static uint64_t elapsed_ms(uint64_t since_us)
{
	return (now_us() - since_us) / 1000;
}

/* The job is over here (ended, paused, or handed over): the connection and lock go. */
static void job_release(struct job *j, const char *state)
{
	if (j->held)
		log_info("job %s: %s; %" PRIu64 " rows run by this proxy", j->name, state,
		         j->rows_here);
	if (j->timer)
		evtimer_del(j->timer);
	jc_close(j);
}

static void on_job_timer(evutil_socket_t fd, short what, void *arg)
{
	WORLD_HELD();
	struct job *j = arg;
	(void)fd;
	(void)what;
	if (!j->held || j->cb)
		return;
	if (!j->send_batch(j)) {
		log_warning("job %s: could not send a batch; retrying", j->name);
		job_schedule(j, RETRY_ERROR_MS);
	}
}

static void job_schedule(struct job *j, uint64_t delay_ms)
{
	struct timeval tv = {(time_t)(delay_ms / 1000), (suseconds_t)((delay_ms % 1000) * 1000)};
	if (!j->timer)
		j->timer = evtimer_new(shunt.base, on_job_timer, j);
	if (j->timer)
		evtimer_add(j->timer, &tv);
}

/*
 * After a batch of rows: the next one starts when the rows run since base_us are due at
 * the configured rate, so the rate holds over many batches whatever each one took.
 */
static uint64_t throttle_delay_ms(struct job *j, uint64_t rows, int rate)
{
	uint64_t now = now_us();
	if (rate <= 0) {
		j->base_us = now;
		j->rows_since_base = 0;
		return 0;
	}
	j->rows_since_base += rows;
	uint64_t due = j->base_us + j->rows_since_base * 1000000u / (uint64_t)rate;
	if (due <= now) {
		/* Behind (a slow batch): catch up on a little, never burst. */
		if (now - due > THROTTLE_CATCH_UP_US) {
			j->base_us = now;
			j->rows_since_base = 0;
		}
		return 0;
	}
	return (due - now + 999) / 1000;
}

static void job_progress(struct job *j, uint64_t rows)
{
	j->rows_here += rows;
	if (elapsed_ms(j->log_us) < JOBS_PROGRESS_LOG_MS)
		return;
	uint64_t ms = elapsed_ms(j->log_us);
	log_info("job %s: %" PRIu64 " rows here so far, %.0f rows/s over the last %.1f s", j->name,
	         j->rows_here,
	         ms ? (double)(j->rows_here - j->log_rows) * 1000.0 / (double)ms : 0.0,
	         (double)ms / 1000.0);
	j->log_us = now_us();
	j->log_rows = j->rows_here;
}

static void on_failure_recorded(struct job *j, const PGresult *res)
{
	(void)res;
	if (j->held)
		job_schedule(j, RETRY_ERROR_MS);
}

/*
 * Deadlocks with the application's transactions (a drain inserting a key a client is
 * inserting too, a backfill share-locking a row a multi-row transaction updates) and
 * lock timeouts are the price of running beside it: the batch is simply run again.
 */
static bool transient(const char *sqlstate)
{
	return strcmp(sqlstate, "40P01") == 0 || strcmp(sqlstate, "40001") == 0 ||
	       strcmp(sqlstate, "55P03") == 0;
}

static void on_transient_recorded(struct job *j, const PGresult *res)
{
	(void)res;
	if (j->held)
		job_schedule(j, RETRY_TRANSIENT_MS);
}

/* A batch failed and rolled back: say so in its row, log it, try again later. */
static void job_batch_failed(struct job *j, const PGresult *res)
{
	const char *msg = control_message(res);
	const char *params[] = {j->name, msg};
	bool again = transient(control_sqlstate(res));
	if (again)
		log_warning("job %s: batch rolled back (%s): %s; running it again", j->name,
		            control_sqlstate(res), msg);
	else
		log_error("job %s: batch failed (%s): %s; retrying in %d s", j->name,
		          control_sqlstate(res), msg, RETRY_ERROR_MS / 1000);
	if (!jc_query(j, "SELECT pgshunt.job_failed($1, $2)", 2, params,
	              again ? on_transient_recorded : on_failure_recorded))
		job_schedule(j, again ? RETRY_TRANSIENT_MS : RETRY_ERROR_MS);
}

/* Every batch function answers (rows, state, ...). */
static void on_batch(struct job *j, const PGresult *res)
{
	j->pinned_epoch = 0;
	if (!res)
		return; /* connection lost: logged, the lock is gone, the tick re-claims */
	if (!control_ok(res) || PQntuples(res) != 1) {
		job_batch_failed(j, res);
		return;
	}
	uint64_t rows = strtoull(PQgetvalue(res, 0, 0), NULL, 10);
	const char *state = PQgetvalue(res, 0, 1);
	job_progress(j, rows);
	if (strcmp(state, "stale_epoch") == 0) {
		migrate_load_phase();
		job_schedule(j, STALE_RETRY_MS);
		return;
	}
	if (strcmp(state, "running") != 0) {
		job_release(j, state);
		return;
	}
	if (j->waits_for_rows && rows < (uint64_t)*j->batch_rows) {
		/* The buffer is (nearly) empty: look again later, and start the rate afresh. */
		j->base_us = now_us() + IDLE_POLL_MS * 1000u;
		j->rows_since_base = 0;
		job_schedule(j, IDLE_POLL_MS);
		return;
	}
	job_schedule(j, throttle_delay_ms(j, rows, j->rate ? *j->rate : 0));
}

static bool job_send_pinned(struct job *j, const char *sql, int n, const char *const *params)
{
	j->pinned_epoch = shunt.phase.epoch;
	if (jc_query(j, sql, n, params, on_batch))
		return true;
	j->pinned_epoch = 0;
	return false;
}

static bool backfill_send(struct job *j)
{
	char rows[16], epoch[24];
	if (!shunt.phase.known) {
		job_schedule(j, IDLE_POLL_MS);
		return true;
	}
	if (js.insert_p99_us > (uint64_t)JOBS_BACKFILL_P99_MS * 1000u) {
		if (!j->backing_off)
			log_warning("job backfill: backing off, p99 insert latency here is %" PRIu64
			            " ms (limit %d ms)",
			            js.insert_p99_us / 1000, JOBS_BACKFILL_P99_MS);
		j->backing_off = true;
		j->base_us = now_us();
		j->rows_since_base = 0;
		job_schedule(j, JOBS_TICK_MS);
		return true;
	}
	if (j->backing_off)
		log_info("job backfill: insert latency back under %d ms, going on",
		         JOBS_BACKFILL_P99_MS);
	j->backing_off = false;
	snprintf(rows, sizeof(rows), "%d", shunt.cfg.backfill_batch_rows);
	snprintf(epoch, sizeof(epoch), "%" PRIu64, shunt.phase.epoch);
	const char *params[] = {shunt.cfg.table, shunt.cfg.next_table, rows, epoch};
	return job_send_pinned(j,
	                       "SELECT rows_read, state FROM pgshunt.backfill_batch($1::regclass, "
	                       "$2::regclass, $3::int, $4::bigint)",
	                       4, params);
}

static bool verify_send(struct job *j)
{
	char rows[16];
	snprintf(rows, sizeof(rows), "%d", JOBS_VERIFY_CHUNK);
	const char *params[] = {shunt.cfg.table, shunt.cfg.next_table, rows};
	return jc_query(j,
	                "SELECT keys, state FROM pgshunt.verify_chunk($1::regclass, $2::regclass, "
	                "$3::int)",
	                3, params, on_batch);
}

static bool drain_send(struct job *j)
{
	char rows[16], epoch[24];
	if (!shunt.phase.known) {
		job_schedule(j, IDLE_POLL_MS);
		return true;
	}
	snprintf(rows, sizeof(rows), "%d", shunt.cfg.drain_batch_rows);
	snprintf(epoch, sizeof(epoch), "%" PRIu64, shunt.phase.epoch);
	const char *params[] = {shunt.cfg.table,
	                        shunt.cfg.next_table,
	                        shunt.cfg.buffer_table,
	                        shunt.cfg.key_columns,
	                        rows,
	                        epoch};
	return job_send_pinned(j,
	                       "SELECT claimed, state FROM pgshunt.drain_batch($1, $2, "
	                       "$3::regclass, string_to_array(replace($4, ' ', ''), ',')::name[], "
	                       "$5::int, $6::bigint)",
	                       6, params);
}

static void on_claimed(struct job *j, const PGresult *res)
{
	j->claiming = false;
	if (!res)
		return;
	if (!control_ok(res) || PQntuples(res) != 1 || PQgetvalue(res, 0, 0)[0] != 't') {
		/* Someone else runs it (or it ended): do not keep a connection for nothing. */
		if (!control_ok(res))
			log_warning("job %s: claiming failed: %s", j->name, control_message(res));
		jc_close(j);
		return;
	}
	j->held = true;
	j->rows_here = 0;
	j->log_rows = 0;
	j->log_us = now_us();
	j->base_us = now_us();
	j->rows_since_base = 0;
	j->backing_off = false;
	log_info("job %s: running here (resuming from its cursor if it has one)", j->name);
	job_schedule(j, 0);
}

static void job_claim(struct job *j)
{
	if (j->held || j->claiming || j->cb)
		return;
	const char *params[] = {j->name, fleet_proxy_id()};
	j->claiming = jc_query(j, "SELECT pgshunt.job_claim($1, $2)", 2, params, on_claimed);
}

/* ---- the tick: insert latency, and jobs to take over ---- */

/* p99 of this proxy's INSERT durations since the last tick (bucket upper bound). */
static void sample_insert_latency(void)
{
	uint64_t delta[STATS_DURATION_BUCKETS + 1], counts[STATS_DURATION_BUCKETS + 1], total = 0;
	stats_durations_total(STMT_INSERT, counts);
	for (int b = 0; b <= STATS_DURATION_BUCKETS; b++) {
		uint64_t now = counts[b];
		delta[b] = now - js.insert_seen[b];
		js.insert_seen[b] = now;
		total += delta[b];
	}
	js.insert_p99_us = 0;
	if (total < 20)
		return; /* too few to say anything */
	uint64_t want = total - total / 100, cum = 0;
	for (int b = 0; b <= STATS_DURATION_BUCKETS; b++) {
		cum += delta[b];
		if (cum >= want) {
			js.insert_p99_us = b < STATS_DURATION_BUCKETS ? stats_duration_bounds_us[b]
			                                              : UINT64_MAX / 2;
			return;
		}
	}
}

static void on_running_jobs(const PGresult *res, void *arg)
{
	(void)arg;
	js.polling = false;
	if (!control_ok(res))
		return; /* no schema yet, or the connection is down: next tick */
	for (int i = 0; i < PQntuples(res); i++)
		for (size_t k = 0; k < NJOBS; k++)
			if (jobs[k].exclusive && strcmp(jobs[k].name, PQgetvalue(res, i, 0)) == 0)
				job_claim(&jobs[k]);
}

static void jobs_poll(void)
{
	if (js.polling || !control_connected() || !shunt.phase.installed)
		return;
	js.polling = control_query("SELECT name FROM pgshunt.jobs WHERE state = 'running'", 0, NULL,
	                           on_running_jobs, &js);
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
	WORLD_HELD();
	(void)fd;
	(void)what;
	(void)arg;
	sample_insert_latency();
	jobs_poll();
}

static bool partitions_run(struct session *console);

static void on_partitions_timer(evutil_socket_t fd, short what, void *arg)
{
	WORLD_HELD();
	(void)fd;
	(void)what;
	(void)arg;
	struct timeval tv = {JOBS_PARTITIONS_EVERY_S, 0};
	if (shunt.phase.installed && !PARTITIONS->cb && !partitions_run(NULL))
		log_warning("partitions: could not queue the upkeep");
	evtimer_add(js.partitions_timer, &tv);
}

void jobs_start(void)
{
	struct timeval tick = {JOBS_TICK_MS / 1000, (JOBS_TICK_MS % 1000) * 1000};
	/* MIGRATE PREPARE made the partitions due then; the first upkeep can wait. */
	struct timeval first = {JOBS_PARTITIONS_FIRST_S, 0};
	if (!control_available())
		return;
	js.tick = event_new(shunt.base, -1, EV_PERSIST, on_tick, NULL);
	if (js.tick)
		event_add(js.tick, &tick);
	js.partitions_timer = evtimer_new(shunt.base, on_partitions_timer, NULL);
	if (js.partitions_timer)
		evtimer_add(js.partitions_timer, &first);
}

void jobs_stop(void)
{
	for (size_t k = 0; k < NJOBS; k++) {
		struct job *j = &jobs[k];
		if (j->held)
			log_info("job %s: stopping here; another proxy resumes it from its cursor",
			         j->name);
		if (j->timer)
			event_free(j->timer);
		if (j->kick)
			event_free(j->kick);
		j->timer = j->kick = NULL;
		jc_close(j);
		jc_clear_query(j);
		j->console = NULL;
	}
	if (js.tick)
		event_free(js.tick);
	if (js.partitions_timer)
		event_free(js.partitions_timer);
	if (js.verify_timer)
		event_free(js.verify_timer);
	js.tick = js.partitions_timer = js.verify_timer = NULL;
	memset(js.verify_waiters, 0, sizeof(js.verify_waiters));
}

uint64_t jobs_pinned_epoch(void)
{
	uint64_t oldest = 0;
	for (size_t k = 0; k < NJOBS; k++)
		if (jobs[k].pinned_epoch && (!oldest || jobs[k].pinned_epoch < oldest))
			oldest = jobs[k].pinned_epoch;
	return oldest;
}

void jobs_session_gone(struct session *s)
{
	for (int i = 0; i < MAX_VERIFY_WAITERS; i++)
		if (js.verify_waiters[i] == s)
			js.verify_waiters[i] = NULL;
	for (size_t k = 0; k < NJOBS; k++)
		if (jobs[k].console == s)
			jobs[k].console = NULL;
}

/* ---- console ---- */

bool jobs_parse_action(const char *args, const char *const *words, int *which)
{
	char word[16];
	size_t n = 0;
	if (!args)
		return false;
	while (isspace((unsigned char)*args))
		args++;
	while (args[n] && !isspace((unsigned char)args[n]) && n < sizeof(word) - 1) {
		word[n] = args[n];
		n++;
	}
	word[n] = '\0';
	const char *rest = args + n;
	while (isspace((unsigned char)*rest))
		rest++;
	if (n == 0 || *rest)
		return false;
	for (int i = 0; words[i]; i++) {
		if (strcasecmp(word, words[i]) == 0) {
			*which = i;
			return true;
		}
	}
	return false;
}

static bool need_control(struct admin_result *r, const char *what)
{
	if (control_available())
		return true;
	admin_res_error(r, NOT_IN_STATE,
	                "control_dsn is not set: %s needs pgshunt's own connection", what);
	return false;
}

static bool defer(struct admin_result *r, bool queued)
{
	if (!queued) {
		admin_res_error(r, OUT_OF_MEMORY, "out of memory");
		return false;
	}
	r->deferred = true;
	return true;
}

/* Commands answered by one control query: its rows, then the tag. */
static void on_rows(const PGresult *res, void *arg)
{
	struct session *s = arg;
	if (!control_ok(res)) {
		admin_deferred_done(s, NULL, control_sqlstate(res), control_message(res));
		return;
	}
	int cols = PQnfields(res);
	const char *v[16];
	for (int i = 0; i < PQntuples(res); i++) {
		for (int c = 0; c < cols && c < 16; c++)
			v[c] = PQgetisnull(res, i, c) ? NULL : PQgetvalue(res, i, c);
		admin_row(s, (size_t)(cols < 16 ? cols : 16), v);
	}
	admin_deferred_done(s, "SHOW", NULL, NULL);
}

static void on_control_done(const PGresult *res, void *arg)
{
	struct session *s = arg;
	if (!control_ok(res)) {
		admin_deferred_done(s, NULL, control_sqlstate(res), control_message(res));
		return;
	}
	if (PQntuples(res) == 1 && PQnfields(res) >= 1)
		slog(LOG_LEVEL_INFO, s->prefix, "%s", PQgetvalue(res, 0, 0));
	jobs_poll(); /* take a started job at once rather than at the next tick */
	const char *tag = PQntuples(res) == 1 && PQnfields(res) >= 2 ? PQgetvalue(res, 0, 1) : "OK";
	admin_deferred_done(s, tag, NULL, NULL);
}

bool jobs_cmd_backfill(struct session *s, struct admin_result *r, const char *args)
{
	static const char *const actions[] = {"START", "PAUSE", "RESUME", "CANCEL", NULL};
	int which;
	if (!jobs_parse_action(args, actions, &which)) {
		admin_res_error(r, "42601", "usage: BACKFILL START|PAUSE|RESUME|CANCEL");
		return false;
	}
	if (!need_control(r, "BACKFILL"))
		return false;
	const char *params[] = {shunt.cfg.table, actions[which], s->prefix};
	return defer(r, control_query("SELECT pgshunt.backfill_control($1::regclass, $2, $3), "
	                              "'BACKFILL ' || $2",
	                              3, params, on_control_done, s));
}

bool jobs_cmd_show_backfill(struct session *s, struct admin_result *r, const char *args)
{
	(void)args;
	if (!need_control(r, "SHOW BACKFILL"))
		return false;
	return defer(r,
	             control_query(
	                 "SELECT coalesce(state, 'idle'), rows_done::text, rows_total::text, CASE "
	                 "WHEN state IS NULL THEN NULL WHEN state = "
	                 "'done' THEN '100.0' WHEN rows_total > 0 THEN least(99.9, round(100.0 * "
	                 "rows_done / rows_total, 1))::text ELSE '0.0' END, cursor ->> 'rate', "
	                 "CASE WHEN state = 'running' AND (cursor ->> 'rate')::float8 > 0 THEN "
	                 "make_interval(secs => round(greatest(rows_total - rows_done, 0) / "
	                 "(cursor ->> 'rate')::float8))::text END, (cursor -> 'after')::text, "
	                 "cursor ->> 'inserted', runner, started_at::text, updated_at::text, error "
	                 "FROM (SELECT 1) AS one LEFT JOIN pgshunt.jobs ON name = 'backfill'",
	                 0, NULL, on_rows, s));
}

static const char verify_summary_sql[] =
    "SELECT state, rows_done::text, cursor ->> 'rows_old', cursor ->> 'rows_next', "
    "cursor ->> 'differences', (cursor -> 'first')::text FROM pgshunt.jobs WHERE name = "
    "'verify'";

bool jobs_cmd_show_verify(struct session *s, struct admin_result *r, const char *args)
{
	(void)args;
	if (!need_control(r, "SHOW VERIFY"))
		return false;
	return defer(r,
	             control_query("SELECT coalesce(state, 'idle'), rows_done::text, cursor ->> "
	                           "'rows_old', "
	                           "cursor ->> 'rows_next', cursor ->> 'differences', (cursor -> "
	                           "'first')::text, (cursor -> 'after')::text, runner, "
	                           "started_at::text, updated_at::text, error FROM (SELECT 1) AS "
	                           "one LEFT JOIN pgshunt.jobs ON name = 'verify'",
	                           0, NULL, on_rows, s));
}

static void verify_poll(void);

static void on_verify_timer(evutil_socket_t fd, short what, void *arg)
{
	WORLD_HELD();
	(void)fd;
	(void)what;
	(void)arg;
	verify_poll();
}

static bool verify_waiting(void)
{
	for (int i = 0; i < MAX_VERIFY_WAITERS; i++)
		if (js.verify_waiters[i])
			return true;
	return false;
}

static void verify_rearm(void)
{
	struct timeval tv = {0, VERIFY_POLL_MS * 1000};
	if (!js.verify_timer)
		js.verify_timer = evtimer_new(shunt.base, on_verify_timer, NULL);
	if (js.verify_timer && verify_waiting())
		evtimer_add(js.verify_timer, &tv);
}

/* Answer every VERIFY waiting, once the job has a result (or failed). */
static void on_verify_state(const PGresult *res, void *arg)
{
	(void)arg;
	js.verify_polling = false;
	bool ended = !control_ok(res) || PQntuples(res) != 1 ||
	             strcmp(PQgetvalue(res, 0, 0), "running") != 0;
	if (!ended) {
		verify_rearm();
		return;
	}
	for (int i = 0; i < MAX_VERIFY_WAITERS; i++) {
		struct session *s = js.verify_waiters[i];
		js.verify_waiters[i] = NULL;
		if (!s)
			continue;
		if (!control_ok(res) || PQntuples(res) != 1) {
			admin_deferred_done(s, NULL, control_sqlstate(res), control_message(res));
			continue;
		}
		const char *v[6];
		for (int c = 0; c < 6; c++)
			v[c] = PQgetisnull(res, 0, c) ? NULL : PQgetvalue(res, 0, c);
		admin_row(s, 6, v);
		admin_deferred_done(s, "VERIFY", NULL, NULL);
	}
}

static void verify_poll(void)
{
	if (js.verify_polling || !verify_waiting())
		return;
	js.verify_polling = control_query(verify_summary_sql, 0, NULL, on_verify_state, &js);
	if (!js.verify_polling)
		verify_rearm();
}

static void on_verify_started(const PGresult *res, void *arg)
{
	struct session *s = arg;
	if (!control_ok(res)) {
		admin_deferred_done(s, NULL, control_sqlstate(res), control_message(res));
		return;
	}
	for (int i = 0; i < MAX_VERIFY_WAITERS; i++) {
		if (!js.verify_waiters[i]) {
			js.verify_waiters[i] = s;
			jobs_poll();
			verify_rearm();
			return;
		}
	}
	admin_deferred_done(s, NULL, OBJECT_IN_USE, "too many consoles are waiting for VERIFY");
}

bool jobs_cmd_verify(struct session *s, struct admin_result *r, const char *args)
{
	(void)args;
	if (!need_control(r, "VERIFY"))
		return false;
	const char *params[] = {shunt.cfg.table, s->prefix};
	return defer(r, control_query("SELECT pgshunt.verify_start($1::regclass, $2)", 2, params,
	                              on_verify_started, s));
}

bool jobs_cmd_drain(struct session *s, struct admin_result *r, const char *args)
{
	static const char *const actions[] = {"START", "PAUSE", NULL};
	int which;
	if (!jobs_parse_action(args, actions, &which)) {
		admin_res_error(r, "42601", "usage: DRAIN START|PAUSE");
		return false;
	}
	if (!need_control(r, "DRAIN"))
		return false;
	const char *params[] = {actions[which], s->prefix};
	return defer(r, control_query("SELECT pgshunt.drain_control($1, $2), 'DRAIN ' || $1", 2,
	                              params, on_control_done, s));
}

bool jobs_cmd_show_drain(struct session *s, struct admin_result *r, const char *args)
{
	(void)args;
	if (!need_control(r, "SHOW DRAIN"))
		return false;
	const char *params[] = {shunt.cfg.buffer_table};
	return defer(
	    r, control_query(
	           "WITH j AS (SELECT * FROM pgshunt.jobs WHERE name = 'drain'), b AS (SELECT "
	           "pgshunt.job_count($1::regclass) AS n) SELECT "
	           "coalesce(j.state, 'idle'), b.n::text, coalesce(j.cursor ->> 'drained', '0'), "
	           "coalesce(j.cursor ->> 'inserted', '0'), coalesce(j.cursor ->> "
	           "'duplicates', '0'), coalesce(j.cursor ->> 'ledgered', '0'), "
	           "coalesce(j.cursor ->> 'skipped', '0'), coalesce(j.cursor ->> 'updated', "
	           "'0'), j.cursor ->> 'rate', CASE WHEN (j.cursor ->> 'rate')::float8 > 0 "
	           "THEN make_interval(secs => round(b.n / (j.cursor ->> "
	           "'rate')::float8))::text END, j.runner, j.updated_at::text, j.error FROM b "
	           "LEFT JOIN j ON true",
	           1, params, on_rows, s));
}

/* PARTITIONS MAINTAIN (console) and the timer: on the partitions job's connection. */
static const char *partition_parent(void)
{
	return shunt.phase.phase == PHASE_FINALIZED ? shunt.cfg.table : shunt.cfg.next_table;
}

static void on_maintained(struct job *j, const PGresult *res)
{
	struct session *s = j->console;
	j->console = NULL;
	if (control_ok(res)) {
		for (int i = 0; i < PQntuples(res); i++) {
			const char *v[] = {PQgetvalue(res, i, 0), PQgetvalue(res, i, 1),
			                   PQgetvalue(res, i, 2)};
			if (strcmp(v[0], "premake") != 0)
				log_info("partitions: %s %s: %s", v[0], v[1], v[2]);
			if (s)
				admin_row(s, 3, v);
		}
	} else {
		log_warning("partitions: upkeep failed: %s", control_message(res));
	}
	/* A connection kept for one statement every few minutes is not worth keeping. */
	if (j->cstate == JC_IDLE)
		jc_close(j);
	if (s)
		admin_deferred_done(s, control_ok(res) ? "PARTITIONS MAINTAIN" : NULL,
		                    control_sqlstate(res), control_message(res));
}

static const char *interval_name(void)
{
	switch (shunt.cfg.partition_interval) {
	case PARTITION_DAY:
		return "day";
	case PARTITION_WEEK:
		return "week";
	default:
		return "month";
	}
}

static bool partitions_run(struct session *console)
{
	char premake[16];
	snprintf(premake, sizeof(premake), "%d", shunt.cfg.partition_premake);
	const char *retention = shunt.cfg.partition_retention && shunt.cfg.partition_retention[0]
	                            ? shunt.cfg.partition_retention
	                            : NULL;
	const char *params[] = {partition_parent(),
	                        interval_name(),
	                        premake,
	                        retention,
	                        PARTITION_LOCK_TIMEOUT,
	                        shunt.phase.phase == PHASE_FINALIZED ? "true" : "false",
	                        console ? "true" : "false"};
	struct job *j = console ? PARTITIONS_CONSOLE : PARTITIONS;
	j->console = console;
	if (jc_query(j,
	             "SELECT action, partition, detail FROM "
	             "pgshunt.partitions_maintain($1::regclass, $2, $3::int, $4::interval, $5, "
	             "$6::boolean, $7::boolean)",
	             7, params, on_maintained))
		return true;
	j->console = NULL;
	return false;
}

bool jobs_cmd_partitions_maintain(struct session *s, struct admin_result *r, const char *args)
{
	(void)args;
	if (!need_control(r, "PARTITIONS MAINTAIN"))
		return false;
	if (PARTITIONS_CONSOLE->cb) {
		admin_res_error(r, OBJECT_IN_USE, "PARTITIONS MAINTAIN is running already");
		return false;
	}
	return defer(r, partitions_run(s));
}

bool jobs_cmd_show_partitions(struct session *s, struct admin_result *r, const char *args)
{
	(void)args;
	if (!need_control(r, "SHOW PARTITIONS"))
		return false;
	const char *params[] = {partition_parent()};
	return defer(r, control_query("SELECT $1, part::text, lo::text, hi::text, est_rows::text, "
	                              "pg_size_pretty(bytes), bytes::text FROM "
	                              "pgshunt.partitions_list($1::regclass)",
	                              1, params, on_rows, s));
}
