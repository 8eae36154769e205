/*
 * Integration test of pgshunt's core relay and admin console, with libpq and raw
 * sockets: simple and extended queries, pipelines, COPY both ways, big rows,
 * LISTEN/NOTIFY, cancel, a backend that goes away, authentication and TLS, bad
 * protocol input, client_login_timeout, max_client_conn, and the console.
 *
 * Environment (tests/integration/run.sh exports it):
 *   PGHOST, PGPORT, PGDATABASE  where the tests connect (pgshunt, or PostgreSQL itself)
 *   SHUNT_SERVER_PORT           the real server, for side connections
 *   SHUNT_CA_FILE               the CA that signed the CN=localhost certificates
 *   SHUNT_ADMIN_DB              pgshunt's console database
 *   SHUNT_MODE                  proxy, or direct (no pgshunt: checks the tests; the
 *                               proxy-only cases are skipped)
 * The pgshunt under test runs with max_client_conn=40, client_login_timeout=3,
 * max_message_size=4MB, client_tls_sslmode=prefer, server_tls_sslmode=verify-full.
 *
 * Exit status: the number of failed tests (0 = all passed).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <libpq-fe.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BYTEAOID 17
#define INT8OID  20
#define INT4OID  23
#define TEXTOID  25

#define PROTO_V3           0x00030000u
#define PROTO_V2           0x00020000u
#define SSL_REQUEST_CODE   80877103u
#define GSSENC_REQUEST_CODE 80877104u

#define MAX_CLIENT_CONN 40      /* what the pgshunt under test is configured with */
#define LOGIN_TIMEOUT_S 3       /* its client_login_timeout */
#define RAW_TIMEOUT_MS  10000   /* raw-socket reads give up after this */
#define WATCHDOG_S      90      /* one test taking longer than this is a hang */

/* An unrelated self-signed CA: verify-full against it must fail. */
static const char wrong_ca_pem[] =
	"-----BEGIN CERTIFICATE-----\n"
	"MIIBqDCCAU+gAwIBAgIUe43O3d08Sz1mhIm0QY/zWwkItCIwCgYIKoZIzj0EAwIw\n"
	"KTEnMCUGA1UEAwwecGdzaHVudCBjb3JlX3Rlc3QgdW5yZWxhdGVkIENBMCAXDTI2\n"
	"MTEzMDA3MDExNVoYDzIxMjYxMTA2MDcwMTE1WjApMScwJQYDVQQDDB5wZ3NodW50\n"
	"IGNvcmVfdGVzdCB1bnJlbGF0ZWQgQ0EwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNC\n"
	"AARE3ZVJrhYH+b0qpuI5UEvfAwY3c2zMjPx8Kger8GWs9MDEeOEbSTzuRuwRSn/j\n"
	"OpsHE17hK1K0F05xzgmvmBFno1MwUTAdBgNVHQ4EFgQU64W1v6RO+Rtp64AlKVqZ\n"
	"s21KsQwwHwYDVR0jBBgwFoAU64W1v6RO+Rtp64AlKVqZs21KsQwwDwYDVR0TAQH/\n"
	"BAUwAwEB/zAKBggqhkjOPQQDAgNHADBEAiAi1fy5zUGn90l3SPXauik853rbTRgd\n"
	"77Obg7L9tnzMLQIgAZ7ydLlJFGxAqzbgoDF4D/+b7dHzflEZfQjJX85Apgw=\n"
	"-----END CERTIFICATE-----\n";

static struct {
	const char *host;
	const char *port;
	const char *db;
	const char *server_port;
	const char *ca_file;
	const char *admin_db;
	bool direct;
	int pid;
	char wrong_ca[256];
} env;

/* ------------------------------------------------------------------------------------ */
/* Small utilities                                                                      */
/* ------------------------------------------------------------------------------------ */

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void sleep_ms(int ms)
{
	struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

static int ms_left(double deadline)
{
	double left = (deadline - now_s()) * 1000.0;
	return left <= 0 ? 0 : (int)left + 1;
}

/* printf into one of a ring of static buffers: for short SQL and conninfo strings. */
static const char *fmt(const char *f, ...) __attribute__((format(printf, 1, 2)));

static const char *fmt(const char *f, ...)
{
	static char bufs[32][2048];
	static unsigned next;
	char *b = bufs[next++ % 32];
	va_list ap;
	va_start(ap, f);
	int n = vsnprintf(b, sizeof(bufs[0]), f, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= sizeof(bufs[0]))
		fail_msg("fmt: string too long (%d bytes)", n);
	return b;
}

/* Names unique per run, core_<pid>_<what>, in a buffer of the caller (fmt's are reused). */
#define LOCAL_NAME(var, what)                                                                      \
	char var[128];                                                                             \
	snprintf(var, sizeof(var), "core_%d_%s", env.pid, what)

static void put32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24);
	p[1] = (uint8_t)(v >> 16);
	p[2] = (uint8_t)(v >> 8);
	p[3] = (uint8_t)v;
}

static uint32_t get32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

/* ------------------------------------------------------------------------------------ */
/* Connections and sockets a test holds: released by the teardown even when it fails.   */
/* ------------------------------------------------------------------------------------ */

#define MAX_HELD 128
static PGconn *held_conns[MAX_HELD];
static int held_fds[MAX_HELD]; /* fd + 1; 0 = free slot */

static void hold_conn(PGconn *c)
{
	for (int i = 0; i < MAX_HELD; i++) {
		if (!held_conns[i]) {
			held_conns[i] = c;
			return;
		}
	}
	PQfinish(c);
	fail_msg("more than %d connections held", MAX_HELD);
}

static void drop_conn(PGconn *c)
{
	if (!c)
		return;
	for (int i = 0; i < MAX_HELD; i++)
		if (held_conns[i] == c)
			held_conns[i] = NULL;
	PQfinish(c);
}

static int hold_fd(int fd)
{
	for (int i = 0; i < MAX_HELD; i++) {
		if (!held_fds[i]) {
			held_fds[i] = fd + 1;
			return fd;
		}
	}
	close(fd);
	fail_msg("more than %d sockets held", MAX_HELD);
	return -1;
}

static void drop_fd(int fd)
{
	if (fd < 0)
		return;
	for (int i = 0; i < MAX_HELD; i++)
		if (held_fds[i] == fd + 1)
			held_fds[i] = 0;
	close(fd);
}

static void release_all(void)
{
	for (int i = 0; i < MAX_HELD; i++) {
		if (held_conns[i])
			PQfinish(held_conns[i]);
		held_conns[i] = NULL;
		if (held_fds[i])
			close(held_fds[i] - 1);
		held_fds[i] = 0;
	}
}

/* ------------------------------------------------------------------------------------ */
/* libpq helpers                                                                        */
/* ------------------------------------------------------------------------------------ */

/* A conninfo string; password may be NULL, extra is appended as is. */
static const char *ci(const char *port, const char *db, const char *user, const char *password,
		      const char *extra)
{
	return fmt("host=%s port=%s dbname=%s user=%s%s%s application_name=core_test %s",
		   env.host, port, db, user, password ? " password=" : "", password ? password : "",
		   extra ? extra : "");
}

/*
 * Connect without blocking forever, with verbose errors, so that a failed login's
 * message carries its SQLSTATE ("FATAL:  28P01: ...").  Returns the connection, good
 * or bad; the caller checks PQstatus.
 */
static PGconn *open_conn(const char *conninfo)
{
	PGconn *c = PQconnectStart(conninfo);
	if (!c)
		fail_msg("PQconnectStart: out of memory");
	hold_conn(c);
	PQsetErrorVerbosity(c, PQERRORS_VERBOSE);
	if (PQstatus(c) == CONNECTION_BAD)
		return c;
	PostgresPollingStatusType st = PGRES_POLLING_WRITING;
	double deadline = now_s() + 20;
	while (st != PGRES_POLLING_OK && st != PGRES_POLLING_FAILED) {
		struct pollfd p = {.fd = PQsocket(c),
				   .events = st == PGRES_POLLING_READING ? POLLIN : POLLOUT};
		int ms = ms_left(deadline);
		if (ms == 0)
			fail_msg("connecting did not finish within 20 s: %s", conninfo);
		int rc = poll(&p, 1, ms);
		if (rc < 0 && errno != EINTR)
			fail_msg("poll: %s", strerror(errno));
		if (rc > 0)
			st = PQconnectPoll(c);
	}
	PQsetErrorVerbosity(c, PQERRORS_DEFAULT);
	return c;
}

static PGconn *connect_ok(const char *conninfo)
{
	PGconn *c = open_conn(conninfo);
	if (PQstatus(c) != CONNECTION_OK)
		fail_msg("could not connect with \"%s\": %s", conninfo, PQerrorMessage(c));
	return c;
}

/* shunt_trust to PGPORT/PGDATABASE with libpq's defaults (sslmode=prefer). */
static PGconn *trust_conn(void)
{
	return connect_ok(ci(env.port, env.db, "shunt_trust", NULL, ""));
}

/* A superuser connection straight to PostgreSQL, around the proxy. */
static PGconn *direct_admin_conn(void)
{
	return connect_ok(ci(env.server_port, env.db, "shunt_admin", "admin-secret", ""));
}

/* The console; TLS is fine as long as SCRAM does not try channel binding. */
static PGconn *console_conn(void)
{
	return connect_ok(ci(env.port, env.admin_db, "shunt_admin", "admin-secret",
			     "channel_binding=disable"));
}

/* Does a verbose libpq message carry this SQLSTATE ("ERROR:  23505: ...")? */
static bool has_sqlstate(const char *msg, const char *code)
{
	return msg && strstr(msg, fmt(":  %s: ", code)) != NULL;
}

static void expect_connect_error(PGconn *c, const char *code, const char *text, const char *what)
{
	const char *msg = PQerrorMessage(c);
	if (PQstatus(c) == CONNECTION_OK)
		fail_msg("%s: connected, want a failure with SQLSTATE %s", what, code ? code : "-");
	if (code && !has_sqlstate(msg, code))
		fail_msg("%s: want SQLSTATE %s, got: %s", what, code, msg);
	if (text && !strstr(msg, text))
		fail_msg("%s: want \"%s\" in the error, got: %s", what, text, msg);
}

static PGresult *expect_status(PGconn *c, PGresult *r, ExecStatusType want, const char *what)
{
	if (PQresultStatus(r) != want)
		fail_msg("%s: status %s, want %s: %s", what, PQresStatus(PQresultStatus(r)),
			 PQresStatus(want), r ? PQresultErrorMessage(r) : PQerrorMessage(c));
	return r;
}

static PGresult *exec_status(PGconn *c, const char *sql, ExecStatusType want)
{
	return expect_status(c, PQexec(c, sql), want, sql);
}

/* A command that must succeed with this command tag (NULL: any). */
static void exec_cmd(PGconn *c, const char *sql, const char *tag)
{
	PGresult *r = exec_status(c, sql, PGRES_COMMAND_OK);
	if (tag && strcmp(PQcmdStatus(r), tag) != 0)
		fail_msg("%s: command tag \"%s\", want \"%s\"", sql, PQcmdStatus(r), tag);
	PQclear(r);
}

/* A one-value query; the value must equal want. */
static void check_value(PGconn *c, const char *sql, const char *want)
{
	PGresult *r = exec_status(c, sql, PGRES_TUPLES_OK);
	if (PQntuples(r) != 1 || PQnfields(r) < 1)
		fail_msg("%s: %d rows of %d columns, want one value", sql, PQntuples(r),
			 PQnfields(r));
	if (strcmp(PQgetvalue(r, 0, 0), want) != 0)
		fail_msg("%s: got \"%s\", want \"%s\"", sql, PQgetvalue(r, 0, 0), want);
	PQclear(r);
}

static long long query_int(PGconn *c, const char *sql)
{
	PGresult *r = exec_status(c, sql, PGRES_TUPLES_OK);
	if (PQntuples(r) != 1 || PQgetisnull(r, 0, 0))
		fail_msg("%s: want one non-null value, got %d rows", sql, PQntuples(r));
	long long v = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
	PQclear(r);
	return v;
}

static void expect_error_result(PGconn *c, PGresult *r, const char *code, const char *what)
{
	if (PQresultStatus(r) != PGRES_FATAL_ERROR)
		fail_msg("%s: status %s, want an error with SQLSTATE %s (%s)", what,
			 PQresStatus(PQresultStatus(r)), code, r ? "" : PQerrorMessage(c));
	const char *got = PQresultErrorField(r, PG_DIAG_SQLSTATE);
	if (!got || strcmp(got, code) != 0)
		fail_msg("%s: SQLSTATE %s, want %s: %s", what, got ? got : "(none)", code,
			 PQresultErrorMessage(r));
}

static void expect_exec_error(PGconn *c, const char *sql, const char *code)
{
	PGresult *r = PQexec(c, sql);
	expect_error_result(c, r, code, sql);
	PQclear(r);
}

/* The next result of an async query, then the NULL that ends it. */
static PGresult *next_result(PGconn *c, const char *what)
{
	PGresult *r = PQgetResult(c);
	if (!r)
		fail_msg("%s: no result: %s", what, PQerrorMessage(c));
	return r;
}

