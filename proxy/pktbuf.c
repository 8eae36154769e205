#include "proxy/pktbuf.h"

#include <stdlib.h>
#include <string.h>

#define PKTBUF_LIMIT (1u << 30) /* the protocol's own limit on a message */

void pktbuf_init(struct pktbuf *b)
{
	memset(b, 0, sizeof(*b));
}

void pktbuf_free(struct pktbuf *b)
{
	free(b->data);
	pktbuf_init(b);
}

void pktbuf_reset(struct pktbuf *b)
{
	b->len = 0;
	b->msg_start = 0;
	b->failed = false;
}

static bool pktbuf_reserve(struct pktbuf *b, size_t n)
{
	if (b->failed)
		return false;
	if (n > PKTBUF_LIMIT || b->len > PKTBUF_LIMIT - n) {
		b->failed = true;
		return false;
	}
	if (b->len + n <= b->cap)
		return true;
	size_t cap = b->cap ? b->cap : 256;
	while (cap < b->len + n)
		cap *= 2;
	uint8_t *p = realloc(b->data, cap);
	if (!p) {
		b->failed = true;
		return false;
	}
	b->data = p;
	b->cap = cap;
	return true;
}

void pktbuf_put_bytes(struct pktbuf *b, const void *p, size_t n)
{
	if (!pktbuf_reserve(b, n))
		return;
	if (n)
		memcpy(b->data + b->len, p, n);
	b->len += n;
}

void pktbuf_put_byte(struct pktbuf *b, uint8_t v)
{
	pktbuf_put_bytes(b, &v, 1);
}

void pktbuf_put_uint16(struct pktbuf *b, uint16_t v)
{
	uint8_t p[2] = {(uint8_t)(v >> 8), (uint8_t)v};
	pktbuf_put_bytes(b, p, 2);
}

void pktbuf_put_uint32(struct pktbuf *b, uint32_t v)
{
	uint8_t p[4] = {(uint8_t)(v >> 24), (uint8_t)(v >> 16), (uint8_t)(v >> 8), (uint8_t)v};
	pktbuf_put_bytes(b, p, 4);
}

void pktbuf_put_string(struct pktbuf *b, const char *s)
{
	pktbuf_put_bytes(b, s, strlen(s) + 1);
}

void pktbuf_start(struct pktbuf *b, char type)
{
	if (type)
		pktbuf_put_byte(b, (uint8_t)type);
	b->msg_start = b->len;
	pktbuf_put_uint32(b, 0);
}

void pktbuf_finish(struct pktbuf *b)
{
	if (b->failed)
		return;
	uint32_t n = (uint32_t)(b->len - b->msg_start);
	uint8_t *p = b->data + b->msg_start;
	p[0] = (uint8_t)(n >> 24);
	p[1] = (uint8_t)(n >> 16);
	p[2] = (uint8_t)(n >> 8);
	p[3] = (uint8_t)n;
}

static void put_field(struct pktbuf *b, char code, const char *value)
{
	if (!value)
		return;
	pktbuf_put_byte(b, (uint8_t)code);
	pktbuf_put_string(b, value);
}

/* Fields in the order PostgreSQL itself writes them, so clients parse them alike. */
void pktbuf_error(struct pktbuf *b, const char *severity, const char *sqlstate, const char *msg,
		  const char *detail, const char *hint)
{
	pktbuf_start(b, 'E');
	put_field(b, 'S', severity);
	put_field(b, 'V', severity);
	put_field(b, 'C', sqlstate);
	put_field(b, 'M', msg);
	put_field(b, 'D', detail);
	put_field(b, 'H', hint);
	pktbuf_put_byte(b, 0);
	pktbuf_finish(b);
}

void pktbuf_ready(struct pktbuf *b, char tx_status)
{
	pktbuf_start(b, 'Z');
	pktbuf_put_byte(b, (uint8_t)tx_status);
	pktbuf_finish(b);
}

void pktbuf_command_complete(struct pktbuf *b, const char *tag)
{
	pktbuf_start(b, 'C');
	pktbuf_put_string(b, tag);
	pktbuf_finish(b);
}

void pktbuf_parameter_status(struct pktbuf *b, const char *name, const char *value)
{
	pktbuf_start(b, 'S');
	pktbuf_put_string(b, name);
	pktbuf_put_string(b, value);
	pktbuf_finish(b);
}
