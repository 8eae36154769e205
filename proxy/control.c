#include "proxy/control.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proxy/log.h"
#include "proxy/pgshunt.h"
#include "proxy/pqevent.h"
#include "proxy/workers.h"

#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000

struct control_req {
	struct control_req *next;
	char *sql;
	int nparams;
	char **params;
	control_cb cb; /* NULL once forgotten */
	void *arg;
};

enum control_state {
	CTL_DOWN,       /* no connection; a retry timer may be armed */
	CTL_CONNECTING, /* PQconnectPoll in progress */
	CTL_IDLE,       /* connected, nothing sent */
	CTL_SENDING,    /* query sent, libpq still flushing it */
	CTL_WAITING,    /* waiting for results */
};

static struct {
	PGconn *conn;
	enum control_state state;
	struct event *io;          /* one-shot, re-armed for the direction libpq needs */
	struct event *retry;       /* reconnect timer */
	struct event *kick;        /* runs control_drive() from the loop, never from a caller */
	int backoff_ms;
	struct control_req *head;  /* head is the query in flight when SENDING/WAITING */
	struct control_req *tail;
	PGresult *result;          /* the answer being gathered for head */
	bool stopping;
	bool draining;             /* control_drain(): break the loop once the queue is empty */
	char *listen_channel;      /* LISTENed on every (re)connection, when set */
	control_notify_cb on_notify;
} ctl;

static void control_drive(void);

bool control_available(void)
{
	return shunt.cfg.control_dsn && shunt.cfg.control_dsn[0];
}

bool control_connected(void)
{
	return ctl.state >= CTL_IDLE;
}

static void req_free(struct control_req *r)
{
	for (int i = 0; i < r->nparams; i++)
		free(r->params[i]);
	free(r->params);
	free(r->sql);
	free(r);
}

static void on_io(evutil_socket_t fd, short what, void *arg)
{
	WORLD_HELD();
	(void)fd;
	(void)what;
	(void)arg;
	control_drive();
}

static void arm(short what)
{
	pqevent_arm(&ctl.io, ctl.conn, what, on_io, NULL);
}

static void on_kick(evutil_socket_t fd, short what, void *arg)
{
	WORLD_HELD();
	(void)fd;
	(void)what;
	(void)arg;
	if (ctl.state == CTL_DOWN && !(ctl.retry && evtimer_pending(ctl.retry, NULL)))
		control_start();
	else if (ctl.state == CTL_IDLE)
		control_drive();
}

static void on_retry(evutil_socket_t fd, short what, void *arg)
{
	WORLD_HELD();
	(void)fd;
	(void)what;
	(void)arg;
	control_start();
}

/* Pop head and hand its answer over; the callback may queue more. */
static void finish_head(const PGresult *res)
{
	struct control_req *r = ctl.head;
	ctl.head = r->next;
	if (!ctl.head)
		ctl.tail = NULL;
	if (r->cb)
		r->cb(res, r->arg);
	req_free(r);
	if (ctl.draining && !ctl.head)
		event_base_loopbreak(shunt.base);
}

static void connection_lost(const char *why)
{
	log_warning("control connection lost: %s", why);
	if (ctl.io) {
		event_free(ctl.io);
		ctl.io = NULL;
	}
	PQclear(ctl.result);
	ctl.result = NULL;
	bool in_flight = ctl.state == CTL_SENDING || ctl.state == CTL_WAITING;
	PQfinish(ctl.conn);
	ctl.conn = NULL;
	ctl.state = CTL_DOWN;
	if (in_flight && ctl.head)
		finish_head(NULL);
	if (ctl.stopping)
		return;
	ctl.backoff_ms = ctl.backoff_ms ? ctl.backoff_ms * 2 : BACKOFF_MIN_MS;
	if (ctl.backoff_ms > BACKOFF_MAX_MS)
		ctl.backoff_ms = BACKOFF_MAX_MS;
	struct timeval tv = {ctl.backoff_ms / 1000, (ctl.backoff_ms % 1000) * 1000};
	if (!ctl.retry)
		ctl.retry = evtimer_new(shunt.base, on_retry, NULL);
	if (ctl.retry)
		evtimer_add(ctl.retry, &tv);
}