static void expect_no_more_results(PGconn *c, const char *what)
{
	PGresult *r = PQgetResult(c);
	if (r)
		fail_msg("%s: unexpected extra result %s", what, PQresStatus(PQresultStatus(r)));
}

/* Wait until a result of c can be read without blocking; false on timeout. */
static bool wait_ready(PGconn *c, int timeout_ms)
{
	double deadline = now_s() + timeout_ms / 1000.0;
	for (;;) {
		if (!PQconsumeInput(c))
			return true; /* broken: PQgetResult reports it */
		if (!PQisBusy(c))
			return true;
		int ms = ms_left(deadline);
		if (ms == 0)
			return false;
		struct pollfd p = {.fd = PQsocket(c), .events = POLLIN};
		if (poll(&p, 1, ms) < 0 && errno != EINTR)
			fail_msg("poll: %s", strerror(errno));
	}
}

/* The proxy (or server) still takes a new libpq connection and answers it. */
static void assert_proxy_alive(const char *after)
{
	PGconn *c = open_conn(ci(env.port, env.db, "shunt_trust", NULL, ""));
	if (PQstatus(c) != CONNECTION_OK)
		fail_msg("after %s, a new connection fails: %s", after, PQerrorMessage(c));
	PGresult *r = PQexec(c, "SELECT 'alive'");
	if (PQresultStatus(r) != PGRES_TUPLES_OK || strcmp(PQgetvalue(r, 0, 0), "alive") != 0)
		fail_msg("after %s, a query fails: %s", after, PQerrorMessage(c));
	PQclear(r);
	drop_conn(c);
}

/* Column index by name; fails when absent. */
static int column(PGresult *r, const char *name, const char *what)
{
	int i = PQfnumber(r, name);
	if (i < 0)
		fail_msg("%s: no column \"%s\"", what, name);
	return i;
}

static void expect_columns(PGresult *r, const char *const *names, const char *what)
{
	int n = 0;
	while (names[n])
		n++;
	if (PQnfields(r) != n)
		fail_msg("%s: %d columns, want %d", what, PQnfields(r), n);
	for (int i = 0; i < n; i++)
		if (strcmp(PQfname(r, i), names[i]) != 0)
			fail_msg("%s: column %d is \"%s\", want \"%s\"", what, i, PQfname(r, i),
				 names[i]);
}

/* ------------------------------------------------------------------------------------ */
/* Raw sockets                                                                          */
/* ------------------------------------------------------------------------------------ */

static int raw_connect(void)
{
	struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *ai, *p;
	int rc = getaddrinfo(env.host, env.port, &hints, &ai);
	if (rc != 0)
		fail_msg("getaddrinfo %s:%s: %s", env.host, env.port, gai_strerror(rc));
	int fd = -1, err = 0;
	for (p = ai; p; p = p->ai_next) {
		fd = socket(p->ai_family, p->ai_socktype | SOCK_CLOEXEC, p->ai_protocol);
		if (fd < 0) {
			err = errno;
			continue;
		}
		if (connect(fd, p->ai_addr, p->ai_addrlen) == 0)
			break;
		err = errno;
		close(fd);
		fd = -1;
	}
	freeaddrinfo(ai);
	if (fd < 0)
		fail_msg("connect %s:%s: %s", env.host, env.port, strerror(err));
	return hold_fd(fd);
}

/* Send everything; false when the peer is gone (EPIPE, ECONNRESET). */
static bool raw_send_soft(int fd, const void *buf, size_t n)
{
	const uint8_t *p = buf;
	while (n > 0) {
		ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0 && (errno == EPIPE || errno == ECONNRESET))
			return false;
		if (w <= 0)
			fail_msg("send: %s", strerror(errno));
		p += w;
		n -= (size_t)w;
	}
	return true;
}

static void raw_send(int fd, const void *buf, size_t n)
{
	if (!raw_send_soft(fd, buf, n))
		fail_msg("send: the peer closed the connection");
}

/* Read some bytes before deadline: > 0 bytes, 0 at EOF (or reset), -1 on timeout. */
static ssize_t raw_recv_some(int fd, void *buf, size_t cap, double deadline)
{
	for (;;) {
		struct pollfd p = {.fd = fd, .events = POLLIN};
		int rc = poll(&p, 1, ms_left(deadline));
		if (rc < 0 && errno == EINTR)
			continue;
		if (rc < 0)
			fail_msg("poll: %s", strerror(errno));
		if (rc == 0)
			return -1;
		ssize_t n = recv(fd, buf, cap, 0);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == ECONNRESET)
			return 0;
		if (n < 0)
			fail_msg("recv: %s", strerror(errno));
		return n;
	}
}

/* Exactly n bytes: 1, or 0 at EOF first, -1 on timeout. */
static int raw_recv_exact(int fd, void *buf, size_t n, double deadline)
{
	uint8_t *p = buf;
	while (n > 0) {
		ssize_t got = raw_recv_some(fd, p, n, deadline);
		if (got <= 0)
			return (int)got;
		p += got;
		n -= (size_t)got;
	}
	return 1;
}

/* One backend message (type, body): 1, 0 at EOF, -1 on timeout.  Body is malloc'd. */
static int raw_read_msg(int fd, char *type, uint8_t **body, uint32_t *len, double deadline)
{
	uint8_t hdr[5];
	int rc = raw_recv_exact(fd, hdr, 5, deadline);
	if (rc <= 0)
		return rc;
	uint32_t l = get32(hdr + 1);
	if (l < 4 || l > (64u << 20))
		fail_msg("backend message '%c' with length %u", hdr[0], l);
	*type = (char)hdr[0];
	*len = l - 4;
	*body = malloc(*len + 1);
	if (!*body)
		fail_msg("out of memory");
	rc = raw_recv_exact(fd, *body, *len, deadline);
	if (rc <= 0) {
		free(*body);
		*body = NULL;
		fail_msg("backend message '%c' cut off (%s)", *type, rc == 0 ? "EOF" : "timeout");
	}
	(*body)[*len] = 0;
	return 1;
}

/* Everything the peer sends until it closes the connection. */
struct reply {
	uint8_t buf[65536];
	size_t len;
	bool eof;
};

static void read_until_eof(int fd, struct reply *r, int timeout_ms)
{
	double deadline = now_s() + timeout_ms / 1000.0;
	r->len = 0;
	r->eof = false;
	for (;;) {
		uint8_t scratch[4096];
		uint8_t *dst = r->len < sizeof(r->buf) ? r->buf + r->len : scratch;
		size_t cap = r->len < sizeof(r->buf) ? sizeof(r->buf) - r->len : sizeof(scratch);
		ssize_t n = raw_recv_some(fd, dst, cap, deadline);
		if (n < 0)
			return;
		if (n == 0) {
			r->eof = true;
			return;
		}
		if (dst != scratch)
			r->len += (size_t)n;
	}
}

struct err_fields {
	char severity[32]; /* 'V' when present, else 'S' */
	char code[8];
	char message[512];
};

static bool parse_error_body(const uint8_t *body, size_t len, struct err_fields *e)
{
	size_t i = 0;
	bool have_v = false;
	memset(e, 0, sizeof(*e));
	while (i < len && body[i] != 0) {
		char field = (char)body[i++];
		const char *val = (const char *)body + i;
		size_t vl = strnlen(val, len - i);
		if (i + vl >= len)
			return false; /* no terminator */
		if (field == 'V' || (field == 'S' && !have_v))
			snprintf(e->severity, sizeof(e->severity), "%.*s", (int)vl, val);
		if (field == 'V')
			have_v = true;
		else if (field == 'C')
			snprintf(e->code, sizeof(e->code), "%.*s", (int)vl, val);
		else if (field == 'M')
			snprintf(e->message, sizeof(e->message), "%.*s", (int)vl, val);
		i += vl + 1;
	}
	return e->severity[0] && e->code[0];
}

/*
 * Walk the protocol-3 messages of a reply: the ErrorResponse in it, if any (the last one).
 * *trailing is set when bytes follow that error (it should be the last word).
 */
static bool reply_error(const struct reply *r, struct err_fields *e, bool *trailing)
{
	size_t off = 0;
	bool found = false;
	*trailing = false;
	while (off + 5 <= r->len) {
		uint32_t l = get32(r->buf + off + 1);
		if (l < 4 || off + 1 + l > r->len)
			break;
		if (r->buf[off] == 'E') {
			found = parse_error_body(r->buf + off + 5, l - 4, e);
			*trailing = false;
		} else if (found) {
			*trailing = true;
		}
		off += 1 + l;
	}
	if (found && off != r->len)
		*trailing = true;
	return found;
}

/*
 * The peer answers with a FATAL ErrorResponse carrying code, then closes.  When
 * silent_ok (PostgreSQL itself for input it only logs as COMMERROR), a close without a
 * word is accepted too; any error sent must still carry the code.
 */
static void expect_fatal_eof(int fd, const char *code, bool silent_ok, const char *what)
{
	struct reply *r = malloc(sizeof(*r));
	struct err_fields e;
	bool trailing;
	if (!r)
		fail_msg("out of memory");
	read_until_eof(fd, r, RAW_TIMEOUT_MS);
	bool found = reply_error(r, &e, &trailing);
	bool eof = r->eof;
	size_t len = r->len;
	uint8_t first = len ? r->buf[0] : 0;
	free(r);
	if (!eof)
		fail_msg("%s: the connection was not closed within %d s (%zu bytes came)", what,
			 RAW_TIMEOUT_MS / 1000, len);
	if (!found) {
		if (silent_ok && len == 0)
			return;
		if (len == 0)
			fail_msg("%s: want FATAL %s then EOF, got EOF without a word", what, code);
		fail_msg("%s: want FATAL %s then EOF, got %zu bytes without an ErrorResponse "
			 "(first byte 0x%02x)",
			 what, code, len, first);
	}
	if (strcmp(e.severity, "FATAL") != 0 || strcmp(e.code, code) != 0)
		fail_msg("%s: got %s %s \"%s\", want FATAL %s", what, e.severity, e.code, e.message,
			 code);
	if (trailing)
		fail_msg("%s: bytes follow the FATAL error", what);
}

/* A startup packet: kv is name, value, ..., NULL. */
static size_t startup_packet(uint8_t *out, size_t cap, uint32_t version, const char *const *kv)
{
	size_t n = 8;
	for (; kv && *kv; kv++) {
		size_t l = strlen(*kv) + 1;
		if (n + l + 1 > cap)
			fail_msg("startup packet too large");
		memcpy(out + n, *kv, l);
		n += l;
	}
	out[n++] = 0;
	put32(out, (uint32_t)n);
	put32(out + 4, version);
	return n;
}

static size_t trust_startup(uint8_t *out, size_t cap)
{
	const char *kv[] = {"user",		"shunt_trust",	"database", env.db,
			    "application_name", "core_test_raw", NULL};
	return startup_packet(out, cap, PROTO_V3, kv);
}

/* Read a login's answer: AuthenticationOk first, then everything up to ReadyForQuery. */
static void raw_expect_login(int fd, const char *what)
{
	double deadline = now_s() + RAW_TIMEOUT_MS / 1000.0;
	bool first = true;
	for (;;) {
		char type;
		uint8_t *body;
		uint32_t len;
		int rc = raw_read_msg(fd, &type, &body, &len, deadline);
		if (rc <= 0)
			fail_msg("%s: login: %s before ReadyForQuery", what,
				 rc == 0 ? "EOF" : "timeout");
		if (type == 'E') {
			struct err_fields e;
			parse_error_body(body, len, &e);
			free(body);
			fail_msg("%s: login failed: %s %s %s", what, e.severity, e.code, e.message);
			return;
		}
		bool not_ok = first && (type != 'R' || len < 4 || get32(body) != 0);
		free(body);
		if (not_ok)
			fail_msg("%s: first message '%c' is not AuthenticationOk", what, type);
		first = false;
		if (type == 'Z')
			return;
	}
}

/* A raw connection logged in as shunt_trust and ready for a query. */
static int raw_login(const char *what)
{
	uint8_t pkt[256];
	int fd = raw_connect();
	raw_send(fd, pkt, trust_startup(pkt, sizeof(pkt)));
	raw_expect_login(fd, what);
	return fd;
}

/* Send SELECT 7 and read its answer to ReadyForQuery: the row must be there. */
static void raw_expect_select7(int fd, const char *what)
{
	static const uint8_t q[] = {'Q', 0, 0, 0, 13, 'S', 'E', 'L', 'E', 'C', 'T', ' ', '7', 0};
	raw_send(fd, q, sizeof(q));
	double deadline = now_s() + RAW_TIMEOUT_MS / 1000.0;
	bool saw_row = false;
	for (;;) {
		char type;
		uint8_t *body;
		uint32_t len;
		if (raw_read_msg(fd, &type, &body, &len, deadline) != 1)
			fail_msg("%s: no answer", what);
		if (type == 'D' && len == 7 && body[6] == '7')
			saw_row = true;
		free(body);
		if (type == 'Z')
			break;
	}
	if (!saw_row)
		fail_msg("%s: no row 7", what);
}

/* ------------------------------------------------------------------------------------ */
/* Console helpers                                                                      */
/* ------------------------------------------------------------------------------------ */

