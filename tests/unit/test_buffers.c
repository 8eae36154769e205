/*
 * Tests of the byte buffers: pktbuf (message building, length fields, the proxy's own
 * messages, sticky failure), mbuf (bounds-checked reading: no getter reads past the
 * end), iobuf (reserve, append, consume, compaction, no memory while empty) and a
 * conn's queuing by reference (written from where the bytes are, copied when the socket
 * does not take them all, in the order queued), over a real socket pair.
 *
 * Buffers under test are heap blocks of exactly their size, so AddressSanitizer
 * (make asan) reports any read past the end.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "proxy/conn.h"
#include "proxy/iobuf.h"
#include "proxy/mbuf.h"
#include "proxy/pktbuf.h"

static uint32_t get32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* ---- pktbuf ---- */

static void test_pktbuf_typed(void **state)
{
	(void)state;
	struct pktbuf b;
	pktbuf_init(&b);
	assert_true(pktbuf_ok(&b));
	assert_int_equal(b.len, 0);
	pktbuf_start(&b, 'Q');
	pktbuf_put_string(&b, "SELECT 1");
	pktbuf_finish(&b);
	assert_true(pktbuf_ok(&b));
	assert_int_equal(b.len, 1 + 4 + 9);
	assert_memory_equal(b.data, "Q\0\0\0\x0dSELECT 1\0", 14);

	/* A second message after the first: its own length, the first untouched. */
	pktbuf_start(&b, 'P');
	pktbuf_put_string(&b, "");
	pktbuf_put_string(&b, "SELECT $1");
	pktbuf_put_uint16(&b, 1);
	pktbuf_put_uint32(&b, 23);
	pktbuf_finish(&b);
	assert_int_equal(b.len, 14 + 1 + 4 + 1 + 10 + 2 + 4);
	assert_memory_equal(b.data, "Q\0\0\0\x0dSELECT 1\0", 14);
	assert_int_equal(b.data[14], 'P');
	assert_int_equal(get32(b.data + 15), 4 + 1 + 10 + 2 + 4);
	assert_memory_equal(b.data + 19, "\0SELECT $1\0\0\x01\0\0\0\x17", 17);

	/* An empty message: only the length. */
	pktbuf_start(&b, 'S');
	pktbuf_finish(&b);
	assert_memory_equal(b.data + b.len - 5, "S\0\0\0\x04", 5);
	pktbuf_free(&b);
	assert_null(b.data);
	assert_int_equal(b.len, 0);
	assert_int_equal(b.cap, 0);
}

static void test_pktbuf_untyped(void **state)
{
	(void)state;
	struct pktbuf b;
	pktbuf_init(&b);
	pktbuf_start(&b, 0);
	pktbuf_put_uint32(&b, 0x00030000);
	pktbuf_put_string(&b, "user");
	pktbuf_put_string(&b, "bob");
	pktbuf_put_byte(&b, 0);
	pktbuf_finish(&b);
	assert_true(pktbuf_ok(&b));
	assert_int_equal(b.len, 4 + 4 + 5 + 4 + 1);
	assert_int_equal(get32(b.data), b.len);
	assert_memory_equal(b.data + 4, "\0\x03\0\0user\0bob\0\0", 14);
	pktbuf_free(&b);
}

static void test_pktbuf_integers(void **state)
{
	(void)state;
	struct pktbuf b;
	pktbuf_init(&b);
	pktbuf_put_byte(&b, 0xab);
	pktbuf_put_uint16(&b, 0x1234);
	pktbuf_put_uint16(&b, 0xffff);
	pktbuf_put_uint32(&b, 0xdeadbeef);
	pktbuf_put_uint32(&b, 0);
	pktbuf_put_bytes(&b, "xyz", 0);
	pktbuf_put_bytes(&b, "xyz", 3);
	assert_int_equal(b.len, 1 + 2 + 2 + 4 + 4 + 3);
	assert_memory_equal(b.data, "\xab\x12\x34\xff\xff\xde\xad\xbe\xef\0\0\0\0xyz", 16);
	pktbuf_free(&b);
}

