/*
 * The HTTP endpoint on metrics_addr: Prometheus metrics, liveness and readiness,
 * served by libevent's evhttp on the proxy's own loop.  Nothing here blocks the loop
 * once started: pages are written from in-memory state, and what /readyz says about
 * the server comes from a check that runs in the background.
 */
#include "proxy/metrics.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/listener.h>
#include <event2/util.h>
#include <inttypes.h>
#include <netdb.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "proxy/control.h"
#include "proxy/log.h"
#include "proxy/pgshunt.h"
#include "proxy/session.h"
#include "proxy/thresholds.h"
#include "proxy/workers.h"
#include "rules/rules.h"

#ifndef PGSHUNT_VERSION
#define PGSHUNT_VERSION "0.0.0"
#endif

#define PROM_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"
#define TEXT_CONTENT_TYPE "text/plain; charset=utf-8"
#define PROBE_INTERVAL_S  2
#define STR_(x)           #x
#define STR(x)            STR_(x)
#define HTTP_TIMEOUT_S    10   /* a stalled or idle keep-alive scraper lets go of its socket */
#define HTTP_MAX_HEADERS  8192
#define HTTP_MAX_BODY     4096 /* nothing served takes a body: bound what evhttp buffers */
#define LISTEN_BACKLOG    16
#define ALL_METHODS                                                                                \
	(EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD | EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE | \
	 EVHTTP_REQ_OPTIONS | EVHTTP_REQ_TRACE | EVHTTP_REQ_CONNECT | EVHTTP_REQ_PATCH)

static struct evhttp *http;

/* ---- is the server reachable? ---- */

/*
 * Readiness asks whether a new session would reach the server.  Two signals were
 * available: the control connection's state, or a TCP connect of our own.  We
 * connect: it takes the very path sessions take (server_host:server_port, or its unix
 * socket when server_host is a directory), it works without control_dsn, and the
 * control connection may name another host or sit in its reconnect back-off while
 * the server is fine.  The answer is cached and refreshed every PROBE_INTERVAL_S by a
 * non-blocking connect (and an evdns lookup for a host name), so a request never
 * waits and the sessions never stall behind a slow resolver.  PostgreSQL forks a
 * backend for each check and logs nothing for a connection that sends no bytes (only
 * "connection received" when log_connections is on).
 */
static struct {
	struct event *tick;
	struct evdns_base *dns; /* made the first time server_host is a name */
	struct evdns_getaddrinfo_request *lookup;
	struct event *connecting; /* fires when the connect has an outcome */
	int fd;
	uintptr_t gen;  /* a late answer to an abandoned check carries an older one */
	bool checked;   /* a check has finished since start */
	bool reachable;
	char why[320];  /* why not reachable, for /readyz */
} probe = {.fd = -1};

static void probe_target(char *buf, size_t len)
{
	const struct pgshunt_config *cfg = &shunt.cfg;
	if (cfg->server_host[0] == '/')
		snprintf(buf, len, "%s/.s.PGSQL.%d", cfg->server_host, cfg->server_port);
	else
		snprintf(buf, len, "%s:%d", cfg->server_host, cfg->server_port);
}

/* Drop the check in flight, if any. */
static void probe_abandon(void)
{
	probe.gen++;
	if (probe.lookup)
		evdns_getaddrinfo_cancel(probe.lookup);
	probe.lookup = NULL;
	if (probe.connecting)
		event_free(probe.connecting);
	probe.connecting = NULL;
	if (probe.fd >= 0)
		close(probe.fd);
	probe.fd = -1;
}

/* Record an outcome; changes are logged once, not every PROBE_INTERVAL_S. */
static void probe_finish(bool ok, const char *detail)
{
	char target[256];

	probe_abandon();
	probe_target(target, sizeof(target));
	if (!ok && (probe.reachable || !probe.checked))
		log_warning("readiness: server %s unreachable: %s", target, detail);
	else if (ok && probe.checked && !probe.reachable)
		log_info("readiness: server %s reachable again", target);
	probe.checked = true;
	probe.reachable = ok;
	if (!ok)
		snprintf(probe.why, sizeof(probe.why), "server %s unreachable: %s", target, detail);
}

