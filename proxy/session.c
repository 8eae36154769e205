/*
 * Client sessions: startup, TLS, authentication pass-through, and the relay.
 *
 * Each callback works on one session and ends with session_reap(), which frees a
 * session that was closed during the callback; code below a call that may close the
 * session checks the return value (false = the session is closed, stop touching it).
 */
#include "proxy/session.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <libpq-fe.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/rand.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>
#include <unistd.h>

#include "proxy/admin.h"
#include "proxy/engine.h"
#include "proxy/guard.h"
#include "proxy/log.h"
#include "proxy/mbuf.h"
#include "proxy/pgshunt.h"
#include "proxy/proto.h"
#include "proxy/workers.h"

#define HIGH_WATER       (1u << 20) /* stop reading the source above this much queued */
#define LOW_WATER        (1u << 16) /* resume reading below this */
#define SERVER_MAX_MSG   (1u << 30) /* the protocol's own limit */
#define CANCEL_TIMEOUT_S 5

/* Which state may follow which: everything else is a bug, refused loudly. */
static const uint32_t state_moves[SS__COUNT] = {
	[SS_STARTUP] = 1u << SS_CLIENT_TLS | 1u << SS_CONNECTING | 1u << SS_CLOSED,
	[SS_CLIENT_TLS] = 1u << SS_STARTUP | 1u << SS_CLOSED,
	[SS_CONNECTING] = 1u << SS_SERVER_SSLREQ | 1u << SS_AUTH | 1u << SS_CLOSED,
	[SS_SERVER_SSLREQ] = 1u << SS_SERVER_TLS | 1u << SS_AUTH | 1u << SS_CLOSED,
	[SS_SERVER_TLS] = 1u << SS_AUTH | 1u << SS_CLOSED,
	[SS_AUTH] = 1u << SS_ACTIVE | 1u << SS_ADMIN | 1u << SS_CLOSED,
	[SS_ACTIVE] = 1u << SS_CLOSED,
	[SS_ADMIN] = 1u << SS_CLOSED,
	[SS_CLOSED] = 0,
};

static const char *const state_names[SS__COUNT] = {
	[SS_STARTUP] = "startup",     [SS_CLIENT_TLS] = "client_tls",
	[SS_CONNECTING] = "connecting", [SS_SERVER_SSLREQ] = "server_sslrequest",
	[SS_SERVER_TLS] = "server_tls", [SS_AUTH] = "auth",
	[SS_ACTIVE] = "active",       [SS_ADMIN] = "admin",
	[SS_CLOSED] = "closed",
};

static void on_client_event(evutil_socket_t fd, short what, void *arg);
static void on_server_event(evutil_socket_t fd, short what, void *arg);
static bool client_process(struct session *s);
static bool server_process(struct session *s);

const char *session_state_name(enum session_state st)
{
	return st < SS__COUNT ? state_names[st] : "?";
}

bool session_set_state(struct session *s, enum session_state next)
{
	if (!(state_moves[s->state] & (1u << next))) {
		log_error("%s: impossible state change %s -> %s", s->prefix,
			  session_state_name(s->state), session_state_name(next));
		return false;
	}
	s->state = next;
	return true;
}

uint64_t now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* ---- lifecycle ---- */

/* Only the thread that runs the session (or the main thread alone) touches its list. */
static void session_link(struct session *s)
{
	struct session **head = workers_sessions_of(s->worker);
	s->prev = NULL;
	s->next = *head;
	if (*head)
		(*head)->prev = s;
	*head = s;
}

static void session_unlink(struct session *s)
{
	if (s->prev)
		s->prev->next = s->next;
	else
		*workers_sessions_of(s->worker) = s->next;
	if (s->next)
		s->next->prev = s->prev;
	s->next = s->prev = NULL;
}

struct session *session_first(void)
{
	assert(world_held());
	for (int i = 0; i <= workers_count(); i++)
		if (*workers_sessions_of(i))
			return *workers_sessions_of(i);
	return NULL;
}

struct session *session_next(const struct session *s)
{
	if (s->next)
		return s->next;
	for (int i = s->worker + 1; i <= workers_count(); i++)
		if (*workers_sessions_of(i))
			return *workers_sessions_of(i);
	return NULL;
}

static void session_free(struct session *s)
{
	session_unlink(s);
	if (s->counted)
		atomic_fetch_sub(&shunt.nclients, 1);
	if (s->login_timer_set)
		event_del(&s->login_timer);
	conn_close(&s->client);
	conn_close(&s->server);
	respq_free(&s->respq);
	admin_free(s);
	engine_free(s);
	free(s->user);
	free(s->database);
	free(s->startup_pkt);
	workers_session_ended(s->worker);
	free(s);
	if (atomic_fetch_sub(&shunt.nsessions, 1) == 1 && shunt.shutting_down)
		workers_loopbreak_main();
}

/* Free the session if it was closed: the last thing every callback does. */
void session_reap(struct session *s)
{
	if (s->state == SS_CLOSED)
		session_free(s);
}

void session_close(struct session *s, const char *why)
{
	if (s->state == SS_CLOSED)
		return;
	slog(LOG_LEVEL_INFO, s->prefix, "closing: %s", why);
	/* Best effort: what is queued for the client (an error, say) goes out now. */
	if (conn_is_open(&s->client) && iobuf_len(&s->client.out) > 0 && !conn_flush(&s->client))
		slog(LOG_LEVEL_DEBUG, s->prefix, "could not flush the last words to the client");
	if (conn_is_open(&s->client) && s->client.ssl)
		SSL_shutdown(s->client.ssl);
	conn_close(&s->client);
	conn_close(&s->server);
	s->state = SS_CLOSED;
}

static void queue_error(struct session *s, const char *severity, const char *sqlstate,
			const char *msg)
{
	struct pktbuf b;
	pktbuf_init(&b);
	pktbuf_error(&b, severity, sqlstate, msg, NULL, NULL);
	if (pktbuf_ok(&b) && conn_queue(&s->client, b.data, b.len))
		stats_here->errors_total++;
	pktbuf_free(&b);
}

