/*
 * Bounds-checked reading of protocol bytes.  Every getter returns false instead of
 * reading past the end, so a short or lying message is an error, never an overrun.
 */
#ifndef PGSHUNT_MBUF_H
#define PGSHUNT_MBUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

struct mbuf {
	const uint8_t *data;
	size_t len; /* bytes in data */
	size_t pos; /* next unread byte, <= len */
};

static inline void mbuf_init(struct mbuf *m, const void *data, size_t len)
{
	m->data = data;
	m->len = len;
	m->pos = 0;
}

static inline size_t mbuf_avail(const struct mbuf *m)
{
	return m->len - m->pos;
}

static inline bool mbuf_get_byte(struct mbuf *m, uint8_t *v)
{
	if (mbuf_avail(m) < 1)
		return false;
	*v = m->data[m->pos++];
	return true;
}

static inline bool mbuf_get_uint16(struct mbuf *m, uint16_t *v)
{
	if (mbuf_avail(m) < 2)
		return false;
	*v = (uint16_t)(m->data[m->pos] << 8 | m->data[m->pos + 1]);
	m->pos += 2;
	return true;
}

static inline bool mbuf_get_uint32(struct mbuf *m, uint32_t *v)
{
	if (mbuf_avail(m) < 4)
		return false;
	const uint8_t *p = m->data + m->pos;
	*v = (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
	m->pos += 4;
	return true;
}

static inline bool mbuf_get_bytes(struct mbuf *m, size_t n, const uint8_t **p)
{
	if (mbuf_avail(m) < n)
		return false;
	*p = m->data + m->pos;
	m->pos += n;
	return true;
}

/* A NUL-terminated string inside the buffer; fails when no NUL is left. */
static inline bool mbuf_get_string(struct mbuf *m, const char **s)
{
	const uint8_t *start = m->data + m->pos;
	const uint8_t *nul = memchr(start, '\0', mbuf_avail(m));
	if (!nul)
		return false;
	*s = (const char *)start;
	m->pos += (size_t)(nul - start) + 1;
	return true;
}

static inline uint16_t read_uint16_be(const uint8_t *p)
{
	return (uint16_t)(p[0] << 8 | p[1]);
}

static inline uint32_t read_uint32_be(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

#endif