static long long stats_value(PGconn *adm, const char *name)
{
	PGresult *r = exec_status(adm, "SHOW STATS", PGRES_TUPLES_OK);
	if (PQntuples(r) != 1)
		fail_msg("SHOW STATS: %d rows, want 1", PQntuples(r));
	long long v = strtoll(PQgetvalue(r, 0, column(r, name, "SHOW STATS")), NULL, 10);
	PQclear(r);
	return v;
}

/* The SHOW CLIENTS row of the client whose socket is bound to local port lport, or -1. */
static int clients_row_by_port(PGresult *r, int lport)
{
	int cport = column(r, "port", "SHOW CLIENTS");
	for (int i = 0; i < PQntuples(r); i++)
		if (atoi(PQgetvalue(r, i, cport)) == lport)
			return i;
	return -1;
}

static int local_port(PGconn *c)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);
	if (getsockname(PQsocket(c), (struct sockaddr *)&ss, &len) < 0)
		fail_msg("getsockname: %s", strerror(errno));
	if (ss.ss_family == AF_INET)
		return ntohs(((struct sockaddr_in *)&ss)->sin_port);
	if (ss.ss_family == AF_INET6)
		return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
	fail_msg("the connection is not over TCP");
	return -1;
}

static void no_secret_in(PGresult *r, const char *what)
{
	for (int i = 0; i < PQntuples(r); i++)
		for (int j = 0; j < PQnfields(r); j++)
			if (strstr(PQgetvalue(r, i, j), "admin-secret"))
				fail_msg("%s shows the password: row %d column %s = \"%s\"", what,
					 i, PQfname(r, j), PQgetvalue(r, i, j));
}

/* ------------------------------------------------------------------------------------ */
/* Fixtures                                                                             */
/* ------------------------------------------------------------------------------------ */

static const char *volatile current_test = "?";

static void on_alarm(int sig)
{
	static const char m1[] = "core_test: watchdog: test ";
	static const char m2[] = " hung, giving up\n";
	(void)sig;
	if (write(2, m1, sizeof(m1) - 1) < 0 ||
	    write(2, current_test, strlen(current_test)) < 0 || write(2, m2, sizeof(m2) - 1) < 0)
		_exit(3);
	_exit(3);
}

static int setup(void **state)
{
	(void)state;
	alarm(WATCHDOG_S);
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	release_all();
	alarm(0);
	return 0;
}

/* After the PAUSE test, whatever happened: RESUME, so that the other tests can run. */
static int teardown_resume(void **state)
{
	release_all();
	if (!env.direct) {
		PGconn *c = PQconnectdb(ci(env.port, env.admin_db, "shunt_admin", "admin-secret",
					   "channel_binding=disable connect_timeout=10"));
		if (PQstatus(c) == CONNECTION_OK)
			PQclear(PQexec(c, "RESUME"));
		PQfinish(c);
	}
	return teardown(state);
}

#define SETUP_NAME(name)                                                                           \
	do {                                                                                       \
		current_test = name;                                                               \
	} while (0)

/* ------------------------------------------------------------------------------------ */
/* 1. Simple query protocol                                                             */
/* ------------------------------------------------------------------------------------ */

static void test_simple_query(void **state)
{
	(void)state;
	SETUP_NAME("simple_query");
	LOCAL_NAME(t, "simple");
	PGconn *c = trust_conn();
	PGresult *r;

	exec_cmd(c, fmt("CREATE TABLE %s (id int PRIMARY KEY, v text)", t), "CREATE TABLE");
	r = exec_status(c, fmt("INSERT INTO %s VALUES (1, 'a'), (2, 'b'), (3, 'c')", t),
			PGRES_COMMAND_OK);
	assert_string_equal(PQcmdStatus(r), "INSERT 0 3");
	assert_string_equal(PQcmdTuples(r), "3");
	PQclear(r);
	r = exec_status(c, fmt("UPDATE %s SET v = v || 'x' WHERE id >= 2", t), PGRES_COMMAND_OK);
	assert_string_equal(PQcmdStatus(r), "UPDATE 2");
	assert_string_equal(PQcmdTuples(r), "2");
	PQclear(r);
	r = exec_status(c, fmt("DELETE FROM %s WHERE id = 3", t), PGRES_COMMAND_OK);
	assert_string_equal(PQcmdStatus(r), "DELETE 1");
	assert_string_equal(PQcmdTuples(r), "1");
	PQclear(r);

	r = exec_status(c, fmt("SELECT id, v FROM %s ORDER BY id", t), PGRES_TUPLES_OK);
	assert_string_equal(PQcmdStatus(r), "SELECT 2");
	assert_int_equal(PQntuples(r), 2);
	assert_int_equal(PQnfields(r), 2);
	assert_string_equal(PQfname(r, 0), "id");
	assert_string_equal(PQfname(r, 1), "v");
	assert_int_equal(PQftype(r, 0), INT4OID);
	assert_int_equal(PQftype(r, 1), TEXTOID);
	assert_string_equal(PQgetvalue(r, 0, 0), "1");
	assert_string_equal(PQgetvalue(r, 0, 1), "a");
	assert_string_equal(PQgetvalue(r, 1, 0), "2");
	assert_string_equal(PQgetvalue(r, 1, 1), "bx");
	PQclear(r);

	r = exec_status(c, "SELECT NULL::text, '', 'h€llo ☃'", PGRES_TUPLES_OK);
	assert_true(PQgetisnull(r, 0, 0));
	assert_false(PQgetisnull(r, 0, 1));
	assert_string_equal(PQgetvalue(r, 0, 1), "");
	assert_string_equal(PQgetvalue(r, 0, 2), "h€llo ☃");
	PQclear(r);

	/* Several statements in one Query message: one result each. */
	const char *multi = fmt("SELECT 1; SELECT 'two', 2; INSERT INTO %s VALUES (10, 'm'); "
				"SELECT count(*) FROM %s",
				t, t);
	if (!PQsendQuery(c, multi))
		fail_msg("PQsendQuery: %s", PQerrorMessage(c));
	r = expect_status(c, next_result(c, "multi 1"), PGRES_TUPLES_OK, "multi 1");
	assert_int_equal(PQntuples(r), 1);
	assert_string_equal(PQgetvalue(r, 0, 0), "1");
	PQclear(r);
	r = expect_status(c, next_result(c, "multi 2"), PGRES_TUPLES_OK, "multi 2");
	assert_int_equal(PQnfields(r), 2);
	assert_string_equal(PQgetvalue(r, 0, 0), "two");
	assert_string_equal(PQgetvalue(r, 0, 1), "2");
	PQclear(r);
	r = expect_status(c, next_result(c, "multi 3"), PGRES_COMMAND_OK, "multi 3");
	assert_string_equal(PQcmdStatus(r), "INSERT 0 1");
	PQclear(r);
	r = expect_status(c, next_result(c, "multi 4"), PGRES_TUPLES_OK, "multi 4");
	assert_string_equal(PQgetvalue(r, 0, 0), "3");
	PQclear(r);
	expect_no_more_results(c, "multi");

	/* An error in the middle stops the string and rolls back its implicit transaction. */
	multi = fmt("INSERT INTO %s VALUES (11, 'n'); SELECT 1/0; INSERT INTO %s VALUES (12, 'o')",
		    t, t);
	if (!PQsendQuery(c, multi))
		fail_msg("PQsendQuery: %s", PQerrorMessage(c));
	r = expect_status(c, next_result(c, "multi error 1"), PGRES_COMMAND_OK, "multi error 1");
	PQclear(r);
	r = next_result(c, "multi error 2");
	expect_error_result(c, r, "22012", "SELECT 1/0 in a multi-statement string");
	PQclear(r);
	expect_no_more_results(c, "multi error");
	check_value(c, fmt("SELECT count(*) FROM %s", t), "3");

	/* Errors with their SQLSTATE; the session goes on. */
	r = PQexec(c, fmt("INSERT INTO %s VALUES (1, 'dup')", t));
	expect_error_result(c, r, "23505", "duplicate primary key");
	assert_non_null(PQresultErrorField(r, PG_DIAG_CONSTRAINT_NAME));
	assert_string_equal(PQresultErrorField(r, PG_DIAG_CONSTRAINT_NAME), fmt("%s_pkey", t));
	PQclear(r);
	expect_exec_error(c, fmt("SELECT * FROM core_%d_no_such_table", env.pid), "42P01");
	check_value(c, "SELECT 'still here'", "still here");
	assert_int_equal(PQtransactionStatus(c), PQTRANS_IDLE);

	/* Inside a transaction: an error aborts it until ROLLBACK. */
	exec_cmd(c, "BEGIN", "BEGIN");
	assert_int_equal(PQtransactionStatus(c), PQTRANS_INTRANS);
	expect_exec_error(c, "SELECT 1/0", "22012");
	assert_int_equal(PQtransactionStatus(c), PQTRANS_INERROR);
	expect_exec_error(c, "SELECT 1", "25P02");
	exec_cmd(c, "ROLLBACK", "ROLLBACK");
	assert_int_equal(PQtransactionStatus(c), PQTRANS_IDLE);

	r = PQexec(c, "");
	expect_status(c, r, PGRES_EMPTY_QUERY, "empty query");
	PQclear(r);

	exec_cmd(c, fmt("DROP TABLE %s", t), "DROP TABLE");
}

/* ------------------------------------------------------------------------------------ */
/* 2. Extended query protocol                                                           */
/* ------------------------------------------------------------------------------------ */

static size_t ext_data(int id, uint8_t *out)
{
	size_t n = (size_t)(id % 60);
	for (size_t k = 0; k < n; k++)
		out[k] = (uint8_t)(id * 31 + (int)k * 7); /* zero bytes and 0xff among them */
	return n;
}

