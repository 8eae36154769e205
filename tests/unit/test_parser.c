/*
 * Tests of statement recognition: every record of tests/corpus/statements.txt is one
 * test (the file's header says how to read and extend it), then the configured names,
 * the prefilter, the bounds on size and depth, and the parse cache.  Run from the
 * repository root.
 *
 * Beyond what a record states, every result is checked for what must always hold:
 * each reference's span lies in its statement and spells the configured name, spans
 * of statements come in order, a statement the prefilter lets pass untouched is
 * untouched, and the cache returns what a fresh parse does.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <pg_query.h>

#include "parser/parser.h"

#define CORPUS           "tests/corpus/statements.txt"
#define KEY_COLUMNS      "site_id,idempotency_key"
#define PARTITION_COLUMN "created_at"

static struct parser_tables tables;

/* ---- the corpus ---- */

struct want_ref {
	enum rel_role role;
	bool target, cte, alias, only, catalog, star;
	char *text; /* the name exactly as the SQL writes it */
};

struct want_stmt {
	enum stmt_kind kind, inner;
	int touches; /* -1: as refs says */
	bool writes, wcte, sets_key, params, onconstraint, ctid, copy, copy_legacy;
	char *copy_cols; /* NULL: no column list */
	enum conflict_action conflict;
	char *conflict_text; /* NULL: not checked */
	char *returning;     /* NULL: no RETURNING */
	char *sysrefs;       /* NULL: none */
	char *name;
	unsigned nrefs;
	struct want_ref refs[PARSER_MAX_REFS];
};

struct record {
	unsigned line;
	char title[48];
	enum parse_status status;
	char *error; /* a substring of the message, NULL: not checked */
	bool prefilter;
	char *sql;
	size_t len;
	unsigned nstmts;
	struct want_stmt stmts[PARSER_MAX_STMTS];
};

static struct record **records;
static size_t nrecords;

__attribute__((noreturn, format(printf, 2, 3))) static void corpus_die(unsigned line,
                                                                       const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "%s:%u: ", CORPUS, line);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(1);
}

static char *xstrndup(const char *s, size_t n)
{
	char *d = strndup(s, n);
	if (!d)
		abort();
	return d;
}

static const char *const status_names[] = {"OK",       "SYNTAX_ERROR", "TOO_LARGE",
                                           "TOO_DEEP", "TOO_MANY",     "NO_MEMORY"};
static const char *const conflict_names[] = {"NONE", "NOTHING", "UPDATE"};
static const char *const role_names[] = {"old", "next", "buffer"};

static int name_index(const char *const *names, int n, const char *s, unsigned line)
{
	for (int i = 0; i < n; i++)
		if (strcmp(names[i], s) == 0)
			return i;
	corpus_die(line, "unknown value %s", s);
}

static enum stmt_kind kind_from(const char *s, unsigned line)
{
	for (int k = 0; k < STMT__COUNT; k++)
		if (strcmp(stmt_kind_name((enum stmt_kind)k), s) == 0)
			return (enum stmt_kind)k;
	corpus_die(line, "unknown statement kind %s", s);
}

static bool flag_from(const char *s, unsigned line)
{
	if (strcmp(s, "0") != 0 && strcmp(s, "1") != 0)
		corpus_die(line, "expected 0 or 1, got %s", s);
	return s[0] == '1';
}

/* "old+target+cte+alias+only+catalog+star:name" */
static void ref_from(struct want_ref *r, const char *s, size_t n, unsigned line)
{
	const char *colon = memchr(s, ':', n);
	char *head;

	if (!colon)
		corpus_die(line, "ref without ':' in %.*s", (int)n, s);
	head = xstrndup(s, (size_t)(colon - s));
	memset(r, 0, sizeof(*r));
	for (char *tok = strtok(head, "+"); tok; tok = strtok(NULL, "+")) {
		if (strcmp(tok, "target") == 0)
			r->target = true;
		else if (strcmp(tok, "cte") == 0)
			r->cte = true;
		else if (strcmp(tok, "alias") == 0)
			r->alias = true;
		else if (strcmp(tok, "only") == 0)
			r->only = true;
		else if (strcmp(tok, "catalog") == 0)
			r->catalog = true;
		else if (strcmp(tok, "star") == 0)
			r->star = true;
		else
			r->role = (enum rel_role)name_index(role_names, REL__COUNT, tok, line);
	}
	free(head);
	r->text = xstrndup(colon + 1, n - (size_t)(colon - s) - 1);
}

static void refs_from(struct want_stmt *w, const char *v, unsigned line)
{
	while (*v) {
		size_t n = strcspn(v, ",");
		if (w->nrefs == PARSER_MAX_REFS)
			corpus_die(line, "too many refs");
		ref_from(&w->refs[w->nrefs++], v, n, line);
		v += n + (v[n] == ',');
	}
}