static void test_pktbuf_growth(void **state)
{
	(void)state;
	struct pktbuf b;
	pktbuf_init(&b);
	pktbuf_start(&b, 'd');
	for (uint32_t i = 0; i < 10000; i++)
		pktbuf_put_byte(&b, (uint8_t)(i * 7));
	pktbuf_finish(&b);
	assert_true(pktbuf_ok(&b));
	assert_int_equal(b.len, 5 + 10000);
	assert_true(b.cap >= b.len);
	assert_int_equal(get32(b.data + 1), 10004);
	for (uint32_t i = 0; i < 10000; i++)
		assert_int_equal(b.data[5 + i], (uint8_t)(i * 7));
	pktbuf_free(&b);
}

/* Split an ErrorResponse into its field codes, checking every field is terminated. */
static size_t error_codes(const struct pktbuf *b, char *codes, const char **values)
{
	assert_true(b->len >= 6);
	assert_int_equal(b->data[0], 'E');
	assert_int_equal(get32(b->data + 1), b->len - 1);
	assert_int_equal(b->data[b->len - 1], 0);
	size_t n = 0, pos = 5;
	while (b->data[pos] != 0) {
		codes[n] = (char)b->data[pos++];
		const uint8_t *nul = memchr(b->data + pos, 0, b->len - pos);
		assert_non_null(nul);
		values[n++] = (const char *)b->data + pos;
		pos = (size_t)(nul - b->data) + 1;
		assert_true(pos < b->len);
	}
	assert_int_equal(pos, b->len - 1);
	codes[n] = '\0';
	return n;
}

static void test_pktbuf_error(void **state)
{
	(void)state;
	struct pktbuf b;
	char codes[16];
	const char *v[16];
	pktbuf_init(&b);
	pktbuf_error(&b, "FATAL", "08P01", "invalid message", "a detail", "a hint");
	assert_true(pktbuf_ok(&b));
	assert_int_equal(error_codes(&b, codes, v), 6);
	/* The order PostgreSQL writes them in. */
	assert_string_equal(codes, "SVCMDH");
	assert_string_equal(v[0], "FATAL");
	assert_string_equal(v[1], "FATAL");
	assert_string_equal(v[2], "08P01");
	assert_string_equal(v[3], "invalid message");
	assert_string_equal(v[4], "a detail");
	assert_string_equal(v[5], "a hint");

	/* Without detail and hint those fields are left out. */
	pktbuf_reset(&b);
	pktbuf_error(&b, "ERROR", "42601", "syntax", NULL, NULL);
	assert_int_equal(error_codes(&b, codes, v), 4);
	assert_string_equal(codes, "SVCM");
	pktbuf_reset(&b);
	pktbuf_error(&b, "ERROR", "42601", "syntax", NULL, "only a hint");
	assert_int_equal(error_codes(&b, codes, v), 5);
	assert_string_equal(codes, "SVCMH");
	assert_string_equal(v[4], "only a hint");
	pktbuf_free(&b);
}

static void test_pktbuf_small_messages(void **state)
{
	(void)state;
	struct pktbuf b;
	pktbuf_init(&b);
	pktbuf_ready(&b, 'T');
	pktbuf_command_complete(&b, "SHOW");
	pktbuf_parameter_status(&b, "server_version", "16.2");
	assert_true(pktbuf_ok(&b));
	static const char want[] = "Z\0\0\0\x05T"
	                           "C\0\0\0\x09SHOW\0"
	                           "S\0\0\0\x18server_version\0"
	                           "16.2\0";
	assert_int_equal(b.len, sizeof(want) - 1);
	assert_memory_equal(b.data, want, sizeof(want) - 1);
	pktbuf_free(&b);
}