static void on_probe_connected(evutil_socket_t fd, short what, void *arg)
{
	WORLD_HELD();
	int err = 0;
	socklen_t len = sizeof(err);
	(void)what;
	(void)arg;
	if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
		err = errno;
	probe_finish(err == 0, strerror(err));
}

static void probe_connect(const struct sockaddr *sa, socklen_t salen)
{
	int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		probe_finish(false, strerror(errno));
		return;
	}
	probe.fd = fd;
	if (connect(fd, sa, salen) == 0) {
		probe_finish(true, NULL);
		return;
	}
	if (errno != EINPROGRESS) {
		probe_finish(false, strerror(errno));
		return;
	}
	probe.connecting = event_new(shunt.base, fd, EV_WRITE, on_probe_connected, NULL);
	if (!probe.connecting || event_add(probe.connecting, NULL) < 0)
		probe_finish(false, "out of memory");
}

static void on_probe_resolved(int err, struct evutil_addrinfo *ai, void *arg)
{
	if ((uintptr_t)arg == probe.gen) {
		probe.lookup = NULL;
		if (err)
			probe_finish(false, evutil_gai_strerror(err));
		else
			probe_connect(ai->ai_addr, (socklen_t)ai->ai_addrlen);
	}
	if (ai)
		evutil_freeaddrinfo(ai);
}

static void probe_lookup(void)
{
	struct evutil_addrinfo hints = {
		.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_protocol = IPPROTO_TCP};
	char port[16];

	if (!probe.dns) {
		probe.dns = evdns_base_new(shunt.base, EVDNS_BASE_INITIALIZE_NAMESERVERS |
							   EVDNS_BASE_DISABLE_WHEN_INACTIVE);
		/* Resolvers that do not echo the question's case would fail every lookup. */
		if (probe.dns)
			evdns_base_set_option(probe.dns, "randomize-case:", "0");
	}
	if (!probe.dns) {
		probe_finish(false, "cannot set up a DNS resolver");
		return;
	}
	snprintf(port, sizeof(port), "%d", shunt.cfg.server_port);
	/* A numeric address or an /etc/hosts name is answered before this returns (NULL). */
	probe.lookup = evdns_getaddrinfo(probe.dns, shunt.cfg.server_host, port, &hints,
					 on_probe_resolved, (void *)probe.gen);
}

static void probe_start(void)
{
	struct sockaddr_un sun = {.sun_family = AF_UNIX};

	if (shunt.cfg.server_host[0] != '/') {
		probe_lookup();
		return;
	}
	if ((size_t)snprintf(sun.sun_path, sizeof(sun.sun_path), "%s/.s.PGSQL.%d",
			     shunt.cfg.server_host, shunt.cfg.server_port) >= sizeof(sun.sun_path)) {
		probe_finish(false, "socket path too long");
		return;
	}
	probe_connect((const struct sockaddr *)&sun, sizeof(sun));
}

static void on_probe_tick(evutil_socket_t fd, short what, void *arg)
{
	WORLD_HELD();
	(void)fd;
	(void)what;
	(void)arg;
	if (probe.lookup || probe.connecting)
		probe_finish(false, "no answer within " STR(PROBE_INTERVAL_S) " s");
	probe_start();
}

static bool probe_begin(void)
{
	struct timeval tv = {PROBE_INTERVAL_S, 0};

	probe.tick = event_new(shunt.base, -1, EV_PERSIST, on_probe_tick, NULL);
	if (!probe.tick || event_add(probe.tick, &tv) < 0)
		return false;
	probe_start();
	return true;
}

/* ---- the Prometheus page ---- */

/* The page being written.  A failed append (out of memory) turns it into a 500:
 * a scraper must never take a truncated page for a complete one. */