/* One key=value of a header line; false when it is a record-level key. */
static bool field_stmt(struct want_stmt *w, const char *k, const char *v, unsigned line)
{
	if (strcmp(k, "kind") == 0)
		w->kind = kind_from(v, line);
	else if (strcmp(k, "inner") == 0)
		w->inner = kind_from(v, line);
	else if (strcmp(k, "touches") == 0)
		w->touches = flag_from(v, line);
	else if (strcmp(k, "writes") == 0)
		w->writes = flag_from(v, line);
	else if (strcmp(k, "wcte") == 0)
		w->wcte = flag_from(v, line);
	else if (strcmp(k, "sets_key") == 0)
		w->sets_key = flag_from(v, line);
	else if (strcmp(k, "params") == 0)
		w->params = flag_from(v, line);
	else if (strcmp(k, "onconstraint") == 0)
		w->onconstraint = flag_from(v, line);
	else if (strcmp(k, "ctid") == 0)
		w->ctid = flag_from(v, line);
	else if (strcmp(k, "copy") == 0)
		w->copy = flag_from(v, line);
	else if (strcmp(k, "copy_legacy") == 0)
		w->copy_legacy = flag_from(v, line);
	else if (strcmp(k, "copy_cols") == 0)
		w->copy_cols = xstrndup(v, strlen(v));
	else if (strcmp(k, "conflict") == 0)
		w->conflict = (enum conflict_action)name_index(conflict_names, 3, v, line);
	else if (strcmp(k, "conflict_text") == 0)
		w->conflict_text = xstrndup(v, strlen(v));
	else if (strcmp(k, "returning") == 0)
		w->returning = xstrndup(v, strlen(v));
	else if (strcmp(k, "sysrefs") == 0)
		w->sysrefs = xstrndup(v, strlen(v));
	else if (strcmp(k, "name") == 0)
		w->name = xstrndup(v, strlen(v));
	else if (strcmp(k, "refs") == 0)
		refs_from(w, v, line);
	else
		return false;
	return true;
}

static void field_record(struct record *rec, const char *k, const char *v, unsigned line)
{
	if (strcmp(k, "status") == 0)
		rec->status = (enum parse_status)name_index(status_names, 6, v, line);
	else if (strcmp(k, "error") == 0)
		rec->error = xstrndup(v, strlen(v));
	else if (strcmp(k, "prefilter") == 0)
		rec->prefilter = flag_from(v, line);
	else
		corpus_die(line, "unknown key %s", k);
}

/* "@ key=value key=`value with blanks` ...": a statement when it has kind=. */
static void header_parse(struct record *rec, char *s, unsigned line)
{
	struct want_stmt w = {.touches = -1};
	bool is_stmt = false;

	while (*(s += strspn(s, " \t"))) {
		char *eq = strchr(s, '=');
		char *v, *end;
		if (!eq)
			corpus_die(line, "expected key=value at %s", s);
		*eq = '\0';
		v = eq + 1;
		end = *v == '`' ? strchr(++v, '`') : v + strcspn(v, " \t");
		if (!end)
			corpus_die(line, "unterminated `");
		bool more = *end != '\0';
		*end = '\0';
		is_stmt |= strcmp(s, "kind") == 0;
		if (!field_stmt(&w, s, v, line))
			field_record(rec, s, v, line);
		s = more ? end + 1 : end;
	}
	if (!is_stmt)
		return;
	if (rec->nstmts == PARSER_MAX_STMTS)
		corpus_die(line, "too many statements");
	rec->stmts[rec->nstmts++] = w;
}

/* <<N*text>> stands for text repeated N times. */
static char *sql_expand(const char *s, size_t *len, unsigned line)
{
	size_t cap = strlen(s) + 1, n = 0;
	char *out = malloc(cap);

	while (out && *s) {
		const char *m = strncmp(s, "<<", 2) == 0 ? strstr(s, ">>") : NULL;
		char *star;
		unsigned long count = m ? strtoul(s + 2, &star, 10) : 0;
		size_t piece = m ? (size_t)(m - star - 1) : 1;
		const char *src = m ? star + 1 : s;
		if (m && *star != '*')
			corpus_die(line, "bad <<N*text>>");
		if (!m)
			count = 1;
		if (n + count * piece + 1 > cap &&
		    !(out = realloc(out, cap = n + count * piece + 1)))
			break;
		for (unsigned long i = 0; i < count; i++, n += piece)
			memcpy(out + n, src, piece);
		s = m ? m + 2 : s + 1;
	}
	if (!out)
		abort();
	out[n] = '\0';
	*len = n;
	return out;
}

static char *file_read(const char *path)
{
	FILE *f = fopen(path, "rb");
	char *buf = NULL;
	long size;

	if (!f || fseek(f, 0, SEEK_END) != 0 || (size = ftell(f)) < 0 ||
	    fseek(f, 0, SEEK_SET) != 0 || !(buf = malloc((size_t)size + 1)) ||
	    fread(buf, 1, (size_t)size, f) != (size_t)size) {
		fprintf(stderr, "cannot read %s (run from the repository root)\n", path);
		exit(1);
	}
	buf[size] = '\0';
	fclose(f);
	return buf;
}

/* Records: comments and blank lines, "@ " headers, SQL lines, then "----". */
static void corpus_load(void)
{
	char *text = file_read(CORPUS);
	struct record *rec = NULL;
	unsigned line = 0;
	char *sql = NULL;

	for (char *l = text, *next; l && *l; l = next) {
		next = strchr(l, '\n');
		if (next)
			*next++ = '\0';
		line++;
		if (strcmp(l, "----") == 0) {
			if (rec) {
				if (!sql)
					corpus_die(line, "record without SQL");
				rec->sql = sql_expand(sql, &rec->len, rec->line);
				free(sql);
				sql = NULL;
				rec = NULL;
			}
			continue;
		}
		if (!rec && (l[0] == '#' || l[0] == '\0'))
			continue;
		if (!rec) {
			if (strncmp(l, "@ ", 2) != 0)
				corpus_die(line, "a record starts with an \"@ \" header");
			rec = calloc(1, sizeof(*rec));
			records = realloc(records, (nrecords + 1) * sizeof(*records));
			if (!rec || !records)
				abort();
			records[nrecords++] = rec;
			rec->line = line;
			rec->prefilter = true;
			snprintf(rec->title, sizeof(rec->title), "corpus line %u", line);
		}
		if (strncmp(l, "@ ", 2) == 0 && !sql) {
			header_parse(rec, l + 2, line);
			continue;
		}
		bool first = !sql;
		size_t old = sql ? strlen(sql) : 0;
		sql = realloc(sql, old + strlen(l) + 2);
		if (!sql)
			abort();
		sprintf(sql + old, "%s%s", first ? "" : "\n", l);
	}
	if (rec)
		corpus_die(line, "last record not closed by ----");
	free(text);
}

