#include "proxy/conn.h"

#include <errno.h>
#include <openssl/err.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#define READ_CHUNK 16384

/*
 * syscall(), not read() and send(): those are cancellation points, and in a process
 * with threads libc wraps each call in two cancellation-state updates (about 40
 * instructions a call, four calls a request).  pgshunt never cancels a thread.
 */
static ssize_t plain_read(struct conn *c, void *buf, size_t len)
{
	ssize_t n;
	do
		n = syscall(SYS_read, c->fd, buf, len);
	while (n < 0 && errno == EINTR);
	return n;
}

static ssize_t plain_write(struct conn *c, const void *buf, size_t len)
{
	ssize_t n;
	do
		n = syscall(SYS_sendto, c->fd, buf, len, MSG_NOSIGNAL, NULL, 0);
	while (n < 0 && errno == EINTR);
	return n;
}

static const struct conn_io_ops plain_ops = {plain_read, plain_write};

/* Map an SSL_get_error() result to the read/write contract: EAGAIN, EOF or error. */
static ssize_t tls_result(struct conn *c, int ret, bool reading)
{
	switch (SSL_get_error(c->ssl, ret)) {
	case SSL_ERROR_WANT_READ:
		if (!reading)
			event_add(&c->ev_read, NULL);
		errno = EAGAIN;
		return -1;
	case SSL_ERROR_WANT_WRITE:
		if (reading) {
			c->read_waits = TLS_WAIT_WRITE;
			event_add(&c->ev_write, NULL);
			c->write_armed = true;
		}
		errno = EAGAIN;
		return -1;
	case SSL_ERROR_ZERO_RETURN:
		return 0;
	case SSL_ERROR_SYSCALL:
		ERR_clear_error();
		if (errno == 0)
			return 0;
		return -1;
	default:
		ERR_clear_error();
		errno = EIO;
		return -1;
	}
}

static ssize_t tls_read(struct conn *c, void *buf, size_t len)
{
	int n = SSL_read(c->ssl, buf, len > INT32_MAX ? INT32_MAX : (int)len);
	if (n > 0)
		return n;
	return tls_result(c, n, true);
}

static ssize_t tls_write(struct conn *c, const void *buf, size_t len)
{
	int n = SSL_write(c->ssl, buf, len > INT32_MAX ? INT32_MAX : (int)len);
	if (n > 0)
		return n;
	return tls_result(c, n, false);
}

static const struct conn_io_ops tls_ops = {tls_read, tls_write};

void conn_init(struct conn *c)
{
	memset(c, 0, sizeof(*c));
	c->fd = -1;
	c->ops = &plain_ops;
}

void conn_attach(struct conn *c, struct event_base *base, int fd, event_callback_fn cb, void *arg)
{
	c->fd = fd;
	event_assign(&c->ev_read, base, fd, EV_READ | EV_PERSIST, cb, arg);
	event_assign(&c->ev_write, base, fd, EV_WRITE | EV_PERSIST, cb, arg);
	c->events_set = true;
}

void conn_close(struct conn *c)
{
	if (c->events_set) {
		event_del(&c->ev_read);
		event_del(&c->ev_write);
		c->events_set = false;
	}
	if (c->ssl) {
		SSL_free(c->ssl);
		c->ssl = NULL;
	}
	if (c->fd >= 0)
		close(c->fd);
	c->fd = -1;
	c->read_armed = c->write_armed = false;
	c->ref = NULL;
	c->ref_len = 0;
	iobuf_free(&c->in);
	iobuf_free(&c->out);
}

void conn_detach(struct conn *c)
{
	if (!c->events_set)
		return;
	event_del(&c->ev_read);
	event_del(&c->ev_write);
}

void conn_rebase(struct conn *c, struct event_base *base)
{
	if (!c->events_set)
		return;
	event_callback_fn cb = event_get_callback(&c->ev_read);
	void *arg = event_get_callback_arg(&c->ev_read);
	event_assign(&c->ev_read, base, c->fd, EV_READ | EV_PERSIST, cb, arg);
	event_assign(&c->ev_write, base, c->fd, EV_WRITE | EV_PERSIST, cb, arg);
	if (c->read_armed)
		event_add(&c->ev_read, NULL);
	if (c->write_armed)
		event_add(&c->ev_write, NULL);
}

void conn_want_read(struct conn *c, bool on)
{
	if (!c->events_set || on == c->read_armed)
		return;
	if (on)
		event_add(&c->ev_read, NULL);
	else
		event_del(&c->ev_read);
	c->read_armed = on;
}

