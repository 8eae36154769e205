/*
 * The configured relation names and the byte scan that decides whether a statement
 * can mention one of them (SPEC I6: everything else is forwarded without parsing).
 */
#include "parser/parser.h"

#include <string.h>

/* ---- parser_tables_init ---- */

static bool name_char_start(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c >= 0x80;
}

static bool name_char(unsigned char c)
{
	return name_char_start(c) || (c >= '0' && c <= '9') || c == '$';
}

/* One identifier at *p into dst (64 bytes): "quoted" kept as is, unquoted folded. */
static bool ident_read(const char **p, char *dst)
{
	const char *s = *p;
	size_t n = 0;

	if (*s == '"') {
		for (s++; *s && !(s[0] == '"' && s[1] != '"'); s++) {
			if (*s == '"')
				s++; /* "" stands for one quote */
			if (n == 63)
				return false;
			dst[n++] = *s;
		}
		if (*s++ != '"')
			return false;
	} else {
		if (!name_char_start((unsigned char)*s))
			return false;
		for (; name_char((unsigned char)*s); s++) {
			if (n == 63)
				return false;
			dst[n++] = (*s >= 'A' && *s <= 'Z') ? (char)(*s - 'A' + 'a') : *s;
		}
	}
	dst[n] = '\0';
	*p = s;
	return n > 0;
}

/* "[schema.]name" as the config gives it; longer than PostgreSQL keeps is an error. */
static bool rel_name_parse(const char *text, struct rel_name *out)
{
	const char *p = text;
	char first[64];

	memset(out, 0, sizeof(*out));
	if (!text || !ident_read(&p, first))
		return false;
	if (*p == '\0') {
		memcpy(out->name, first, sizeof(first));
		return true;
	}
	if (*p++ != '.' || !ident_read(&p, out->name) || *p != '\0')
		return false;
	memcpy(out->schema, first, sizeof(first));
	return true;
}

static const char *needle_get(const char *name, size_t *len);
static unsigned char ascii_lower(unsigned char c);

bool parser_tables_init(struct parser_tables *t, const char *table, const char *next_table,
                        const char *buffer_table)
{
	memset(t, 0, sizeof(*t));
	if (!rel_name_parse(table, &t->rel[REL_OLD]) ||
	    !rel_name_parse(next_table, &t->rel[REL_NEXT]) ||
	    !rel_name_parse(buffer_table, &t->rel[REL_BUFFER]))
		return false;
	for (int i = 0; i < REL__COUNT; i++) {
		size_t n;
		const char *needle = needle_get(t->rel[i].name, &n);
		unsigned char lo = ascii_lower((unsigned char)*needle);
		t->needle_at[i] = (uint8_t)(needle - t->rel[i].name);
		t->needle_len[i] = (uint8_t)n;
		t->first[lo] |= (uint8_t)(1u << i);
		if (lo >= 'a' && lo <= 'z')
			t->first[lo - 'a' + 'A'] |= (uint8_t)(1u << i);
	}
	t->first['&'] |= 0x80;
	size_t n = 0;
	for (int c = 1; c < 256; c++)
		if (t->first[c])
			t->first_set[n++] = (char)c;
	t->first_set[n] = '\0';
	return true;
}

/* ---- parser_prefilter ---- */

static unsigned char ascii_lower(unsigned char c)
{
	return (c >= 'A' && c <= 'Z') ? (unsigned char)(c - 'A' + 'a') : c;
}

static bool same_ci(const char *a, const char *b, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (ascii_lower((unsigned char)a[i]) != ascii_lower((unsigned char)b[i]))
			return false;
	return true;
}

/* Occurrences of needle whose first byte is exactly c (one case of it). */
static bool find_from_byte(const char *text, size_t len, const char *needle, size_t nlen,
                           unsigned char c)
{
	const char *end = text + len;
	const char *p = text;

	while ((size_t)(end - p) >= nlen && (p = memchr(p, c, (size_t)(end - p) - nlen + 1))) {
		if (same_ci(p + 1, needle + 1, nlen - 1))
			return true;
		p++;
	}
	return false;
}