void session_fatal(struct session *s, const char *sqlstate, const char *fmt, ...)
{
	char msg[512];
	va_list ap;

	if (s->state == SS_CLOSED)
		return;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	slog(LOG_LEVEL_WARNING, s->prefix, "FATAL %s: %s", sqlstate, msg);
	if (conn_is_open(&s->client))
		queue_error(s, "FATAL", sqlstate, msg);
	session_close(s, msg);
}

/* A connection refused before it became a session proper counts as refused. */
#define session_refuse(s, ...)                                                                     \
	do {                                                                                       \
		stats_here->refused_total++;                                                       \
		session_fatal(s, __VA_ARGS__);                                                     \
	} while (0)

bool session_send_client(struct session *s, const void *p, size_t n)
{
	if (!conn_queue(&s->client, p, n)) {
		session_fatal(s, "53200", "out of memory");
		return false;
	}
	if (!conn_flush(&s->client)) {
		session_close(s, "client write failed");
		return false;
	}
	return true;
}

bool session_idle(const struct session *s)
{
	if (s->state == SS_ADMIN)
		return true;
	return s->state == SS_ACTIVE && respq_empty(&s->respq) && s->tx_status == 'I' &&
	       s->client_stream_left == 0 && s->server_stream_left == 0;
}

bool session_quiet(const struct session *s)
{
	return session_idle(s) || (s->state == SS_ACTIVE && s->respq.copy_both);
}

static void on_login_timeout(evutil_socket_t fd, short what, void *arg)
{
	WORLD_HELD();
	struct session *s = arg;
	(void)fd;
	(void)what;
	s->login_timer_set = false;
	if (s->state < SS_ACTIVE)
		session_refuse(s, "08P01", "client_login_timeout (%d s) expired before login completed",
			       shunt.cfg.client_login_timeout);
	session_reap(s);
}

static void set_nodelay(int fd)
{
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

static void describe_addr(struct session *s, const struct sockaddr *addr)
{
	if (addr->sa_family == AF_UNIX) {
		snprintf(s->client_addr, sizeof(s->client_addr), "unix");
		return;
	}
	char host[NI_MAXHOST] = "?", serv[NI_MAXSERV] = "0";
	socklen_t len = addr->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6)
						    : sizeof(struct sockaddr_in);
	getnameinfo(addr, len, host, sizeof(host), serv, sizeof(serv),
		    NI_NUMERICHOST | NI_NUMERICSERV);
	snprintf(s->client_addr, sizeof(s->client_addr), "%s", host);
	s->client_port = atoi(serv);
}

void session_accept(int fd, const struct sockaddr *addr, int addrlen)
{
	(void)addrlen;
	struct session *s = calloc(1, sizeof(*s));
	if (!s) {
		close(fd);
		return;
	}
	conn_init(&s->client);
	conn_init(&s->server);
	respq_init(&s->respq);
	s->id = ++shunt.next_id;
	if (RAND_bytes((unsigned char *)&s->cancel_key, sizeof(s->cancel_key)) != 1)
		s->cancel_key = (uint32_t)random();
	s->state = SS_STARTUP;
	s->tx_status = 'I';
	s->connect_time = time(NULL);
	describe_addr(s, addr);
	if (addr->sa_family != AF_UNIX)
		set_nodelay(fd);
	snprintf(s->prefix, sizeof(s->prefix), "C-%u %s:%d", s->id, s->client_addr,
		 s->client_port);
	session_link(s);
	atomic_fetch_add(&shunt.nsessions, 1);
	stats_here->clients_total++;
	conn_attach(&s->client, shunt.base, fd, on_client_event, s);
	conn_want_read(&s->client, true);
	evtimer_assign(&s->login_timer, shunt.base, on_login_timeout, s);
	if (shunt.cfg.client_login_timeout > 0) {
		struct timeval tv = {shunt.cfg.client_login_timeout, 0};
		evtimer_add(&s->login_timer, &tv);
		s->login_timer_set = true;
	}
	slog(LOG_LEVEL_DEBUG, s->prefix, "accepted");
}

/* ---- reaching the server ---- */

/* Open a non-blocking socket to the configured server and start connecting. */
static int server_socket(char *err, size_t errlen)
{
	const struct pgshunt_config *cfg = &shunt.cfg;
	int fd = -1;

	if (cfg->server_host[0] == '/') {
		struct sockaddr_un sun = {.sun_family = AF_UNIX};
		if ((size_t)snprintf(sun.sun_path, sizeof(sun.sun_path), "%s/.s.PGSQL.%d",
				     cfg->server_host, cfg->server_port) >= sizeof(sun.sun_path)) {
			snprintf(err, errlen, "socket path too long");
			return -1;
		}
		fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		if (fd >= 0 && connect(fd, (struct sockaddr *)&sun, sizeof(sun)) < 0 &&
		    errno != EINPROGRESS && errno != EAGAIN) {
			snprintf(err, errlen, "%s: %s", sun.sun_path, strerror(errno));
			close(fd);
			return -1;
		}
		return fd;
	}
	struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV}, *ai;
	char port[16];
	snprintf(port, sizeof(port), "%d", cfg->server_port);
	int rc = getaddrinfo(cfg->server_host, port, &hints, &ai);
	if (rc != 0) {
		snprintf(err, errlen, "%s: %s", cfg->server_host, gai_strerror(rc));
		return -1;
	}
	fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
	if (fd < 0 || (connect(fd, ai->ai_addr, ai->ai_addrlen) < 0 && errno != EINPROGRESS)) {
		snprintf(err, errlen, "%s:%d: %s", cfg->server_host, cfg->server_port,
			 strerror(errno));
		if (fd >= 0)
			close(fd);
		fd = -1;
	} else {
		set_nodelay(fd);
	}
	freeaddrinfo(ai);
	return fd;
}

static bool server_connect(struct session *s)
{
	char err[256];
	int fd = server_socket(err, sizeof(err));
	if (fd < 0) {
		session_fatal(s, "08006", "could not connect to server: %s", err);
		return false;
	}
	conn_attach(&s->server, workers_base_here(), fd, on_server_event, s);
	conn_want_write(&s->server, true);
	conn_want_read(&s->client, false); /* nothing to relay until the server answers */
	return session_set_state(s, SS_CONNECTING);
}

