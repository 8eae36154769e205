#include "proxy/binfmt.h"

#include <inttypes.h>
#include <stdarg.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "proxy/mbuf.h"

enum {
	OID_BOOL = 16,
	OID_BYTEA = 17,
	OID_NAME = 19,
	OID_INT8 = 20,
	OID_INT2 = 21,
	OID_INT4 = 23,
	OID_TEXT = 25,
	OID_OID = 26,
	OID_JSON = 114,
	OID_FLOAT4 = 700,
	OID_FLOAT8 = 701,
	OID_UNKNOWN = 705,
	OID_BPCHAR = 1042,
	OID_VARCHAR = 1043,
	OID_DATE = 1082,
	OID_TIMESTAMP = 1114,
	OID_TIMESTAMPTZ = 1184,
	OID_NUMERIC = 1700,
	OID_UUID = 2950,
	OID_JSONB = 3802,
};

/* Days and microseconds count from 2000-01-01, Julian day 2451545. */
#define EPOCH_JDATE 2451545
#define USECS_PER_DAY INT64_C(86400000000)

static uint64_t read_uint64_be(const uint8_t *p)
{
	return (uint64_t)read_uint32_be(p) << 32 | read_uint32_be(p + 4);
}

static void put_str(struct pktbuf *out, const char *s)
{
	pktbuf_put_bytes(out, s, strlen(s));
}