static void test_pktbuf_failure_sticky(void **state)
{
	(void)state;
	struct pktbuf b;
	uint8_t small[4] = {1, 2, 3, 4};
	pktbuf_init(&b);
	pktbuf_start(&b, 'Q');
	pktbuf_put_string(&b, "SELECT");
	size_t len = b.len;
	uint8_t before[16];
	memcpy(before, b.data, len);

	/* Over the 1 GB protocol limit: refused without touching the source bytes. */
	pktbuf_put_bytes(&b, small, ((size_t)1 << 30) + 1);
	assert_false(pktbuf_ok(&b));
	assert_int_equal(b.len, len);
	/* Every later write is ignored, finish writes nothing. */
	pktbuf_put_byte(&b, 'x');
	pktbuf_put_uint16(&b, 1);
	pktbuf_put_uint32(&b, 1);
	pktbuf_put_bytes(&b, small, 4);
	pktbuf_put_string(&b, "more");
	pktbuf_start(&b, 'S');
	pktbuf_finish(&b);
	pktbuf_error(&b, "ERROR", "XX000", "x", NULL, NULL);
	pktbuf_ready(&b, 'I');
	assert_false(pktbuf_ok(&b));
	assert_int_equal(b.len, len);
	assert_memory_equal(b.data, before, len);

	/* Reset clears the failure and the contents; the buffer works again. */
	size_t cap = b.cap;
	pktbuf_reset(&b);
	assert_true(pktbuf_ok(&b));
	assert_int_equal(b.len, 0);
	assert_int_equal(b.cap, cap);
	pktbuf_ready(&b, 'I');
	assert_true(pktbuf_ok(&b));
	assert_memory_equal(b.data, "Z\0\0\0\x05I", 6);
	pktbuf_free(&b);

	/* A failure as the very first write of a fresh buffer. */
	pktbuf_init(&b);
	pktbuf_put_bytes(&b, small, (size_t)-1);
	assert_false(pktbuf_ok(&b));
	pktbuf_start(&b, 'Q');
	pktbuf_finish(&b);
	assert_int_equal(b.len, 0);
	pktbuf_free(&b);
	assert_true(pktbuf_ok(&b));
}

static void test_pktbuf_reset_reuse(void **state)
{
	(void)state;
	struct pktbuf b;
	pktbuf_init(&b);
	pktbuf_command_complete(&b, "SELECT 1");
	pktbuf_reset(&b);
	assert_int_equal(b.len, 0);
	assert_int_equal(b.msg_start, 0);
	pktbuf_start(&b, 0);
	pktbuf_put_uint32(&b, 80877103);
	pktbuf_finish(&b);
	assert_int_equal(b.len, 8);
	assert_memory_equal(b.data, "\0\0\0\x08\x04\xd2\x16\x2f", 8);
	pktbuf_free(&b);
}

/* ---- mbuf ---- */

/* An mbuf over an exact heap copy; *block is what to free. */
static void mbuf_over(struct mbuf *m, const void *src, size_t len, uint8_t **block)
{
	/* An empty buffer is the end of a one-byte block: any read overflows it. */
	*block = malloc(len ? len : 1);
	assert_non_null(*block);
	if (len)
		memcpy(*block, src, len);
	mbuf_init(m, len ? *block : *block + 1, len);
}

static void test_mbuf_empty(void **state)
{
	(void)state;
	struct mbuf m;
	uint8_t *block;
	uint8_t b = 0x55;
	uint16_t s = 0x5555;
	uint32_t l = 0x55555555;
	const uint8_t *p = NULL;
	const char *str = NULL;
	mbuf_over(&m, "", 0, &block);
	assert_int_equal(mbuf_avail(&m), 0);
	assert_false(mbuf_get_byte(&m, &b));
	assert_false(mbuf_get_uint16(&m, &s));
	assert_false(mbuf_get_uint32(&m, &l));
	assert_false(mbuf_get_bytes(&m, 1, &p));
	assert_false(mbuf_get_bytes(&m, (size_t)-1, &p));
	assert_false(mbuf_get_string(&m, &str));
	/* Zero bytes are always there. */
	assert_true(mbuf_get_bytes(&m, 0, &p));
	/* Failures leave outputs and position alone. */
	assert_int_equal(b, 0x55);
	assert_int_equal(s, 0x5555);
	assert_int_equal(l, 0x55555555);
	assert_null(str);
	assert_int_equal(m.pos, 0);
	free(block);
}