static void test_extended_protocol(void **state)
{
	(void)state;
	SETUP_NAME("extended_protocol");
	LOCAL_NAME(t, "ext");
	PGconn *c = trust_conn();
	PGresult *r;

	exec_cmd(c, fmt("CREATE TABLE %s (id int PRIMARY KEY, name text, data bytea)", t), NULL);
	const Oid types[3] = {INT4OID, TEXTOID, BYTEAOID};
	r = PQprepare(c, "core_ins", fmt("INSERT INTO %s VALUES ($1, $2, $3)", t), 3, types);
	PQclear(expect_status(c, r, PGRES_COMMAND_OK, "PQprepare core_ins"));

	for (int id = 1; id <= 300; id++) {
		char idbuf[16], name[32];
		uint8_t data[64];
		snprintf(idbuf, sizeof(idbuf), "%d", id);
		snprintf(name, sizeof(name), "name-%d", id);
		size_t dlen = ext_data(id, data);
		const char *values[3] = {idbuf, name, (const char *)data};
		const int lengths[3] = {0, 0, (int)dlen};
		const int formats[3] = {0, 0, 1};
		r = PQexecPrepared(c, "core_ins", 3, values, lengths, formats, 0);
		expect_status(c, r, PGRES_COMMAND_OK, fmt("PQexecPrepared core_ins id %d", id));
		if (strcmp(PQcmdStatus(r), "INSERT 0 1") != 0)
			fail_msg("id %d: tag \"%s\"", id, PQcmdStatus(r));
		PQclear(r);
	}

	/* A failing execution, and the statement still works afterwards. */
	{
		const char *values[3] = {"1", "dup", "x"};
		r = PQexecPrepared(c, "core_ins", 3, values, NULL, NULL, 0);
		expect_error_result(c, r, "23505", "PQexecPrepared with a duplicate id");
		PQclear(r);
		values[0] = "301";
		r = PQexecPrepared(c, "core_ins", 3, values, NULL, NULL, 0);
		PQclear(expect_status(c, r, PGRES_COMMAND_OK, "PQexecPrepared after an error"));
	}

	/* Describe: parameter and column types. */
	r = PQprepare(c, "core_sel",
		      fmt("SELECT id, name, data, length(data) AS len FROM %s WHERE id = $1", t), 1,
		      NULL);
	PQclear(expect_status(c, r, PGRES_COMMAND_OK, "PQprepare core_sel"));
	r = PQdescribePrepared(c, "core_sel");
	expect_status(c, r, PGRES_COMMAND_OK, "PQdescribePrepared core_sel");
	assert_int_equal(PQnparams(r), 1);
	assert_int_equal(PQparamtype(r, 0), INT4OID);
	{
		const char *const cols[] = {"id", "name", "data", "len", NULL};
		expect_columns(r, cols, "PQdescribePrepared core_sel");
	}
	assert_int_equal(PQftype(r, 0), INT4OID);
	assert_int_equal(PQftype(r, 1), TEXTOID);
	assert_int_equal(PQftype(r, 2), BYTEAOID);
	assert_int_equal(PQftype(r, 3), INT4OID);
	PQclear(r);
	r = PQdescribePrepared(c, "core_ins");
	expect_status(c, r, PGRES_COMMAND_OK, "PQdescribePrepared core_ins");
	assert_int_equal(PQnparams(r), 3);
	assert_int_equal(PQparamtype(r, 2), BYTEAOID);
	assert_int_equal(PQnfields(r), 0);
	PQclear(r);

	/* Binary results come back byte for byte. */
	const int ids[] = {1, 2, 59, 60, 61, 150, 299, 300};
	for (size_t i = 0; i < sizeof(ids) / sizeof(ids[0]); i++) {
		char idbuf[16];
		uint8_t want[64];
		snprintf(idbuf, sizeof(idbuf), "%d", ids[i]);
		const char *values[1] = {idbuf};
		size_t dlen = ext_data(ids[i], want);
		r = PQexecPrepared(c, "core_sel", 1, values, NULL, NULL, 1);
		expect_status(c, r, PGRES_TUPLES_OK, fmt("core_sel id %d", ids[i]));
		assert_int_equal(PQntuples(r), 1);
		assert_int_equal(PQfformat(r, 0), 1);
		assert_int_equal(PQgetlength(r, 0, 0), 4);
		assert_int_equal(get32((const uint8_t *)PQgetvalue(r, 0, 0)), ids[i]);
		assert_int_equal(PQgetlength(r, 0, 1), strlen(fmt("name-%d", ids[i])));
		assert_memory_equal(PQgetvalue(r, 0, 1), fmt("name-%d", ids[i]),
				    PQgetlength(r, 0, 1));
		assert_int_equal(PQgetlength(r, 0, 2), dlen);
		if (dlen)
			assert_memory_equal(PQgetvalue(r, 0, 2), want, dlen);
		assert_int_equal(get32((const uint8_t *)PQgetvalue(r, 0, 3)), dlen);
		PQclear(r);
	}
	/* ... and bytea in text format is hex. */
	{
		uint8_t want[64];
		size_t dlen = ext_data(3, want);
		char hex[2 + 2 * 64 + 1] = "\\x";
		for (size_t k = 0; k < dlen; k++)
			snprintf(hex + 2 + 2 * k, 3, "%02x", want[k]);
		const char *values[1] = {"3"};
		r = PQexecPrepared(c, "core_sel", 1, values, NULL, NULL, 0);
		expect_status(c, r, PGRES_TUPLES_OK, "core_sel id 3 in text");
		assert_string_equal(PQgetvalue(r, 0, 2), hex);
		PQclear(r);
	}

	/* Unnamed statements: PQexecParams, text and binary parameters. */
	{
		long long want_count = 0, want_bytes = 0;
		for (int id = 1; id <= 200; id++) {
			if (strncmp(fmt("name-%d", id), "name-1", 6) == 0) {
				want_count++;
				want_bytes += id % 60;
			}
		}
		const char *values[2] = {"name-1%", "200"};
		r = PQexecParams(c,
				 fmt("SELECT count(*), sum(length(data)) FROM %s "
				     "WHERE name LIKE $1 AND id <= $2",
				     t),
				 2, NULL, values, NULL, NULL, 0);
		expect_status(c, r, PGRES_TUPLES_OK, "PQexecParams count");
		assert_int_equal(strtoll(PQgetvalue(r, 0, 0), NULL, 10), want_count);
		assert_int_equal(strtoll(PQgetvalue(r, 0, 1), NULL, 10), want_bytes);
		PQclear(r);
	}
	{
		uint8_t be[4];
		put32(be, 41);
		const Oid ptypes[1] = {INT4OID};
		const char *values[1] = {(const char *)be};
		const int lengths[1] = {4}, formats[1] = {1};
		r = PQexecParams(c, "SELECT $1::int4 + 1, pg_typeof($1)::text", 1, ptypes, values,
				 lengths, formats, 0);
		expect_status(c, r, PGRES_TUPLES_OK, "PQexecParams binary int4");
		assert_string_equal(PQgetvalue(r, 0, 0), "42");
		assert_string_equal(PQgetvalue(r, 0, 1), "integer");
		PQclear(r);
	}
	{
		const char *values[1] = {"a"};
		r = PQprepare(c, "", "SELECT $1::text || 'x'", 1, NULL);
		PQclear(expect_status(c, r, PGRES_COMMAND_OK, "PQprepare unnamed"));
		r = PQexecPrepared(c, "", 1, values, NULL, NULL, 0);
		expect_status(c, r, PGRES_TUPLES_OK, "PQexecPrepared unnamed");
		assert_string_equal(PQgetvalue(r, 0, 0), "ax");
		PQclear(r);
		/* A parse error in an unnamed statement, then the session goes on. */
		r = PQexecParams(c, "SELEC 1", 0, NULL, NULL, NULL, NULL, 0);
		expect_error_result(c, r, "42601", "PQexecParams with a syntax error");
		PQclear(r);
	}

	check_value(c, fmt("SELECT count(*) FROM %s", t), "301");
	exec_cmd(c, "DEALLOCATE core_ins", "DEALLOCATE");
	{
		const char *values[3] = {"999", "gone", "x"};
		r = PQexecPrepared(c, "core_ins", 3, values, NULL, NULL, 0);
		expect_error_result(c, r, "26000", "PQexecPrepared after DEALLOCATE");
		PQclear(r);
	}
	exec_cmd(c, fmt("DROP TABLE %s", t), "DROP TABLE");
}

/* ------------------------------------------------------------------------------------ */
/* 3. Pipeline mode                                                                     */
/* ------------------------------------------------------------------------------------ */

static void pipe_send(PGconn *c, const char *sql, int id)
{
	char idbuf[16];
	snprintf(idbuf, sizeof(idbuf), "%d", id);
	const char *values[1] = {idbuf};
	if (!PQsendQueryParams(c, sql, 1, NULL, values, NULL, NULL, 0))
		fail_msg("PQsendQueryParams in pipeline: %s", PQerrorMessage(c));
}

static void pipe_expect(PGconn *c, ExecStatusType want, const char *sqlstate, const char *what,
			int i)
{
	PGresult *r = PQgetResult(c);
	if (!r)
		fail_msg("%s %d: no result (%s)", what, i, PQerrorMessage(c));
	if (PQresultStatus(r) != want)
		fail_msg("%s %d: status %s, want %s: %s", what, i, PQresStatus(PQresultStatus(r)),
			 PQresStatus(want), PQresultErrorMessage(r));
	if (sqlstate) {
		const char *got = PQresultErrorField(r, PG_DIAG_SQLSTATE);
		if (!got || strcmp(got, sqlstate) != 0)
			fail_msg("%s %d: SQLSTATE %s, want %s", what, i, got ? got : "(none)",
				 sqlstate);
	}
	PQclear(r);
	if (want == PGRES_PIPELINE_SYNC)
		return;
	r = PQgetResult(c);
	if (r)
		fail_msg("%s %d: extra result %s after the query's result", what, i,
			 PQresStatus(PQresultStatus(r)));
}

static void test_pipeline(void **state)
{
	(void)state;
	SETUP_NAME("pipeline");
	LOCAL_NAME(t, "pipe");
	PGconn *c = trust_conn();
	exec_cmd(c, fmt("CREATE TABLE %s (id int PRIMARY KEY)", t), NULL);
	char ins[256];
	snprintf(ins, sizeof(ins), "INSERT INTO %s VALUES ($1)", t);

	if (!PQenterPipelineMode(c))
		fail_msg("PQenterPipelineMode: %s", PQerrorMessage(c));
	assert_int_equal(PQpipelineStatus(c), PQ_PIPELINE_ON);

	/* 10 rows, committed by their own sync. */
	for (int i = 1; i <= 10; i++)
		pipe_send(c, ins, i);
	if (!PQpipelineSync(c))
		fail_msg("PQpipelineSync: %s", PQerrorMessage(c));
	for (int i = 1; i <= 10; i++)
		pipe_expect(c, PGRES_COMMAND_OK, NULL, "first batch insert", i);
	pipe_expect(c, PGRES_PIPELINE_SYNC, NULL, "first batch sync", 0);

	/* 100 queued inserts, number 50 a duplicate: the rest up to the sync is aborted. */
	for (int i = 1; i <= 100; i++)
		pipe_send(c, ins, i == 50 ? 5 : 100 + i);
	if (!PQpipelineSync(c))
		fail_msg("PQpipelineSync: %s", PQerrorMessage(c));
	for (int i = 1; i <= 100; i++) {
		if (i < 50)
			pipe_expect(c, PGRES_COMMAND_OK, NULL, "insert before the error", i);
		else if (i == 50)
			pipe_expect(c, PGRES_FATAL_ERROR, "23505", "the duplicate insert", i);
		else
			pipe_expect(c, PGRES_PIPELINE_ABORTED, NULL, "insert after the error", i);
	}
	pipe_expect(c, PGRES_PIPELINE_SYNC, NULL, "sync after the error", 0);
	assert_int_equal(PQpipelineStatus(c), PQ_PIPELINE_ON);

	/* After the sync, new work succeeds; the failed batch was rolled back as a whole. */
	pipe_send(c, ins, 1000);
	if (!PQsendQueryParams(c, fmt("SELECT count(*) FROM %s", t), 0, NULL, NULL, NULL, NULL, 0))
		fail_msg("PQsendQueryParams: %s", PQerrorMessage(c));
	if (!PQpipelineSync(c))
		fail_msg("PQpipelineSync: %s", PQerrorMessage(c));
	pipe_expect(c, PGRES_COMMAND_OK, NULL, "insert after the sync", 0);
	PGresult *r = PQgetResult(c);
	expect_status(c, r, PGRES_TUPLES_OK, "count in the pipeline");
	assert_string_equal(PQgetvalue(r, 0, 0), "11");
	PQclear(r);
	expect_no_more_results(c, "count in the pipeline");
	pipe_expect(c, PGRES_PIPELINE_SYNC, NULL, "last sync", 0);

	if (!PQexitPipelineMode(c))
		fail_msg("PQexitPipelineMode: %s", PQerrorMessage(c));
	check_value(c, fmt("SELECT count(*) FROM %s", t), "11");
	check_value(c, fmt("SELECT count(*) FROM %s WHERE id BETWEEN 101 AND 200", t), "0");
	exec_cmd(c, fmt("DROP TABLE %s", t), "DROP TABLE");
}

/* ------------------------------------------------------------------------------------ */
/* 4. COPY                                                                              */
/* ------------------------------------------------------------------------------------ */

#define COPY_ROWS   10000
#define COPY_BIG_ID 5000
#define COPY_BIG    (2u << 20)

