/*
 * Tests of the protocol framing functions (proxy/proto.c): every outcome of the
 * startup packet parser, message framing at its boundaries, the frontend message
 * type set, ErrorResponse fields, the SASL mechanism filter and the auth code.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "proxy/pktbuf.h"
#include "proxy/proto.h"

/* Parameter bytes of a startup packet, written as one literal with its NULs. */
#define PARAMS(lit) (const uint8_t *)(lit), sizeof(lit) - 1

static void put32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24);
	p[1] = (uint8_t)(v >> 16);
	p[2] = (uint8_t)(v >> 8);
	p[3] = (uint8_t)v;
}

static uint32_t get32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* A startup packet in a heap block of exactly its size, so ASan sees any over-read. */
static uint8_t *startup_pkt(uint32_t version, const uint8_t *params, size_t plen, size_t *len)
{
	*len = 8 + plen;
	uint8_t *p = malloc(*len);
	assert_non_null(p);
	put32(p, (uint32_t)*len);
	put32(p + 4, version);
	if (plen)
		memcpy(p + 8, params, plen);
	return p;
}

/* Parse the first n bytes of buf, copied to a block of exactly n bytes. */
static enum startup_kind parse_prefix(const uint8_t *buf, size_t n, struct startup_info *si)
{
	uint8_t *copy = malloc(n ? n : 1);
	assert_non_null(copy);
	if (n)
		memcpy(copy, buf, n);
	enum startup_kind k = proto_parse_startup(copy, n, si);
	free(copy);
	return k;
}

/* A packet whose header is just a length and a code, and nothing else. */
static enum startup_kind parse_header(uint32_t len, uint32_t code, struct startup_info *si)
{
	uint8_t h[8];
	put32(h, len);
	put32(h + 4, code);
	return parse_prefix(h, sizeof(h), si);
}

/* ---- proto_parse_startup ---- */

static void test_startup_v3_full(void **state)
{
	(void)state;
	size_t len;
	uint8_t *p = startup_pkt(PROTO_V3,
	                         PARAMS("user\0alice\0database\0appdb\0application_name\0psql\0"
	                                "client_encoding\0UTF8\0\0"),
	                         &len);
	struct startup_info si;
	assert_int_equal(proto_parse_startup(p, len, &si), STARTUP_V3);
	assert_int_equal(si.len, len);
	assert_int_equal(si.version, PROTO_V3);
	assert_string_equal(si.user, "alice");
	assert_string_equal(si.database, "appdb");
	assert_string_equal(si.application_name, "psql");
	/* The strings point into the packet itself. */
	assert_true((const uint8_t *)si.user > p && (const uint8_t *)si.user < p + len);
	assert_true((const uint8_t *)si.database > p && (const uint8_t *)si.database < p + len);
	assert_int_equal(si.cancel_pid, 0);
	assert_int_equal(si.cancel_key, 0);
	free(p);
}

static void test_startup_incomplete_every_prefix(void **state)
{
	(void)state;
	size_t len;
	uint8_t *p = startup_pkt(PROTO_V3, PARAMS("user\0bob\0database\0db\0\0"), &len);
	struct startup_info si;
	for (size_t n = 0; n < len; n++)
		assert_int_equal(parse_prefix(p, n, &si), STARTUP_INCOMPLETE);
	assert_int_equal(parse_prefix(p, len, &si), STARTUP_V3);
	free(p);
}

static void test_startup_followed_by_more_bytes(void **state)
{
	(void)state;
	/* A client may pipeline its first message after the startup packet. */
	size_t len;
	uint8_t *p = startup_pkt(PROTO_V3, PARAMS("user\0bob\0\0"), &len);
	uint8_t buf[64];
	memcpy(buf, p, len);
	memcpy(buf + len, "Q\0\0\0\x0dSELECT 1", 14);
	struct startup_info si;
	assert_int_equal(proto_parse_startup(buf, len + 14, &si), STARTUP_V3);
	assert_int_equal(si.len, len);
	assert_string_equal(si.user, "bob");
	free(p);
}

static void test_startup_ssl_request(void **state)
{
	(void)state;
	struct startup_info si;
	uint8_t h[8];
	put32(h, 8);
	put32(h + 4, PROTO_SSL_REQUEST);
	for (size_t n = 0; n < 8; n++)
		assert_int_equal(parse_prefix(h, n, &si), STARTUP_INCOMPLETE);
	assert_int_equal(parse_prefix(h, 8, &si), STARTUP_SSL);
	assert_int_equal(si.len, 8);
	assert_int_equal(si.version, PROTO_SSL_REQUEST);
	assert_null(si.user);

	/* Wrong lengths: longer and shorter than 8. */
	uint8_t l[12] = {0};
	put32(l, 12);
	put32(l + 4, PROTO_SSL_REQUEST);
	assert_int_equal(parse_prefix(l, 12, &si), STARTUP_BAD_LENGTH);
	assert_int_equal(parse_header(7, PROTO_SSL_REQUEST, &si), STARTUP_BAD_LENGTH);
}

static void test_startup_gssenc_request(void **state)
{
	(void)state;
	struct startup_info si;
	assert_int_equal(parse_header(8, PROTO_GSSENC_REQUEST, &si), STARTUP_GSSENC);
	assert_int_equal(si.len, 8);
	assert_int_equal(si.version, PROTO_GSSENC_REQUEST);

	uint8_t l[16] = {0};
	put32(l, 16);
	put32(l + 4, PROTO_GSSENC_REQUEST);
	assert_int_equal(parse_prefix(l, 16, &si), STARTUP_BAD_LENGTH);
	assert_int_equal(parse_prefix(l, 15, &si), STARTUP_INCOMPLETE);
}