static void test_mbuf_short(void **state)
{
	(void)state;
	static const uint8_t src[8] = {0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0};
	for (size_t n = 0; n < 4; n++) {
		struct mbuf m;
		uint8_t *block;
		uint32_t l = 0;
		uint16_t s = 0;
		const uint8_t *p = NULL;
		mbuf_over(&m, src, n, &block);
		assert_false(mbuf_get_uint32(&m, &l));
		assert_int_equal(m.pos, 0);
		assert_int_equal(mbuf_get_uint16(&m, &s), n >= 2);
		assert_false(mbuf_get_bytes(&m, n + 1, &p));
		free(block);
	}
	/* A uint16 after an odd byte, one byte short. */
	struct mbuf m;
	uint8_t *block;
	uint8_t b = 0;
	uint16_t s = 0;
	uint32_t l = 0;
	mbuf_over(&m, src, 2, &block);
	assert_true(mbuf_get_byte(&m, &b));
	assert_int_equal(b, 0x12);
	assert_false(mbuf_get_uint16(&m, &s));
	assert_false(mbuf_get_uint32(&m, &l));
	assert_true(mbuf_get_byte(&m, &b));
	assert_int_equal(b, 0x34);
	assert_false(mbuf_get_byte(&m, &b));
	assert_int_equal(mbuf_avail(&m), 0);
	free(block);

	/* A uint32 across what is left after a partial read. */
	mbuf_over(&m, src, 7, &block);
	assert_true(mbuf_get_uint32(&m, &l));
	assert_int_equal(l, 0x12345678);
	assert_false(mbuf_get_uint32(&m, &l));
	assert_true(mbuf_get_uint16(&m, &s));
	assert_int_equal(s, 0x9abc);
	assert_false(mbuf_get_uint16(&m, &s));
	assert_int_equal(mbuf_avail(&m), 1);
	free(block);
}

static void test_mbuf_values(void **state)
{
	(void)state;
	static const uint8_t src[] = {0xff, 0xfe, 0xfd, 0x80, 0x00, 0x00,
	                              0x01, 'a',  'b',  0,    0,    'z'};
	struct mbuf m;
	uint8_t *block;
	uint8_t b = 0;
	uint16_t s = 0;
	uint32_t l = 0;
	const uint8_t *p = NULL;
	const char *str = NULL;
	mbuf_over(&m, src, sizeof(src), &block);
	assert_true(mbuf_get_byte(&m, &b));
	assert_int_equal(b, 0xff);
	assert_true(mbuf_get_uint16(&m, &s));
	assert_int_equal(s, 0xfefd);
	assert_true(mbuf_get_uint32(&m, &l));
	assert_int_equal(l, 0x80000001);
	assert_true(mbuf_get_string(&m, &str));
	assert_string_equal(str, "ab");
	assert_true(mbuf_get_string(&m, &str));
	assert_string_equal(str, "");
	assert_int_equal(mbuf_avail(&m), 1);
	assert_true(mbuf_get_bytes(&m, 1, &p));
	assert_int_equal(p[0], 'z');
	assert_int_equal(mbuf_avail(&m), 0);
	assert_int_equal(read_uint32_be(block + 3), 0x80000001);
	free(block);
}

static void test_mbuf_string_without_nul(void **state)
{
	(void)state;
	struct mbuf m;
	uint8_t *block;
	const char *str = NULL;
	mbuf_over(&m, "abc", 3, &block);
	assert_false(mbuf_get_string(&m, &str));
	assert_null(str);
	assert_int_equal(m.pos, 0);
	free(block);

	/* One string ends, the next does not. */
	mbuf_over(&m, "ab\0cd", 5, &block);
	assert_true(mbuf_get_string(&m, &str));
	assert_string_equal(str, "ab");
	assert_false(mbuf_get_string(&m, &str));
	assert_int_equal(m.pos, 3);
	free(block);

	/* The NUL as the very last byte is enough. */
	mbuf_over(&m, "xyz\0", 4, &block);
	assert_true(mbuf_get_string(&m, &str));
	assert_string_equal(str, "xyz");
	assert_int_equal(mbuf_avail(&m), 0);
	assert_false(mbuf_get_string(&m, &str));
	free(block);

	/* A window onto a larger buffer stops at its own end, not the buffer's. */
	static const char big[] = "abcdef";
	mbuf_init(&m, big, 3);
	assert_false(mbuf_get_string(&m, &str));
}

static void test_mbuf_bytes(void **state)
{
	(void)state;
	struct mbuf m;
	uint8_t *block;
	const uint8_t *p = NULL;
	mbuf_over(&m, "0123456789", 10, &block);
	assert_true(mbuf_get_bytes(&m, 4, &p));
	assert_memory_equal(p, "0123", 4);
	assert_false(mbuf_get_bytes(&m, 7, &p));
	assert_false(mbuf_get_bytes(&m, (size_t)-1, &p));
	assert_false(mbuf_get_bytes(&m, (size_t)-1 - 3, &p));
	assert_int_equal(m.pos, 4);
	assert_true(mbuf_get_bytes(&m, 6, &p));
	assert_memory_equal(p, "456789", 6);
	assert_int_equal(mbuf_avail(&m), 0);
	free(block);
}