static bool enqueue(const char *sql, int nparams, const char *const *params, control_cb cb,
		    void *arg, bool first);

/*
 * A new connection LISTENs before anything else it was asked (first: nothing is in
 * flight then); a LISTEN asked for later waits its turn.
 */
static void queue_listen(bool first)
{
	char sql[128];
	if (!ctl.listen_channel)
		return;
	snprintf(sql, sizeof(sql), "LISTEN %s", ctl.listen_channel);
	if (!enqueue(sql, 0, NULL, NULL, NULL, first))
		log_warning("could not queue LISTEN %s", ctl.listen_channel);
}

static void drive_connecting(void)
{
	switch (PQconnectPoll(ctl.conn)) {
	case PGRES_POLLING_READING:
		arm(EV_READ);
		return;
	case PGRES_POLLING_WRITING:
		arm(EV_WRITE);
		return;
	case PGRES_POLLING_OK:
		PQsetnonblocking(ctl.conn, 1);
		ctl.state = CTL_IDLE;
		ctl.backoff_ms = 0;
		queue_listen(true);
		log_info("control connection up (backend %d)", PQbackendPID(ctl.conn));
		control_drive();
		return;
	default:
		connection_lost(PQerrorMessage(ctl.conn));
		return;
	}
}

static void drive_send(void)
{
	struct control_req *r = ctl.head;
	/* Without parameters the simple protocol runs it: scripts hold several statements. */
	int sent = r->nparams ? PQsendQueryParams(ctl.conn, r->sql, r->nparams, NULL,
						  (const char *const *)r->params, NULL, NULL, 0)
			      : PQsendQuery(ctl.conn, r->sql);
	if (!sent) {
		connection_lost(PQerrorMessage(ctl.conn));
		return;
	}
	ctl.state = CTL_SENDING;
	control_drive();
}

/* Keep the first error, else the last result, as the answer. */
static void gather(PGresult *res)
{
	if (ctl.result && PQresultStatus(ctl.result) == PGRES_FATAL_ERROR) {
		PQclear(res);
		return;
	}
	PQclear(ctl.result);
	ctl.result = res;
}

/* Notifications come between and inside answers; hand them over as they are read. */
static void deliver_notifies(void)
{
	PGnotify *n;
	while (ctl.conn && (n = PQnotifies(ctl.conn)) != NULL) {
		if (ctl.on_notify && ctl.listen_channel && strcmp(n->relname, ctl.listen_channel) == 0)
			ctl.on_notify(n->extra);
		PQfreemem(n);
	}
}

/* Nothing asked: read anyway, for notifications and to notice a dead connection. */
static void drive_idle(void)
{
	if (!PQconsumeInput(ctl.conn)) {
		connection_lost(PQerrorMessage(ctl.conn));
		return;
	}
	deliver_notifies();
	if (ctl.state == CTL_IDLE && !ctl.head)
		arm(EV_READ);
}

static void drive_results(void)
{
	if (!PQconsumeInput(ctl.conn)) {
		connection_lost(PQerrorMessage(ctl.conn));
		return;
	}
	deliver_notifies();
	while (!PQisBusy(ctl.conn)) {
		PGresult *res = PQgetResult(ctl.conn);
		if (!res) {
			PGresult *answer = ctl.result;
			ctl.result = NULL;
			ctl.state = CTL_IDLE;
			finish_head(answer);
			PQclear(answer);
			control_drive();
			return;
		}
		gather(res);
	}
	arm(EV_READ);
}

static void control_drive(void)
{
	switch (ctl.state) {
	case CTL_DOWN:
		return;
	case CTL_CONNECTING:
		drive_connecting();
		return;
	case CTL_IDLE:
		if (ctl.head)
			drive_send();
		else if (ctl.listen_channel)
			drive_idle();
		return;
	case CTL_SENDING: {
		int rc = PQflush(ctl.conn);
		if (rc < 0) {
			connection_lost(PQerrorMessage(ctl.conn));
		} else if (rc == 1) {
			arm(EV_WRITE);
		} else {
			ctl.state = CTL_WAITING;
			drive_results();
		}
		return;
	}
	case CTL_WAITING:
		drive_results();
		return;
	}
}