static void test_startup_cancel_request(void **state)
{
	(void)state;
	struct startup_info si;
	uint8_t c[16];
	put32(c, 16);
	put32(c + 4, PROTO_CANCEL_REQUEST);
	put32(c + 8, 4242);
	put32(c + 12, 0xdeadbeef);
	for (size_t n = 0; n < 16; n++)
		assert_int_equal(parse_prefix(c, n, &si), STARTUP_INCOMPLETE);
	assert_int_equal(parse_prefix(c, 16, &si), STARTUP_CANCEL);
	assert_int_equal(si.len, 16);
	assert_int_equal(si.version, PROTO_CANCEL_REQUEST);
	assert_int_equal(si.cancel_pid, 4242);
	assert_int_equal(si.cancel_key, 0xdeadbeef);

	/* Too short (no key, only a pid) and too long. */
	assert_int_equal(parse_header(8, PROTO_CANCEL_REQUEST, &si), STARTUP_BAD_LENGTH);
	put32(c, 12);
	assert_int_equal(parse_prefix(c, 12, &si), STARTUP_BAD_LENGTH);
	uint8_t l[20] = {0};
	put32(l, 20);
	put32(l + 4, PROTO_CANCEL_REQUEST);
	assert_int_equal(parse_prefix(l, 20, &si), STARTUP_BAD_LENGTH);
}

static void test_startup_bad_lengths(void **state)
{
	(void)state;
	static const uint32_t bad[] = {0, 1, 4, 7, 10005, 65536, 0x7fffffff, 0xffffffff};
	struct startup_info si;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		uint8_t h[4];
		put32(h, bad[i]);
		/* Decided from the length word alone: nothing more needs to arrive. */
		assert_int_equal(parse_prefix(h, 4, &si), STARTUP_BAD_LENGTH);
		assert_int_equal(parse_header(bad[i], PROTO_V3, &si), STARTUP_BAD_LENGTH);
	}
}

static void test_startup_length_boundaries(void **state)
{
	(void)state;
	struct startup_info si;
	/* 8 is the smallest length: a V3 packet that short has no terminator. */
	assert_int_equal(parse_header(8, PROTO_V3, &si), STARTUP_BAD_LAYOUT);

	/* The largest packet pgshunt accepts, with a valid layout. */
	size_t plen = PROTO_MAX_STARTUP - 8;
	uint8_t *params = calloc(1, plen);
	assert_non_null(params);
	memcpy(params, "user\0bob\0options\0", 17);
	memset(params + 17, 'x', plen - 17 - 2); /* the value, then its NUL and the terminator */
	size_t len;
	uint8_t *p = startup_pkt(PROTO_V3, params, plen, &len);
	assert_int_equal(len, PROTO_MAX_STARTUP);
	assert_int_equal(proto_parse_startup(p, len, &si), STARTUP_V3);
	assert_string_equal(si.user, "bob");
	free(p);
	free(params);
}

/*
 * PostgreSQL subtracts the length word before comparing with its
 * MAX_STARTUP_PACKET_LENGTH (ProcessStartupPacket: len -= 4; if (len < 4 ||
 * len > MAX_STARTUP_PACKET_LENGTH) ...), so it accepts whole packets of up to
 * 10004 bytes and first rejects 10005.  A transparent proxy should accept the same.
 */
static void test_startup_max_length_as_postgres(void **state)
{
	(void)state;
	struct startup_info si;
	for (size_t total = 10001; total <= 10004; total++) {
		size_t plen = total - 8;
		uint8_t *params = calloc(1, plen);
		assert_non_null(params);
		memcpy(params, "user\0bob\0options\0", 17);
		memset(params + 17, 'x', plen - 17 - 2);
		size_t len;
		uint8_t *p = startup_pkt(PROTO_V3, params, plen, &len);
		enum startup_kind k = proto_parse_startup(p, len, &si);
		free(p);
		free(params);
		assert_int_equal(len, total);
		assert_int_equal(k, STARTUP_V3);
	}
	assert_int_equal(parse_header(10005, PROTO_V3, &si), STARTUP_BAD_LENGTH);
}

static void test_startup_bad_version(void **state)
{
	(void)state;
	static const uint32_t bad[] = {
	    0x00020000u, 0x00040000u, 0x00010000u, 0,
	    0x00020001u, 0xffff0000u, 0x04d21631u /* 1234.5681: no such request */};
	struct startup_info si;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		size_t len;
		uint8_t *p = startup_pkt(bad[i], PARAMS("user\0bob\0\0"), &len);
		assert_int_equal(proto_parse_startup(p, len, &si), STARTUP_BAD_VERSION);
		assert_int_equal(si.version, bad[i]);
		assert_int_equal(si.len, len);
		free(p);
	}
}

static void test_startup_minor_versions(void **state)
{
	(void)state;
	/* Any 3.x is a V3 startup; the server negotiates the minor version itself. */
	static const uint32_t ok[] = {0x00030000u, 0x00030001u, 0x00030002u, 0x0003ffffu};
	struct startup_info si;
	for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
		size_t len;
		uint8_t *p = startup_pkt(ok[i], PARAMS("user\0bob\0\0"), &len);
		assert_int_equal(proto_parse_startup(p, len, &si), STARTUP_V3);
		assert_int_equal(si.version, ok[i]);
		free(p);
	}
}

static void expect_layout(const uint8_t *params, size_t plen, enum startup_kind want)
{
	struct startup_info si;
	size_t len;
	uint8_t *p = startup_pkt(PROTO_V3, params, plen, &len);
	assert_int_equal(proto_parse_startup(p, len, &si), want);
	free(p);
}