ssize_t conn_read(struct conn *c)
{
	if (!iobuf_reserve(&c->in, READ_CHUNK)) {
		errno = ENOMEM;
		return -1;
	}
	c->read_waits = TLS_WAIT_NONE;
	size_t room = c->in.cap - c->in.end;
	ssize_t n = c->ops->read(c, c->in.data + c->in.end, room);
	/* TLS returns one record at a time: only a plain socket is known empty here. */
	c->drained = n > 0 && (size_t)n < room && !c->ssl;
	if (n > 0) {
		c->in.end += (size_t)n;
		c->bytes_in += (uint64_t)n;
	} else if (c->in.start == c->in.end) {
		iobuf_free(&c->in);
	}
	return n;
}

bool conn_queue(struct conn *c, const void *p, size_t n)
{
	return conn_settle(c) && iobuf_append(&c->out, p, n);
}

bool conn_queue_ref(struct conn *c, const void *p, size_t n)
{
	if (c->ref_len && c->ref + c->ref_len == p) {
		c->ref_len += n;
		return true;
	}
	if (!conn_settle(c))
		return false;
	c->ref = p;
	c->ref_len = n;
	return true;
}

bool conn_settle(struct conn *c)
{
	if (!c->ref_len)
		return true;
	bool ok = iobuf_append(&c->out, c->ref, c->ref_len);
	c->ref = NULL;
	c->ref_len = 0;
	return ok;
}

/* Nothing else queued: write the referenced bytes from where they are. */
static bool flush_ref(struct conn *c)
{
	while (c->ref_len > 0 && iobuf_len(&c->out) == 0) {
		ssize_t n = c->ops->write(c, c->ref, c->ref_len);
		if (n < 0)
			return errno == EAGAIN || errno == EWOULDBLOCK;
		c->bytes_out += (uint64_t)n;
		c->ref += n;
		c->ref_len -= (size_t)n;
	}
	return true;
}

void conn_want_write(struct conn *c, bool on)
{
	if (on == c->write_armed || !c->events_set)
		return;
	if (on)
		event_add(&c->ev_write, NULL);
	else if (c->read_waits != TLS_WAIT_WRITE)
		event_del(&c->ev_write);
	else
		return;
	c->write_armed = on;
}

bool conn_flush(struct conn *c)
{
	if (!flush_ref(c) || !conn_settle(c))
		return false;
	while (iobuf_len(&c->out) > 0) {
		ssize_t n = c->ops->write(c, iobuf_head(&c->out), iobuf_len(&c->out));
		if (n < 0) {
			if (errno == EAGAIN || errno == EWOULDBLOCK) {
				conn_want_write(c, true);
				return true;
			}
			return false;
		}
		c->bytes_out += (uint64_t)n;
		iobuf_consume(&c->out, (size_t)n);
	}
	conn_want_write(c, false);
	return true;
}

bool conn_tls_accept_setup(struct conn *c, SSL_CTX *ctx)
{
	c->ssl = SSL_new(ctx);
	if (!c->ssl || !SSL_set_fd(c->ssl, c->fd))
		return false;
	SSL_set_accept_state(c->ssl);
	c->ops = &tls_ops;
	return true;
}

bool conn_tls_connect_setup(struct conn *c, SSL_CTX *ctx, const char *host, bool verify_host)
{
	c->ssl = SSL_new(ctx);
	if (!c->ssl || !SSL_set_fd(c->ssl, c->fd))
		return false;
	/* SNI only for names: RFC 6066 forbids IP literals there. */
	if (host[0] && !strchr(host, ':') && strspn(host, "0123456789.") != strlen(host))
		SSL_set_tlsext_host_name(c->ssl, host);
	if (verify_host && !SSL_set1_host(c->ssl, host))
		return false;
	SSL_set_connect_state(c->ssl);
	c->ops = &tls_ops;
	return true;
}

int conn_tls_handshake(struct conn *c, char *err, size_t errlen)
{
	ERR_clear_error();
	int ret = SSL_do_handshake(c->ssl);
	if (ret == 1) {
		conn_want_write(c, iobuf_len(&c->out) > 0);
		return 1;
	}
	switch (SSL_get_error(c->ssl, ret)) {
	case SSL_ERROR_WANT_READ:
		conn_want_read(c, true);
		conn_want_write(c, false);
		return 0;
	case SSL_ERROR_WANT_WRITE:
		conn_want_write(c, true);
		return 0;
	default: {
		unsigned long e = ERR_get_error();
		long vr = SSL_get_verify_result(c->ssl);
		if (vr != X509_V_OK)
			snprintf(err, errlen, "certificate verify failed: %s",
				 X509_verify_cert_error_string(vr));
		else if (e)
			ERR_error_string_n(e, err, errlen);
		else
			snprintf(err, errlen, "TLS handshake failed: connection closed");
		ERR_clear_error();
		return -1;
	}
	}
}

const char *conn_tls_describe(const struct conn *c)
{
	static _Thread_local char buf[128];
	if (!c->ssl)
		return "";
	snprintf(buf, sizeof(buf), "%s/%s", SSL_get_version(c->ssl), SSL_get_cipher_name(c->ssl));
	return buf;
}