void control_start(void)
{
	static const char *const keys[] = {"dbname", "application_name", NULL};
	if (!control_available() || ctl.state != CTL_DOWN)
		return;
	ctl.stopping = false;
	const char *values[] = {shunt.cfg.control_dsn, "pgshunt control", NULL};
	ctl.conn = PQconnectStartParams(keys, values, 1);
	if (!ctl.conn || PQstatus(ctl.conn) == CONNECTION_BAD) {
		ctl.state = CTL_CONNECTING; /* so that connection_lost() tidies up */
		connection_lost(ctl.conn ? PQerrorMessage(ctl.conn) : "out of memory");
		return;
	}
	ctl.state = CTL_CONNECTING;
	drive_connecting();
}

void control_stop(void)
{
	ctl.stopping = true;
	if (ctl.retry) {
		event_free(ctl.retry);
		ctl.retry = NULL;
	}
	if (ctl.state != CTL_DOWN)
		connection_lost("pgshunt is stopping");
	while (ctl.head)
		finish_head(NULL);
	if (ctl.io) {
		event_free(ctl.io);
		ctl.io = NULL;
	}
	if (ctl.kick) {
		event_free(ctl.kick);
		ctl.kick = NULL;
	}
	free(ctl.listen_channel);
	ctl.listen_channel = NULL;
	ctl.on_notify = NULL;
}

void control_drain(int timeout_ms)
{
	if (!ctl.head || ctl.state == CTL_DOWN)
		return;
	struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
	ctl.draining = true;
	event_base_loopexit(shunt.base, &tv);
	event_base_dispatch(shunt.base);
	ctl.draining = false;
}

static bool enqueue(const char *sql, int nparams, const char *const *params, control_cb cb,
		    void *arg, bool first)
{
	if (!ctl.kick)
		ctl.kick = event_new(shunt.base, -1, 0, on_kick, NULL);
	if (!ctl.kick)
		return false;
	struct control_req *r = calloc(1, sizeof(*r));
	if (!r)
		return false;
	r->sql = strdup(sql);
	r->params = nparams ? calloc((size_t)nparams, sizeof(char *)) : NULL;
	r->nparams = nparams;
	r->cb = cb;
	r->arg = arg;
	bool ok = r->sql && (!nparams || r->params);
	for (int i = 0; ok && i < nparams; i++)
		ok = !params[i] || (r->params[i] = strdup(params[i])) != NULL;
	if (!ok) {
		req_free(r);
		return false;
	}
	if (first) {
		r->next = ctl.head;
		ctl.head = r;
		if (!ctl.tail)
			ctl.tail = r;
	} else {
		if (ctl.tail)
			ctl.tail->next = r;
		else
			ctl.head = r;
		ctl.tail = r;
	}
	/*
	 * Never drive from here: on a busy machine the answer can already be readable
	 * when the query has been sent, and a callback run inside its caller's code
	 * (a console command still being processed) would re-enter it.
	 */
	event_active(ctl.kick, 0, 0);
	return true;
}

bool control_query(const char *sql, int nparams, const char *const *params, control_cb cb,
		   void *arg)
{
	if (!control_available())
		return false;
	return enqueue(sql, nparams, params, cb, arg, false);
}

bool control_listen(const char *channel, control_notify_cb cb)
{
	free(ctl.listen_channel);
	ctl.listen_channel = strdup(channel);
	ctl.on_notify = cb;
	if (!ctl.listen_channel)
		return false;
	if (ctl.state >= CTL_IDLE)
		queue_listen(false);
	return true;
}

void control_forget(void *arg)
{
	for (struct control_req *r = ctl.head; r; r = r->next)
		if (r->arg == arg)
			r->cb = NULL;
}

bool control_ok(const PGresult *res)
{
	if (!res)
		return false;
	ExecStatusType st = PQresultStatus(res);
	return st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK;
}

const char *control_sqlstate(const PGresult *res)
{
	const char *code = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
	return code ? code : "08006";
}

const char *control_message(const PGresult *res)
{
	if (!res)
		return "the control connection to the server was lost";
	const char *msg = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
	return msg ? msg : PQresultErrorMessage(res);
}