static void test_startup_bad_layout(void **state)
{
	(void)state;
	/* No terminator after the last pair. */
	expect_layout(PARAMS("user\0bob\0"), STARTUP_BAD_LAYOUT);
	/* The last string has no NUL at all. */
	expect_layout(PARAMS("user\0bob"), STARTUP_BAD_LAYOUT);
	expect_layout(PARAMS("user"), STARTUP_BAD_LAYOUT);
	/* An odd number of strings: a name without a value. */
	expect_layout(PARAMS("user\0bob\0database\0"), STARTUP_BAD_LAYOUT);
	expect_layout(PARAMS("user\0bob\0database\0\0"), STARTUP_BAD_LAYOUT);
	expect_layout(PARAMS("user\0"), STARTUP_BAD_LAYOUT);
	/* Bytes after the terminator. */
	expect_layout(PARAMS("user\0bob\0\0x"), STARTUP_BAD_LAYOUT);
	expect_layout(PARAMS("user\0bob\0\0\0"), STARTUP_BAD_LAYOUT);
	expect_layout(PARAMS("\0user\0bob\0\0"), STARTUP_BAD_LAYOUT);
	/* Nothing at all after the version. */
	expect_layout(PARAMS(""), STARTUP_BAD_LAYOUT);
}

static void test_startup_user(void **state)
{
	(void)state;
	struct startup_info si;
	size_t len;
	uint8_t *p;

	/* Only a terminator: the layout is right, the user is missing. */
	expect_layout(PARAMS("\0"), STARTUP_NO_USER);
	expect_layout(PARAMS("database\0db\0\0"), STARTUP_NO_USER);
	/* "user" is matched exactly. */
	expect_layout(PARAMS("User\0bob\0\0"), STARTUP_NO_USER);
	expect_layout(PARAMS("username\0bob\0\0"), STARTUP_NO_USER);
	/* An empty user is no user. */
	expect_layout(PARAMS("user\0\0database\0db\0\0"), STARTUP_NO_USER);

	/* The database defaults to the user, as the server does. */
	p = startup_pkt(PROTO_V3, PARAMS("user\0carol\0\0"), &len);
	assert_int_equal(proto_parse_startup(p, len, &si), STARTUP_V3);
	assert_string_equal(si.user, "carol");
	assert_ptr_equal(si.database, si.user);
	assert_null(si.application_name);
	free(p);

	/* ... also when given empty. */
	p = startup_pkt(PROTO_V3, PARAMS("database\0\0user\0dave\0\0"), &len);
	assert_int_equal(proto_parse_startup(p, len, &si), STARTUP_V3);
	assert_string_equal(si.database, "dave");
	free(p);

	/* Order does not matter; a repeated parameter takes its last value. */
	p = startup_pkt(PROTO_V3,
	                PARAMS("application_name\0app\0database\0d1\0user\0u1\0user\0u2\0"
	                       "options\0-c x=y\0_pq_.foo\0bar\0\0"),
	                &len);
	assert_int_equal(proto_parse_startup(p, len, &si), STARTUP_V3);
	assert_string_equal(si.user, "u2");
	assert_string_equal(si.database, "d1");
	assert_string_equal(si.application_name, "app");
	free(p);

	/* An empty application_name is reported as given. */
	p = startup_pkt(PROTO_V3, PARAMS("user\0u\0application_name\0\0\0"), &len);
	assert_int_equal(proto_parse_startup(p, len, &si), STARTUP_V3);
	assert_non_null(si.application_name);
	assert_string_equal(si.application_name, "");
	free(p);
}

/* ---- proto_frame ---- */

static enum frame_status frame(const uint8_t *hdr, size_t avail, size_t max_len, char *type,
                               uint32_t *total)
{
	uint8_t *copy = malloc(avail ? avail : 1);
	assert_non_null(copy);
	if (avail)
		memcpy(copy, hdr, avail);
	enum frame_status fs = proto_frame(copy, avail, max_len, type, total);
	free(copy);
	return fs;
}

static void test_frame_incomplete(void **state)
{
	(void)state;
	uint8_t h[5] = {'Q', 0, 0, 0, 13};
	char type;
	uint32_t total;
	for (size_t n = 0; n < 5; n++)
		assert_int_equal(frame(h, n, 1024, &type, &total), FRAME_INCOMPLETE);
	/* Even a header whose length is a lie needs all five bytes first. */
	uint8_t bad[5] = {'Q', 0, 0, 0, 0};
	for (size_t n = 0; n < 5; n++)
		assert_int_equal(frame(bad, n, 1024, &type, &total), FRAME_INCOMPLETE);
}

static void test_frame_lengths(void **state)
{
	(void)state;
	uint8_t h[5] = {'P', 0, 0, 0, 0};
	char type;
	uint32_t total;
	for (uint8_t l = 0; l < 4; l++) {
		h[4] = l;
		type = 0;
		assert_int_equal(frame(h, 5, 1024, &type, &total), FRAME_BAD_LENGTH);
		assert_int_equal(type, 'P');
	}
	/* Length 4: a message with an empty body (Sync, Flush, ...). */
	h[0] = 'S';
	h[4] = 4;
	assert_int_equal(frame(h, 5, 1024, &type, &total), FRAME_OK);
	assert_int_equal(type, 'S');
	assert_int_equal(total, 5);
	/* The body need not have arrived: FRAME_OK only says the header is valid. */
	put32(h + 1, 1000);
	assert_int_equal(frame(h, 5, 1024, &type, &total), FRAME_OK);
	assert_int_equal(total, 1001);
	/* A byte with the high bit as type is framed like any other. */
	h[0] = 0xff;
	assert_int_equal(frame(h, 5, 1024, &type, &total), FRAME_OK);
	assert_int_equal((uint8_t)type, 0xff);
}