/* ---- iobuf ---- */

static void test_iobuf_empty_costs_nothing(void **state)
{
	(void)state;
	struct iobuf b = {0};
	assert_int_equal(iobuf_len(&b), 0);
	assert_true(iobuf_reserve(&b, 0));
	assert_null(b.data);
	iobuf_free(&b);
	iobuf_free(&b);
	assert_null(b.data);
	assert_int_equal(b.cap, 0);
}

static void test_iobuf_append_consume(void **state)
{
	(void)state;
	struct iobuf b = {0};
	assert_true(iobuf_append(&b, "hello", 5));
	assert_non_null(b.data);
	assert_int_equal(b.cap, IOBUF_MIN);
	assert_int_equal(iobuf_len(&b), 5);
	assert_memory_equal(iobuf_head(&b), "hello", 5);
	assert_true(iobuf_append(&b, " world", 6));
	assert_memory_equal(iobuf_head(&b), "hello world", 11);
	iobuf_consume(&b, 6);
	assert_int_equal(iobuf_len(&b), 5);
	assert_memory_equal(iobuf_head(&b), "world", 5);
	assert_int_equal(b.start, 6);
	iobuf_consume(&b, 0);
	assert_int_equal(iobuf_len(&b), 5);
	/* Drained: the storage goes. */
	iobuf_consume(&b, 5);
	assert_null(b.data);
	assert_int_equal(b.cap, 0);
	assert_int_equal(b.start, 0);
	assert_int_equal(b.end, 0);
	assert_int_equal(iobuf_len(&b), 0);
	/* And comes back on the next byte. */
	assert_true(iobuf_append(&b, "x", 1));
	assert_memory_equal(iobuf_head(&b), "x", 1);
	iobuf_free(&b);
	assert_null(b.data);
}

static void test_iobuf_pool_reuse(void **state)
{
	(void)state;
	struct iobuf a = {0}, b = {0};
	assert_true(iobuf_append(&a, "x", 1));
	uint8_t *first = a.data;
	iobuf_consume(&a, 1);
	assert_null(a.data);
	/* The drained buffer is handed to the next connection that needs one. */
	assert_true(iobuf_append(&b, "y", 1));
	assert_ptr_equal(b.data, first);
	/* Larger buffers are not pooled: they go back to malloc. */
	assert_true(iobuf_reserve(&a, 3 * IOBUF_MIN));
	assert_int_equal(a.cap, 4 * IOBUF_MIN);
	iobuf_free(&a);
	iobuf_free(&b);
	iobuf_pool_release();
}

static void test_iobuf_reserve(void **state)
{
	(void)state;
	struct iobuf b = {0};
	assert_true(iobuf_reserve(&b, 1));
	assert_int_equal(b.cap, IOBUF_MIN);
	assert_int_equal(iobuf_len(&b), 0);
	/* Reserved room is writable after end. */
	memset(b.data + b.end, 'a', b.cap - b.end);
	b.end = b.cap;
	iobuf_free(&b);

	/* More than the minimum: the next power-of-two multiple. */
	assert_true(iobuf_reserve(&b, 20000));
	assert_int_equal(b.cap, 32768);
	assert_true(b.cap - b.end >= 20000);
	iobuf_free(&b);

	/* Impossible sizes fail and leave the buffer as it was. */
	assert_true(iobuf_append(&b, "abc", 3));
	uint8_t *data = b.data;
	assert_false(iobuf_reserve(&b, SIZE_MAX));
	assert_false(iobuf_reserve(&b, SIZE_MAX - 2));
	assert_ptr_equal(b.data, data);
	assert_int_equal(iobuf_len(&b), 3);
	assert_memory_equal(iobuf_head(&b), "abc", 3);
	iobuf_free(&b);
}