static void test_copy(void **state)
{
	(void)state;
	SETUP_NAME("copy");
	LOCAL_NAME(t, "copy");
	PGconn *c = trust_conn();
	PGresult *r;

	exec_cmd(c, fmt("CREATE TABLE %s (id int PRIMARY KEY, v text)", t), NULL);

	/* The rows as COPY text, one of them 2 MB. */
	size_t cap = COPY_BIG + 64 * COPY_ROWS, len = 0;
	char *data = malloc(cap);
	assert_non_null(data);
	unsigned long long sum = 0;
	for (int id = 1; id <= COPY_ROWS; id++) {
		if (id == COPY_BIG_ID) {
			len += (size_t)sprintf(data + len, "%d\t", id);
			memset(data + len, 'y', COPY_BIG);
			len += COPY_BIG;
			data[len++] = '\n';
		} else {
			len += (size_t)sprintf(data + len, "%d\trow %d\n", id, id);
		}
	}
	for (size_t i = 0; i < len; i++)
		sum += (unsigned char)data[i];

	/* COPY FROM STDIN in chunks of assorted sizes: rows straddle CopyData messages. */
	r = exec_status(c, fmt("COPY %s (id, v) FROM STDIN", t), PGRES_COPY_IN);
	PQclear(r);
	static const size_t chunks[] = {1, 13, 8192, 65536, (1u << 20) + 3, 4096, 777};
	size_t off = 0;
	for (unsigned k = 0; off < len; k++) {
		size_t n = chunks[k % (sizeof(chunks) / sizeof(chunks[0]))];
		if (n > len - off)
			n = len - off;
		if (PQputCopyData(c, data + off, (int)n) != 1) {
			free(data);
			fail_msg("PQputCopyData at offset %zu: %s", off, PQerrorMessage(c));
		}
		off += n;
	}
	free(data);
	if (PQputCopyEnd(c, NULL) != 1)
		fail_msg("PQputCopyEnd: %s", PQerrorMessage(c));
	r = expect_status(c, next_result(c, "COPY FROM"), PGRES_COMMAND_OK, "COPY FROM STDIN");
	assert_string_equal(PQcmdStatus(r), "COPY 10000");
	assert_string_equal(PQcmdTuples(r), "10000");
	PQclear(r);
	expect_no_more_results(c, "COPY FROM");
	r = exec_status(c, fmt("SELECT count(*), max(length(v)), sum(length(v)) FROM %s", t),
			PGRES_TUPLES_OK);
	assert_string_equal(PQgetvalue(r, 0, 0), "10000");
	assert_int_equal(strtoll(PQgetvalue(r, 0, 1), NULL, 10), COPY_BIG);
	PQclear(r);

	/* COPY TO STDOUT: the same lines and bytes come back. */
	r = exec_status(c, fmt("COPY %s TO STDOUT", t), PGRES_COPY_OUT);
	PQclear(r);
	size_t lines = 0, bytes = 0;
	unsigned long long back_sum = 0;
	for (;;) {
		char *buf;
		int n = PQgetCopyData(c, &buf, 0);
		if (n == -1)
			break;
		if (n < 0)
			fail_msg("PQgetCopyData: %s", PQerrorMessage(c));
		for (int i = 0; i < n; i++) {
			back_sum += (unsigned char)buf[i];
			if (buf[i] == '\n')
				lines++;
		}
		bytes += (size_t)n;
		PQfreemem(buf);
	}
	r = expect_status(c, next_result(c, "COPY TO"), PGRES_COMMAND_OK, "COPY TO STDOUT");
	assert_string_equal(PQcmdStatus(r), "COPY 10000");
	PQclear(r);
	expect_no_more_results(c, "COPY TO");
	assert_int_equal(lines, COPY_ROWS);
	assert_int_equal(bytes, len);
	assert_true(back_sum == sum);

	/* The 2 MB row alone: one CopyData message from the server. */
	r = exec_status(c, fmt("COPY (SELECT v FROM %s WHERE id = %d) TO STDOUT", t, COPY_BIG_ID),
			PGRES_COPY_OUT);
	PQclear(r);
	{
		char *buf;
		int n = PQgetCopyData(c, &buf, 0);
		if (n < 0)
			fail_msg("PQgetCopyData (2 MB row): %s", PQerrorMessage(c));
		assert_int_equal(n, COPY_BIG + 1);
		for (int i = 0; i < (int)COPY_BIG; i++)
			if (buf[i] != 'y')
				fail_msg("2 MB row: byte %d is 0x%02x", i, (unsigned char)buf[i]);
		assert_int_equal(buf[COPY_BIG], '\n');
		PQfreemem(buf);
		assert_int_equal(PQgetCopyData(c, &buf, 0), -1);
	}
	r = expect_status(c, next_result(c, "COPY TO big"), PGRES_COMMAND_OK, "COPY big row");
	assert_string_equal(PQcmdStatus(r), "COPY 1");
	PQclear(r);
	expect_no_more_results(c, "COPY TO big");

	/* Bad data in the middle of the stream: 22P02, nothing copied, the session goes on. */
	r = exec_status(c, fmt("COPY %s (id, v) FROM STDIN", t), PGRES_COPY_IN);
	PQclear(r);
	{
		char rows[64 * 1024];
		size_t n = 0;
		n += (size_t)sprintf(rows + n, "20001\tok\n");
		for (int id = 20002; id < 20500; id++)
			n += (size_t)sprintf(rows + n, "%d\tbefore\n", id);
		n += (size_t)sprintf(rows + n, "not-a-number\tbad\n");
		for (int id = 30000; id < 30500; id++)
			n += (size_t)sprintf(rows + n, "%d\tafter\n", id);
		/* The server may already have refused the rest: libpq may say so. */
		for (size_t o = 0; o < n; o += 1000) {
			if (PQputCopyData(c, rows + o, (int)(n - o < 1000 ? n - o : 1000)) != 1)
				break;
		}
		PQputCopyEnd(c, NULL);
	}
	r = next_result(c, "COPY with bad data");
	expect_error_result(c, r, "22P02", "COPY with bad data");
	PQclear(r);
	expect_no_more_results(c, "COPY with bad data");
	assert_int_equal(PQtransactionStatus(c), PQTRANS_IDLE);
	check_value(c, fmt("SELECT count(*) FROM %s", t), "10000");

	/* CopyFail from the client: 57014, the session goes on. */
	r = exec_status(c, fmt("COPY %s (id, v) FROM STDIN", t), PGRES_COPY_IN);
	PQclear(r);
	if (PQputCopyData(c, "40001\tx\n", 8) != 1)
		fail_msg("PQputCopyData: %s", PQerrorMessage(c));
	if (PQputCopyEnd(c, "core_test gives up") != 1)
		fail_msg("PQputCopyEnd: %s", PQerrorMessage(c));
	r = next_result(c, "COPY aborted by the client");
	expect_error_result(c, r, "57014", "COPY aborted by the client");
	assert_non_null(strstr(PQresultErrorMessage(r), "core_test gives up"));
	PQclear(r);
	expect_no_more_results(c, "COPY aborted");
	check_value(c, fmt("SELECT count(*) FROM %s", t), "10000");

	exec_cmd(c, fmt("DROP TABLE %s", t), "DROP TABLE");
}

/* ------------------------------------------------------------------------------------ */
/* 5. Large results (and a large query)                                                 */
/* ------------------------------------------------------------------------------------ */

#define BIG_VALUE 20000000

static void test_large_result(void **state)
{
	(void)state;
	SETUP_NAME("large_result");
	PGconn *c = trust_conn();
	PGresult *r;

	/* 20 MB of text in one DataRow. */
	r = exec_status(c, "SELECT repeat('0123456789', 2000000), 'after'", PGRES_TUPLES_OK);
	assert_int_equal(PQntuples(r), 1);
	assert_int_equal(PQgetlength(r, 0, 0), BIG_VALUE);
	{
		const char *v = PQgetvalue(r, 0, 0);
		for (int i = 0; i < BIG_VALUE; i++)
			if (v[i] != '0' + i % 10)
				fail_msg("20 MB text: byte %d is 0x%02x, want '%c'", i,
					 (unsigned char)v[i], '0' + i % 10);
	}
	assert_string_equal(PQgetvalue(r, 0, 1), "after");
	PQclear(r);

	/* 20 MB of bytea in binary format. */
	r = PQexecParams(c, "SELECT decode(repeat('00ff7f', 6666667), 'hex')", 0, NULL, NULL, NULL,
			 NULL, 1);
	expect_status(c, r, PGRES_TUPLES_OK, "20 MB bytea");
	assert_int_equal(PQgetlength(r, 0, 0), 20000001);
	{
		static const uint8_t pat[3] = {0x00, 0xff, 0x7f};
		const uint8_t *v = (const uint8_t *)PQgetvalue(r, 0, 0);
		for (int i = 0; i < 20000001; i++)
			if (v[i] != pat[i % 3])
				fail_msg("20 MB bytea: byte %d is 0x%02x, want 0x%02x", i, v[i],
					 pat[i % 3]);
	}
	PQclear(r);

	/* Many rows of 1 kB or so: 20 MB in 20,000 DataRows. */
	r = exec_status(c,
			"SELECT g, repeat(chr(65 + g % 26), 1000 + g % 7) "
			"FROM generate_series(1, 20000) g",
			PGRES_TUPLES_OK);
	assert_int_equal(PQntuples(r), 20000);
	for (int i = 0; i < 20000; i++) {
		int g = i + 1;
		if (atoi(PQgetvalue(r, i, 0)) != g)
			fail_msg("row %d: g = %s", i, PQgetvalue(r, i, 0));
		const char *v = PQgetvalue(r, i, 1);
		int l = PQgetlength(r, i, 1);
		if (l != 1000 + g % 7 || v[0] != 'A' + g % 26 || v[l - 1] != 'A' + g % 26)
			fail_msg("row %d: length %d, first '%c'", i, l, v[0]);
	}
	PQclear(r);

	/* A query of 3.5 MB (under max_message_size = 4MB) goes through whole. */
	{
		size_t n = 3670016, qlen = n + 64;
		char *q = malloc(qlen);
		assert_non_null(q);
		size_t o = (size_t)sprintf(q, "SELECT length('");
		memset(q + o, 'q', n);
		o += n;
		sprintf(q + o, "')");
		check_value(c, q, "3670016");
		free(q);
	}
	check_value(c, "SELECT 'small after big'", "small after big");
}

/* ------------------------------------------------------------------------------------ */
/* 6. LISTEN/NOTIFY                                                                     */
/* ------------------------------------------------------------------------------------ */

static PGnotify *wait_notify(PGconn *c, int timeout_ms)
{
	double deadline = now_s() + timeout_ms / 1000.0;
	for (;;) {
		if (!PQconsumeInput(c))
			fail_msg("PQconsumeInput: %s", PQerrorMessage(c));
		PGnotify *n = PQnotifies(c);
		if (n)
			return n;
		int ms = ms_left(deadline);
		if (ms == 0)
			return NULL;
		struct pollfd p = {.fd = PQsocket(c), .events = POLLIN};
		if (poll(&p, 1, ms) < 0 && errno != EINTR)
			fail_msg("poll: %s", strerror(errno));
	}
}

static void test_listen_notify(void **state)
{
	(void)state;
	SETUP_NAME("listen_notify");
	LOCAL_NAME(channel, "chan");
	PGconn *a = trust_conn();
	PGconn *b = trust_conn();

	exec_cmd(a, fmt("LISTEN %s", channel), "LISTEN");
	long long b_pid = query_int(b, "SELECT pg_backend_pid()");
	exec_cmd(b, fmt("NOTIFY %s, 'hello %d'", channel, env.pid), "NOTIFY");
	PQclear(exec_status(b, fmt("SELECT pg_notify('%s', 'second')", channel),
			    PGRES_TUPLES_OK));

	/* a is idle: the notifications arrive unprompted. */
	PGnotify *n = wait_notify(a, 5000);
	if (!n)
		fail_msg("no notification within 5 s");
	assert_string_equal(n->relname, channel);
	assert_string_equal(n->extra, fmt("hello %d", env.pid));
	assert_int_equal(n->be_pid, b_pid);
	PQfreemem(n);
	n = wait_notify(a, 5000);
	if (!n)
		fail_msg("no second notification within 5 s");
	assert_string_equal(n->relname, channel);
	assert_string_equal(n->extra, "second");
	PQfreemem(n);

	/* Not listening any more: nothing comes. */
	exec_cmd(a, fmt("UNLISTEN %s", channel), "UNLISTEN");
	exec_cmd(b, fmt("NOTIFY %s, 'third'", channel), "NOTIFY");
	n = wait_notify(a, 300);
	if (n)
		fail_msg("notification \"%s\" after UNLISTEN", n->extra);
	check_value(a, "SELECT 'listener ok'", "listener ok");
}

/* ------------------------------------------------------------------------------------ */
/* 7. Cancel                                                                            */
/* ------------------------------------------------------------------------------------ */

static void test_cancel(void **state)
{
	(void)state;
	SETUP_NAME("cancel");
	PGconn *c = trust_conn();
	char err[256];

	if (!PQsendQuery(c, "SELECT pg_sleep(30)"))
		fail_msg("PQsendQuery: %s", PQerrorMessage(c));
	sleep_ms(500);
	double t0 = now_s();
	PGcancel *cancel = PQgetCancel(c);
	assert_non_null(cancel);
	int ok = PQcancel(cancel, err, sizeof(err));
	PQfreeCancel(cancel);
	if (!ok)
		fail_msg("PQcancel: %s", err);
	if (!wait_ready(c, 5000))
		fail_msg("pg_sleep(30) still running 5 s after the cancel");
	PGresult *r = next_result(c, "cancelled query");
	expect_error_result(c, r, "57014", "cancelled pg_sleep");
	PQclear(r);
	expect_no_more_results(c, "cancelled query");
	assert_true(now_s() - t0 < 5.0);
	check_value(c, "SELECT 'after cancel'", "after cancel");

	/* A cancel for another session (its own pid and key) leaves this one alone. */
	if (!PQsendQuery(c, "SELECT pg_sleep(1.5), 'slept'"))
		fail_msg("PQsendQuery: %s", PQerrorMessage(c));
	{
		PGconn *other = trust_conn();
		cancel = PQgetCancel(other);
		PQcancel(cancel, err, sizeof(err));
		PQfreeCancel(cancel);
		drop_conn(other);
	}
	if (!wait_ready(c, 10000))
		fail_msg("pg_sleep(1.5) did not finish");
	r = expect_status(c, next_result(c, "uncancelled"), PGRES_TUPLES_OK, "pg_sleep(1.5)");
	assert_string_equal(PQgetvalue(r, 0, 1), "slept");
	PQclear(r);
	expect_no_more_results(c, "uncancelled");
}

/* ------------------------------------------------------------------------------------ */
/* 8. The server terminates the backend                                                 */
/* ------------------------------------------------------------------------------------ */

static void test_server_terminated(void **state)
{
	(void)state;
	SETUP_NAME("server_terminated");
	PGconn *c = trust_conn();
	PGconn *d = direct_admin_conn();
	long long pid = query_int(c, "SELECT pg_backend_pid()");
	assert_true(pid > 0);

	check_value(d, fmt("SELECT pg_terminate_backend(%lld)", pid), "t");
	for (int i = 0;; i++) {
		const char *q = fmt("SELECT count(*) FROM pg_stat_activity WHERE pid = %lld", pid);
		if (query_int(d, q) == 0)
			break;
		if (i >= 50)
			fail_msg("backend %lld still there 5 s after pg_terminate_backend", pid);
		sleep_ms(100);
	}

	PGresult *r = PQexec(c, "SELECT 1");
	ExecStatusType st = PQresultStatus(r);
	const char *code = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
	const char *msg = PQerrorMessage(c);
	if (st == PGRES_TUPLES_OK)
		fail_msg("the query on a terminated backend succeeded");
	bool told = PQstatus(c) == CONNECTION_BAD || (code && strcmp(code, "57P01") == 0) ||
		    strstr(msg, "terminating connection") || strstr(msg, "server closed");
	if (!told)
		fail_msg("after pg_terminate_backend: status %s, SQLSTATE %s, message: %s",
			 PQresStatus(st), code ? code : "(none)", msg);
	PQclear(r);
	/* The connection is finished for good. */
	r = PQexec(c, "SELECT 1");
	assert_int_not_equal(PQresultStatus(r), PGRES_TUPLES_OK);
	PQclear(r);
	assert_int_equal(PQstatus(c), CONNECTION_BAD);

	PGconn *fresh = trust_conn();
	check_value(fresh, "SELECT 'new connection'", "new connection");
	assert_true(query_int(fresh, "SELECT pg_backend_pid()") != pid);
}