static void test_frame_max_len(void **state)
{
	(void)state;
	uint8_t h[5] = {'D', 0, 0, 0, 0};
	char type;
	uint32_t total;
	static const size_t maxes[] = {4, 5, 1024, 1u << 20, 1u << 30};
	for (size_t i = 0; i < sizeof(maxes) / sizeof(maxes[0]); i++) {
		put32(h + 1, (uint32_t)maxes[i]);
		assert_int_equal(frame(h, 5, maxes[i], &type, &total), FRAME_OK);
		assert_int_equal(total, maxes[i] + 1);
		put32(h + 1, (uint32_t)maxes[i] + 1);
		assert_int_equal(frame(h, 5, maxes[i], &type, &total), FRAME_TOO_LARGE);
	}
	put32(h + 1, 0xffffffffu);
	assert_int_equal(frame(h, 5, 1u << 30, &type, &total), FRAME_TOO_LARGE);
	put32(h + 1, 0x80000000u);
	assert_int_equal(frame(h, 5, 1u << 30, &type, &total), FRAME_TOO_LARGE);
	/* A lie below 4 is reported as such even when max_len is smaller still. */
	put32(h + 1, 3);
	assert_int_equal(frame(h, 5, 2, &type, &total), FRAME_BAD_LENGTH);
}

static void test_frame_total_len(void **state)
{
	(void)state;
	static const uint32_t lens[] = {4, 5, 8, 255, 256, 65535, 65536, 1u << 24, (1u << 30)};
	uint8_t h[5] = {'B'};
	char type;
	uint32_t total;
	for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
		put32(h + 1, lens[i]);
		assert_int_equal(frame(h, 5, 1u << 30, &type, &total), FRAME_OK);
		assert_int_equal(total, lens[i] + 1);
	}
}

/* ---- proto_frontend_type_valid ---- */

static void test_frontend_types(void **state)
{
	(void)state;
	/* Bind Close CopyData CopyDone CopyFail Describe Execute Flush FunctionCall Parse
	 * Query Sync Terminate: the protocol's frontend messages after authentication. */
	static const char valid[] = "BCdcfDEHFPQSX";
	int n = 0;
	for (int c = 0; c < 256; c++) {
		bool want = c != 0 && strchr(valid, c) != NULL;
		assert_int_equal(proto_frontend_type_valid((char)c), want);
		n += want;
	}
	assert_int_equal(n, 13);
	/* Authentication responses and server-only types are not valid once active. */
	assert_false(proto_frontend_type_valid('p'));
	assert_false(proto_frontend_type_valid('Z'));
	assert_false(proto_frontend_type_valid('R'));
}

/* ---- proto_error_fields ---- */

static bool error_fields(const char *body, size_t len, const char **sev, const char **code,
                         const char **msg, char **copy)
{
	*copy = malloc(len ? len : 1);
	assert_non_null(*copy);
	if (len)
		memcpy(*copy, body, len);
	return proto_error_fields((const uint8_t *)*copy, len, sev, code, msg);
}

#define BODY(lit) lit, sizeof(lit) - 1

static void test_error_fields_all(void **state)
{
	(void)state;
	const char *sev, *code, *msg;
	char *c;
	assert_true(error_fields(BODY("SERROR\0VERROR\0C42P01\0Mrelation \"t\" does not exist\0"
	                              "Fparse_relation.c\0L1392\0\0"),
	                         &sev, &code, &msg, &c));
	assert_string_equal(sev, "ERROR");
	assert_string_equal(code, "42P01");
	assert_string_equal(msg, "relation \"t\" does not exist");
	free(c);

	/* Without M: still an error, the message is NULL. */
	assert_true(error_fields(BODY("SFATAL\0C57P01\0\0"), &sev, &code, &msg, &c));
	assert_string_equal(sev, "FATAL");
	assert_string_equal(code, "57P01");
	assert_null(msg);
	free(c);
}

static void test_error_fields_v_preferred(void **state)
{
	(void)state;
	const char *sev, *code, *msg;
	char *c;
	/* S is localized, V is not: V wins whichever comes first. */
	assert_true(error_fields(BODY("SFEHLER\0VERROR\0C22012\0Mdivision by zero\0\0"), &sev,
	                         &code, &msg, &c));
	assert_string_equal(sev, "ERROR");
	free(c);
	assert_true(
	    error_fields(BODY("VFATAL\0SSCHWERWIEGEND\0C28P01\0Mx\0\0"), &sev, &code, &msg, &c));
	assert_string_equal(sev, "FATAL");
	free(c);
	/* Before 9.6 there is no V: S is used. */
	assert_true(error_fields(BODY("SPANIC\0CXX000\0\0"), &sev, &code, &msg, &c));
	assert_string_equal(sev, "PANIC");
	free(c);
}

static void test_error_fields_missing(void **state)
{
	(void)state;
	const char *sev, *code, *msg;
	char *c;
	/* No C. */
	assert_false(error_fields(BODY("SERROR\0VERROR\0Mno code\0\0"), &sev, &code, &msg, &c));
	free(c);
	/* No S or V. */
	assert_false(error_fields(BODY("C42601\0Mno severity\0\0"), &sev, &code, &msg, &c));
	free(c);
	/* Empty body, and a lone terminator. */
	assert_false(error_fields(BODY(""), &sev, &code, &msg, &c));
	assert_null(sev);
	assert_null(code);
	assert_null(msg);
	free(c);
	assert_false(error_fields(BODY("\0"), &sev, &code, &msg, &c));
	free(c);
	/* Fields after the terminator do not count. */
	assert_false(error_fields(BODY("SERROR\0\0C42601\0\0"), &sev, &code, &msg, &c));
	free(c);
}

static void test_error_fields_unterminated(void **state)
{
	(void)state;
	const char *sev, *code, *msg;
	char *c;
	assert_false(error_fields(BODY("SERROR\0C42601"), &sev, &code, &msg, &c));
	free(c);
	assert_false(
	    error_fields(BODY("SERROR\0VERROR\0C42601\0Mtext without end"), &sev, &code, &msg, &c));
	free(c);
	/* A field code as the very last byte: no value at all. */
	assert_false(error_fields(BODY("SERROR\0C42601\0M"), &sev, &code, &msg, &c));
	free(c);
}