struct page {
	struct evbuffer *buf;
	const struct stats *stats; /* summed over the threads */
	bool failed;
};

static void page_printf(struct page *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void page_printf(struct page *p, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	if (evbuffer_add_vprintf(p->buf, fmt, ap) < 0)
		p->failed = true;
	va_end(ap);
}

/* A label value escaped as format 0.0.4 wants: backslash, double quote, newline. */
static void page_label_value(struct page *p, const char *v)
{
	for (;;) {
		size_t run = strcspn(v, "\\\"\n");
		if (evbuffer_add(p->buf, v, run) < 0)
			p->failed = true;
		v += run;
		if (!*v)
			return;
		page_printf(p, "\\%c", *v == '\n' ? 'n' : *v);
		v++;
	}
}

static void page_family(struct page *p, const char *name, const char *type, const char *help)
{
	page_printf(p, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void page_gauge(struct page *p, const char *name, const char *help, uint64_t v)
{
	page_family(p, name, "gauge", help);
	page_printf(p, "%s %" PRIu64 "\n", name, v);
}

static void page_labelled(struct page *p, const char *name, const char *label, const char *value,
			  uint64_t v)
{
	page_printf(p, "%s{%s=\"", name, label);
	page_label_value(p, value);
	page_printf(p, "\"} %" PRIu64 "\n", v);
}

static void page_process(struct page *p)
{
	page_gauge(p, "pgshunt_up", "1 while pgshunt runs.", 1);
	page_family(p, "pgshunt_build_info", "gauge", "Always 1; the version is in the label.");
	page_labelled(p, "pgshunt_build_info", "version", PGSHUNT_VERSION, 1);
	page_gauge(p, "pgshunt_start_time_seconds", "When pgshunt started, in seconds since the epoch.",
		   (uint64_t)shunt.started);
	page_gauge(p, "pgshunt_paused", "1 while PAUSE holds new requests.", shunt.paused);
	page_gauge(p, "pgshunt_control_connected", "1 while the control connection is up.",
		   control_connected());
}

static uint64_t server_connections(void)
{
	uint64_t n = 0;
	for (const struct session *s = session_first(); s; s = session_next(s))
		if (conn_is_open(&s->server))
			n++;
	return n;
}

static void page_connections(struct page *p)
{
	page_gauge(p, "pgshunt_client_connections",
		   "Client connections counted against max_client_conn.",
		   atomic_load(&shunt.nclients));
	page_gauge(p, "pgshunt_server_connections", "Open connections to the server.",
		   server_connections());
	page_gauge(p, "pgshunt_server_reachable",
		   "1 when the last connect check to the server succeeded (what /readyz uses).",
		   probe.checked && probe.reachable);
}

/* The plain counters of struct stats. */
static const struct counter {
	const char *name;
	const char *help;
	size_t offset; /* of a uint64_t in struct stats */
} counters[] = {
	{"pgshunt_clients_accepted_total", "Client connections accepted.",
	 offsetof(struct stats, clients_total)},
	{"pgshunt_clients_refused_total", "Client connections refused by limits or bad input.",
	 offsetof(struct stats, refused_total)},
	{"pgshunt_queries_total", "Query and Execute messages forwarded to the server.",
	 offsetof(struct stats, queries_total)},
	{"pgshunt_transactions_total", "Transactions completed (ReadyForQuery idle after a request).",
	 offsetof(struct stats, xacts_total)},
	{"pgshunt_received_bytes_total", "Bytes received from clients.",
	 offsetof(struct stats, bytes_received)},
	{"pgshunt_sent_bytes_total", "Bytes sent to clients.", offsetof(struct stats, bytes_sent)},
	{"pgshunt_errors_total", "ErrorResponses sent to clients.",
	 offsetof(struct stats, errors_total)},
	{"pgshunt_cancel_requests_total", "CancelRequests routed to the server.",
	 offsetof(struct stats, cancels_total)},
};

static void page_counters(struct page *p)
{
	const char *stats = (const char *)p->stats;
	uint64_t v, us = p->stats->query_time_us;

	for (size_t i = 0; i < sizeof(counters) / sizeof(counters[0]); i++) {
		memcpy(&v, stats + counters[i].offset, sizeof(v));
		page_family(p, counters[i].name, "counter", counters[i].help);
		page_printf(p, "%s %" PRIu64 "\n", counters[i].name, v);
	}
	page_family(p, "pgshunt_query_seconds_total", "counter",
		    "Time sessions had a request outstanding, summed, in seconds.");
	page_printf(p, "pgshunt_query_seconds_total %" PRIu64 ".%06" PRIu64 "\n", us / 1000000,
		    us % 1000000);
}

static void page_phase(struct page *p)
{
	page_family(p, "pgshunt_phase", "gauge",
		    "Migration phase: 1 for the phase in force, 0 for the others.");
	for (int i = 0; i < PHASE__COUNT; i++)
		page_labelled(p, "pgshunt_phase", "phase", phase_name((enum phase)i),
			      shunt.phase.phase == (enum phase)i);
	page_gauge(p, "pgshunt_phase_epoch",
		   "Epoch of the phase in force, bumped by every change of phase or DEGRADED.",
		   shunt.phase.epoch);
	page_gauge(p, "pgshunt_degraded", "1 while DEGRADED is on.", shunt.phase.degraded);
	page_gauge(p, "pgshunt_phase_known",
		   "1 once the phase in force has been read from the database (or needs no read).",
		   shunt.phase.known);
}

/* Request-to-answer time of statements naming the table, per kind (histogram). */
static void page_durations(struct page *p)
{
	const struct stats *st = p->stats;
	page_family(p, "pgshunt_statement_duration_seconds", "histogram",
		    "Time from a request naming the table to its answer, by statement kind.");
	for (int k = 0; k < STMT__COUNT; k++) {
		uint64_t cum = 0, total = 0;
		const char *kind = stmt_kind_name((enum stmt_kind)k);
		for (int b = 0; b <= STATS_DURATION_BUCKETS; b++)
			total += st->duration_count[k][b];
		if (total == 0)
			continue;
		for (int b = 0; b <= STATS_DURATION_BUCKETS; b++) {
			cum += st->duration_count[k][b];
			if (b < STATS_DURATION_BUCKETS) {
				uint64_t us = stats_duration_bounds_us[b];
				page_printf(p,
					    "pgshunt_statement_duration_seconds_bucket{kind=\"%s\","
					    "le=\"%" PRIu64 ".%06" PRIu64 "\"} %" PRIu64 "\n",
					    kind, us / 1000000, us % 1000000, cum);
			} else {
				page_printf(p,
					    "pgshunt_statement_duration_seconds_bucket{kind=\"%s\","
					    "le=\"+Inf\"} %" PRIu64 "\n",
					    kind, cum);
			}
		}
		uint64_t sum = st->duration_sum_us[k];
		page_printf(p,
			    "pgshunt_statement_duration_seconds_sum{kind=\"%s\"} %" PRIu64
			    ".%06" PRIu64 "\n",
			    kind, sum / 1000000, sum % 1000000);
		page_printf(p, "pgshunt_statement_duration_seconds_count{kind=\"%s\"} %" PRIu64 "\n",
			    kind, cum);
	}
}

/* Every thread's parse cache: hits or misses. */
static uint64_t parse_cache_total(uint64_t (*count)(const struct parser_cache *))
{
	uint64_t n = 0;
	for (int i = 0; i <= workers_count(); i++)
		if (workers_parse_cache_of(i))
			n += count(workers_parse_cache_of(i));
	return n;
}

/* What the statement engine did, and the parse cache behind it. */
static void page_engine(struct page *p)
{
	const struct stats *st = p->stats;
	page_family(p, "pgshunt_statements_total", "counter",
		    "Statements naming a configured table as the engine decided them (each Query "
		    "statement, each Parse), by kind, action taken and phase.");
	for (int k = 0; k < STMT__COUNT; k++)
		for (int a = 0; a < RULE__COUNT; a++)
			for (int ph = 0; ph < PHASE__COUNT; ph++) {
				uint64_t n = st->statements[k][a][ph];
				if (!n)
					continue;
				page_printf(p, "pgshunt_statements_total{kind=\"%s\",action=\"%s\","
					       "phase=\"%s\"} %" PRIu64 "\n",
					    stmt_kind_name((enum stmt_kind)k),
					    rule_action_name((enum rule_action)a),
					    phase_name((enum phase)ph), n);
			}
	page_durations(p);
	page_family(p, "pgshunt_refusals_total", "counter",
		    "Statements refused with 0A000, by reason.");
	for (unsigned i = 0; i < st->nrefusals; i++)
		page_labelled(p, "pgshunt_refusals_total", "reason", st->refusals[i].reason,
			      st->refusals[i].count);
	page_family(p, "pgshunt_parse_cache_hits_total", "counter",
		    "Parse results found in the cache.");
	page_printf(p, "pgshunt_parse_cache_hits_total %" PRIu64 "\n",
		    parse_cache_total(parser_cache_hits));
	page_family(p, "pgshunt_parse_cache_misses_total", "counter",
		    "Statements parsed because the cache did not have them.");
	page_printf(p, "pgshunt_parse_cache_misses_total %" PRIu64 "\n",
		    parse_cache_total(parser_cache_misses));
}

/* The runbook's thresholds, auto-DEGRADED, the buffer and the jobs (thresholds.h). */
static void page_ops(struct page *p)
{
	const struct ops_view *v = ops_view();
	page_family(p, "pgshunt_threshold_value", "gauge",
		    "Last measured value of each runbook threshold metric (bytes, rows, ms); "
		    "absent until measured.");
	for (int m = 0; m < TM__COUNT; m++) {
		if (!v->metric[m].known)
			continue;
		page_printf(p, "pgshunt_threshold_value{metric=\"%s\"} %.3f\n",
			    thresh_metric_name((enum thresh_metric)m), v->metric[m].value);
	}
	page_family(p, "pgshunt_threshold_status", "gauge",
		    "Each threshold metric against its limits: 0 ok, 1 warning, 2 action.");
	for (int m = 0; m < TM__COUNT; m++)
		page_labelled(p, "pgshunt_threshold_status", "metric",
			      thresh_metric_name((enum thresh_metric)m), v->metric[m].status);
	page_family(p, "pgshunt_auto_degrade_total", "counter",
		    "DEGRADED changes made by auto-DEGRADED from this proxy, by direction.");
	page_labelled(p, "pgshunt_auto_degrade_total", "direction", "on", v->auto_degrade_total[1]);
	page_labelled(p, "pgshunt_auto_degrade_total", "direction", "off", v->auto_degrade_total[0]);
	page_gauge(p, "pgshunt_auto_degrade_leader",
		   "1 while this proxy is the one that decides auto-DEGRADED.", v->auto_degrade_leader);
	if (v->buffer_known)
		page_gauge(p, "pgshunt_buffer_rows",
			   "Rows in buffer_table: counted up to 10000, the planner's estimate beyond.",
			   v->buffer_rows);
	page_family(p, "pgshunt_job_rows_done", "gauge",
		    "Rows a job (pgshunt.jobs) has processed; 0 when it has no row.");
	for (int j = 0; j < OPS_JOB__COUNT; j++)
		page_labelled(p, "pgshunt_job_rows_done", "job", ops_job_name((enum ops_job)j),
			      v->job[j].rows_done);
	page_family(p, "pgshunt_job_rows_total", "gauge",
		    "Rows a job (pgshunt.jobs) expects to process; 0 when unknown.");
	for (int j = 0; j < OPS_JOB__COUNT; j++)
		page_labelled(p, "pgshunt_job_rows_total", "job", ops_job_name((enum ops_job)j),
			      v->job[j].rows_total);
	page_family(p, "pgshunt_job_state", "gauge",
		    "1 for the state a job (pgshunt.jobs) is in; no series when it has no row.");
	for (int j = 0; j < OPS_JOB__COUNT; j++) {
		if (!v->job[j].present)
			continue;
		page_printf(p, "pgshunt_job_state{job=\"%s\",state=\"", ops_job_name((enum ops_job)j));
		page_label_value(p, v->job[j].state);
		page_printf(p, "\"} 1\n");
	}
}

/* ---- requests ---- */

static void reply_text(struct evhttp_request *req, int code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void reply_text(struct evhttp_request *req, int code, const char *fmt, ...)
{
	struct evbuffer *body = evhttp_request_get_output_buffer(req);
	va_list ap;

	evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", TEXT_CONTENT_TYPE);
	va_start(ap, fmt);
	/* Best effort: out of memory, the status line still tells. */
	(void)evbuffer_add_vprintf(body, fmt, ap);
	va_end(ap);
	evhttp_send_reply(req, code, NULL, NULL);
}

static void serve_metrics(struct evhttp_request *req)
{
	static struct stats total; /* every thread's counters, at this request */
	struct page p = {.buf = evhttp_request_get_output_buffer(req), .stats = &total};

	stats_total(&total);
	page_process(&p);
	page_connections(&p);
	page_counters(&p);
	page_phase(&p);
	page_engine(&p);
	page_ops(&p);
	if (p.failed) {
		evbuffer_drain(p.buf, evbuffer_get_length(p.buf));
		reply_text(req, HTTP_INTERNAL, "out of memory\n");
		return;
	}
	evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", PROM_CONTENT_TYPE);
	evhttp_send_reply(req, HTTP_OK, NULL, NULL);
}

/* Liveness: answering at all proves the loop turns. */
static void serve_healthz(struct evhttp_request *req)
{
	reply_text(req, HTTP_OK, "ok\n");
}

/* NULL when ready, else why not, on one line. */
static const char *ready_refusal(void)
{
	if (shunt.shutting_down)
		return "shutting down";
	if (!shunt.phase.known)
		return "migration phase not known yet";
	if (!probe.checked)
		return "server not checked yet";
	return probe.reachable ? NULL : probe.why;
}

static void serve_readyz(struct evhttp_request *req)
{
	const char *why = ready_refusal();
	if (why)
		reply_text(req, HTTP_SERVUNAVAIL, "not ready: %s\n", why);
	else
		reply_text(req, HTTP_OK, "ready\n");
}

static const struct route {
	const char *path;
	void (*serve)(struct evhttp_request *req);
} routes[] = {
	{"/metrics", serve_metrics},
	{"/healthz", serve_healthz},
	{"/readyz", serve_readyz},
};

static const struct route *route_find(struct evhttp_request *req)
{
	const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
	const char *path = uri ? evhttp_uri_get_path(uri) : NULL;

	for (size_t i = 0; path && i < sizeof(routes) / sizeof(routes[0]); i++)
		if (strcmp(path, routes[i].path) == 0)
			return &routes[i];
	return NULL;
}

static void on_request(struct evhttp_request *req, void *arg)
{
	WORLD_HELD();
	const struct route *r = route_find(req);
	enum evhttp_cmd_type cmd = evhttp_request_get_command(req);

	(void)arg;
	if (!r) {
		reply_text(req, HTTP_NOTFOUND, "not found: try /metrics, /healthz or /readyz\n");
		return;
	}
	if (cmd != EVHTTP_REQ_GET && cmd != EVHTTP_REQ_HEAD) {
		evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", "GET, HEAD");
		reply_text(req, HTTP_BADMETHOD, "method not allowed: use GET or HEAD\n");
		return;
	}
	r->serve(req);
}

/* ---- start and stop ---- */

/* "host:port", "[v6]:port", ":port" or "*:port" (all IPv4 addresses). */
static bool split_host_port(const char *spec, char *host, size_t hostlen, char *port,
			    size_t portlen)
{
	const char *colon = strrchr(spec, ':');
	size_t n;

	if (!colon || !colon[1] || colon[1 + strspn(colon + 1, "0123456789")] != '\0')
		return false;
	long num = strtol(colon + 1, NULL, 10);
	n = (size_t)(colon - spec);
	if (n >= 2 && spec[0] == '[' && spec[n - 1] == ']') {
		spec++;
		n -= 2;
	}
	if (num < 1 || num > 65535 || n >= hostlen)
		return false;
	snprintf(host, hostlen, "%.*s", (int)n, spec);
	if (!host[0] || strcmp(host, "*") == 0)
		snprintf(host, hostlen, "0.0.0.0");
	snprintf(port, portlen, "%ld", num);
	return true;
}

static struct evconnlistener *listen_on(const char *spec, char *err, size_t errlen)
{
	struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
	struct addrinfo *ai;
	char host[256], port[16];

	if (!split_host_port(spec, host, sizeof(host), port, sizeof(port))) {
		snprintf(err, errlen, "metrics_addr \"%s\" is not host:port", spec);
		return NULL;
	}
	/* Blocking, but only once, at start-up. */
	int rc = getaddrinfo(host, port, &hints, &ai);
	if (rc != 0) {
		snprintf(err, errlen, "metrics_addr \"%s\": %s", spec, gai_strerror(rc));
		return NULL;
	}
	struct evconnlistener *l = evconnlistener_new_bind(
		shunt.base, NULL, NULL, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE | LEV_OPT_CLOSE_ON_EXEC,
		LISTEN_BACKLOG, ai->ai_addr, (int)ai->ai_addrlen);
	if (!l)
		snprintf(err, errlen, "metrics_addr \"%s\": cannot listen: %s", spec, strerror(errno));
	freeaddrinfo(ai);
	return l;
}

/* Takes l, even on failure. */
static bool http_begin(struct evconnlistener *l)
{
	http = evhttp_new(shunt.base);
	if (!http || !evhttp_bind_listener(http, l)) {
		evconnlistener_free(l);
		return false;
	}
	evhttp_set_timeout(http, HTTP_TIMEOUT_S);
	evhttp_set_max_headers_size(http, HTTP_MAX_HEADERS);
	evhttp_set_max_body_size(http, HTTP_MAX_BODY);
	/* Let every method reach on_request, which says 405; evhttp would say 501. */
	evhttp_set_allowed_methods(http, ALL_METHODS);
	evhttp_set_gencb(http, on_request, NULL);
	return true;
}

bool metrics_start(char *err, size_t errlen)
{
	const char *spec = shunt.cfg.metrics_addr;
	struct evconnlistener *l;

	if (!spec[0])
		return true;
	l = listen_on(spec, err, errlen);
	if (!l)
		return false;
	if (!http_begin(l) || !probe_begin()) {
		metrics_stop();
		snprintf(err, errlen, "metrics_addr \"%s\": out of memory", spec);
		return false;
	}
	log_info("metrics on http://%s/metrics (also /healthz, /readyz)", spec);
	return true;
}

void metrics_stop(void)
{
	/*
	 * libevent frees a lookup only as it calls its callback, from the loop, and the
	 * loop has stopped: cancelling one still in flight (the resolver is slow) would
	 * leak it.  It is left with its resolver for the exit that follows to reclaim.
	 */
	bool lookup_in_flight = probe.lookup != NULL;

	probe.lookup = NULL;
	probe_abandon();
	if (probe.tick)
		event_free(probe.tick);
	probe.tick = NULL;
	if (probe.dns && !lookup_in_flight) {
		evdns_base_free(probe.dns, 0);
		probe.dns = NULL;
	}
	probe.checked = probe.reachable = false;
	if (http)
		evhttp_free(http);
	http = NULL;
}