static void record_free(struct record *rec)
{
	for (unsigned i = 0; i < rec->nstmts; i++) {
		struct want_stmt *w = &rec->stmts[i];
		for (unsigned j = 0; j < w->nrefs; j++)
			free(w->refs[j].text);
		free(w->conflict_text);
		free(w->returning);
		free(w->sysrefs);
		free(w->name);
		free(w->copy_cols);
	}
	free(rec->error);
	free(rec->sql);
	free(rec);
}

/* ---- checks every result gets ---- */

/* The last dotted part of a name as written, decoded ("a""b" -> a"b, ABC -> abc). */
static void name_decode_last(const char *s, size_t n, char *out, size_t outlen)
{
	size_t start = 0, o = 0;
	bool quoted = false;

	for (size_t i = 0; i < n; i++) {
		if (s[i] == '"')
			quoted = !quoted;
		else if (s[i] == '.' && !quoted)
			start = i + 1;
	}
	while (start < n && (s[start] == ' ' || s[start] == '\n' || s[start] == '\t'))
		start++;
	for (size_t i = start; i < n && o + 1 < outlen; i++) {
		if (s[start] == '"') {
			if (i == start || (s[i] == '"' && i + 1 == n))
				continue;
			if (s[i] == '"')
				i++; /* "" */
			out[o++] = s[i];
		} else {
			out[o++] = (s[i] >= 'A' && s[i] <= 'Z') ? (char)(s[i] - 'A' + 'a') : s[i];
		}
	}
	out[o] = '\0';
}

static void check_ref_span(const struct record *rec, unsigned i, const char *sql,
                           const struct stmt_info *si, const struct rel_ref *ref)
{
	char name[256];

	if (ref->start < si->start || ref->start + ref->len > si->start + si->len || ref->len == 0)
		fail_msg("%s stmt %u: ref at %u+%u outside statement %u+%u", rec->title, i,
		         ref->start, ref->len, si->start, si->len);
	if (ref->len > 2 && (sql[ref->start] == 'U' || sql[ref->start] == 'u') &&
	    sql[ref->start + 1] == '&')
		return; /* Unicode escapes: compared through refs= only */
	name_decode_last(sql + ref->start, ref->len, name, sizeof(name));
	if (strcmp(name, tables.rel[ref->role].name) != 0)
		fail_msg("%s stmt %u: ref text \"%.*s\" is not %s", rec->title, i, (int)ref->len,
		         sql + ref->start, tables.rel[ref->role].name);
}

static int ref_cmp(const void *a, const void *b)
{
	const struct rel_ref *x = a, *y = b;
	return (x->start > y->start) - (x->start < y->start);
}

static void check_refs(const struct record *rec, unsigned i, const char *sql,
                       const struct stmt_info *si, const struct want_stmt *w)
{
	struct rel_ref sorted[PARSER_MAX_REFS];

	memcpy(sorted, si->refs, si->nrefs * sizeof(sorted[0]));
	qsort(sorted, si->nrefs, sizeof(sorted[0]), ref_cmp);
	if (si->nrefs != w->nrefs)
		fail_msg("%s stmt %u: %u refs, expected %u", rec->title, i, si->nrefs, w->nrefs);
	for (unsigned j = 0; j < si->nrefs; j++) {
		const struct rel_ref *g = &sorted[j];
		const struct want_ref *e = &w->refs[j];
		check_ref_span(rec, i, sql, si, g);
		if (g->role != e->role || g->is_target != e->target || g->in_cte != e->cte ||
		    g->has_alias != e->alias || g->only != e->only ||
		    g->has_catalog != e->catalog || (g->star != 0) != e->star ||
		    strlen(e->text) != g->len ||
		    memcmp(sql + g->start, e->text, g->len) != 0)
			fail_msg("%s stmt %u ref %u: got %s%s%s%s%s%s%s:%.*s, expected "
			         "%s%s%s%s%s%s%s:%s",
			         rec->title, i, j, role_names[g->role],
			         g->is_target ? "+target" : "", g->in_cte ? "+cte" : "",
			         g->has_alias ? "+alias" : "", g->only ? "+only" : "",
			         g->has_catalog ? "+catalog" : "", g->star ? "+star" : "",
			         (int)g->len, sql + g->start, role_names[e->role],
			         e->target ? "+target" : "", e->cte ? "+cte" : "",
			         e->alias ? "+alias" : "", e->only ? "+only" : "",
			         e->catalog ? "+catalog" : "", e->star ? "+star" : "", e->text);
		/* The engine deletes ONLY (and the brackets around the name) at these spans. */
		if (g->only && (strncasecmp(sql + g->only_start, "only", 4) != 0 ||
		                g->only_start >= g->start ||
		                (g->only_close && (sql[g->only_close] != ')' ||
		                                   g->only_close < g->start + g->len))))
			fail_msg("%s stmt %u ref %u: ONLY span %u/%u wrong", rec->title, i, j,
			         g->only_start, g->only_close);
		/* ... and the star of `name *` here. */
		if (g->star && (sql[g->star] != '*' || g->star < g->start + g->len))
			fail_msg("%s stmt %u ref %u: star at %u wrong", rec->title, i, j, g->star);
	}
}