/* ---- proto_sasl_strip_plus ---- */

/* An AuthenticationSASL body: code 10, then the mechanism list given as a literal. */
static uint8_t *sasl_body(const char *mechs, size_t mlen, size_t *len)
{
	*len = 4 + mlen;
	uint8_t *b = malloc(*len);
	assert_non_null(b);
	put32(b, 10);
	if (mlen)
		memcpy(b + 4, mechs, mlen);
	return b;
}

/* Check out holds exactly one R message with code 10 and this mechanism list. */
static void expect_sasl_message(const struct pktbuf *out, size_t off, const char *mechs,
                                size_t mlen)
{
	assert_int_equal(out->len, off + 1 + 4 + 4 + mlen);
	assert_int_equal(out->data[off], 'R');
	assert_int_equal(get32(out->data + off + 1), out->len - off - 1);
	assert_int_equal(get32(out->data + off + 5), 10);
	assert_memory_equal(out->data + off + 9, mechs, mlen);
	/* And the proxy's own framing reads it back whole. */
	char type;
	uint32_t total;
	assert_int_equal(proto_frame(out->data + off, out->len - off, 1024, &type, &total),
	                 FRAME_OK);
	assert_int_equal(type, 'R');
	assert_int_equal(total, out->len - off);
}

static bool strip(const char *mechs, size_t mlen, struct pktbuf *out)
{
	size_t len;
	uint8_t *b = sasl_body(mechs, mlen, &len);
	bool ok = proto_sasl_strip_plus(b, len, out);
	free(b);
	return ok;
}

static void test_sasl_strip_plus(void **state)
{
	(void)state;
	struct pktbuf out;
	pktbuf_init(&out);
	assert_true(strip(BODY("SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0"), &out));
	expect_sasl_message(&out, 0, BODY("SCRAM-SHA-256\0\0"));
	pktbuf_free(&out);

	/* Order of the others kept, PLUS anywhere removed. */
	pktbuf_init(&out);
	assert_true(strip(BODY("A\0SCRAM-SHA-256-PLUS\0B\0C\0\0"), &out));
	expect_sasl_message(&out, 0, BODY("A\0B\0C\0\0"));
	pktbuf_free(&out);

	/* Nothing to remove: the same message back. */
	pktbuf_init(&out);
	assert_true(strip(BODY("SCRAM-SHA-256\0\0"), &out));
	expect_sasl_message(&out, 0, BODY("SCRAM-SHA-256\0\0"));
	pktbuf_free(&out);

	/* Only the exact name is removed. */
	pktbuf_init(&out);
	assert_true(strip(BODY("SCRAM-SHA-256-PLUSX\0scram-sha-256-plus\0\0"), &out));
	expect_sasl_message(&out, 0, BODY("SCRAM-SHA-256-PLUSX\0scram-sha-256-plus\0\0"));
	pktbuf_free(&out);
}

static void test_sasl_strip_plus_appends(void **state)
{
	(void)state;
	/* Written after what the buffer already holds, with its own length field. */
	struct pktbuf out;
	pktbuf_init(&out);
	pktbuf_ready(&out, 'I');
	assert_int_equal(out.len, 6);
	assert_true(strip(BODY("SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0"), &out));
	assert_memory_equal(out.data, "Z\0\0\0\x05I", 6);
	expect_sasl_message(&out, 6, BODY("SCRAM-SHA-256\0\0"));
	pktbuf_free(&out);
}

static void test_sasl_strip_plus_rejects(void **state)
{
	(void)state;
	struct pktbuf out;

	/* Only PLUS: nothing left to offer. */
	pktbuf_init(&out);
	assert_false(strip(BODY("SCRAM-SHA-256-PLUS\0\0"), &out));
	pktbuf_free(&out);
	pktbuf_init(&out);
	assert_false(strip(BODY("SCRAM-SHA-256-PLUS\0SCRAM-SHA-256-PLUS\0\0"), &out));
	pktbuf_free(&out);
	/* An empty list. */
	pktbuf_init(&out);
	assert_false(strip(BODY("\0"), &out));
	pktbuf_free(&out);
	/* No terminator, no NUL, nothing at all after the code. */
	pktbuf_init(&out);
	assert_false(strip(BODY("SCRAM-SHA-256\0"), &out));
	pktbuf_free(&out);
	pktbuf_init(&out);
	assert_false(strip(BODY("SCRAM-SHA-256"), &out));
	pktbuf_free(&out);
	pktbuf_init(&out);
	assert_false(strip(BODY(""), &out));
	pktbuf_free(&out);
	/* Bytes after the terminator. */
	pktbuf_init(&out);
	assert_false(strip(BODY("SCRAM-SHA-256\0\0junk"), &out));
	pktbuf_free(&out);

	/* Not code 10, or too short for a code. */
	uint8_t b[24];
	put32(b, 11);
	memcpy(b + 4, "SCRAM-SHA-256\0\0", 15);
	pktbuf_init(&out);
	assert_false(proto_sasl_strip_plus(b, 19, &out));
	put32(b, 0);
	assert_false(proto_sasl_strip_plus(b, 4, &out));
	put32(b, 10);
	for (size_t n = 0; n < 4; n++)
		assert_false(proto_sasl_strip_plus(b, n, &out));
	pktbuf_free(&out);
}

/* ---- proto_auth_code ---- */