static bool find_ci(const char *text, size_t len, const char *needle, size_t nlen)
{
	unsigned char lo = ascii_lower((unsigned char)needle[0]);
	unsigned char up = (lo >= 'a' && lo <= 'z') ? (unsigned char)(lo - 'a' + 'A') : lo;

	if (nlen == 0 || nlen > len)
		return false;
	return find_from_byte(text, len, needle, nlen, lo) ||
	       (up != lo && find_from_byte(text, len, needle, nlen, up));
}

/*
 * What to look for: the name, or for a name holding a double quote (written "a""b" in
 * SQL) its first run without one, which the SQL spelling contains as it is.
 */
static const char *needle_get(const char *name, size_t *len)
{
	const char *p = name;
	size_t n = 0;

	while (*p == '"')
		p++;
	while (p[n] != '\0' && p[n] != '"')
		n++;
	if (n == 0) { /* nothing but quotes */
		*len = name[0] != '\0';
		return name;
	}
	*len = n;
	return p;
}

/* True when relation i need not be searched: another one's needle is inside its own,
   so finding that one already answers (next_table's name usually contains table's). */
static bool needle_covered(const struct parser_tables *t, int i)
{
	size_t mlen, olen;
	const char *mine = needle_get(t->rel[i].name, &mlen);

	for (int j = 0; j < REL__COUNT; j++) {
		const char *other = needle_get(t->rel[j].name, &olen);
		if (j == i || olen == 0 || olen > mlen || (olen == mlen && j > i))
			continue;
		if (find_ci(mine, mlen, other, olen))
			return true;
	}
	return false;
}

/* U&" in any case: a Unicode-escaped identifier can spell any name. */
static bool has_unicode_ident(const char *text, size_t len)
{
	const char *end = text + len;

	for (const char *p = text; (p = memchr(p, '&', (size_t)(end - p))); p++)
		if (p > text && (p[-1] == 'U' || p[-1] == 'u') && p + 1 < end && p[1] == '"')
			return true;
	return false;
}

/*
 * A short text in one pass: each byte looks up which names may begin there (the bulk
 * of statements are short, and one pass costs less than a memchr call per name and
 * case).  False when no name and no U&" is in it.
 */
/* A name (or U&") begins at s, one of the bytes of first[]. */
static bool candidate_at(const struct parser_tables *t, const char *text, const unsigned char *s,
                         const unsigned char *end)
{
	uint8_t m = t->first[*s];
	size_t left = (size_t)(end - s);
	if ((m & 0x80) && *s == '&' && s > (const unsigned char *)text &&
	    (s[-1] == 'U' || s[-1] == 'u') && left > 1 && s[1] == '"')
		return true;
	for (int i = 0; i < REL__COUNT; i++) {
		size_t nlen = t->needle_len[i];
		if ((m & (1u << i)) && nlen && nlen <= left &&
		    same_ci((const char *)s, t->rel[i].name + t->needle_at[i], nlen))
			return true;
	}
	return false;
}

bool parser_prefilter_cstr(const struct parser_tables *t, const char *text, size_t len)
{
	const unsigned char *s = (const unsigned char *)text, *end = s + len;
	while ((s += strcspn((const char *)s, t->first_set)) < end) {
		if (candidate_at(t, text, s, end))
			return true;
		s++;
	}
	return false;
}

static bool prefilter_short(const struct parser_tables *t, const char *text, size_t len)
{
	const unsigned char *s = (const unsigned char *)text, *end = s + len;
	const uint8_t *first = t->first;
	for (; s < end; s++) {
		/* Four bytes no name begins with are skipped at once. */
		while (end - s >= 4 && (first[s[0]] | first[s[1]] | first[s[2]] | first[s[3]]) == 0)
			s += 4;
		if (s == end)
			break;
		if (first[*s] && candidate_at(t, text, s, end))
			return true;
	}
	return false;
}

bool parser_prefilter(const struct parser_tables *t, const char *text, size_t len)
{
	if (len == 0)
		return false;
	if (len <= 256)
		return prefilter_short(t, text, len);
	/* Working out which names another one covers costs about 50 ns, a pass of memchr
	   over a short text much less: only a long text is worth it. */
	bool skip_covered = len > 1024;

	for (int i = 0; i < REL__COUNT; i++) {
		size_t nlen;
		const char *needle = needle_get(t->rel[i].name, &nlen);
		if (!(skip_covered && needle_covered(t, i)) && find_ci(text, len, needle, nlen))
			return true;
	}
	return has_unicode_ident(text, len);
}
