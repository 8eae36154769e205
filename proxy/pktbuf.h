/*
 * Building protocol messages.  A pktbuf records its first failure (allocation or
 * overflow of the 1 GB protocol limit) and the caller checks it once at the end,
 * so message builders stay straight-line code.
 */
#ifndef PGSHUNT_PKTBUF_H
#define PGSHUNT_PKTBUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct pktbuf {
	uint8_t *data;
	size_t len;       /* bytes written */
	size_t cap;       /* bytes allocated */
	size_t msg_start; /* offset of the message being built, for its length field */
	bool failed;      /* sticky: once set, writes are ignored */
};

void pktbuf_init(struct pktbuf *b);
void pktbuf_free(struct pktbuf *b);
void pktbuf_reset(struct pktbuf *b);

/* Begin a typed message (type 0 = untyped, as the startup packet). */
void pktbuf_start(struct pktbuf *b, char type);
/* Fill in the length of the message begun last. */
void pktbuf_finish(struct pktbuf *b);

void pktbuf_put_byte(struct pktbuf *b, uint8_t v);
void pktbuf_put_uint16(struct pktbuf *b, uint16_t v);
void pktbuf_put_uint32(struct pktbuf *b, uint32_t v);
void pktbuf_put_bytes(struct pktbuf *b, const void *p, size_t n);
void pktbuf_put_string(struct pktbuf *b, const char *s); /* with its NUL */

static inline bool pktbuf_ok(const struct pktbuf *b)
{
	return !b->failed;
}

/* Whole messages the proxy itself sends. */
void pktbuf_error(struct pktbuf *b, const char *severity, const char *sqlstate, const char *msg,
		  const char *detail, const char *hint);
void pktbuf_ready(struct pktbuf *b, char tx_status);
void pktbuf_command_complete(struct pktbuf *b, const char *tag);
void pktbuf_parameter_status(struct pktbuf *b, const char *name, const char *value);

#endif