static void test_auth_code(void **state)
{
	(void)state;
	static const uint32_t codes[] = {0, 2, 3, 5, 7, 8, 9, 10, 11, 12, 0xffffffffu};
	uint8_t b[8] = {0};
	uint32_t code;
	for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++) {
		put32(b, codes[i]);
		code = 12345;
		assert_true(proto_auth_code(b, 4, &code));
		assert_int_equal(code, codes[i]);
		/* Data after the code (MD5 salt, SASL list) does not matter. */
		assert_true(proto_auth_code(b, 8, &code));
		assert_int_equal(code, codes[i]);
	}
	for (size_t n = 0; n < 4; n++) {
		uint8_t *p = malloc(n ? n : 1);
		assert_non_null(p);
		memset(p, 0, n ? n : 1);
		assert_false(proto_auth_code(p, n, &code));
		free(p);
	}
}


/* ---- dropping the engine's extra RETURNING column ---- */

/* One RowDescription field; table and attnum 0 for a column of no table. */
static void put_field_at(struct pktbuf *b, const char *name, uint32_t table, uint16_t attnum,
			 uint32_t type_oid)
{
	pktbuf_put_string(b, name);
	pktbuf_put_uint32(b, table);
	pktbuf_put_uint16(b, attnum);
	pktbuf_put_uint32(b, type_oid);
	pktbuf_put_uint16(b, 0xffff);
	pktbuf_put_uint32(b, 0xffffffff);
	pktbuf_put_uint16(b, 0);
}

static void put_field(struct pktbuf *b, const char *name, uint32_t type_oid)
{
	put_field_at(b, name, 0, 0, type_oid);
}

static void put_field_of(struct pktbuf *b, const char *name, uint32_t table, uint16_t attnum)
{
	put_field_at(b, name, table, attnum, 25);
}

static void test_rowdesc_drop_last(void **state)
{
	(void)state;
	struct pktbuf in, want, out;
	pktbuf_init(&in);
	pktbuf_init(&want);
	pktbuf_init(&out);
	pktbuf_start(&in, 'T');
	pktbuf_put_uint16(&in, 3);
	put_field(&in, "created_at", 1184);
	put_field(&in, "status", 25);
	put_field(&in, "put_next", 16);
	pktbuf_finish(&in);
	pktbuf_start(&want, 'T');
	pktbuf_put_uint16(&want, 2);
	put_field(&want, "created_at", 1184);
	put_field(&want, "status", 25);
	pktbuf_finish(&want);
	assert_true(proto_rowdesc_drop_last(in.data, (uint32_t)in.len, &out));
	assert_int_equal(out.len, want.len);
	assert_memory_equal(out.data, want.data, want.len);

	/* One column only: dropping it leaves an empty description. */
	pktbuf_reset(&in);
	pktbuf_reset(&out);
	pktbuf_start(&in, 'T');
	pktbuf_put_uint16(&in, 1);
	put_field(&in, "put_next", 16);
	pktbuf_finish(&in);
	assert_true(proto_rowdesc_drop_last(in.data, (uint32_t)in.len, &out));
	assert_int_equal(out.len, 7);
	assert_int_equal(out.data[6], 0);

	/* Malformed: every truncation, a trailing byte, no column, the wrong type. */
	pktbuf_reset(&in);
	pktbuf_start(&in, 'T');
	pktbuf_put_uint16(&in, 2);
	put_field(&in, "a", 23);
	put_field(&in, "b", 23);
	pktbuf_finish(&in);
	for (uint32_t cut = 0; cut < in.len; cut++) {
		pktbuf_reset(&out);
		assert_false(proto_rowdesc_drop_last(in.data, cut, &out));
	}
	uint8_t *longer = malloc(in.len + 1);
	memcpy(longer, in.data, in.len);
	longer[in.len] = 0;
	assert_false(proto_rowdesc_drop_last(longer, (uint32_t)in.len + 1, &out));
	free(longer);
	static const uint8_t none[] = {'T', 0, 0, 0, 6, 0, 0};
	assert_false(proto_rowdesc_drop_last(none, sizeof(none), &out));
	in.data[0] = 'D';
	assert_false(proto_rowdesc_drop_last(in.data, (uint32_t)in.len, &out));
	pktbuf_free(&in);
	pktbuf_free(&want);
	pktbuf_free(&out);
}

static void test_datarow_drop_last(void **state)
{
	(void)state;
	struct pktbuf in, out;
	pktbuf_init(&in);
	pktbuf_init(&out);
	pktbuf_start(&in, 'D');
	pktbuf_put_uint16(&in, 3);
	pktbuf_put_uint32(&in, 3);
	pktbuf_put_bytes(&in, "abc", 3);
	pktbuf_put_uint32(&in, 0xffffffff); /* NULL */
	pktbuf_put_uint32(&in, 1);
	pktbuf_put_bytes(&in, "t", 1);
	pktbuf_finish(&in);
	assert_true(proto_datarow_drop_last(in.data, (uint32_t)in.len, &out));
	static const uint8_t want[] = {'D', 0, 0, 0, 17, 0, 2, 0, 0, 0, 3, 'a', 'b', 'c',
				       0xff, 0xff, 0xff, 0xff};
	assert_int_equal(out.len, sizeof(want));
	assert_memory_equal(out.data, want, sizeof(want));

	/* A NULL last column is dropped as well. */
	pktbuf_reset(&in);
	pktbuf_reset(&out);
	pktbuf_start(&in, 'D');
	pktbuf_put_uint16(&in, 2);
	pktbuf_put_uint32(&in, 1);
	pktbuf_put_bytes(&in, "x", 1);
	pktbuf_put_uint32(&in, 0xffffffff);
	pktbuf_finish(&in);
	assert_true(proto_datarow_drop_last(in.data, (uint32_t)in.len, &out));
	assert_int_equal(out.len, 12);

	/* Lengths that lie, truncations, no columns. */
	for (uint32_t cut = 0; cut < in.len; cut++) {
		pktbuf_reset(&out);
		assert_false(proto_datarow_drop_last(in.data, cut, &out));
	}
	static const uint8_t lie[] = {'D', 0, 0, 0, 10, 0, 1, 0x7f, 0, 0, 0};
	assert_false(proto_datarow_drop_last(lie, sizeof(lie), &out));
	static const uint8_t none[] = {'D', 0, 0, 0, 6, 0, 0};
	assert_false(proto_datarow_drop_last(none, sizeof(none), &out));
	pktbuf_free(&in);
	pktbuf_free(&out);
}