/* ------------------------------------------------------------------------------------ */
/* 9. Authentication and TLS                                                            */
/* ------------------------------------------------------------------------------------ */

static void test_auth_passwords(void **state)
{
	(void)state;
	SETUP_NAME("auth_passwords");
	static const struct {
		const char *user, *password;
	} users[] = {
		{"shunt_scram", "scram-secret"},
		{"shunt_md5", "md5-secret"},
		{"shunt_plain", "plain-secret"},
	};
	for (size_t i = 0; i < sizeof(users) / sizeof(users[0]); i++) {
		const char *u = users[i].user, *pw = users[i].password;
		PGconn *c;

		c = connect_ok(ci(env.port, env.db, u, pw, "sslmode=disable"));
		check_value(c, "SELECT current_user", u);
		assert_false(PQsslInUse(c));
		drop_conn(c);

		/* Over TLS (SCRAM channel binding cannot cross a TLS-terminating proxy). */
		c = connect_ok(
			ci(env.port, env.db, u, pw, "sslmode=require channel_binding=disable"));
		check_value(c, "SELECT current_user", u);
		assert_true(PQsslInUse(c));
		drop_conn(c);

		c = open_conn(ci(env.port, env.db, u, fmt("wrong-%s", pw), "sslmode=disable"));
		expect_connect_error(c, "28P01",
				     fmt("password authentication failed for user \"%s\"", u),
				     fmt("%s with a wrong password", u));
		drop_conn(c);

		c = open_conn(ci(env.port, env.db, u, NULL,
				 "sslmode=disable passfile=/nonexistent/core_test_passfile"));
		expect_connect_error(c, NULL, "no password supplied",
				     fmt("%s without a password", u));
		drop_conn(c);
	}

	/* libpq's defaults (sslmode=prefer, channel_binding=prefer) get SCRAM users in. */
	PGconn *c = connect_ok(ci(env.port, env.db, "shunt_scram", "scram-secret", ""));
	check_value(c, "SELECT current_user", "shunt_scram");
	drop_conn(c);

	/* The server decides: a role that does not exist. */
	c = open_conn(ci(env.port, env.db, "core_no_such_role", "x", "sslmode=disable"));
	expect_connect_error(c, NULL, "core_no_such_role", "a role that does not exist");
	drop_conn(c);
	c = open_conn(ci(env.port, fmt("%s_no_such_db", env.db), "shunt_trust", NULL,
			 "sslmode=disable"));
	expect_connect_error(c, "3D000", "does not exist", "a database that does not exist");
	drop_conn(c);
	assert_proxy_alive("failed logins");
}

static void test_tls(void **state)
{
	(void)state;
	SETUP_NAME("tls");
	char base[512];
	snprintf(base, sizeof(base),
		 "host=localhost port=%s dbname=%s user=shunt_trust application_name=core_test",
		 env.port, env.db);
	PGconn *c;

	c = connect_ok(fmt("%s sslmode=verify-full sslrootcert=%s", base, env.ca_file));
	assert_true(PQsslInUse(c));
	assert_non_null(PQsslAttribute(c, "protocol"));
	assert_true(strncmp(PQsslAttribute(c, "protocol"), "TLS", 3) == 0);
	check_value(c, "SELECT 'over tls'", "over tls");
	/* Through the proxy the server side is verify-full TLS too. */
	check_value(c, "SELECT ssl::text FROM pg_stat_ssl WHERE pid = pg_backend_pid()", "true");
	drop_conn(c);

	/* 127.0.0.1 is in the certificate's subjectAltName. */
	c = connect_ok(ci(env.port, env.db, "shunt_trust", NULL,
			  fmt("sslmode=verify-full sslrootcert=%s", env.ca_file)));
	assert_true(PQsslInUse(c));
	drop_conn(c);

	c = open_conn(fmt("%s sslmode=verify-full sslrootcert=%s", base, env.wrong_ca));
	expect_connect_error(c, NULL, "certificate verify failed", "verify-full with a wrong CA");
	drop_conn(c);

	c = connect_ok(fmt("%s sslmode=disable", base));
	assert_false(PQsslInUse(c));
	check_value(c, "SELECT 'plain'", "plain");
	drop_conn(c);

	c = connect_ok(fmt("%s sslmode=require", base));
	assert_true(PQsslInUse(c));
	drop_conn(c);

	/* A large result over TLS both ways. */
	c = connect_ok(fmt("%s sslmode=verify-full sslrootcert=%s", base, env.ca_file));
	PGresult *r = exec_status(c, "SELECT repeat('t', 3000000)", PGRES_TUPLES_OK);
	assert_int_equal(PQgetlength(r, 0, 0), 3000000);
	PQclear(r);
	drop_conn(c);
	assert_proxy_alive("TLS connections");
}

/* ------------------------------------------------------------------------------------ */
/* 10. Bad input over raw sockets                                                       */
/* ------------------------------------------------------------------------------------ */

static void test_bad_startup(void **state)
{
	(void)state;
	SETUP_NAME("bad_startup");
	/* PostgreSQL itself only logs a bad length (COMMERROR) and closes; pgshunt says why. */
	bool silent_ok = env.direct;
	uint8_t pkt[512];
	int fd;

	fd = raw_connect();
	raw_send(fd, "GET / HTTP/1.1\r\n\r\n", 18);
	expect_fatal_eof(fd, "08P01", silent_ok, "HTTP request instead of a startup packet");
	drop_fd(fd);
	assert_proxy_alive("garbage before startup");

	fd = raw_connect();
	put32(pkt, 4);
	put32(pkt + 4, PROTO_V3);
	raw_send(fd, pkt, 8);
	expect_fatal_eof(fd, "08P01", silent_ok, "startup packet of length 4");
	drop_fd(fd);
	assert_proxy_alive("startup length 4");

	fd = raw_connect();
	put32(pkt, 20000);
	put32(pkt + 4, PROTO_V3);
	raw_send(fd, pkt, 8);
	expect_fatal_eof(fd, "08P01", silent_ok, "startup packet of length 20000");
	drop_fd(fd);
	assert_proxy_alive("startup length 20000");

	fd = raw_connect();
	{
		const char *kv[] = {"user", "shunt_trust", "database", env.db, NULL};
		size_t n = startup_packet(pkt, sizeof(pkt), PROTO_V2, kv);
		raw_send(fd, pkt, n);
	}
	if (env.direct) {
		/* PostgreSQL answers a 2.0 client in the 2.0 format: 'E' and a string. */
		struct reply *r = malloc(sizeof(*r));
		assert_non_null(r);
		read_until_eof(fd, r, RAW_TIMEOUT_MS);
		bool good = r->eof && r->len > 1 && r->buf[0] == 'E' &&
			    memmem(r->buf, r->len, "unsupported frontend protocol", 29);
		free(r);
		if (!good)
			fail_msg("protocol 2.0: no \"unsupported frontend protocol\" error");
	} else {
		expect_fatal_eof(fd, "0A000", false, "protocol version 2.0");
	}
	drop_fd(fd);
	assert_proxy_alive("protocol 2.0");

	fd = raw_connect();
	{
		const char *kv[] = {"database", env.db, NULL};
		raw_send(fd, pkt, startup_packet(pkt, sizeof(pkt), PROTO_V3, kv));
	}
	expect_fatal_eof(fd, "28000", false, "startup packet without a user");
	drop_fd(fd);
	assert_proxy_alive("startup without user");

	/* Parameters that are not NUL-terminated pairs. */
	fd = raw_connect();
	{
		const char *kv[] = {"user", "shunt_trust", "database", NULL};
		size_t n = startup_packet(pkt, sizeof(pkt), PROTO_V3, kv);
		pkt[n - 1] = 'x'; /* no terminator */
		raw_send(fd, pkt, n);
	}
	expect_fatal_eof(fd, "08P01", false, "startup packet without its terminator");
	drop_fd(fd);
	assert_proxy_alive("bad startup layout");
}

static void test_ssl_gss_requests(void **state)
{
	(void)state;
	SETUP_NAME("ssl_gss_requests");
	uint8_t pkt[256], answer;
	int fd;

	fd = raw_connect();
	put32(pkt, 8);
	put32(pkt + 4, SSL_REQUEST_CODE);
	raw_send(fd, pkt, 8);
	int rc = raw_recv_exact(fd, &answer, 1, now_s() + RAW_TIMEOUT_MS / 1000.0);
	if (rc != 1)
		fail_msg("SSLRequest: %s instead of an answer", rc == 0 ? "EOF" : "timeout");
	if (answer != 'S')
		fail_msg("SSLRequest answered '%c' (0x%02x), want 'S'", answer, answer);
	drop_fd(fd); /* and walk away before the handshake */
	assert_proxy_alive("SSLRequest then close");

	fd = raw_connect();
	put32(pkt, 8);
	put32(pkt + 4, GSSENC_REQUEST_CODE);
	raw_send(fd, pkt, 8);
	rc = raw_recv_exact(fd, &answer, 1, now_s() + RAW_TIMEOUT_MS / 1000.0);
	if (rc != 1)
		fail_msg("GSSENCRequest: %s instead of an answer", rc == 0 ? "EOF" : "timeout");
	if (env.direct && answer == 'G') {
		/* A PostgreSQL built with GSSAPI offers it; nothing more to check here. */
		drop_fd(fd);
		return;
	}
	if (answer != 'N')
		fail_msg("GSSENCRequest answered '%c' (0x%02x), want 'N'", answer, answer);
	/* The same socket then carries a normal startup. */
	raw_send(fd, pkt, trust_startup(pkt, sizeof(pkt)));
	raw_expect_login(fd, "startup after GSSENCRequest");
	raw_expect_select7(fd, "SELECT 7 after GSSENCRequest");
	drop_fd(fd);
	assert_proxy_alive("GSSENCRequest");
}

/*
 * A client asking for a newer minor protocol version and an option of it (_pq_.*), as
 * a libpq 18 client with max_protocol_version = latest does: the server's
 * NegotiateProtocolVersion reaches it before AuthenticationOk, naming the newest version
 * it speaks (3.0) and the option it did not know, and the session then works.
 */
static void test_protocol_negotiation(void **state)
{
	(void)state;
	SETUP_NAME("protocol_negotiation");
	uint8_t pkt[256];
	const char *kv[] = {"user", "shunt_trust", "database", env.db,
			    "_pq_.shunt_test_option", "1", NULL};
	int fd = raw_connect();
	raw_send(fd, pkt, startup_packet(pkt, sizeof(pkt), PROTO_V3 | 2, kv));
	double deadline = now_s() + RAW_TIMEOUT_MS / 1000.0;
	char type;
	uint8_t *body;
	uint32_t len;
	if (raw_read_msg(fd, &type, &body, &len, deadline) != 1)
		fail_msg("protocol 3.2: no answer to the startup packet");
	static const char option[] = "_pq_.shunt_test_option";
	bool good = type == 'v' && len == 8 + sizeof(option) && get32(body) == PROTO_V3 &&
		    get32(body + 4) == 1 && memcmp(body + 8, option, sizeof(option)) == 0;
	free(body);
	if (!good)
		fail_msg("protocol 3.2: first message '%c' is not NegotiateProtocolVersion "
			 "(3.0, %s)", type, option);
	raw_expect_login(fd, "protocol 3.2, after NegotiateProtocolVersion");
	raw_expect_select7(fd, "SELECT 7 after NegotiateProtocolVersion");
	drop_fd(fd);
	assert_proxy_alive("protocol 3.2");
}

static void test_bad_messages(void **state)
{
	(void)state;
	SETUP_NAME("bad_messages");
	int fd;

	/* An unknown message type. */
	fd = raw_login("unknown type");
	{
		static const uint8_t z[] = {'z', 0, 0, 0, 4};
		raw_send(fd, z, sizeof(z));
	}
	expect_fatal_eof(fd, "08P01", false, "message type 'z'");
	drop_fd(fd);
	assert_proxy_alive("message type 'z'");

	/* A good Query and a bad message in one packet: the Query's bytes, queued to the
	 * server as they lie in the client's input, go away with the session, no further. */
	fd = raw_login("query then unknown type");
	{
		static const uint8_t qz[] = {'Q', 0, 0, 0, 13, 'S', 'E', 'L', 'E', 'C', 'T',
					     ' ', '1', 0, 'z', 0, 0, 0, 4};
		raw_send(fd, qz, sizeof(qz));
	}
	expect_fatal_eof(fd, "08P01", false, "Query then message type 'z'");
	drop_fd(fd);
	assert_proxy_alive("Query then message type 'z'");

	/* A length field below 4. */
	fd = raw_login("length 2");
	{
		static const uint8_t q[] = {'Q', 0, 0, 0, 2};
		raw_send(fd, q, sizeof(q));
	}
	expect_fatal_eof(fd, "08P01", env.direct, "message with length field 2");
	drop_fd(fd);
	assert_proxy_alive("length field 2");

	/* A Query announcing 5 MB, over max_message_size = 4MB (PostgreSQL allows 1 GB). */
	if (!env.direct) {
		fd = raw_login("5 MB query");
		uint8_t msg[5 + 1000];
		msg[0] = 'Q';
		put32(msg + 1, 5u << 20);
		memset(msg + 5, 'x', 1000);
		raw_send_soft(fd, msg, sizeof(msg));
		expect_fatal_eof(fd, "08P01", false, "Query of 5 MB");
		drop_fd(fd);
		assert_proxy_alive("5 MB query");
	}

	/* A message cut off, then the client goes away. */
	fd = raw_login("cut off");
	{
		static const uint8_t q[] = {'Q', 0, 0, 3, 0xe8, 'S', 'E', 'L', 'E', 'C', 'T', ' '};
		raw_send(fd, q, sizeof(q));
	}
	drop_fd(fd);
	assert_proxy_alive("a message cut off");

	/* A header cut off. */
	fd = raw_login("header cut off");
	raw_send(fd, "Q\0\0", 3);
	drop_fd(fd);
	assert_proxy_alive("a header cut off");

	/* A startup packet cut off. */
	fd = raw_connect();
	{
		uint8_t pkt[256];
		size_t n = trust_startup(pkt, sizeof(pkt));
		raw_send(fd, pkt, n / 2);
	}
	drop_fd(fd);
	assert_proxy_alive("a startup packet cut off");
}