static void test_iobuf_compaction(void **state)
{
	(void)state;
	struct iobuf b = {0};
	const size_t used = IOBUF_MIN - 192; /* consumed, leaving 192 bytes */
	uint8_t *chunk = malloc(IOBUF_MIN);
	assert_non_null(chunk);
	for (size_t i = 0; i < IOBUF_MIN; i++)
		chunk[i] = (uint8_t)(i % 251);
	assert_true(iobuf_append(&b, chunk, IOBUF_MIN));
	assert_int_equal(b.cap, IOBUF_MIN);
	uint8_t *data = b.data;
	iobuf_consume(&b, used);
	/* No room at the end; 1000 more fit once the 192 bytes move to the front. */
	assert_true(iobuf_reserve(&b, 1000));
	assert_ptr_equal(b.data, data);
	assert_int_equal(b.cap, IOBUF_MIN);
	assert_int_equal(b.start, 0);
	assert_int_equal(iobuf_len(&b), 192);
	assert_memory_equal(iobuf_head(&b), chunk + used, 192);
	/* Compaction also happens inside append. */
	iobuf_consume(&b, 100);
	assert_int_equal(b.cap - b.end, IOBUF_MIN - 192);
	assert_true(iobuf_append(&b, chunk, IOBUF_MIN - 142));
	assert_ptr_equal(b.data, data);
	assert_int_equal(b.cap, IOBUF_MIN);
	assert_int_equal(b.start, 0);
	assert_int_equal(iobuf_len(&b), IOBUF_MIN - 50);
	assert_memory_equal(iobuf_head(&b), chunk + used + 100, 92);
	assert_memory_equal(iobuf_head(&b) + 92, chunk, IOBUF_MIN - 142);
	iobuf_free(&b);
	free(chunk);
}

static void test_iobuf_growth(void **state)
{
	(void)state;
	struct iobuf b = {0};
	uint8_t *chunk = malloc(IOBUF_MIN);
	assert_non_null(chunk);
	for (size_t i = 0; i < IOBUF_MIN; i++)
		chunk[i] = (uint8_t)(i * 13);
	assert_true(iobuf_append(&b, chunk, IOBUF_MIN));
	assert_true(iobuf_append(&b, "!", 1));
	assert_int_equal(b.cap, 2 * IOBUF_MIN);
	assert_int_equal(iobuf_len(&b), IOBUF_MIN + 1);
	assert_memory_equal(iobuf_head(&b), chunk, IOBUF_MIN);
	assert_int_equal(iobuf_head(&b)[IOBUF_MIN], '!');

	/* Consumed bytes at the front but still too little room: grows and moves to 0. */
	iobuf_consume(&b, 10);
	assert_true(iobuf_reserve(&b, 2 * IOBUF_MIN));
	assert_int_equal(b.start, 0);
	assert_int_equal(b.cap, 4 * IOBUF_MIN);
	assert_int_equal(iobuf_len(&b), IOBUF_MIN - 9);
	assert_memory_equal(iobuf_head(&b), chunk + 10, IOBUF_MIN - 10);
	assert_int_equal(iobuf_head(&b)[IOBUF_MIN - 10], '!');

	/* Many appends in small pieces. */
	iobuf_free(&b);
	for (int i = 0; i < 100; i++)
		assert_true(iobuf_append(&b, chunk, 1000));
	assert_int_equal(iobuf_len(&b), 100000);
	assert_int_equal(b.cap, 131072);
	for (int i = 0; i < 100; i++)
		assert_memory_equal(iobuf_head(&b) + i * 1000, chunk, 1000);
	for (int i = 0; i < 99; i++)
		iobuf_consume(&b, 1000);
	assert_non_null(b.data);
	assert_memory_equal(iobuf_head(&b), chunk, 1000);
	iobuf_consume(&b, 1000);
	assert_null(b.data);
	free(chunk);
}

/* ---- conn: queuing by reference ---- */

/* A conn on one end of a non-blocking socket pair; *peer is the other end. */
static void conn_pair(struct conn *c, int *peer)
{
	int sv[2];
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	assert_int_equal(fcntl(sv[0], F_SETFL, O_NONBLOCK), 0);
	conn_init(c);
	c->fd = sv[0];
	*peer = sv[1];
}

/* Read exactly n bytes from fd into buf. */
static void read_all(int fd, uint8_t *buf, size_t n)
{
	size_t got = 0;
	while (got < n) {
		ssize_t r = read(fd, buf + got, n - got);
		assert_true(r > 0);
		got += (size_t)r;
	}
}

