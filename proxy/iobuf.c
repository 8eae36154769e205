#include "proxy/iobuf.h"

#include <stdlib.h>
#include <string.h>


/*
 * Buffers of IOBUF_MIN bytes freed by drained connections wait here for the next
 * burst instead of going back to malloc: a request and its answer would otherwise cost
 * four malloc/free pairs.  The pool is bounded, so idle connections still cost nothing.
 */
#define POOL_MAX 64

struct pooled {
	struct pooled *next;
};

/* Per thread: each relay thread keeps its own (workers.h). */
static _Thread_local struct pooled *pool;
static _Thread_local unsigned pool_len;

static uint8_t *buf_get(size_t cap)
{
	if (cap == IOBUF_MIN && pool) {
		struct pooled *p = pool;
		pool = p->next;
		pool_len--;
		return (uint8_t *)p;
	}
	return malloc(cap);
}

static void buf_put(uint8_t *data, size_t cap)
{
	if (data && cap == IOBUF_MIN && pool_len < POOL_MAX) {
		struct pooled *p = (struct pooled *)(void *)data;
		p->next = pool;
		pool = p;
		pool_len++;
		return;
	}
	free(data);
}

void iobuf_pool_release(void)
{
	while (pool) {
		struct pooled *p = pool;
		pool = p->next;
		free(p);
	}
	pool_len = 0;
}

bool iobuf_reserve(struct iobuf *b, size_t n)
{
	if (b->cap - b->end >= n)
		return true;
	size_t len = iobuf_len(b);
	if (b->start > 0 && b->cap - len >= n) {
		memmove(b->data, b->data + b->start, len);
		b->start = 0;
		b->end = len;
		return true;
	}
	size_t cap = b->cap ? b->cap : IOBUF_MIN;
	while (cap - len < n) {
		if (cap > SIZE_MAX / 2)
			return false;
		cap *= 2;
	}
	uint8_t *p = buf_get(cap);
	if (!p)
		return false;
	if (len)
		memcpy(p, b->data + b->start, len);
	buf_put(b->data, b->cap);
	b->data = p;
	b->cap = cap;
	b->start = 0;
	b->end = len;
	return true;
}

bool iobuf_append(struct iobuf *b, const void *p, size_t n)
{
	if (n == 0)
		return true;
	if (!iobuf_reserve(b, n))
		return false;
	memcpy(b->data + b->end, p, n);
	b->end += n;
	return true;
}

void iobuf_consume(struct iobuf *b, size_t n)
{
	b->start += n;
	if (b->start >= b->end)
		iobuf_free(b);
}

void iobuf_free(struct iobuf *b)
{
	buf_put(b->data, b->cap);
	b->data = NULL;
	b->start = b->end = b->cap = 0;
}
