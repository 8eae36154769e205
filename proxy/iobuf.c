#include "proxy/iobuf.h"

#include <stdlib.h>
#include <string.h>

#define IOBUF_MIN 8192

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
	uint8_t *p = malloc(cap);
	if (!p)
		return false;
	if (len)
		memcpy(p, b->data + b->start, len);
	free(b->data);
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
	free(b->data);
	b->data = NULL;
	b->start = b->end = b->cap = 0;
}