static void test_conn_ref_direct(void **state)
{
	struct conn c;
	int peer;
	uint8_t src[150], got[150];
	(void)state;
	for (size_t i = 0; i < sizeof(src); i++)
		src[i] = (uint8_t)i;
	conn_pair(&c, &peer);
	assert_true(conn_queue_ref(&c, src, 100));
	assert_true(conn_queue_ref(&c, src + 100, 50)); /* contiguous: one reference */
	assert_ptr_equal(c.ref, src);
	assert_int_equal(c.ref_len, 150);
	assert_true(conn_flush(&c));
	/* Written from where the bytes are: no output buffer was ever taken. */
	assert_null(c.out.data);
	assert_int_equal(c.ref_len, 0);
	assert_int_equal(c.bytes_out, 150);
	read_all(peer, got, sizeof(got));
	assert_memory_equal(got, src, sizeof(src));
	conn_close(&c);
	close(peer);
}

static void test_conn_ref_order(void **state)
{
	struct conn c;
	int peer;
	const uint8_t a[] = "AAAAAAAAAA", b[] = "bbbbb", x[] = "0123456789xyz";
	uint8_t got[32];
	(void)state;
	conn_pair(&c, &peer);
	assert_true(conn_queue_ref(&c, a, 10));
	assert_true(conn_queue(&c, b, 5)); /* a copy settles what was referenced first */
	assert_int_equal(c.ref_len, 0);
	assert_true(conn_queue_ref(&c, x, 3));
	assert_true(conn_queue_ref(&c, x + 5, 3)); /* not contiguous: the first is settled */
	assert_ptr_equal(c.ref, x + 5);
	assert_true(conn_flush(&c));
	read_all(peer, got, 21);
	assert_memory_equal(got, "AAAAAAAAAAbbbbb012567", 21);
	/* A closed conn forgets its references. */
	assert_true(conn_queue_ref(&c, a, 10));
	conn_close(&c);
	assert_null(c.ref);
	assert_int_equal(c.ref_len, 0);
	close(peer);
}

static void test_conn_ref_partial(void **state)
{
	struct conn c;
	int peer;
	const size_t n = 4 << 20; /* more than a socket pair holds */
	uint8_t *src = malloc(n), *copy = malloc(n), *got = malloc(n);
	(void)state;
	assert_non_null(src);
	assert_non_null(copy);
	assert_non_null(got);
	for (size_t i = 0; i < n; i++)
		src[i] = (uint8_t)(i * 7 + i / 251);
	memcpy(copy, src, n);
	conn_pair(&c, &peer);
	assert_true(conn_queue_ref(&c, src, n));
	assert_true(conn_flush(&c));
	/* The socket took part: the rest was copied, so the source may go. */
	size_t sent = (size_t)c.bytes_out;
	assert_true(sent > 0 && sent < n);
	assert_int_equal(c.ref_len, 0);
	assert_int_equal(iobuf_len(&c.out), n - sent);
	memset(src, 0xee, n);
	free(src);
	size_t got_len = 0;
	while (got_len < n) {
		ssize_t r = read(peer, got + got_len, n - got_len);
		if (r < 0 && (errno == EAGAIN || errno == EINTR))
			continue;
		assert_true(r > 0);
		got_len += (size_t)r;
		assert_true(conn_flush(&c));
	}
	assert_int_equal(iobuf_len(&c.out), 0);
	assert_memory_equal(got, copy, n);
	conn_close(&c);
	close(peer);
	free(copy);
	free(got);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_pktbuf_typed),
	    cmocka_unit_test(test_pktbuf_untyped),
	    cmocka_unit_test(test_pktbuf_integers),
	    cmocka_unit_test(test_pktbuf_growth),
	    cmocka_unit_test(test_pktbuf_error),
	    cmocka_unit_test(test_pktbuf_small_messages),
	    cmocka_unit_test(test_pktbuf_failure_sticky),
	    cmocka_unit_test(test_pktbuf_reset_reuse),
	    cmocka_unit_test(test_mbuf_empty),
	    cmocka_unit_test(test_mbuf_short),
	    cmocka_unit_test(test_mbuf_values),
	    cmocka_unit_test(test_mbuf_string_without_nul),
	    cmocka_unit_test(test_mbuf_bytes),
	    cmocka_unit_test(test_iobuf_empty_costs_nothing),
	    cmocka_unit_test(test_iobuf_append_consume),
	    cmocka_unit_test(test_iobuf_pool_reuse),
	    cmocka_unit_test(test_iobuf_reserve),
	    cmocka_unit_test(test_iobuf_compaction),
	    cmocka_unit_test(test_iobuf_growth),
	    cmocka_unit_test(test_conn_ref_direct),
	    cmocka_unit_test(test_conn_ref_order),
	    cmocka_unit_test(test_conn_ref_partial),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