static void check_span_text(const struct record *rec, unsigned i, const char *what, const char *sql,
                            uint32_t start, uint32_t len, const char *want)
{
	if (strlen(want) != len || memcmp(sql + start, want, len) != 0)
		fail_msg("%s stmt %u: %s is \"%.*s\", expected \"%s\"", rec->title, i, what,
		         (int)len, sql + start, want);
}

/* The system-column references as the corpus writes them: COLUMN:TEXT,... */
static void check_sysrefs(const struct record *rec, unsigned i, const struct stmt_info *si,
                          const char *want)
{
	char got[1024] = "";
	size_t n = 0;

	for (uint32_t j = 0; j < si->nsysrefs && j < PARSER_MAX_SYSREFS; j++) {
		const struct sys_ref *r = &si->sysrefs[j];
		assert_true(r->start >= si->start && r->start + r->len <= si->start + si->len);
		n += (size_t)snprintf(got + n, sizeof(got) - n, "%s%s:%.*s", j ? "," : "",
		                      sys_column_name(r->column), (int)r->len, rec->sql + r->start);
		assert_true(n < sizeof(got));
	}
	if (si->nsysrefs > PARSER_MAX_SYSREFS)
		snprintf(got + n, sizeof(got) - n, ",+%u", si->nsysrefs - PARSER_MAX_SYSREFS);
	if (strcmp(got, want ? want : "") != 0)
		fail_msg("%s stmt %u: sysrefs `%s`, expected `%s`", rec->title, i, got,
		         want ? want : "");
}

#define EXPECT(field, got, want)                                                                   \
	do {                                                                                       \
		if ((int)(got) != (int)(want))                                                     \
			fail_msg("%s stmt %u: %s is %d, expected %d", rec->title, i, field,        \
			         (int)(got), (int)(want));                                         \
	} while (0)

static void check_stmt(const struct record *rec, unsigned i, const struct stmt_info *si)
{
	const struct want_stmt *w = &rec->stmts[i];

	if (si->kind != w->kind || si->inner != w->inner)
		fail_msg("%s stmt %u: kind %s/%s, expected %s/%s", rec->title, i,
		         stmt_kind_name(si->kind), stmt_kind_name(si->inner),
		         stmt_kind_name(w->kind), stmt_kind_name(w->inner));
	EXPECT("touches", si->touches, w->touches >= 0 ? w->touches : w->nrefs > 0);
	EXPECT("touches vs nrefs", si->touches, si->nrefs > 0);
	EXPECT("writes", si->writes, w->writes);
	EXPECT("wcte", si->writable_cte, w->wcte);
	EXPECT("sets_key", si->sets_key_columns, w->sets_key);
	EXPECT("params", si->has_params, w->params);
	EXPECT("conflict", si->conflict, w->conflict);
	EXPECT("onconstraint", si->conflict_on_constraint, w->onconstraint);
	EXPECT("has_returning", si->has_returning, w->returning != NULL);
	if (strcmp(si->prepared_name, w->name ? w->name : "") != 0)
		fail_msg("%s stmt %u: name \"%s\", expected \"%s\"", rec->title, i,
		         si->prepared_name, w->name ? w->name : "");
	if (si->conflict != CONFLICT_NONE && strncasecmp(rec->sql + si->conflict_start, "on", 2))
		fail_msg("%s stmt %u: conflict span does not start with ON", rec->title, i);
	if (w->conflict_text)
		check_span_text(rec, i, "conflict", rec->sql, si->conflict_start, si->conflict_len,
		                w->conflict_text);
	if (w->returning)
		check_span_text(rec, i, "returning", rec->sql, si->returning_start,
		                si->returning_len, w->returning);
	EXPECT("ctid", si->uses_ctid, w->ctid);
	check_sysrefs(rec, i, si, w->sysrefs);
	EXPECT("copy", si->copy_relation, w->copy);
	EXPECT("copy_legacy", si->copy_legacy, w->copy_legacy);
	EXPECT("copy_cols", si->copy_cols_len > 0, w->copy_cols != NULL);
	if (w->copy_cols)
		check_span_text(rec, i, "copy_cols", rec->sql, si->copy_cols_start,
		                si->copy_cols_len, w->copy_cols);
	check_refs(rec, i, rec->sql, si, w);
}

static void check_result(const struct record *rec, const struct parse_result *r)
{
	bool touches = false;

	if (r->status != rec->status)
		fail_msg("%s: status %s (%s), expected %s", rec->title, status_names[r->status],
		         r->error, status_names[rec->status]);
	if (rec->error && !strstr(r->error, rec->error))
		fail_msg("%s: error \"%s\" lacks \"%s\"", rec->title, r->error, rec->error);
	if (r->status != PARSE_OK) {
		assert_int_equal(r->nstmts, 0);
		assert_true(r->touches);
		return;
	}
	if (r->nstmts != rec->nstmts)
		fail_msg("%s: %u statements, expected %u", rec->title, r->nstmts, rec->nstmts);
	for (unsigned i = 0; i < r->nstmts; i++) {
		const struct stmt_info *si = &r->stmts[i];
		assert_true(si->start + si->len <= rec->len);
		if (i > 0)
			assert_true(si->start >= r->stmts[i - 1].start + r->stmts[i - 1].len);
		check_stmt(rec, i, si);
		touches |= si->touches;
	}
	assert_int_equal(r->touches, touches);
	if (!rec->prefilter && touches)
		fail_msg("%s: the prefilter passes a statement that touches", rec->title);
}

