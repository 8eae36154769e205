/*
 * A client session: one client connection and its own server connection (no pooling).
 *
 * The session moves through its states only via session_set_state(), which refuses
 * moves the protocol does not allow.  Bytes are relayed message by message: every
 * request the client sends is recorded in the server connection's response FIFO
 * (respq.h), every server message is attributed to it, and ReadyForQuery gives the
 * transaction status.
 */
#ifndef PGSHUNT_SESSION_H
#define PGSHUNT_SESSION_H

#include <event2/event_struct.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>
#include <time.h>

#include "proxy/conn.h"
#include "proxy/phase.h"
#include "proxy/respq.h"

enum session_state {
	SS_STARTUP,      /* waiting for the client's startup packet (or SSL/GSS/Cancel) */
	SS_CLIENT_TLS,   /* TLS handshake with the client */
	SS_CONNECTING,   /* TCP connect to the server */
	SS_SERVER_SSLREQ,/* waiting for the server's answer to our SSLRequest */
	SS_SERVER_TLS,   /* TLS handshake with the server */
	SS_AUTH,         /* relaying authentication until the first ReadyForQuery */
	SS_ACTIVE,       /* relaying requests and responses */
	SS_ADMIN,        /* console session, answered by pgshunt itself */
	SS_CLOSED,       /* both sides closed; freed when the current callback returns */
	SS__COUNT
};

struct admin_session;

struct session {
	struct session *next, *prev; /* its thread's list (workers_sessions_of(worker)) */
	int worker;                  /* the thread that runs it: 0 main, else a relay's index */
	bool moving;                 /* leaving the main thread once the callback returns */
	uint32_t id;                 /* the pid our BackendKeyData gives the client */
	uint32_t cancel_key;         /* random; a CancelRequest must carry it */
	enum session_state state;
	bool counted;                /* counts against max_client_conn */
	bool is_admin;               /* logged in to admin_database */
	bool tls_required_checked;
	struct conn client;
	struct conn server;
	char prefix[128];            /* log prefix: C-<id> user@db addr */
	char client_addr[64];
	int client_port;
	char *user;
	char *database;
	uint8_t *startup_pkt;        /* what the server gets as StartupMessage */
	uint32_t startup_len;
	bool expect_sasl_initial;    /* the next 'p' is a SASLInitialResponse */
	uint32_t server_pid;         /* from the server's BackendKeyData */
	uint32_t server_key;
	char tx_status;              /* from the last ReadyForQuery: I, T or E */
	struct respq respq;          /* what the server still owes */
	uint32_t client_stream_left; /* bytes of a streamed client message still to relay */
	uint32_t server_stream_left; /* bytes of a streamed server message still to relay */
	bool server_stream_forward;  /* where those bytes go */
	bool server_said_fatal;      /* the server already told the client why it ends */
	bool client_blocked;         /* client reads stopped: server output is full */
	bool server_blocked;         /* server reads stopped: client output is full */
	bool parked;                 /* PAUSE holds this idle session's next request */
	struct event login_timer;    /* client_login_timeout */
	bool login_timer_set;
	time_t connect_time;
	uint64_t busy_since_us;      /* when the FIFO went non-empty, for query_time */
	uint64_t queries;
	struct admin_session *admin; /* SS_ADMIN only */
	struct engine *eng;          /* statement engine state, NULL until a statement needs it */
	struct phase_state pin;      /* the phase serving the current transaction (I8) */
};

/* Take an accepted client socket (non-blocking).  Closes it on failure. */
void session_accept(int fd, const struct sockaddr *addr, int addrlen);

bool session_set_state(struct session *s, enum session_state next);
const char *session_state_name(enum session_state st);

/* Send a FATAL ErrorResponse (best effort) and close both sides. */
void session_fatal(struct session *s, const char *sqlstate, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* Free the session if it was closed: the last thing every callback does. */
void session_reap(struct session *s);

/* On the relay thread a session moved to: connect it to the server (workers.h). */
void session_adopted(struct session *s);

/* Every live session, whichever thread runs it; the world must be held. */
struct session *session_first(void);
struct session *session_next(const struct session *s);

/* Close both sides without a word (the peer already knows). */
void session_close(struct session *s, const char *why);

/* No request outstanding, no transaction open: a new transaction may begin. */
bool session_idle(const struct session *s);

/*
 * Idle, or streaming replication (COPY both ways, outside any transaction): a stream
 * runs no statement until it ends, and ends idle.  What PAUSE, shutdown and a phase
 * switch's acknowledgement wait for: a stream that lasts for days holds none of them.
 */
bool session_quiet(const struct session *s);

/* PAUSE/RESUME and shutdown: revisit sessions at their idle points (on the main thread,
 * every relay is told to do the same to its own). */
void session_resume_all(void);
void session_shutdown_idle(void);

/* Queue bytes (no flush); false, with the session closed, when memory ran out. */
bool session_queue_client(struct session *s, const void *p, size_t n);
bool session_queue_server(struct session *s, const void *p, size_t n);

/* Queue bytes to the client and flush. False when the client is gone. */
bool session_send_client(struct session *s, const void *p, size_t n);

uint64_t now_us(void);

#endif