static void test_login_timeout(void **state)
{
	(void)state;
	SETUP_NAME("login_timeout");
	if (env.direct)
		skip(); /* PostgreSQL's authentication_timeout is 60 s */
	uint8_t pkt[256];
	size_t n = trust_startup(pkt, sizeof(pkt));

	double t0 = now_s();
	int silent = raw_connect();
	int half = raw_connect();
	raw_send(half, pkt, n / 2);
	int tls = raw_connect();
	{
		uint8_t req[8], answer;
		put32(req, 8);
		put32(req + 4, SSL_REQUEST_CODE);
		raw_send(tls, req, 8);
		if (raw_recv_exact(tls, &answer, 1, now_s() + 5) != 1 || answer != 'S')
			fail_msg("SSLRequest not answered 'S'");
	}

	expect_fatal_eof(silent, "08P01", false, "connection that sends nothing");
	double waited = now_s() - t0;
	if (waited < LOGIN_TIMEOUT_S - 0.5)
		fail_msg("closed after %.1f s, before client_login_timeout (%d s)", waited,
			 LOGIN_TIMEOUT_S);
	expect_fatal_eof(half, "08P01", false, "connection that sent half a startup packet");
	/* Stuck in the TLS handshake: closed too (no plaintext error is possible there). */
	{
		struct reply *r = malloc(sizeof(*r));
		assert_non_null(r);
		read_until_eof(tls, r, RAW_TIMEOUT_MS);
		bool eof = r->eof;
		free(r);
		if (!eof)
			fail_msg("a client stuck in the TLS handshake was not closed within 10 s");
	}
	assert_true(now_s() - t0 < 10.0);
	drop_fd(silent);
	drop_fd(half);
	drop_fd(tls);

	/* A prompt login is not affected: it stays up past the timeout. */
	PGconn *c = trust_conn();
	sleep_ms((LOGIN_TIMEOUT_S + 1) * 1000);
	check_value(c, "SELECT 'logged in in time'", "logged in in time");
	assert_proxy_alive("login timeouts");
}

static void test_max_client_conn(void **state)
{
	(void)state;
	SETUP_NAME("max_client_conn");
	if (env.direct)
		skip(); /* PostgreSQL has max_connections = 200 */
	PGconn *adm = console_conn();
	for (int i = 0;; i++) {
		long long active = stats_value(adm, "clients_active");
		if (active == 1)
			break;
		if (i >= 50)
			fail_msg("%lld clients counted with only the console open", active);
		sleep_ms(100);
	}
	long long refused0 = stats_value(adm, "refused_total");

	/* With the console, MAX_CLIENT_CONN connections are held. */
	PGconn *conns[MAX_CLIENT_CONN - 1];
	for (int i = 0; i < MAX_CLIENT_CONN - 1; i++) {
		conns[i] = open_conn(ci(env.port, env.db, "shunt_trust", NULL, "sslmode=disable"));
		if (PQstatus(conns[i]) != CONNECTION_OK)
			fail_msg("connection %d of %d refused: %s", i + 2, MAX_CLIENT_CONN,
				 PQerrorMessage(conns[i]));
	}
	assert_int_equal(stats_value(adm, "clients_active"), MAX_CLIENT_CONN);
	check_value(conns[MAX_CLIENT_CONN - 2], "SELECT 'the last one works'",
		     "the last one works");

	/* The next one is refused: raw socket ... */
	int fd = raw_connect();
	{
		uint8_t pkt[256];
		raw_send(fd, pkt, trust_startup(pkt, sizeof(pkt)));
	}
	expect_fatal_eof(fd, "53300", false, "connection over max_client_conn");
	drop_fd(fd);
	/* ... and libpq. */
	PGconn *c = open_conn(ci(env.port, env.db, "shunt_trust", NULL, "sslmode=disable"));
	expect_connect_error(c, "53300", "too many clients", "libpq over max_client_conn");
	drop_conn(c);
	assert_true(stats_value(adm, "refused_total") >= refused0 + 2);

	/* One goes away: a new one gets in. */
	drop_conn(conns[0]);
	for (int i = 0;; i++) {
		c = open_conn(ci(env.port, env.db, "shunt_trust", NULL, "sslmode=disable"));
		if (PQstatus(c) == CONNECTION_OK)
			break;
		if (i >= 30 || !has_sqlstate(PQerrorMessage(c), "53300"))
			fail_msg("after closing one connection, a new one fails: %s",
				 PQerrorMessage(c));
		drop_conn(c);
		sleep_ms(100);
	}
	check_value(c, "SELECT 'in again'", "in again");
	release_all();
	assert_proxy_alive("max_client_conn");
}

/* ------------------------------------------------------------------------------------ */
/* 11. The console                                                                      */
/* ------------------------------------------------------------------------------------ */

static void test_console_show(void **state)
{
	(void)state;
	SETUP_NAME("console_show");
	if (env.direct)
		skip();
	PGconn *b = connect_ok(ci(env.port, env.db, "shunt_trust", NULL, "sslmode=require"));
	PGconn *plain = connect_ok(ci(env.port, env.db, "shunt_trust", NULL, "sslmode=disable"));
	long long b_pid = query_int(b, "SELECT pg_backend_pid()");
	int b_port = local_port(b), plain_port = local_port(plain);
	PGconn *adm = console_conn();
	PGresult *r;

	r = exec_status(adm, "SHOW HELP", PGRES_TUPLES_OK);
	{
		const char *const cols[] = {"command", "description", NULL};
		expect_columns(r, cols, "SHOW HELP");
	}
	assert_true(PQntuples(r) >= 5);
	{
		bool seen = false;
		for (int i = 0; i < PQntuples(r); i++)
			if (strcmp(PQgetvalue(r, i, 0), "SHOW CLIENTS") == 0 &&
			    PQgetvalue(r, i, 1)[0] != '\0')
				seen = true;
		if (!seen)
			fail_msg("SHOW HELP does not list SHOW CLIENTS");
	}
	assert_string_equal(PQcmdStatus(r), "SHOW");
	PQclear(r);

	r = exec_status(adm, "SHOW CLIENTS", PGRES_TUPLES_OK);
	{
		const char *const cols[] = {"id",	 "user",	 "database",	"addr",
					    "port",	 "tls",		 "state",	"tx_status",
					    "connect_time", "queries", "backend_pid", NULL};
		expect_columns(r, cols, "SHOW CLIENTS");
	}
	int row = clients_row_by_port(r, b_port);
	if (row < 0)
		fail_msg("SHOW CLIENTS has no row for the client on local port %d", b_port);
	char b_id[32];
	snprintf(b_id, sizeof(b_id), "%s", PQgetvalue(r, row, 0));
	assert_string_equal(PQgetvalue(r, row, 1), "shunt_trust");
	assert_string_equal(PQgetvalue(r, row, 2), env.db);
	assert_string_equal(PQgetvalue(r, row, 3), "127.0.0.1");
	assert_true(strncmp(PQgetvalue(r, row, 5), "TLS", 3) == 0);
	assert_string_equal(PQgetvalue(r, row, 6), "active");
	assert_string_equal(PQgetvalue(r, row, 7), "idle");
	assert_true(PQgetvalue(r, row, 8)[0] != '\0');
	assert_true(atoi(PQgetvalue(r, row, 9)) >= 1);
	assert_int_equal(strtoll(PQgetvalue(r, row, 10), NULL, 10), b_pid);
	int prow = clients_row_by_port(r, plain_port);
	if (prow < 0)
		fail_msg("SHOW CLIENTS has no row for the client on local port %d", plain_port);
	assert_string_equal(PQgetvalue(r, prow, 5), "");
	/* The console session itself is listed, as an admin session. */
	{
		int arow = clients_row_by_port(r, local_port(adm));
		if (arow < 0)
			fail_msg("SHOW CLIENTS does not list the console session");
		assert_string_equal(PQgetvalue(r, arow, 1), "shunt_admin");
		assert_string_equal(PQgetvalue(r, arow, 2), env.admin_db);
	}
	PQclear(r);

	r = exec_status(adm, "SHOW SERVERS", PGRES_TUPLES_OK);
	{
		const char *const cols[] = {"id",	     "client_id", "backend_pid",
					    "addr",	     "port",	  "tls",
					    "state",	     "tx_status", "pending_responses",
					    "connect_time", NULL};
		expect_columns(r, cols, "SHOW SERVERS");
	}
	{
		int srow = -1;
		for (int i = 0; i < PQntuples(r); i++)
			if (strcmp(PQgetvalue(r, i, 1), b_id) == 0)
				srow = i;
		if (srow < 0)
			fail_msg("SHOW SERVERS has no row with client_id %s", b_id);
		assert_int_equal(strtoll(PQgetvalue(r, srow, 2), NULL, 10), b_pid);
		assert_string_equal(PQgetvalue(r, srow, 4), env.server_port);
		assert_true(strncmp(PQgetvalue(r, srow, 5), "TLS", 3) == 0); /* verify-full */
		assert_string_equal(PQgetvalue(r, srow, 6), "active");
		assert_string_equal(PQgetvalue(r, srow, 7), "idle");
		assert_string_equal(PQgetvalue(r, srow, 8), "0");
	}
	PQclear(r);

	/* A transaction shows. */
	exec_cmd(b, "BEGIN", "BEGIN");
	r = exec_status(adm, "SHOW CLIENTS", PGRES_TUPLES_OK);
	row = clients_row_by_port(r, b_port);
	assert_true(row >= 0);
	assert_string_equal(PQgetvalue(r, row, 7), "in transaction");
	PQclear(r);
	exec_cmd(b, "COMMIT", "COMMIT");

	r = exec_status(adm, "SHOW STATS", PGRES_TUPLES_OK);
	assert_int_equal(PQntuples(r), 1);
	assert_true(strtoll(PQgetvalue(r, 0, column(r, "queries_total", "SHOW STATS")), NULL, 10) >
		    0);
	assert_true(strtoll(PQgetvalue(r, 0, column(r, "clients_active", "SHOW STATS")), NULL,
			    10) >= 3);
	PQclear(r);

	r = exec_status(adm, "SHOW CONFIG", PGRES_TUPLES_OK);
	{
		const char *const cols[] = {"key", "value", "default", "reloadable", "description",
					    NULL};
		expect_columns(r, cols, "SHOW CONFIG");
		bool max_seen = false, dsn_seen = false, timeout_seen = false;
		for (int i = 0; i < PQntuples(r); i++) {
			const char *k = PQgetvalue(r, i, 0), *v = PQgetvalue(r, i, 1);
			if (strcmp(k, "max_client_conn") == 0) {
				assert_string_equal(v, "40");
				max_seen = true;
			} else if (strcmp(k, "client_login_timeout") == 0) {
				assert_string_equal(v, "3");
				timeout_seen = true;
			} else if (strcmp(k, "control_dsn") == 0) {
				dsn_seen = true;
				if (!strstr(v, "user=shunt_admin"))
					fail_msg("control_dsn shown as \"%s\"", v);
			}
		}
		if (!max_seen || !dsn_seen || !timeout_seen)
			fail_msg("SHOW CONFIG lacks max_client_conn, client_login_timeout or "
				 "control_dsn");
		no_secret_in(r, "SHOW CONFIG");
	}
	PQclear(r);

	expect_exec_error(adm, "SHOW NOSUCH", "42601");
	/* Several statements in one Query, and the console goes on after the error. */
	if (!PQsendQuery(adm, "SHOW STATS; SHOW HELP"))
		fail_msg("PQsendQuery: %s", PQerrorMessage(adm));
	r = expect_status(adm, next_result(adm, "SHOW STATS;"), PGRES_TUPLES_OK, "SHOW STATS;");
	assert_int_equal(PQntuples(r), 1);
	PQclear(r);
	r = expect_status(adm, next_result(adm, "SHOW HELP"), PGRES_TUPLES_OK, "; SHOW HELP");
	assert_int_equal(PQnfields(r), 2);
	PQclear(r);
	expect_no_more_results(adm, "SHOW STATS; SHOW HELP");
	r = exec_status(adm, "show   clients", PGRES_TUPLES_OK); /* case and blanks */
	PQclear(r);
}

