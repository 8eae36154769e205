/*
 * A byte buffer that costs nothing while empty: idle connections hold no memory
 * (SPEC P9), the storage is allocated on the first byte and freed when drained.
 */
#ifndef PGSHUNT_IOBUF_H
#define PGSHUNT_IOBUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The first allocation, and the size of the buffers kept for reuse. */
#define IOBUF_MIN 16384

struct iobuf {
	uint8_t *data;
	size_t start; /* first unconsumed byte */
	size_t end;   /* one past the last byte; start <= end <= cap */
	size_t cap;
};

static inline size_t iobuf_len(const struct iobuf *b)
{
	return b->end - b->start;
}

static inline uint8_t *iobuf_head(const struct iobuf *b)
{
	return b->data + b->start;
}

/* Make room for at least n more bytes after end (compacting first). */
bool iobuf_reserve(struct iobuf *b, size_t n) __attribute__((warn_unused_result));
bool iobuf_append(struct iobuf *b, const void *p, size_t n) __attribute__((warn_unused_result));
/* Drop n bytes from the front; frees the storage once empty. */
void iobuf_consume(struct iobuf *b, size_t n);
void iobuf_free(struct iobuf *b);
/* Return the pooled spare buffers to malloc (at exit, for leak checkers). */
void iobuf_pool_release(void);

#endif