/* ---- Bind: a format code for the engine's extra result column ---- */

static void build_bind(struct pktbuf *b, uint16_t nres, const uint16_t *res)
{
	pktbuf_start(b, 'B');
	pktbuf_put_string(b, "");
	pktbuf_put_string(b, "S_4");
	pktbuf_put_uint16(b, 1); /* one parameter format: binary */
	pktbuf_put_uint16(b, 1);
	pktbuf_put_uint16(b, 2); /* two parameters: 4 bytes, NULL */
	pktbuf_put_uint32(b, 4);
	pktbuf_put_bytes(b, "\0\0\0\7", 4);
	pktbuf_put_uint32(b, 0xffffffff);
	pktbuf_put_uint16(b, nres);
	for (uint16_t i = 0; i < nres; i++)
		pktbuf_put_uint16(b, res[i]);
	pktbuf_finish(b);
}

static void test_bind_extend_formats(void **state)
{
	(void)state;
	struct pktbuf in, want, out;
	static const uint16_t per_column[] = {0, 1}, extended[] = {0, 1, 0}, one[] = {1};
	pktbuf_init(&in);
	pktbuf_init(&want);
	pktbuf_init(&out);
	build_bind(&in, 2, per_column);
	build_bind(&want, 3, extended);
	assert_int_equal(proto_bind_extend_formats(in.data, (uint32_t)in.len, &out), 1);
	assert_int_equal(out.len, want.len);
	assert_memory_equal(out.data, want.data, want.len);

	/* Zero or one code applies to every column, the added one included. */
	pktbuf_reset(&in);
	pktbuf_reset(&out);
	build_bind(&in, 1, one);
	assert_int_equal(proto_bind_extend_formats(in.data, (uint32_t)in.len, &out), 0);
	pktbuf_reset(&in);
	build_bind(&in, 0, NULL);
	assert_int_equal(proto_bind_extend_formats(in.data, (uint32_t)in.len, &out), 0);

	/* Every truncation, a trailing byte, the wrong type: malformed. */
	pktbuf_reset(&in);
	build_bind(&in, 2, per_column);
	for (uint32_t cut = 0; cut < in.len; cut++) {
		pktbuf_reset(&out);
		assert_int_equal(proto_bind_extend_formats(in.data, cut, &out), -1);
	}
	uint8_t *longer = malloc(in.len + 1);
	memcpy(longer, in.data, in.len);
	longer[in.len] = 0;
	assert_int_equal(proto_bind_extend_formats(longer, (uint32_t)in.len + 1, &out), -1);
	free(longer);
	in.data[0] = 'E';
	assert_int_equal(proto_bind_extend_formats(in.data, (uint32_t)in.len, &out), -1);
	pktbuf_free(&in);
	pktbuf_free(&want);
	pktbuf_free(&out);
}


/* ---- Bind and Parse: the parameters of an upsert's clause ---- */

static void build_bind_params(struct pktbuf *b, uint16_t nfmt, const uint16_t *fmt)
{
	pktbuf_start(b, 'B');
	pktbuf_put_string(b, "p");
	pktbuf_put_string(b, "s");
	pktbuf_put_uint16(b, nfmt);
	for (uint16_t i = 0; i < nfmt; i++)
		pktbuf_put_uint16(b, fmt[i]);
	pktbuf_put_uint16(b, 3); /* 'ab', NULL, '' */
	pktbuf_put_uint32(b, 2);
	pktbuf_put_bytes(b, "ab", 2);
	pktbuf_put_uint32(b, 0xffffffff);
	pktbuf_put_uint32(b, 0);
	pktbuf_put_uint16(b, 1);
	pktbuf_put_uint16(b, 0);
	pktbuf_finish(b);
}

static void test_bind_param(void **state)
{
	(void)state;
	static const uint16_t text[] = {0}, binary[] = {1}, mixed[] = {0, 1, 0}, two[] = {0, 1},
			      bad[] = {0, 2, 0};
	struct pktbuf in;
	struct bind_param p;
	pktbuf_init(&in);
	build_bind_params(&in, 0, NULL);
	assert_int_equal(proto_bind_param(in.data, (uint32_t)in.len, 0, &p), 1);
	assert_false(p.binary);
	assert_int_equal(p.len, 2);
	assert_memory_equal(p.value, "ab", 2);
	assert_int_equal(proto_bind_param(in.data, (uint32_t)in.len, 1, &p), 1);
	assert_int_equal(p.len, -1);
	assert_int_equal(proto_bind_param(in.data, (uint32_t)in.len, 2, &p), 1);
	assert_int_equal(p.len, 0);
	assert_int_equal(proto_bind_param(in.data, (uint32_t)in.len, 3, &p), 0);

	/* One code for all; one per parameter. */
	pktbuf_reset(&in);
	build_bind_params(&in, 1, binary);
	assert_int_equal(proto_bind_param(in.data, (uint32_t)in.len, 2, &p), 1);
	assert_true(p.binary);
	pktbuf_reset(&in);
	build_bind_params(&in, 1, text);
	assert_int_equal(proto_bind_param(in.data, (uint32_t)in.len, 2, &p), 1);
	assert_false(p.binary);
	pktbuf_reset(&in);
	build_bind_params(&in, 3, mixed);
	assert_int_equal(proto_bind_param(in.data, (uint32_t)in.len, 1, &p), 1);
	assert_true(p.binary);
	assert_int_equal(proto_bind_param(in.data, (uint32_t)in.len, 2, &p), 1);
	assert_false(p.binary);

	/* Malformed: two codes for three parameters, a code 2, every truncation, a trailing
	 * byte, another message type. */
	pktbuf_reset(&in);
	build_bind_params(&in, 2, two);
	assert_int_equal(proto_bind_param(in.data, (uint32_t)in.len, 0, &p), -1);
	pktbuf_reset(&in);
	build_bind_params(&in, 3, bad);
	assert_int_equal(proto_bind_param(in.data, (uint32_t)in.len, 0, &p), -1);
	pktbuf_reset(&in);
	build_bind_params(&in, 3, mixed);
	for (uint32_t cut = 0; cut < in.len; cut++)
		assert_int_equal(proto_bind_param(in.data, cut, 0, &p), -1);
	uint8_t *longer = malloc(in.len + 1);
	memcpy(longer, in.data, in.len);
	longer[in.len] = 0;
	assert_int_equal(proto_bind_param(longer, (uint32_t)in.len + 1, 0, &p), -1);
	free(longer);
	in.data[0] = 'P';
	assert_int_equal(proto_bind_param(in.data, (uint32_t)in.len, 0, &p), -1);
	pktbuf_free(&in);
}