static void test_console_auth(void **state)
{
	(void)state;
	SETUP_NAME("console_auth");
	if (env.direct)
		skip();
	PGconn *c;

	c = open_conn(ci(env.port, env.admin_db, "shunt_scram", "scram-secret", "sslmode=disable"));
	expect_connect_error(c, "28000", NULL, "shunt_scram on the console");
	drop_conn(c);
	c = open_conn(ci(env.port, env.admin_db, "shunt_trust", NULL, "sslmode=disable"));
	expect_connect_error(c, "28000", NULL, "shunt_trust on the console");
	drop_conn(c);
	c = open_conn(ci(env.port, env.admin_db, "shunt_admin", "wrong-secret", "sslmode=disable"));
	expect_connect_error(c, "28P01", "password authentication failed",
			     "shunt_admin with a wrong password on the console");
	drop_conn(c);

	/* The right password, without and with TLS. */
	c = connect_ok(
		ci(env.port, env.admin_db, "shunt_admin", "admin-secret", "sslmode=disable"));
	PQclear(exec_status(c, "SHOW STATS", PGRES_TUPLES_OK));
	drop_conn(c);
	c = console_conn();
	PQclear(exec_status(c, "SHOW STATS", PGRES_TUPLES_OK));
	drop_conn(c);
	assert_proxy_alive("console logins");
}

static void test_console_extended(void **state)
{
	(void)state;
	SETUP_NAME("console_extended");
	if (env.direct)
		skip();
	PGconn *adm = console_conn();
	PGresult *r;

	r = PQprepare(adm, "stats", "SHOW STATS", 0, NULL);
	PQclear(expect_status(adm, r, PGRES_COMMAND_OK, "console PQprepare SHOW STATS"));
	for (int i = 0; i < 3; i++) {
		r = PQexecPrepared(adm, "stats", 0, NULL, NULL, NULL, 0);
		expect_status(adm, r, PGRES_TUPLES_OK, "console PQexecPrepared SHOW STATS");
		assert_int_equal(PQntuples(r), 1);
		assert_true(PQnfields(r) >= 10);
		assert_true(strtoll(PQgetvalue(r, 0, column(r, "clients_total", "SHOW STATS")),
				    NULL, 10) > 0);
		PQclear(r);
	}
	r = PQdescribePrepared(adm, "stats");
	expect_status(adm, r, PGRES_COMMAND_OK, "console PQdescribePrepared");
	assert_int_equal(PQnparams(r), 0);
	assert_true(PQfnumber(r, "queries_total") >= 0);
	PQclear(r);

	r = PQexecParams(adm, "SHOW CONFIG", 0, NULL, NULL, NULL, NULL, 0);
	expect_status(adm, r, PGRES_TUPLES_OK, "console PQexecParams SHOW CONFIG");
	assert_true(PQntuples(r) > 5);
	assert_int_equal(PQnfields(r), 5);
	no_secret_in(r, "SHOW CONFIG (extended)");
	PQclear(r);

	r = PQexecParams(adm, "SHOW NOSUCH", 0, NULL, NULL, NULL, NULL, 0);
	expect_error_result(adm, r, "42601", "console PQexecParams SHOW NOSUCH");
	PQclear(r);
	r = PQexecParams(adm, "SHOW HELP", 0, NULL, NULL, NULL, NULL, 0);
	expect_status(adm, r, PGRES_TUPLES_OK, "console PQexecParams after an error");
	assert_int_equal(PQnfields(r), 2);
	PQclear(r);
	PQclear(exec_status(adm, "SHOW STATS", PGRES_TUPLES_OK));
}

static void test_console_pause(void **state)
{
	(void)state;
	SETUP_NAME("console_pause");
	if (env.direct)
		skip();
	PGconn *adm = console_conn();
	PGconn *b = trust_conn();
	PGresult *r;
	check_value(b, "SELECT 'before pause'", "before pause");

	/* Every client idle: PAUSE returns at once. */
	double t0 = now_s();
	exec_cmd(adm, "PAUSE", "PAUSE");
	if (now_s() - t0 > 2.0)
		fail_msg("PAUSE with every client idle took %.1f s", now_s() - t0);

	/* The idle client's next query is held ... */
	if (!PQsendQuery(b, "SELECT 'held'"))
		fail_msg("PQsendQuery: %s", PQerrorMessage(b));
	if (wait_ready(b, 1000))
		fail_msg("a query was answered during PAUSE");
	r = exec_status(adm, "SHOW CLIENTS", PGRES_TUPLES_OK);
	{
		int row = clients_row_by_port(r, local_port(b));
		assert_true(row >= 0);
		assert_string_equal(PQgetvalue(r, row, PQfnumber(r, "state")), "paused");
	}
	PQclear(r);
	/* ... until RESUME. */
	exec_cmd(adm, "RESUME", "RESUME");
	if (!wait_ready(b, 5000))
		fail_msg("the held query was not answered within 5 s of RESUME");
	r = expect_status(b, next_result(b, "held query"), PGRES_TUPLES_OK, "held query");
	assert_string_equal(PQgetvalue(r, 0, 0), "held");
	PQclear(r);
	expect_no_more_results(b, "held query");

	/* A client in a transaction: PAUSE waits for its COMMIT. */
	exec_cmd(b, "BEGIN", "BEGIN");
	check_value(b, "SELECT 'in tx'", "in tx");
	if (!PQsendQuery(adm, "PAUSE"))
		fail_msg("PQsendQuery PAUSE: %s", PQerrorMessage(adm));
	if (wait_ready(adm, 1000))
		fail_msg("PAUSE returned while a client had a transaction open");
	if (!PQsendQuery(b, "COMMIT"))
		fail_msg("PQsendQuery COMMIT: %s", PQerrorMessage(b));
	bool b_done = false, adm_done = false;
	char extra[64] = "";
	double deadline = now_s() + 5;
	while (!(b_done && adm_done)) {
		struct pollfd p[2] = {{.fd = PQsocket(b), .events = POLLIN},
				      {.fd = PQsocket(adm), .events = POLLIN}};
		int ms = ms_left(deadline);
		if (ms == 0)
			fail_msg("within 5 s of COMMIT: COMMIT %s, PAUSE %s",
				 b_done ? "answered" : "not answered",
				 adm_done ? "returned" : "not returned");
		if (poll(p, 2, ms) < 0 && errno != EINTR)
			fail_msg("poll: %s", strerror(errno));
		if (!b_done && PQconsumeInput(b) && !PQisBusy(b)) {
			r = expect_status(b, next_result(b, "COMMIT"), PGRES_COMMAND_OK, "COMMIT");
			assert_string_equal(PQcmdStatus(r), "COMMIT");
			PQclear(r);
			expect_no_more_results(b, "COMMIT");
			b_done = true;
		}
		if (!adm_done && PQconsumeInput(adm) && !PQisBusy(adm)) {
			r = expect_status(adm, next_result(adm, "PAUSE"), PGRES_COMMAND_OK,
					  "PAUSE");
			assert_string_equal(PQcmdStatus(r), "PAUSE");
			PQclear(r);
			/* Checked at the end, so that RESUME is tested either way. */
			while ((r = PQgetResult(adm))) {
				const char *st = PQresStatus(PQresultStatus(r));
				snprintf(extra, sizeof(extra), "%s", st);
				PQclear(r);
			}
			adm_done = true;
		}
	}
	exec_cmd(adm, "RESUME", "RESUME");
	check_value(b, "SELECT 'after resume'", "after resume");
	PQclear(exec_status(adm, "SHOW STATS", PGRES_TUPLES_OK));
	if (extra[0])
		fail_msg("a PAUSE that waited answered with PAUSE and then an extra %s result "
			 "(a Query \"PAUSE\" must give CommandComplete and ReadyForQuery only)",
			 extra);
}

static void test_console_reload(void **state)
{
	(void)state;
	SETUP_NAME("console_reload");
	if (env.direct)
		skip();
	PGconn *adm = console_conn();
	exec_cmd(adm, "RELOAD", "RELOAD");
	PGresult *r = exec_status(adm, "SHOW CONFIG", PGRES_TUPLES_OK);
	bool seen = false;
	for (int i = 0; i < PQntuples(r); i++)
		if (strcmp(PQgetvalue(r, i, 0), "max_client_conn") == 0) {
			assert_string_equal(PQgetvalue(r, i, 1), "40");
			seen = true;
		}
	assert_true(seen);
	PQclear(r);
	assert_proxy_alive("RELOAD");
}

/* ------------------------------------------------------------------------------------ */

static int group_setup(void **state)
{
	(void)state;
	snprintf(env.wrong_ca, sizeof(env.wrong_ca), "%s/core_test_wrong_ca_XXXXXX",
		 getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
	int fd = mkstemp(env.wrong_ca);
	if (fd < 0) {
		fprintf(stderr, "core_test: mkstemp: %s\n", strerror(errno));
		return -1;
	}
	bool ok = write(fd, wrong_ca_pem, sizeof(wrong_ca_pem) - 1) ==
		  (ssize_t)(sizeof(wrong_ca_pem) - 1);
	close(fd);
	return ok ? 0 : -1;
}

static int group_teardown(void **state)
{
	(void)state;
	release_all();
	unlink(env.wrong_ca);
	/* Drop whatever a failed test left behind, through the proxy or else directly. */
	const char *ports[2] = {env.port, env.server_port};
	for (int i = 0; i < 2; i++) {
		PGconn *c = PQconnectdb(fmt("%s connect_timeout=10",
					    ci(ports[i], env.db, "shunt_trust", NULL, "")));
		if (PQstatus(c) == CONNECTION_OK) {
			PGresult *r = PQexec(
				c, fmt("DO $$DECLARE t text; BEGIN FOR t IN SELECT tablename FROM "
				       "pg_tables WHERE tablename LIKE 'core\\_%d\\_%%' LOOP "
				       "EXECUTE 'DROP TABLE ' || quote_ident(t); END LOOP; END$$",
				       env.pid));
			bool ok = PQresultStatus(r) == PGRES_COMMAND_OK;
			PQclear(r);
			PQfinish(c);
			if (ok)
				break;
		} else {
			PQfinish(c);
		}
	}
	return 0;
}

static const char *need_env(const char *name)
{
	const char *v = getenv(name);
	if (!v || !*v) {
		fprintf(stderr,
			"core_test: %s is not set (run it through tests/integration/run.sh)\n",
			name);
		exit(2);
	}
	return v;
}

#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)

int main(void)
{
	env.host = need_env("PGHOST");
	env.port = need_env("PGPORT");
	env.db = need_env("PGDATABASE");
	env.server_port = need_env("SHUNT_SERVER_PORT");
	env.ca_file = need_env("SHUNT_CA_FILE");
	env.admin_db = getenv("SHUNT_ADMIN_DB") && *getenv("SHUNT_ADMIN_DB")
			       ? getenv("SHUNT_ADMIN_DB")
			       : "pgshunt";
	const char *mode = getenv("SHUNT_MODE") ? getenv("SHUNT_MODE") : "proxy";
	if (strcmp(mode, "direct") != 0 && strcmp(mode, "proxy") != 0) {
		fprintf(stderr, "core_test: SHUNT_MODE must be proxy or direct, not %s\n", mode);
		return 2;
	}
	env.direct = strcmp(mode, "direct") == 0;
	env.pid = (int)getpid();
	/* Nothing of the caller's libpq settings may change what the tests mean. */
	static const char *const unset[] = {"PGUSER",	 "PGPASSWORD",	"PGPASSFILE", "PGSERVICE",
					    "PGSSLMODE", "PGSSLROOTCERT", "PGOPTIONS", "PGAPPNAME",
					    "PGCHANNELBINDING", "PGGSSENCMODE", "PGHOSTADDR",
					    "PGTARGETSESSIONATTRS", NULL};
	for (int i = 0; unset[i]; i++)
		unsetenv(unset[i]);
	setenv("PGGSSENCMODE", "disable", 1);
	signal(SIGPIPE, SIG_IGN);
	signal(SIGALRM, on_alarm);
	printf("core_test: %s mode, %s:%s, server port %s\n", mode, env.host, env.port,
	       env.server_port);
	fflush(stdout);

	const struct CMUnitTest tests[] = {
		T(test_simple_query),
		T(test_extended_protocol),
		T(test_pipeline),
		T(test_copy),
		T(test_large_result),
		T(test_listen_notify),
		T(test_cancel),
		T(test_server_terminated),
		T(test_auth_passwords),
		T(test_tls),
		T(test_bad_startup),
		T(test_ssl_gss_requests),
		T(test_protocol_negotiation),
		T(test_bad_messages),
		T(test_login_timeout),
		T(test_console_show),
		T(test_console_auth),
		T(test_console_extended),
		cmocka_unit_test_setup_teardown(test_console_pause, setup, teardown_resume),
		T(test_console_reload),
		T(test_max_client_conn),
	};
	int failed =
		cmocka_run_group_tests_name("pgshunt core", tests, group_setup, group_teardown);
	return failed > 100 ? 100 : failed;
}