static void test_record(void **state)
{
	const struct record *rec = *state;
	struct parser_cache *c = parser_cache_new(4);
	const struct parse_result *cached;
	struct parse_result *r;

	if (parser_prefilter(&tables, rec->sql, rec->len) != rec->prefilter)
		fail_msg("%s: prefilter says %d", rec->title, !rec->prefilter);
	/* The same after 300 blanks: a short text and a long one are scanned differently. */
	char *padded = malloc(rec->len + 300);
	assert_non_null(padded);
	memset(padded, ' ', 300);
	memcpy(padded + 300, rec->sql, rec->len);
	if (parser_prefilter(&tables, padded, rec->len + 300) != rec->prefilter)
		fail_msg("%s: prefilter after 300 blanks says %d", rec->title, !rec->prefilter);
	free(padded);
	/* And as a C string, the way the session calls it. */
	if (!memchr(rec->sql, 0, rec->len)) {
		char *cstr = malloc(rec->len + 1);
		assert_non_null(cstr);
		memcpy(cstr, rec->sql, rec->len);
		cstr[rec->len] = '\0';
		if (parser_prefilter_cstr(&tables, cstr, rec->len) != rec->prefilter)
			fail_msg("%s: prefilter as a C string says %d", rec->title, !rec->prefilter);
		free(cstr);
	}
	r = parser_parse(&tables, rec->sql, rec->len, KEY_COLUMNS, PARTITION_COLUMN);
	assert_non_null(r);
	check_result(rec, r);
	/* Through the cache, twice: a miss, then a hit, both as fresh. */
	assert_non_null(c);
	for (int pass = 0; pass < 2; pass++) {
		cached = parser_cache_get(c, &tables, 7, rec->sql, rec->len, KEY_COLUMNS,
		                          PARTITION_COLUMN);
		assert_non_null(cached);
		assert_int_equal(cached->status, r->status);
		assert_int_equal(cached->nstmts, r->nstmts);
		assert_memory_equal(cached->stmts, r->stmts, r->nstmts * sizeof(*r->stmts));
	}
	/* Texts over 64 KiB are not kept. */
	assert_int_equal(parser_cache_misses(c), rec->len <= 64 * 1024 ? 1 : 2);
	assert_int_equal(parser_cache_hits(c), rec->len <= 64 * 1024 ? 1 : 0);
	parser_cache_free(c);
	parse_result_free(r);
}

/* ---- parser_tables_init ---- */

static void test_tables_init_ok(void **state)
{
	struct parser_tables t;
	char long_name[64];
	(void)state;

	assert_true(parser_tables_init(&t, "public.ingest_idempotency", "Ingest_Next",
	                               "\"My Schema\".\"Buf\"\"fer\""));
	assert_string_equal(t.rel[REL_OLD].schema, "public");
	assert_string_equal(t.rel[REL_OLD].name, "ingest_idempotency");
	assert_string_equal(t.rel[REL_NEXT].schema, "");
	assert_string_equal(t.rel[REL_NEXT].name, "ingest_next");
	assert_string_equal(t.rel[REL_BUFFER].schema, "My Schema");
	assert_string_equal(t.rel[REL_BUFFER].name, "Buf\"fer");

	memset(long_name, 'a', 63);
	long_name[63] = '\0';
	assert_true(parser_tables_init(&t, long_name, "PUBLIC.x$1", "_a.\"a.b\""));
	assert_string_equal(t.rel[REL_OLD].name, long_name);
	assert_string_equal(t.rel[REL_NEXT].schema, "public");
	assert_string_equal(t.rel[REL_NEXT].name, "x$1");
	assert_string_equal(t.rel[REL_BUFFER].name, "a.b");
}

static void test_tables_init_bad(void **state)
{
	static const char *const bad[] = {
	    "",         ".x",  "x.",   "a.b.c", "\"\"",   "\"unterminated",
	    " x",       "x ",  "1abc", "a b",   "a..b",   "\"a\"b",
	    "a.\"\"",   "$x",  "a-b",  "a.",    "\"a\".", "a;drop",
	    "a.b\"c\"", "a\n",
	};
	struct parser_tables t;
	char long_name[80];
	(void)state;

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		if (parser_tables_init(&t, "x", "y", bad[i]))
			fail_msg("accepted \"%s\"", bad[i]);
		if (parser_tables_init(&t, bad[i], "y", "z"))
			fail_msg("accepted \"%s\" as table", bad[i]);
	}
	assert_false(parser_tables_init(&t, NULL, "y", "z"));
	memset(long_name, 'a', 64);
	long_name[64] = '\0';
	assert_false(parser_tables_init(&t, long_name, "y", "z"));
	snprintf(long_name, sizeof(long_name), "\"%.64s\"",
	         "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa");
	assert_false(parser_tables_init(&t, long_name, "y", "z"));
}

/* ---- parser_prefilter ---- */

/* On a heap block of exactly the text's size, so ASan catches a read past the end; and
   again after 1100 blanks, past the length where the prefilter skips covered names. */