static void test_parse_param_type(void **state)
{
	(void)state;
	static const uint8_t two[] = {0, 2, 0, 0, 0, 25, 0, 0, 0, 0}, none[] = {0, 0},
			     short_oid[] = {0, 1, 0, 0, 0}, extra[] = {0, 0, 7};
	assert_int_equal(proto_parse_param_type(two, sizeof(two), 0), 25);
	assert_int_equal(proto_parse_param_type(two, sizeof(two), 1), 0);
	assert_int_equal(proto_parse_param_type(two, sizeof(two), 2), 0);
	assert_int_equal(proto_parse_param_type(none, sizeof(none), 0), 0);
	assert_int_equal(proto_parse_param_type(short_oid, sizeof(short_oid), 0), -1);
	assert_int_equal(proto_parse_param_type(extra, sizeof(extra), 0), -1);
	assert_int_equal(proto_parse_param_type(none, 1, 0), -1);
	assert_int_equal(proto_parse_param_type(NULL, 0, 0), -1);
}


static void test_rowdesc_map_table(void **state)
{
	(void)state;
	static const int16_t attmap[][2] = {{3, 2}, {7, 6}};
	struct pktbuf in, want, out;
	pktbuf_init(&in);
	pktbuf_init(&want);
	pktbuf_init(&out);
	pktbuf_start(&in, 'T');
	pktbuf_put_uint16(&in, 3);
	put_field_of(&in, "status", 5001, 3);    /* next_table's column 3 */
	put_field_of(&in, "expr", 0, 0);         /* no table */
	put_field_of(&in, "other", 777, 7);      /* another table: untouched */
	pktbuf_finish(&in);
	pktbuf_start(&want, 'T');
	pktbuf_put_uint16(&want, 3);
	put_field_of(&want, "status", 4001, 2);
	put_field_of(&want, "expr", 0, 0);
	put_field_of(&want, "other", 777, 7);
	pktbuf_finish(&want);
	assert_true(proto_rowdesc_map_table(in.data, (uint32_t)in.len, 5001, 4001, attmap, 2, &out));
	assert_int_equal(out.len, want.len);
	assert_memory_equal(out.data, want.data, want.len);
	for (uint32_t cut = 0; cut < in.len; cut++) {
		pktbuf_reset(&out);
		assert_false(proto_rowdesc_map_table(in.data, cut, 5001, 4001, attmap, 2, &out));
	}
	pktbuf_free(&in);
	pktbuf_free(&want);
	pktbuf_free(&out);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_rowdesc_map_table),
	    cmocka_unit_test(test_bind_extend_formats),
	    cmocka_unit_test(test_bind_param),
	    cmocka_unit_test(test_parse_param_type),
	    cmocka_unit_test(test_rowdesc_drop_last),
	    cmocka_unit_test(test_datarow_drop_last),
	    cmocka_unit_test(test_startup_v3_full),
	    cmocka_unit_test(test_startup_incomplete_every_prefix),
	    cmocka_unit_test(test_startup_followed_by_more_bytes),
	    cmocka_unit_test(test_startup_ssl_request),
	    cmocka_unit_test(test_startup_gssenc_request),
	    cmocka_unit_test(test_startup_cancel_request),
	    cmocka_unit_test(test_startup_bad_lengths),
	    cmocka_unit_test(test_startup_length_boundaries),
	    cmocka_unit_test(test_startup_max_length_as_postgres),
	    cmocka_unit_test(test_startup_bad_version),
	    cmocka_unit_test(test_startup_minor_versions),
	    cmocka_unit_test(test_startup_bad_layout),
	    cmocka_unit_test(test_startup_user),
	    cmocka_unit_test(test_frame_incomplete),
	    cmocka_unit_test(test_frame_lengths),
	    cmocka_unit_test(test_frame_max_len),
	    cmocka_unit_test(test_frame_total_len),
	    cmocka_unit_test(test_frontend_types),
	    cmocka_unit_test(test_error_fields_all),
	    cmocka_unit_test(test_error_fields_v_preferred),
	    cmocka_unit_test(test_error_fields_missing),
	    cmocka_unit_test(test_error_fields_unterminated),
	    cmocka_unit_test(test_sasl_strip_plus),
	    cmocka_unit_test(test_sasl_strip_plus_appends),
	    cmocka_unit_test(test_sasl_strip_plus_rejects),
	    cmocka_unit_test(test_auth_code),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