static void put_fmt(struct pktbuf *out, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void put_fmt(struct pktbuf *out, const char *fmt, ...)
{
	char buf[64];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	if (n > 0)
		pktbuf_put_bytes(out, buf, (size_t)n < sizeof(buf) ? (size_t)n : sizeof(buf) - 1);
}

/* Shortest text that reads back as the same value (NaN and the infinities by name). */
static void put_double(struct pktbuf *out, double v, int digits)
{
	if (isnan(v))
		put_str(out, "NaN");
	else if (isinf(v))
		put_str(out, v > 0 ? "Infinity" : "-Infinity");
	else
		put_fmt(out, "%.*g", digits, v);
}

/* Julian day (>= 0) to the proleptic Gregorian calendar; year <= 0 is 1 - year BC. */
static void j2date(int64_t j, int64_t *year, int *month, int *day)
{
	int64_t f = j + 1401 + (((4 * j + 274277) / 146097) * 3) / 4 - 38;
	int64_t e = 4 * f + 3;
	int64_t g = (e % 1461) / 4;
	int64_t h = 5 * g + 2;
	*day = (int)((h % 153) / 5 + 1);
	*month = (int)(((h / 153 + 2) % 12) + 1);
	*year = e / 1461 - 4716 + (12 + 2 - *month) / 12;
}

static bool put_date(struct pktbuf *out, int64_t days, int64_t *year_out)
{
	int64_t year;
	int month, day;
	if (days + EPOCH_JDATE < 0)
		return false;
	j2date(days + EPOCH_JDATE, &year, &month, &day);
	put_fmt(out, "%04" PRId64 "-%02d-%02d", year > 0 ? year : 1 - year, month, day);
	*year_out = year;
	return true;
}

static bool put_timestamp(struct pktbuf *out, int64_t us, bool tz)
{
	if (us == INT64_MAX || us == INT64_MIN) {
		put_str(out, us > 0 ? "infinity" : "-infinity");
		return true;
	}
	int64_t days = us / USECS_PER_DAY, tod = us % USECS_PER_DAY, year;
	if (tod < 0) {
		tod += USECS_PER_DAY;
		days--;
	}
	if (!put_date(out, days, &year))
		return false;
	put_fmt(out, " %02d:%02d:%02d.%06d%s%s", (int)(tod / INT64_C(3600000000)),
		(int)(tod / 60000000 % 60), (int)(tod / 1000000 % 60), (int)(tod % 1000000),
		tz ? "+00" : "", year > 0 ? "" : " BC");
	return true;
}

/*
 * numeric: int16 ndigits, weight (of the first base-10000 digit), sign, dscale (decimal
 * digits after the point), then the digits.
 */
static bool put_numeric(struct pktbuf *out, const uint8_t *v, size_t len)
{
	if (len < 8)
		return false;
	int ndigits = (int16_t)read_uint16_be(v), weight = (int16_t)read_uint16_be(v + 2);
	uint16_t sign = read_uint16_be(v + 4);
	int dscale = (int16_t)read_uint16_be(v + 6);
	if (ndigits < 0 || dscale < 0 || len != 8 + (size_t)ndigits * 2)
		return false;
	if (sign == 0xC000 || sign == 0xD000 || sign == 0xF000) {
		put_str(out, sign == 0xC000 ? "NaN" : sign == 0xD000 ? "Infinity" : "-Infinity");
		return ndigits == 0;
	}
	if (sign != 0x0000 && sign != 0x4000)
		return false;
	for (int i = 0; i < ndigits; i++)
		if (read_uint16_be(v + 8 + 2 * i) > 9999)
			return false;
#define DIGIT(i) ((i) >= 0 && (i) < ndigits ? read_uint16_be(v + 8 + 2 * (i)) : 0)
	if (sign == 0x4000)
		pktbuf_put_byte(out, '-');
	if (weight < 0) {
		pktbuf_put_byte(out, '0');
	} else {
		put_fmt(out, "%d", DIGIT(0));
		for (int i = 1; i <= weight; i++)
			put_fmt(out, "%04d", DIGIT(i));
	}
	if (dscale > 0) {
		pktbuf_put_byte(out, '.');
		/* Digit i stands for 10000^(weight - i): the first after the point is weight+1. */
		for (int i = weight + 1, left = dscale; left > 0; i++, left -= 4) {
			char group[8];
			snprintf(group, sizeof(group), "%04d", DIGIT(i));
			pktbuf_put_bytes(out, group, left < 4 ? (size_t)left : 4);
		}
	}
#undef DIGIT
	return true;
}

bool binfmt_to_text(uint32_t oid, const uint8_t *v, size_t len, struct pktbuf *out)
{
	static const char hex[] = "0123456789abcdef";
	switch (oid) {
	case OID_BOOL:
		if (len != 1 || v[0] > 1)
			return false;
		pktbuf_put_byte(out, v[0] ? 't' : 'f');
		return true;
	case OID_INT2:
		if (len != 2)
			return false;
		put_fmt(out, "%d", (int16_t)read_uint16_be(v));
		return true;
	case OID_INT4:
		if (len != 4)
			return false;
		put_fmt(out, "%" PRId32, (int32_t)read_uint32_be(v));
		return true;
	case OID_OID:
		if (len != 4)
			return false;
		put_fmt(out, "%" PRIu32, read_uint32_be(v));
		return true;
	case OID_INT8:
		if (len != 8)
			return false;
		put_fmt(out, "%" PRId64, (int64_t)read_uint64_be(v));
		return true;
	case OID_FLOAT4: {
		uint32_t bits;
		float f;
		if (len != 4)
			return false;
		bits = read_uint32_be(v);
		memcpy(&f, &bits, sizeof(f));
		put_double(out, (double)f, 9);
		return true;
	}
	case OID_FLOAT8: {
		uint64_t bits;
		double d;
		if (len != 8)
			return false;
		bits = read_uint64_be(v);
		memcpy(&d, &bits, sizeof(d));
		put_double(out, d, 17);
		return true;
	}
	case OID_NUMERIC:
		return put_numeric(out, v, len);
	case OID_TEXT:
	case OID_VARCHAR:
	case OID_BPCHAR:
	case OID_NAME:
	case OID_JSON:
	case OID_UNKNOWN:
		pktbuf_put_bytes(out, v, len);
		return true;
	case OID_JSONB:
		if (len < 1 || v[0] != 1)
			return false;
		pktbuf_put_bytes(out, v + 1, len - 1);
		return true;
	case OID_BYTEA:
		put_str(out, "\\x");
		for (size_t i = 0; i < len; i++) {
			pktbuf_put_byte(out, (uint8_t)hex[v[i] >> 4]);
			pktbuf_put_byte(out, (uint8_t)hex[v[i] & 15]);
		}
		return true;
	case OID_UUID:
		if (len != 16)
			return false;
		for (size_t i = 0; i < 16; i++) {
			if (i == 4 || i == 6 || i == 8 || i == 10)
				pktbuf_put_byte(out, '-');
			pktbuf_put_byte(out, (uint8_t)hex[v[i] >> 4]);
			pktbuf_put_byte(out, (uint8_t)hex[v[i] & 15]);
		}
		return true;
	case OID_DATE: {
		int64_t year;
		if (len != 4)
			return false;
		int32_t days = (int32_t)read_uint32_be(v);
		if (days == INT32_MAX || days == INT32_MIN) {
			put_str(out, days > 0 ? "infinity" : "-infinity");
			return true;
		}
		if (!put_date(out, days, &year))
			return false;
		if (year <= 0)
			put_str(out, " BC");
		return true;
	}
	case OID_TIMESTAMP:
	case OID_TIMESTAMPTZ:
		return len == 8 &&
		       put_timestamp(out, (int64_t)read_uint64_be(v), oid == OID_TIMESTAMPTZ);
	default:
		return false;
	}
}
