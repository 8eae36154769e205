/*
 * binfmt_to_text: PostgreSQL's binary format of the common types written as their text
 * (proxy/binfmt.c), as bytes a client may send in a Bind: each type's values, edges
 * (negative, BC, infinities, NaN), and values that are not the type's binary form.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <string.h>

#include "proxy/binfmt.h"

#define OK(oid, bytes, want) check(oid, (const uint8_t *)(bytes), sizeof(bytes) - 1, want)
#define BAD(oid, bytes) check(oid, (const uint8_t *)(bytes), sizeof(bytes) - 1, NULL)

/* want NULL: refused. */
static void check(uint32_t oid, const uint8_t *v, size_t len, const char *want)
{
	struct pktbuf b;
	pktbuf_init(&b);
	bool ok = binfmt_to_text(oid, v, len, &b);
	if (!want) {
		if (ok)
			fail_msg("oid %u, %zu bytes: accepted as \"%.*s\"", oid, len, (int)b.len,
			         (const char *)b.data);
	} else if (!ok || b.len != strlen(want) || (b.len && memcmp(b.data, want, b.len) != 0)) {
		fail_msg("oid %u: got %s\"%.*s\", expected \"%s\"", oid, ok ? "" : "a refusal, ",
		         (int)b.len, b.data ? (const char *)b.data : "", want);
	}
	pktbuf_free(&b);
}

static void test_integers(void **state)
{
	(void)state;
	OK(16, "\x01", "t");
	OK(16, "\x00", "f");
	BAD(16, "\x02");
	BAD(16, "\x01\x00");
	OK(21, "\xff\xfe", "-2");
	OK(23, "\x00\x00\x02\xbd", "701");
	OK(23, "\x80\x00\x00\x00", "-2147483648");
	OK(26, "\xff\xff\xff\xff", "4294967295");
	OK(20, "\x00\x00\x01\x00\x00\x00\x00\x00", "1099511627776");
	OK(20, "\xff\xff\xff\xff\xff\xff\xff\xfb", "-5");
	BAD(21, "\x01");
	BAD(23, "\x00\x00\x01");
	BAD(20, "\x00\x00\x00\x00\x00\x00\x01");
	BAD(23, "");
}

static void test_floats(void **state)
{
	(void)state;
	OK(701, "\x40\x06\x00\x00\x00\x00\x00\x00", "2.75");
	OK(701, "\x3f\xb9\x99\x99\x99\x99\x99\x9a", "0.10000000000000001");
	OK(701, "\x7f\xf8\x00\x00\x00\x00\x00\x00", "NaN");
	OK(701, "\xff\xf0\x00\x00\x00\x00\x00\x00", "-Infinity");
	OK(700, "\x3f\xc0\x00\x00", "1.5");
	OK(700, "\x7f\x80\x00\x00", "Infinity");
	BAD(701, "\x40\x06\x00\x00");
	BAD(700, "\x3f\xc0\x00");
}