static bool prefilter_exact(const struct parser_tables *t, const char *s)
{
	size_t n = strlen(s), pad = 1100;
	char *copy = malloc(n ? n : 1), *padded = malloc(pad + n);
	bool got;

	assert_non_null(copy);
	assert_non_null(padded);
	memcpy(copy, s, n);
	got = parser_prefilter(t, copy, n);
	memset(padded, ' ', pad);
	memcpy(padded + pad, s, n);
	if (parser_prefilter(t, padded, pad + n) != got)
		fail_msg("prefilter of \"%s\" changes with leading blanks", s);
	/* The C-string variant, on a block of exactly the text and its NUL. */
	char *cstr = malloc(n + 1);
	assert_non_null(cstr);
	memcpy(cstr, s, n + 1);
	if (parser_prefilter_cstr(t, cstr, n) != got)
		fail_msg("prefilter of \"%s\" as a C string says %d", s, !got);
	free(cstr);
	free(copy);
	free(padded);
	return got;
}

static void test_prefilter(void **state)
{
	static const char *const yes[] = {
	    "SELECT * FROM ingest_idempotency",
	    "select * from INGEST_IDEMPOTENCY",
	    "select * from Ingest_Idempotency_Next",
	    "DELETE FROM ingest_fallback_buffer",
	    "INSERT INTO \"INGEST_FALLBACK_BUFFER\" VALUES (1)",
	    "SELECT 'ingest_idempotency'",
	    "-- ingest_idempotency\nSELECT 1",
	    "ingest_idempotency",
	    "xingest_idempotencyx",
	    "SELECT * FROM U&\"\\0069ngest\"",
	    "SELECT * FROM u&\"x\"",
	    "U&\"",
	};
	static const char *const no[] = {
	    "",
	    "SELECT 1",
	    "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
	    "SELECT * FROM ingest_idempotenc",
	    "ingest_idempotenc",
	    "ingest-idempotency",
	    "ingest_fallback",
	    "SELECT U&'\\0069'",
	    "SELECT U &\"x\"",
	    "&\"x\"",
	    "U&",
	};
	(void)state;

	for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++)
		if (!prefilter_exact(&tables, yes[i]))
			fail_msg("prefilter missed \"%s\"", yes[i]);
	for (size_t i = 0; i < sizeof(no) / sizeof(no[0]); i++)
		if (prefilter_exact(&tables, no[i]))
			fail_msg("prefilter passed \"%s\"", no[i]);
}

/* Names that do not share a prefix, contain each other the other way, or hold a quote. */
static void test_prefilter_other_names(void **state)
{
	struct parser_tables t;
	(void)state;

	assert_true(parser_tables_init(&t, "app.events_long", "app.long", "\"we\"\"ird\""));
	assert_true(prefilter_exact(&t, "SELECT * FROM LONG"));
	assert_true(prefilter_exact(&t, "SELECT * FROM app.events_long"));
	assert_true(prefilter_exact(&t, "SELECT * FROM \"we\"\"ird\""));
	assert_false(prefilter_exact(&t, "SELECT * FROM events"));
	assert_false(prefilter_exact(&t, "SELECT * FROM lon"));

	assert_true(parser_tables_init(&t, "t1", "t1", "\"\"\"\""));
	assert_true(prefilter_exact(&t, "SELECT * FROM T1"));
	assert_true(prefilter_exact(&t, "SELECT \"\"\"\""));
	assert_false(prefilter_exact(&t, "SELECT 1"));
}

/* ---- bounds ---- */

static struct parse_result *parse_str(const char *s, size_t n)
{
	struct parse_result *r = parser_parse(&tables, s, n, KEY_COLUMNS, PARTITION_COLUMN);
	assert_non_null(r);
	return r;
}

/* prefix + n * unit + suffix, parsed; the status must be want. */
static void expect_generated(const char *prefix, const char *unit, size_t n, const char *suffix,
                             enum parse_status want)
{
	size_t lp = strlen(prefix), lu = strlen(unit), ls = strlen(suffix);
	size_t len = lp + n * lu + ls;
	char *s = malloc(len);
	struct parse_result *r;

	assert_non_null(s);
	memcpy(s, prefix, lp);
	for (size_t i = 0; i < n; i++)
		memcpy(s + lp + i * lu, unit, lu);
	memcpy(s + lp + n * lu, suffix, ls);
	r = parse_str(s, len);
	if (r->status != want)
		fail_msg("%s%s x %zu: status %d (%s), expected %d", prefix, unit, n, r->status,
		         r->error, want);
	parse_result_free(r);
	free(s);
}