static bool server_send_startup(struct session *s)
{
	bool ok = conn_queue(&s->server, s->startup_pkt, s->startup_len) && conn_flush(&s->server);
	free(s->startup_pkt);
	s->startup_pkt = NULL;
	if (!ok) {
		session_fatal(s, "08006", "could not send startup packet to server");
		return false;
	}
	conn_want_read(&s->server, true);
	conn_want_read(&s->client, true);
	return session_set_state(s, SS_AUTH);
}

static bool server_connected(struct session *s)
{
	int err = 0;
	socklen_t len = sizeof(err);
	if (getsockopt(s->server.fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
		err = errno;
	if (err) {
		session_fatal(s, "08006", "could not connect to server %s:%d: %s",
			      shunt.cfg.server_host, shunt.cfg.server_port, strerror(err));
		return false;
	}
	conn_want_write(&s->server, false);
	/* Like libpq, TLS is never negotiated over a unix socket. */
	if (!shunt.server_tls || shunt.cfg.server_host[0] == '/' ||
	    shunt.cfg.server_tls_sslmode == SSLMODE_ALLOW)
		return server_send_startup(s);
	struct pktbuf b;
	pktbuf_init(&b);
	pktbuf_start(&b, 0);
	pktbuf_put_uint32(&b, PROTO_SSL_REQUEST);
	pktbuf_finish(&b);
	bool ok = pktbuf_ok(&b) && conn_queue(&s->server, b.data, b.len) && conn_flush(&s->server);
	pktbuf_free(&b);
	if (!ok) {
		session_fatal(s, "08006", "could not send SSLRequest to server");
		return false;
	}
	conn_want_read(&s->server, true);
	return session_set_state(s, SS_SERVER_SSLREQ);
}

static bool server_tls_step(struct session *s)
{
	char err[256];
	int rc = conn_tls_handshake(&s->server, err, sizeof(err));
	if (rc < 0) {
		session_fatal(s, "08006", "TLS with server failed: %s", err);
		return false;
	}
	if (rc == 0)
		return true;
	slog(LOG_LEVEL_DEBUG, s->prefix, "server TLS: %s", conn_tls_describe(&s->server));
	return server_send_startup(s);
}

static bool server_sslreq_answer(struct session *s)
{
	uint8_t answer;
	ssize_t n = read(s->server.fd, &answer, 1);
	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return true;
	if (n != 1 || (answer != 'S' && answer != 'N')) {
		session_fatal(s, "08006", "server answered SSLRequest with neither S nor N");
		return false;
	}
	if (answer == 'N') {
		if (shunt.cfg.server_tls_sslmode >= SSLMODE_REQUIRE) {
			session_fatal(s, "08006",
				      "server does not support SSL, but server_tls_sslmode is %s",
				      conf_sslmode_name(shunt.cfg.server_tls_sslmode));
			return false;
		}
		return server_send_startup(s);
	}
	bool verify_host = shunt.cfg.server_tls_sslmode == SSLMODE_VERIFY_FULL;
	if (!conn_tls_connect_setup(&s->server, shunt.server_tls, shunt.cfg.server_host,
				    verify_host)) {
		session_fatal(s, "08006", "could not set up TLS towards the server");
		return false;
	}
	if (!session_set_state(s, SS_SERVER_TLS))
		return false;
	return server_tls_step(s);
}

/* ---- moving to a relay thread ---- */

static void on_login_timeout(evutil_socket_t fd, short what, void *arg);

/*
 * Leave the main thread: its loop lets go of the session's events now, and the session
 * is handed over as the callback running it returns (client_event()), which touches it
 * no more after that.  False: stop processing.
 */
static bool session_move(struct session *s)
{
	conn_detach(&s->client);
	if (s->login_timer_set)
		event_del(&s->login_timer);
	session_unlink(s);
	s->moving = true;
	return false;
}

void session_adopted(struct session *s)
{
	struct event_base *base = workers_base_here();
	session_link(s);
	conn_rebase(&s->client, base);
	evtimer_assign(&s->login_timer, base, on_login_timeout, s);
	if (s->login_timer_set) {
		time_t used = time(NULL) - s->connect_time;
		int left = shunt.cfg.client_login_timeout - (int)(used > 0 ? used : 0);
		struct timeval tv = {left > 0 ? left : 0, 0};
		evtimer_add(&s->login_timer, &tv);
	}
	server_connect(s);
	session_reap(s);
}

/* ---- the client's first packet ---- */

static void cancel_done(evutil_socket_t fd, short what, void *arg)
{
	struct event *ev = arg;
	if (what & EV_WRITE) {
		int err = 0;
		socklen_t len = sizeof(err);
		getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
		uint8_t *pkt = (uint8_t *)(ev + 1);
		if (err || send(fd, pkt, 16, MSG_NOSIGNAL) != 16)
			log_warning("could not send CancelRequest to server: %s",
				    strerror(err ? err : errno));
	} else {
		log_warning("could not send CancelRequest to server: connect timed out");
	}
	close(fd);
	free(ev);
}

/* Forward a cancel to the session's backend on a connection of its own, as libpq does. */
static void cancel_route(uint32_t pid, uint32_t key)
{
	WORLD_HELD(); /* the session may be a relay's */
	struct session *t;
	char err[256];

	for (t = session_first(); t; t = session_next(t))
		if (t->id == pid)
			break;
	if (!t || t->cancel_key != key || !t->server_pid) {
		log_info("CancelRequest for unknown session %u ignored", pid);
		return;
	}
	int fd = server_socket(err, sizeof(err));
	if (fd < 0) {
		log_warning("%s: could not send CancelRequest: %s", t->prefix, err);
		return;
	}
	struct event *ev = malloc(sizeof(*ev) + 16);
	if (!ev) {
		close(fd);
		return;
	}
	struct pktbuf b;
	pktbuf_init(&b);
	pktbuf_start(&b, 0);
	pktbuf_put_uint32(&b, PROTO_CANCEL_REQUEST);
	pktbuf_put_uint32(&b, t->server_pid);
	pktbuf_put_uint32(&b, t->server_key);
	pktbuf_finish(&b);
	if (pktbuf_ok(&b))
		memcpy(ev + 1, b.data, 16);
	pktbuf_free(&b);
	struct timeval tv = {CANCEL_TIMEOUT_S, 0};
	event_assign(ev, shunt.base, fd, EV_WRITE, cancel_done, ev);
	event_add(ev, &tv);
	stats_here->cancels_total++;
	slog(LOG_LEVEL_INFO, t->prefix, "cancel request routed to backend %u", t->server_pid);
}

/* The database that authenticates console users: control_dsn's, else "postgres". */
static char *admin_auth_database(void)
{
	char *db = NULL;
	PQconninfoOption *opts = PQconninfoParse(shunt.cfg.control_dsn, NULL);
	for (PQconninfoOption *o = opts; o && o->keyword; o++)
		if (strcmp(o->keyword, "dbname") == 0 && o->val && o->val[0])
			db = strdup(o->val);
	PQconninfoFree(opts);
	return db ? db : strdup("postgres");
}

/* The console logs in to the server as its user, so the server does the authenticating. */
static bool admin_startup_packet(struct session *s)
{
	char *db = admin_auth_database();
	struct pktbuf b;
	pktbuf_init(&b);
	pktbuf_start(&b, 0);
	pktbuf_put_uint32(&b, PROTO_V3);
	pktbuf_put_string(&b, "user");
	pktbuf_put_string(&b, s->user);
	pktbuf_put_string(&b, "database");
	pktbuf_put_string(&b, db ? db : "postgres");
	pktbuf_put_string(&b, "application_name");
	pktbuf_put_string(&b, "pgshunt admin login");
	pktbuf_put_byte(&b, 0);
	pktbuf_finish(&b);
	free(db);
	free(s->startup_pkt);
	s->startup_pkt = b.data; /* ownership moves to the session */
	s->startup_len = (uint32_t)b.len;
	return pktbuf_ok(&b);
}

static bool client_startup_v3(struct session *s, const struct startup_info *si)
{
	const struct pgshunt_config *cfg = &shunt.cfg;

	if (cfg->client_tls_sslmode == SSLMODE_REQUIRE && !s->client.ssl) {
		session_refuse(s, "28000", "pgshunt requires TLS (client_tls_sslmode = require)");
		return false;
	}
	if (shunt.shutting_down) {
		session_refuse(s, "57P03", "pgshunt is shutting down");
		return false;
	}
	/* Only the main thread adds: the count cannot pass the limit between test and add. */
	if (atomic_load(&shunt.nclients) >= (unsigned)cfg->max_client_conn) {
		session_refuse(s, "53300", "sorry, too many clients already");
		return false;
	}
	s->counted = true;
	atomic_fetch_add(&shunt.nclients, 1);
	s->user = strdup(si->user);
	s->database = strdup(si->database);
	/*
	 * The server connection carries pgshunt.via = on (guard.h), after the client's own
	 * parameters so that it wins: guard_direct_writes lets it write.  The packet ends
	 * with the list's terminating zero, which moves to the end.
	 */
	static const char via[] = GUARD_SETTING "\0" GUARD_VALUE;
	s->startup_pkt = malloc(si->len + sizeof(via));
	if (!s->user || !s->database || !s->startup_pkt) {
		session_fatal(s, "53200", "out of memory");
		return false;
	}
	memcpy(s->startup_pkt, iobuf_head(&s->client.in), si->len - 1);
	memcpy(s->startup_pkt + si->len - 1, via, sizeof(via));
	s->startup_pkt[si->len - 1 + sizeof(via)] = 0;
	s->startup_len = si->len + (uint32_t)sizeof(via);
	for (int i = 0; i < 4; i++)
		s->startup_pkt[i] = (uint8_t)(s->startup_len >> (24 - 8 * i));
	snprintf(s->prefix, sizeof(s->prefix), "C-%u %s@%s %s:%d", s->id, s->user, s->database,
		 s->client_addr, s->client_port);
	if (strcmp(s->database, cfg->admin_database) == 0) {
		if (!conf_list_contains(cfg->admin_users, s->user)) {
			session_refuse(s, "28000",
				       "user \"%s\" is not allowed to use the pgshunt admin console",
				       s->user);
			return false;
		}
		s->is_admin = true;
		if (!admin_startup_packet(s)) {
			session_fatal(s, "53200", "out of memory");
			return false;
		}
	}
	iobuf_consume(&s->client.in, si->len);
	if (!s->is_admin && workers_count() > 0)
		return session_move(s);
	return server_connect(s);
}

static bool client_tls_step(struct session *s)
{
	char err[256];
	int rc = conn_tls_handshake(&s->client, err, sizeof(err));
	if (rc < 0) {
		stats_here->refused_total++;
		slog(LOG_LEVEL_WARNING, s->prefix, "client TLS handshake failed: %s", err);
		session_close(s, "client TLS handshake failed");
		return false;
	}
	if (rc == 0)
		return true;
	conn_want_write(&s->client, false);
	conn_want_read(&s->client, true);
	return session_set_state(s, SS_STARTUP);
}

static bool client_ssl_request(struct session *s)
{
	iobuf_consume(&s->client.in, 8);
	if (s->client.ssl) {
		session_refuse(s, "08P01", "SSLRequest received over TLS");
		return false;
	}
	/* Bytes sent before our answer would be read as if they came over TLS. */
	if (iobuf_len(&s->client.in) > 0) {
		session_refuse(s, "08P01", "received unencrypted data after SSL request");
		return false;
	}
	if (!shunt.client_tls)
		return session_send_client(s, "N", 1);
	if (!session_send_client(s, "S", 1))
		return false;
	if (!conn_tls_accept_setup(&s->client, shunt.client_tls)) {
		session_fatal(s, "08P01", "could not set up TLS");
		return false;
	}
	if (!session_set_state(s, SS_CLIENT_TLS))
		return false;
	return client_tls_step(s);
}

static bool client_process_startup(struct session *s)
{
	struct startup_info si;
	enum startup_kind kind = proto_parse_startup(iobuf_head(&s->client.in),
						      iobuf_len(&s->client.in), &si);
	switch (kind) {
	case STARTUP_INCOMPLETE:
		return true;
	case STARTUP_BAD_LENGTH:
		session_refuse(s, "08P01", "invalid length of startup packet");
		return false;
	case STARTUP_BAD_VERSION:
		session_refuse(s, "0A000",
			       "unsupported frontend protocol %u.%u: server supports 3.0 to 3.0",
			       si.version >> 16, si.version & 0xffff);
		return false;
	case STARTUP_BAD_LAYOUT:
		session_refuse(s, "08P01",
			       "invalid startup packet layout: expected terminator as last byte");
		return false;
	case STARTUP_NO_USER:
		session_refuse(s, "28000", "no PostgreSQL user name specified in startup packet");
		return false;
	case STARTUP_SSL:
		return client_ssl_request(s);
	case STARTUP_GSSENC:
		iobuf_consume(&s->client.in, 8);
		return session_send_client(s, "N", 1);
	case STARTUP_CANCEL:
		cancel_route(si.cancel_pid, si.cancel_key);
		session_close(s, "cancel request handled");
		return false;
	case STARTUP_V3:
		return client_startup_v3(s, &si);
	}
	return false;
}

/* ---- authentication pass-through ---- */

bool session_queue_client(struct session *s, const void *p, size_t n)
{
	if (conn_queue(&s->client, p, n))
		return true;
	session_fatal(s, "53200", "out of memory");
	return false;
}

/* A client message forwarded as it is (the bytes lie in the client's input buffer) is
 * not copied: client_process_messages() keeps them until they are flushed. */
static bool in_client_input(const struct session *s, const void *p, size_t n)
{
	const struct iobuf *in = &s->client.in;
	uintptr_t a = (uintptr_t)p, lo = (uintptr_t)iobuf_head(in);
	return in->data && a >= lo && a + n <= lo + iobuf_len(in);
}

bool session_queue_server(struct session *s, const void *p, size_t n)
{
	if (in_client_input(s, p, n) ? conn_queue_ref(&s->server, p, n)
				     : conn_queue(&s->server, p, n))
		return true;
	session_fatal(s, "53200", "out of memory");
	return false;
}

#define queue_client session_queue_client
#define queue_server session_queue_server

static bool send_own_key(struct session *s)
{
	struct pktbuf b;
	pktbuf_init(&b);
	pktbuf_start(&b, 'K');
	pktbuf_put_uint32(&b, s->id);
	pktbuf_put_uint32(&b, s->cancel_key);
	pktbuf_finish(&b);
	bool ok = pktbuf_ok(&b) && queue_client(s, b.data, b.len);
	pktbuf_free(&b);
	return ok;
}

/*
 * SCRAM channel binding (tls-server-end-point) binds to a hash of the server's
 * certificate.  When pgshunt presents the very certificate the server presents, the
 * client's binding data is what the server expects, and SCRAM-SHA-256-PLUS can pass
 * through; otherwise it cannot cross the proxy and is withheld from the client.
 */
static bool tls_same_identity(const struct session *s)
{
	if (!s->client.ssl || !s->server.ssl)
		return false;
	X509 *ours = SSL_get_certificate(s->client.ssl);
	X509 *theirs = SSL_get0_peer_certificate(s->server.ssl);
	return ours && theirs && X509_cmp(ours, theirs) == 0;
}

static bool auth_request(struct session *s, const uint8_t *msg, uint32_t total)
{
	uint32_t code;
	if (!proto_auth_code(msg + 5, total - 5, &code)) {
		session_fatal(s, "08P01", "server sent a malformed authentication request");
		return false;
	}
	if (code != 10 || tls_same_identity(s))
		return queue_client(s, msg, total);
	struct pktbuf b;
	pktbuf_init(&b);
	bool ok = proto_sasl_strip_plus(msg + 5, total - 5, &b);
	if (ok)
		ok = queue_client(s, b.data, b.len);
	else
		session_fatal(s, "08P01", "server offered no SASL mechanism pgshunt can relay");
	pktbuf_free(&b);
	s->expect_sasl_initial = ok;
	return ok;
}

/* Login finished: the session becomes a relay, or a console answered by pgshunt. */
static bool auth_done(struct session *s, const uint8_t *msg, uint32_t total)
{
	if (s->login_timer_set) {
		event_del(&s->login_timer);
		s->login_timer_set = false;
	}
	slog(LOG_LEVEL_INFO, s->prefix, "login ok%s%s", s->client.ssl ? ", tls " : "",
	     conn_tls_describe(&s->client));
	if (!s->is_admin) {
		s->tx_status = (char)msg[5];
		return queue_client(s, msg, total) && session_set_state(s, SS_ACTIVE);
	}
	/* msg lives in the server's input buffer: pass it on before that is freed. */
	if (!queue_client(s, msg, total))
		return false;
	/* The server connection only proved who the console user is. */
	static const uint8_t terminate[5] = {'X', 0, 0, 0, 4};
	if (conn_queue(&s->server, terminate, sizeof(terminate)) && conn_flush(&s->server))
		slog(LOG_LEVEL_DEBUG, s->prefix, "admin login connection closed");
	conn_close(&s->server);
	s->server_pid = 0;
	return session_set_state(s, SS_ADMIN) && admin_begin(s);
}

static bool server_message_auth(struct session *s, char type, const uint8_t *msg, uint32_t total)
{
	switch (type) {
	case 'R':
		return auth_request(s, msg, total);
	case 'K': {
		struct mbuf m;
		mbuf_init(&m, msg + 5, total - 5);
		if (!mbuf_get_uint32(&m, &s->server_pid) || !mbuf_get_uint32(&m, &s->server_key)) {
			session_fatal(s, "08P01", "server sent a malformed BackendKeyData");
			return false;
		}
		return send_own_key(s);
	}
	case 'Z':
		if (total < 6) {
			session_fatal(s, "08P01", "server sent a malformed ReadyForQuery");
			return false;
		}
		return auth_done(s, msg, total);
	case 'E': {
		const char *sev, *code, *text;
		if (proto_error_fields(msg + 5, total - 5, &sev, &code, &text))
			slog(LOG_LEVEL_INFO, s->prefix, "login failed: %s %s", code,
			     text ? text : "");
		s->server_said_fatal = true;
		stats_here->errors_total++;
		return queue_client(s, msg, total);
	}
	case 'S':
	case 'N':
	case 'v':
		return queue_client(s, msg, total);
	default:
		session_fatal(s, "08P01", "server sent message type '%c' during authentication",
			      type);
		return false;
	}
}

/*
 * Unless both sides present one certificate, SCRAM channel binding cannot cross a
 * proxy that terminates TLS on both sides: a client that saw no -PLUS mechanism over
 * TLS says 'y', which a TLS server rejects.  Say so clearly instead of letting the
 * server's negotiation error puzzle the user.
 */
static bool check_sasl_initial(struct session *s, const uint8_t *msg, uint32_t total)
{
	struct mbuf m;
	const char *mech;
	uint32_t len;
	uint8_t flag;

	s->expect_sasl_initial = false;
	mbuf_init(&m, msg + 5, total - 5);
	if (!mbuf_get_string(&m, &mech) || !mbuf_get_uint32(&m, &len) || !mbuf_get_byte(&m, &flag))
		return true; /* malformed: the server will say so */
	if (flag == 'y' && s->client.ssl && s->server.ssl) {
		session_fatal(s, "08P01",
			      "SCRAM channel binding cannot cross pgshunt: its certificate is not "
			      "the server's; connect with channel_binding=disable, or give pgshunt "
			      "the server's certificate");
		return false;
	}
	return true;
}

/* Only password messages get here: client_process_messages() holds the rest. */
static bool client_message_auth(struct session *s, char type, const uint8_t *msg, uint32_t total)
{
	(void)type;
	if (s->expect_sasl_initial && !check_sasl_initial(s, msg, total))
		return false;
	return queue_server(s, msg, total);
}

/* ---- the relay ---- */

static bool flush_to(struct session *s, struct conn *dst, struct conn *src, bool *src_blocked)
{
	if (!conn_flush(dst)) {
		session_close(s, dst == &s->client ? "client write failed" : "server write failed");
		return false;
	}
	if (!*src_blocked && iobuf_len(&dst->out) > HIGH_WATER) {
		*src_blocked = true;
		conn_want_read(src, false);
	}
	return true;
}

static void unblock_source(struct conn *dst, struct conn *src, bool *src_blocked)
{
	if (*src_blocked && iobuf_len(&dst->out) < LOW_WATER) {
		*src_blocked = false;
		conn_want_read(src, true);
		event_active(&src->ev_read, EV_READ, 0);
	}
}

static void request_done(struct session *s)
{
	uint64_t t = now_us();
	if (s->busy_since_us && t > s->busy_since_us)
		stats_here->query_time_us += t - s->busy_since_us;
	s->busy_since_us = 0;
}

static bool emit_fake(void *arg, const uint8_t *p, uint32_t n)
{
	return queue_client(arg, p, n);
}

/* Answers pgshunt gives itself go out when their turn in the FIFO comes. */
static bool release_fakes(struct session *s)
{
	return respq_take_fakes(&s->respq, emit_fake, s);
}

static bool server_message_active(struct session *s, char type, const uint8_t *msg,
				  uint32_t total)
{
	bool drop = false;
	/* The engine sees the message while its request is still at the FIFO's head. */
	struct respq_entry *head = respq_first(&s->respq);
	/* Most answers go as they are: no call into the engine for them. */
	if (head && (head->timed || head->action != RESP_FORWARD || head->xform || head->ctx) &&
	    !engine_server_message(s, head, type, msg, total, &drop))
		return false;
	struct respq_verdict v = respq_on_message(&s->respq, type);

	if (type == 'Z' && total >= 6) {
		s->tx_status = (char)msg[5];
		if (s->tx_status == 'I' && v.action == RESP_FORWARD)
			stats_here->xacts_total++;
		if (respq_empty(&s->respq))
			request_done(s);
	} else if (type == 'E') {
		const char *sev, *code, *text;
		if (proto_error_fields(msg + 5, total - 5, &sev, &code, &text) &&
		    (strcmp(sev, "FATAL") == 0 || strcmp(sev, "PANIC") == 0))
			s->server_said_fatal = true;
		if (v.action == RESP_FORWARD)
			stats_here->errors_total++;
	}
	bool to_client = v.action == RESP_FORWARD || (v.action == RESP_SKIP && !drop);
	/* Not copied: server_process_messages() keeps the bytes until they are flushed. */
	if (to_client && !drop && !conn_queue_ref(&s->client, msg, total)) {
		session_fatal(s, "53200", "out of memory");
		return false;
	}
	return !v.completes || release_fakes(s);
}

static bool client_message_active(struct session *s, char type, const uint8_t *msg,
				  uint32_t total)
{
	if (type == 'X') {
		if (queue_server(s, msg, total) && conn_flush(&s->server))
			slog(LOG_LEVEL_DEBUG, s->prefix, "terminate relayed");
		session_close(s, "client terminated the session");
		return false;
	}
	return engine_client_message(s, type, msg, total) && release_fakes(s);
}

/* Relay bytes of a message too large to hold, as they arrive. */
static bool relay_stream(struct session *s, struct conn *src, uint32_t *left, bool forward,
			 bool to_client)
{
	size_t n = iobuf_len(&src->in);
	if (n > *left)
		n = *left;
	/* Copied, not referenced: the bytes are consumed right away. */
	bool ok = !forward || conn_queue(to_client ? &s->client : &s->server,
					 iobuf_head(&src->in), n);
	if (!ok)
		session_fatal(s, "53200", "out of memory");
	iobuf_consume(&src->in, n);
	*left -= (uint32_t)n;
	return ok;
}

static bool frame_error(struct session *s, enum frame_status fs, uint32_t limit)
{
	if (fs == FRAME_TOO_LARGE)
		session_refuse(s, "08P01", "message exceeds max_message_size (%u bytes)", limit);
	else
		session_refuse(s, "08P01", "invalid message length");
	return false;
}

static bool client_can_stream(struct session *s, char type)
{
	return s->state == SS_ACTIVE && type == 'd';
}

/* One client message, whole, handed to the state's handler. */
static bool client_dispatch(struct session *s, char type, const uint8_t *msg, uint32_t total)
{
	if (s->state == SS_AUTH)
		return client_message_auth(s, type, msg, total);
	return client_message_active(s, type, msg, total);
}

/*
 * The input of src processed so far (*done bytes) is let go: what of it went to the
 * other side as it is (by reference: conn_queue_ref(), session_queue_server()) is
 * copied first.  Before the input buffer may move or be freed.
 */
static bool input_done(struct session *s, struct conn *src, size_t *done)
{
	if (!conn_settle(src == &s->client ? &s->server : &s->client)) {
		session_fatal(s, "53200", "out of memory");
		return false;
	}
	iobuf_consume(&src->in, *done);
	*done = 0;
	return true;
}

/* One pass over the client's input; *done as in server_process_messages(). */
static bool client_process_input(struct session *s, size_t *done)
{
	struct iobuf *in = &s->client.in;
	uint32_t limit = (uint32_t)shunt.cfg.max_message_size;

	while (*done < iobuf_len(in) && s->state != SS_CLOSED) {
		if (s->client_stream_left) {
			if (!input_done(s, &s->client, done) ||
			    !relay_stream(s, &s->client, &s->client_stream_left, true, false))
				return false;
			continue;
		}
		const uint8_t *msg = iobuf_head(in) + *done;
		size_t avail = iobuf_len(in) - *done;
		char type;
		uint32_t total;
		enum frame_status fs = proto_frame(msg, avail, limit, &type, &total);
		if (fs == FRAME_INCOMPLETE)
			break;
		if (fs != FRAME_OK)
			return frame_error(s, fs, limit);
		if (s->state == SS_ACTIVE && !proto_frontend_type_valid(type)) {
			session_refuse(s, "08P01", "invalid frontend message type %d",
				       (int)(uint8_t)type);
			return false;
		}
		/* A request sent ahead of the login's end waits for it, as the server would. */
		if (s->state == SS_AUTH && type != 'p')
			break;
		if (shunt.paused && s->state == SS_ACTIVE && session_idle(s)) {
			s->parked = true;
			conn_want_read(&s->client, false);
			break;
		}
		/* I7: never serve the table under a phase that is not known to be current. */
		if (s->state == SS_ACTIVE && total <= avail &&
		    engine_must_hold(s, type, msg, total)) {
			s->parked = true;
			conn_want_read(&s->client, false);
			slog(LOG_LEVEL_INFO, s->prefix, "%s",
			     shunt.phase.known ? "held: the fleet is held for the finalize rename"
					       : "held: the phase in force is not known");
			break;
		}
		if (total > avail) {
			if (!input_done(s, &s->client, done))
				return false;
			if (client_can_stream(s, type)) {
				s->client_stream_left = total;
				continue;
			}
			if (!iobuf_reserve(in, total - iobuf_len(in))) {
				session_fatal(s, "53200", "out of memory");
				return false;
			}
			break;
		}
		if (!client_dispatch(s, type, msg, total))
			return false;
		*done += total;
	}
	return s->state != SS_CLOSED;
}

static bool client_process_messages(struct session *s)
{
	size_t done = 0; /* processed, consumed only after the flush: see input_done() */
	bool ok = client_process_input(s, &done);
	if (s->state == SS_CLOSED)
		return false;
	ok = flush_to(s, &s->server, &s->client, &s->client_blocked) && ok;
	return input_done(s, &s->client, &done) && ok && s->state != SS_CLOSED;
}

static bool server_dispatch(struct session *s, char type, const uint8_t *msg, uint32_t total)
{
	if (s->state == SS_AUTH)
		return server_message_auth(s, type, msg, total);
	return server_message_active(s, type, msg, total);
}

static bool server_start_stream(struct session *s, char type, uint32_t total)
{
	struct respq_verdict v = respq_on_message(&s->respq, type);
	s->server_stream_left = total;
	s->server_stream_forward = v.action == RESP_FORWARD;
	return true;
}

static bool server_process_messages(struct session *s)
{
	struct iobuf *in = &s->server.in;
	size_t done = 0; /* processed, consumed only after the flush: see input_done() */
	bool ok = true;

	while (done < iobuf_len(in) && s->state != SS_CLOSED) {
		if (s->server_stream_left) {
			if (!input_done(s, &s->server, &done) ||
			    !relay_stream(s, &s->server, &s->server_stream_left,
					  s->server_stream_forward, true))
				return false;
			continue;
		}
		const uint8_t *msg = iobuf_head(in) + done;
		size_t avail = iobuf_len(in) - done;
		char type;
		uint32_t total;
		enum frame_status fs = proto_frame(msg, avail, SERVER_MAX_MSG, &type, &total);
		if (fs == FRAME_INCOMPLETE)
			break;
		if (fs != FRAME_OK) {
			session_fatal(s, "08P01", "server sent a malformed message");
			return false;
		}
		if (total > avail) {
			if (!input_done(s, &s->server, &done))
				return false;
			if (s->state == SS_ACTIVE && (type == 'D' || type == 'd') &&
			    !engine_needs_whole(respq_first(&s->respq))) {
				server_start_stream(s, type, total);
				continue;
			}
			if (!iobuf_reserve(in, total - iobuf_len(in))) {
				session_fatal(s, "53200", "out of memory");
				return false;
			}
			break;
		}
		if (!server_dispatch(s, type, msg, total)) {
			ok = false;
			break;
		}
		done += total;
	}
	if (s->state == SS_CLOSED)
		return false;
	ok = flush_to(s, &s->client, &s->server, &s->server_blocked) && ok;
	return input_done(s, &s->server, &done) && ok && s->state != SS_CLOSED;
}

/*
 * After the server's messages: a session left quiet (answered, or streaming: one that
 * began its stream during the shutdown) ends here when pgshunt shuts down.
 */
static void server_idle_point(struct session *s)
{
	if (s->state != SS_ACTIVE || !session_quiet(s))
		return;
	if (shunt.shutting_down)
		session_fatal(s, "57P01", "terminating connection: pgshunt is shutting down");
}

static bool client_process(struct session *s)
{
	switch (s->state) {
	case SS_STARTUP:
		return client_process_startup(s);
	case SS_AUTH:
	case SS_ACTIVE:
		return client_process_messages(s);
	case SS_ADMIN:
		return admin_process(s);
	default:
		return true; /* input waits until the server side is ready */
	}
}

static bool server_process(struct session *s)
{
	if (!server_process_messages(s))
		return false;
	server_idle_point(s);
	return s->state != SS_CLOSED;
}

/* Out of rounds with plaintext still inside OpenSSL: epoll will not say so, we must. */
static void tls_read_later(struct conn *c)
{
	if (c->ssl && c->read_armed && SSL_pending(c->ssl) > 0)
		event_active(&c->ev_read, EV_READ, 0);
}

static void client_eof(struct session *s, ssize_t n)
{
	if (n == 0)
		session_close(s, "client closed the connection");
	else
		session_close(s, "client connection error");
}

static void client_readable(struct session *s)
{
	for (int round = 0; round < 16 && s->state != SS_CLOSED; round++) {
		if (!s->client.read_armed && s->client.read_waits != TLS_WAIT_WRITE)
			return;
		ssize_t n = conn_read(&s->client);
		if (n <= 0) {
			if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
				return;
			client_eof(s, n);
			return;
		}
		stats_here->bytes_received += (uint64_t)n;
		/* Startup handling may consume only a prefix: loop until it stops progressing. */
		size_t before;
		do {
			before = iobuf_len(&s->client.in);
			if (!client_process(s))
				return;
		} while (s->state == SS_STARTUP && iobuf_len(&s->client.in) > 0 &&
			 iobuf_len(&s->client.in) < before);
		if (s->client.drained)
			return; /* skip the read that would only say EAGAIN */
	}
	tls_read_later(&s->client);
}

static void server_eof(struct session *s)
{
	if (!s->server_said_fatal && conn_is_open(&s->client))
		queue_error(s, "FATAL", "08006",
			    "server closed the connection unexpectedly\n\tThis probably means the "
			    "server terminated abnormally\n\tbefore or while processing the request.");
	session_close(s, "server closed the connection");
}

static void server_readable(struct session *s)
{
	for (int round = 0; round < 16 && s->state != SS_CLOSED; round++) {
		if (!s->server.read_armed && s->server.read_waits != TLS_WAIT_WRITE)
			return;
		ssize_t n = conn_read(&s->server);
		if (n <= 0) {
			if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
				return;
			server_eof(s);
			return;
		}
		if (!server_process(s))
			return;
		if (s->server.drained)
			return;
	}
	tls_read_later(&s->server);
}

static void client_writable(struct session *s)
{
	if (!conn_flush(&s->client)) {
		session_close(s, "client write failed");
		return;
	}
	unblock_source(&s->client, &s->server, &s->server_blocked);
	if (s->client.read_waits == TLS_WAIT_WRITE)
		client_readable(s);
}

static void server_writable(struct session *s)
{
	if (!conn_flush(&s->server)) {
		session_close(s, "server write failed");
		return;
	}
	unblock_source(&s->server, &s->client, &s->client_blocked);
	if (s->server.read_waits == TLS_WAIT_WRITE)
		server_readable(s);
}

static void client_event(struct session *s, short what)
{
	uint64_t sent = s->client.bytes_out;
	if (s->state == SS_CLIENT_TLS) {
		/* The startup packet may already sit decrypted inside OpenSSL. */
		if (client_tls_step(s) && s->state == SS_STARTUP)
			client_readable(s);
	} else {
		if (what & EV_WRITE)
			client_writable(s);
		if ((what & EV_READ) && s->state != SS_CLOSED)
			client_readable(s);
	}
	if (s->state != SS_CLOSED)
		stats_here->bytes_sent += s->client.bytes_out - sent;
	if (s->moving) {
		s->moving = false;
		workers_adopt(s); /* the relay's from here on */
		return;
	}
	session_reap(s);
}

static void on_client_event(evutil_socket_t fd, short what, void *arg)
{
	struct session *s = arg;
	(void)fd;
	/*
	 * Until its startup packet is read, a session on the main thread touches only the
	 * main thread's own state (cancel_route() takes the world itself): a TLS handshake
	 * does not hold the relays up.
	 */
	if ((s->state == SS_STARTUP || s->state == SS_CLIENT_TLS) && s->worker == 0) {
		client_event(s, what);
		return;
	}
	WORLD_HELD();
	client_event(s, what);
}

static void on_server_event(evutil_socket_t fd, short what, void *arg)
{
	WORLD_HELD();
	struct session *s = arg;
	uint64_t sent = s->client.bytes_out;
	(void)fd;
	switch (s->state) {
	case SS_CONNECTING:
		server_connected(s);
		break;
	case SS_SERVER_SSLREQ:
		server_sslreq_answer(s);
		break;
	case SS_SERVER_TLS:
		server_tls_step(s);
		break;
	default:
		if (what & EV_WRITE)
			server_writable(s);
		if ((what & EV_READ) && s->state != SS_CLOSED)
			server_readable(s);
		break;
	}
	/* Input the client sent ahead: while the server was reached, or before login ended. */
	if ((s->state == SS_AUTH || s->state == SS_ACTIVE || s->state == SS_ADMIN) &&
	    iobuf_len(&s->client.in) > 0 && !s->parked)
		client_process(s);
	if (s->state != SS_CLOSED)
		stats_here->bytes_sent += s->client.bytes_out - sent;
	session_reap(s);
}

/* ---- PAUSE, RESUME, shutdown ---- */

void session_resume_all(void)
{
	struct session *s, *next;
	if (workers_on_main())
		workers_post_resume();
	for (s = *workers_sessions_here(); s; s = next) {
		next = s->next;
		if (!s->parked)
			continue;
		s->parked = false;
		conn_want_read(&s->client, true);
		if (iobuf_len(&s->client.in) > 0)
			client_process(s);
		session_reap(s);
	}
}

void session_shutdown_idle(void)
{
	struct session *s, *next;
	if (workers_on_main())
		workers_post_shutdown_idle();
	for (s = *workers_sessions_here(); s; s = next) {
		next = s->next;
		if (s->state == SS_ACTIVE && !session_quiet(s))
			continue;
		session_fatal(s, "57P01", "terminating connection: pgshunt is shutting down");
		session_reap(s);
	}
}