static void test_numeric(void **state)
{
	(void)state;
	/* ndigits, weight, sign, dscale, digits (base 10000) */
	OK(1700, "\x00\x00\x00\x00\x00\x00\x00\x00", "0");
	OK(1700, "\x00\x00\x00\x00\x00\x00\x00\x02", "0.00");
	OK(1700, "\x00\x02\x00\x00\x00\x00\x00\x01\x00\x01\x13\x88", "1.5");
	OK(1700, "\x00\x03\x00\x01\x40\x00\x00\x03\x00\x0c\x0d\x80\x1e\xd2",
	   "-123456.789");
	OK(1700, "\x00\x01\x00\x01\x00\x00\x00\x00\x00\x01", "10000");
	OK(1700, "\x00\x01\xff\xff\x00\x00\x00\x04\x00\x01", "0.0001");
	OK(1700, "\x00\x01\xff\xfe\x00\x00\x00\x06\x00\x64", "0.000001");
	OK(1700, "\x00\x00\x00\x00\xc0\x00\x00\x00", "NaN");
	OK(1700, "\x00\x00\x00\x00\xd0\x00\x00\x00", "Infinity");
	OK(1700, "\x00\x00\x00\x00\xf0\x00\x00\x00", "-Infinity");
	BAD(1700, "\x00\x01\x00\x00\x00\x00\x00\x00");           /* a digit missing */
	BAD(1700, "\x00\x01\x00\x00\x00\x00\x00\x00\x27\x10");   /* digit 10000 */
	BAD(1700, "\x00\x00\x00\x00\x12\x34\x00\x00");           /* no such sign */
	BAD(1700, "\x00\x01\x00\x00\xc0\x00\x00\x00\x00\x01");   /* NaN with digits */
	BAD(1700, "\xff\xff\x00\x00\x00\x00\x00\x00");           /* negative count */
	BAD(1700, "\x00\x00\x00\x00\x00\x00\xff\xff");           /* negative dscale */
	BAD(1700, "\x00\x00\x00");
}

static void test_strings(void **state)
{
	(void)state;
	OK(25, "it's \xc3\xa9 */", "it's \xc3\xa9 */");
	OK(1043, "", "");
	OK(114, "{\"a\": 1}", "{\"a\": 1}");
	OK(3802, "\x01{\"a\": 1}", "{\"a\": 1}");
	BAD(3802, "\x02{}");
	BAD(3802, "");
	OK(17, "\x07\x07\x00", "\\x070700");
	OK(17, "", "\\x");
	OK(2950, "\x12\x34\x56\x78\x9a\xbc\xde\xf0\x12\x34\x56\x78\x9a\xbc\xde\xf0",
	   "12345678-9abc-def0-1234-56789abcdef0");
	BAD(2950, "\x12\x34");
	BAD(1186, "\x00\x00\x00\x00\xd6\x93\xa4\x00\x00\x00\x00\x00\x00\x00\x00\x00"); /* interval */
	BAD(0, "x");
}

static void test_dates(void **state)
{
	(void)state;
	/* days since 2000-01-01 */
	OK(1082, "\x00\x00\x00\x00", "2000-01-01");
	OK(1082, "\xff\xff\xff\xff", "1999-12-31");
	OK(1082, "\x00\x00\x08\xe8", "2006-03-30");
	OK(1082, "\xff\xf4\xdb\xf8", "0001-12-31 BC");
	OK(1082, "\xff\xda\x97\xa7", "4714-11-24 BC"); /* Julian day 0 */
	OK(1082, "\x7f\xff\xff\xff", "infinity");
	OK(1082, "\x80\x00\x00\x00", "-infinity");
	BAD(1082, "\xff\xda\x97\xa6"); /* Julian day -1 */
	BAD(1082, "\x00\x00\x00");
	/* microseconds since 2000-01-01 00:00:00 */
	OK(1114, "\x00\x00\x00\x00\x00\x00\x00\x00", "2000-01-01 00:00:00.000000");
	OK(1184, "\x00\x02\xb5\x8c\xd3\x47\x1d\xc0", "2024-02-29 23:59:58.123456+00");
	OK(1114, "\xff\xff\xff\xff\xff\xff\xff\xff", "1999-12-31 23:59:59.999999");
	OK(1184, "\x7f\xff\xff\xff\xff\xff\xff\xff", "infinity");
	OK(1114, "\x80\x00\x00\x00\x00\x00\x00\x00", "-infinity");
	BAD(1114, "\x00\x00\x00\x00");
}

int main(void)
{
	static const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_integers), cmocka_unit_test(test_floats),
	    cmocka_unit_test(test_numeric),  cmocka_unit_test(test_strings),
	    cmocka_unit_test(test_dates),
	};
	return cmocka_run_group_tests_name("binfmt", tests, NULL, NULL);
}