/* Each of these would overflow the stack inside libpg_query if it reached it. */
static void test_too_deep(void **state)
{
	(void)state;
	expect_generated("SELECT ", "(", 10000, "1 FROM ingest_idempotency", PARSE_TOO_DEEP);
	expect_generated("SELECT ", "ARRAY[", 10000, "1 FROM ingest_idempotency", PARSE_TOO_DEEP);
	expect_generated("SELECT 1", "+1", 400000, " FROM ingest_idempotency", PARSE_TOO_DEEP);
	expect_generated("SELECT 1", "::int", 100000, " FROM ingest_idempotency", PARSE_TOO_DEEP);
	expect_generated("SELECT 1 FROM ingest_idempotency", " UNION SELECT 1", 60000, "",
	                 PARSE_TOO_DEEP);
	expect_generated("SELECT 1 FROM ingest_idempotency", " CROSS JOIN t", 70000, "",
	                 PARSE_TOO_DEEP);
	expect_generated("SELECT 'a' FROM ingest_idempotency WHERE x", " COLLATE \"C\"", 70000, "",
	                 PARSE_TOO_DEEP);
	expect_generated("SELECT ", "NOT ", 9990, "true FROM ingest_idempotency", PARSE_TOO_DEEP);
	expect_generated("SELECT ", "NOT ", 100000, "true FROM ingest_idempotency", PARSE_TOO_DEEP);
	expect_generated("SELECT ", "- ", 100000, "1 FROM ingest_idempotency", PARSE_TOO_DEEP);
	/* Chains of chains: each level short, the tree as deep as all of them together. */
	char *prefix = malloc(7 + 100 + 2), *unit = malloc(2 * 3000 + 2);
	assert_non_null(prefix);
	assert_non_null(unit);
	memcpy(prefix, "SELECT ", 7);
	memset(prefix + 7, '(', 100);
	strcpy(prefix + 107, "1");
	for (int i = 0; i < 3000; i++)
		memcpy(unit + 2 * i, "+1", 2);
	strcpy(unit + 6000, ")");
	expect_generated(prefix, unit, 100, " FROM ingest_idempotency", PARSE_TOO_DEEP);
	free(prefix);
	free(unit);
	/* Within the bounds: 200 brackets, and a long flat OR list. */
	expect_generated("SELECT ", "(", 200, "1" /* unbalanced */, PARSE_SYNTAX_ERROR);
	expect_generated("SELECT * FROM ingest_idempotency WHERE a = 1", " OR a = 1", 20000, "",
	                 PARSE_OK);
	expect_generated("INSERT INTO ingest_idempotency VALUES (-1)", ", (-1)", 20000, "",
	                 PARSE_OK);
}

static void test_too_large(void **state)
{
	(void)state;
	expect_generated("SELECT '", "x", 2u << 20, "' FROM ingest_idempotency", PARSE_TOO_LARGE);
	/* 33 bytes around the literal: exactly PARSER_MAX_TEXT is parsed, a byte more not. */
	expect_generated("SELECT '", "x", PARSER_MAX_TEXT - 33, "' FROM ingest_idempotency",
	                 PARSE_OK);
	expect_generated("SELECT '", "x", PARSER_MAX_TEXT - 32, "' FROM ingest_idempotency",
	                 PARSE_TOO_LARGE);
}

static void test_too_many(void **state)
{
	(void)state;
	expect_generated("", "SELECT 1 FROM ingest_idempotency;", PARSER_MAX_STMTS, "", PARSE_OK);
	expect_generated("", "SELECT 1 FROM ingest_idempotency;", PARSER_MAX_STMTS + 1, "",
	                 PARSE_TOO_MANY);
	expect_generated("SELECT 1 FROM ingest_idempotency", ", ingest_idempotency",
	                 PARSER_MAX_REFS - 1, "", PARSE_OK);
	expect_generated("SELECT 1 FROM ingest_idempotency", ", ingest_idempotency",
	                 PARSER_MAX_REFS, "", PARSE_TOO_MANY);
}

static void test_odd_text(void **state)
{
	struct parse_result *r;
	(void)state;

	r = parse_str("SELECT 1 FROM ingest_idempotency\0 x", 35);
	assert_int_equal(r->status, PARSE_SYNTAX_ERROR);
	parse_result_free(r);
	r = parse_str("", 0);
	assert_int_equal(r->status, PARSE_OK);
	assert_int_equal(r->nstmts, 0);
	assert_false(r->touches);
	parse_result_free(r);
	r = parse_str("SELECT * FROM ingest_idempotency", 20); /* cut mid-name: not a ref */
	assert_int_equal(r->status, PARSE_OK);
	assert_false(r->touches);
	parse_result_free(r);
}

/* The statement spans libpg_query gives: leading blanks and comments belong to a
   statement, the ";" does not, stmt_len 0 runs to the end. */
static void test_statement_spans(void **state)
{
	static const char sql[] = "SELECT 1 ; /* c */ SELECT 2 ;  -- x\n SELECT 3 ";
	struct parse_result *r = parse_str(sql, sizeof(sql) - 1);
	(void)state;

	assert_int_equal(r->status, PARSE_OK);
	assert_int_equal(r->nstmts, 3);
	assert_int_equal(r->stmts[0].start, 0);
	assert_int_equal(r->stmts[0].len, 9);
	assert_int_equal(r->stmts[1].start, 10);
	assert_int_equal(r->stmts[1].len, 18);
	assert_int_equal(r->stmts[2].start, 29);
	assert_int_equal(r->stmts[2].len, sizeof(sql) - 1 - 29);
	parse_result_free(r);
}

static void test_kind_names(void **state)
{
	(void)state;
	for (int a = 0; a < STMT__COUNT; a++) {
		assert_string_not_equal(stmt_kind_name((enum stmt_kind)a), "?");
		for (int b = 0; b < a; b++)
			assert_string_not_equal(stmt_kind_name((enum stmt_kind)a),
			                        stmt_kind_name((enum stmt_kind)b));
	}
	assert_string_equal(stmt_kind_name(STMT__COUNT), "?");
}

/* ---- the cache ---- */

static const struct parse_result *cache_get(struct parser_cache *c, uint64_t epoch, const char *sql)
{
	const struct parse_result *r =
	    parser_cache_get(c, &tables, epoch, sql, strlen(sql), KEY_COLUMNS, PARTITION_COLUMN);
	assert_non_null(r);
	return r;
}

static void expect_counts(const struct parser_cache *c, uint64_t hits, uint64_t misses)
{
	assert_int_equal(parser_cache_hits(c), hits);
	assert_int_equal(parser_cache_misses(c), misses);
}

