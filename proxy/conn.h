/*
 * One socket of a session, plain or TLS, with its input and output buffers.
 *
 * Plain and TLS I/O share one interface (struct conn_io_ops): TLS's WANT_READ and
 * WANT_WRITE come back as EAGAIN, and the conn remembers which direction the TLS
 * layer is waiting for so the caller only ever arms "readable" and "writable".
 */
#ifndef PGSHUNT_CONN_H
#define PGSHUNT_CONN_H

#include <event2/event.h>
#include <event2/event_struct.h>
#include <openssl/ssl.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "proxy/iobuf.h"

struct conn;

struct conn_io_ops {
	/* > 0 bytes, 0 at end of stream, -1 with errno (EAGAIN: nothing now) */
	ssize_t (*read)(struct conn *c, void *buf, size_t len);
	ssize_t (*write)(struct conn *c, const void *buf, size_t len);
};

enum tls_wait {
	TLS_WAIT_NONE,
	TLS_WAIT_READ,  /* the TLS layer needs the socket readable */
	TLS_WAIT_WRITE, /* the TLS layer needs the socket writable */
};

struct conn {
	int fd;                        /* -1 when closed */
	const struct conn_io_ops *ops; /* plain or TLS */
	SSL *ssl;                      /* non-NULL once TLS is set up */
	struct event ev_read;          /* persistent; armed unless paused */
	struct event ev_write;         /* persistent; armed while out is not empty */
	bool read_armed;
	bool write_armed;
	bool events_set;               /* ev_read/ev_write assigned */
	enum tls_wait read_waits;      /* a TLS read that needs writability */
	bool drained;                  /* the last read got less than it asked: socket empty */
	struct iobuf in;               /* bytes read, not yet processed */
	struct iobuf out;              /* bytes to send */
	const uint8_t *ref;            /* bytes to send after out, not copied (conn_queue_ref) */
	size_t ref_len;
	uint64_t bytes_in;
	uint64_t bytes_out;
};

void conn_init(struct conn *c);
void conn_attach(struct conn *c, struct event_base *base, int fd, event_callback_fn cb, void *arg);
void conn_close(struct conn *c);

/* Moving to another thread's loop: take the events off this one, remembering which
 * were armed; conn_rebase() puts them on the new loop, armed as they were. */
void conn_detach(struct conn *c);
void conn_rebase(struct conn *c, struct event_base *base);

static inline bool conn_is_open(const struct conn *c)
{
	return c->fd >= 0;
}

void conn_want_read(struct conn *c, bool on);
void conn_want_write(struct conn *c, bool on);

/* Read what is available into c->in. Returns bytes read, 0 on EOF, -1 on error/EAGAIN. */
ssize_t conn_read(struct conn *c);

/* Queue bytes for sending. False on allocation failure. */
bool conn_queue(struct conn *c, const void *p, size_t n) __attribute__((warn_unused_result));

/*
 * Queue bytes without copying them, for a message forwarded as it is: they must stay
 * where they are until conn_flush() or conn_settle(), which whoever owns them calls
 * before moving or freeing them.  A flush with nothing else queued writes them straight
 * from there.  False on allocation failure.
 */
bool conn_queue_ref(struct conn *c, const void *p, size_t n) __attribute__((warn_unused_result));

/* Copy what conn_queue_ref() queued into the output buffer. False on allocation failure. */
bool conn_settle(struct conn *c) __attribute__((warn_unused_result));

/* Send what is queued (referenced bytes are settled: copied if they could not all go);
 * arms writability when the socket is full. False on error. */
bool conn_flush(struct conn *c) __attribute__((warn_unused_result));

/* Switch to TLS.  Returns false when OpenSSL fails to set the connection up. */
bool conn_tls_accept_setup(struct conn *c, SSL_CTX *ctx);
bool conn_tls_connect_setup(struct conn *c, SSL_CTX *ctx, const char *host, bool verify_host);

/* Drive a handshake: 1 done, 0 in progress (events armed), -1 failed (err filled). */
int conn_tls_handshake(struct conn *c, char *err, size_t errlen);

/* Describe the TLS state for SHOW CLIENTS: "TLSv1.3/TLS_AES_256_GCM_SHA384" or "". */
const char *conn_tls_describe(const struct conn *c);

#endif