static void test_cache_hits_and_epochs(void **state)
{
	static const char a[] = "SELECT * FROM ingest_idempotency WHERE site_id = $1";
	struct parser_cache *c = parser_cache_new(8);
	const struct parse_result *r1, *r2;
	(void)state;

	assert_non_null(c);
	r1 = cache_get(c, 1, a);
	expect_counts(c, 0, 1);
	assert_int_equal(r1->status, PARSE_OK);
	assert_true(r1->touches);
	r2 = cache_get(c, 1, a);
	expect_counts(c, 1, 1);
	assert_ptr_equal(r1, r2);
	cache_get(c, 2, a); /* a new phase epoch: parsed again */
	expect_counts(c, 1, 2);
	cache_get(c, 1, a); /* the old epoch's entry is still there */
	expect_counts(c, 2, 2);
	cache_get(c, 1, "SELECT * FROM ingest_idempotency WHERE site_id = $2");
	expect_counts(c, 2, 3);
	/* Same text, another configuration: the entries are not reused. */
	assert_non_null(parser_cache_get(c, &tables, 1, a, strlen(a), "site_id", NULL));
	expect_counts(c, 2, 4);
	assert_non_null(parser_cache_get(c, &tables, 1, a, strlen(a), "site_id", NULL));
	expect_counts(c, 3, 4);
	cache_get(c, 1, a);
	expect_counts(c, 3, 5);
	parser_cache_free(c);
}

static void test_cache_eviction(void **state)
{
	struct parser_cache *c = parser_cache_new(2);
	(void)state;

	assert_non_null(c);
	cache_get(c, 1, "SELECT 1 FROM ingest_idempotency"); /* A */
	cache_get(c, 1, "SELECT 2 FROM ingest_idempotency"); /* B */
	expect_counts(c, 0, 2);
	cache_get(c, 1, "SELECT 1 FROM ingest_idempotency"); /* A hit: B is now the oldest */
	expect_counts(c, 1, 2);
	cache_get(c, 1, "SELECT 3 FROM ingest_idempotency"); /* C evicts B */
	expect_counts(c, 1, 3);
	cache_get(c, 1, "SELECT 1 FROM ingest_idempotency"); /* A stays */
	expect_counts(c, 2, 3);
	cache_get(c, 1, "SELECT 3 FROM ingest_idempotency"); /* C stays */
	expect_counts(c, 3, 3);
	cache_get(c, 1, "SELECT 2 FROM ingest_idempotency"); /* B was evicted */
	expect_counts(c, 3, 4);
	parser_cache_free(c);
}

static void test_cache_not_kept(void **state)
{
	struct parser_cache *c = parser_cache_new(0);
	size_t n = 70 * 1024;
	char *big = malloc(n + 1);
	const struct parse_result *r;
	(void)state;

	assert_non_null(c);
	assert_non_null(big);
	r = cache_get(c, 1, "SELECT 1 FROM ingest_idempotency");
	assert_true(r->touches);
	cache_get(c, 1, "SELECT 1 FROM ingest_idempotency");
	expect_counts(c, 0, 2); /* capacity 0 keeps nothing */
	parser_cache_free(c);

	c = parser_cache_new(4);
	assert_non_null(c);
	memset(big, ' ', n);
	memcpy(big, "SELECT 1 FROM ingest_idempotency", 32);
	big[n] = '\0';
	r = cache_get(c, 1, big);
	assert_int_equal(r->status, PARSE_OK);
	assert_true(r->touches);
	cache_get(c, 1, big); /* over 64 KiB: parsed every time */
	expect_counts(c, 0, 2);
	r = cache_get(c, 1, "SELECT (");
	assert_int_equal(r->status, PARSE_SYNTAX_ERROR);
	cache_get(c, 1, "SELECT (");
	expect_counts(c, 1, 3); /* refusals are kept too */
	parser_cache_free(c);
	parser_cache_free(NULL);
	free(big);
}

/* ---- main ---- */

static const struct CMUnitTest fixed_tests[] = {
    cmocka_unit_test(test_tables_init_ok),
    cmocka_unit_test(test_tables_init_bad),
    cmocka_unit_test(test_prefilter),
    cmocka_unit_test(test_prefilter_other_names),
    cmocka_unit_test(test_too_deep),
    cmocka_unit_test(test_too_large),
    cmocka_unit_test(test_too_many),
    cmocka_unit_test(test_odd_text),
    cmocka_unit_test(test_statement_spans),
    cmocka_unit_test(test_kind_names),
    cmocka_unit_test(test_cache_hits_and_epochs),
    cmocka_unit_test(test_cache_eviction),
    cmocka_unit_test(test_cache_not_kept),
};

int main(void)
{
	size_t nfixed = sizeof(fixed_tests) / sizeof(fixed_tests[0]);
	struct CMUnitTest *tests;
	int failed;

	if (!parser_tables_init(&tables, "public.ingest_idempotency",
	                        "public.ingest_idempotency_next", "public.ingest_fallback_buffer"))
		return 1;
	corpus_load();
	tests = calloc(nfixed + nrecords, sizeof(*tests));
	if (!tests)
		return 1;
	memcpy(tests, fixed_tests, sizeof(fixed_tests));
	for (size_t i = 0; i < nrecords; i++)
		tests[nfixed + i] = (struct CMUnitTest){.name = records[i]->title,
		                                        .test_func = test_record,
		                                        .initial_state = records[i]};
	failed = _cmocka_run_group_tests("parser", tests, nfixed + nrecords, NULL, NULL);
	for (size_t i = 0; i < nrecords; i++)
		record_free(records[i]);
	free(records);
	free(tests);
	pg_query_exit();
	return failed;
}
