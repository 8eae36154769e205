/*
 * Tests of rules_decide(): every file of tests/corpus/decisions/ is one test, a table of
 * statements and what the phases it names (with DEGRADED as it says) do to each; the
 * files' header says how to read and extend them.  Then: every statement of
 * tests/corpus/statements.txt that parses has a decision in every file (the corpus cannot
 * grow without one), rules_write_target() and rules_unservable().  Run from the
 * repository root.
 *
 * Beyond what a record states, every decision is checked for what must always hold: a
 * statement that touches no configured relation is forwarded, a mirror goes on a
 * statement that writes the table (old), a rename on one that reads it and writes none
 * of the configured relations, and outside passthrough a statement that writes a
 * configured relation is never sent unmirrored (SPEC I4).
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <pg_query.h>

#include "parser/parser.h"
#include "proxy/phase.h"
#include "rules/rules.h"

#define DECISIONS        "tests/corpus/decisions"
#define CORPUS           "tests/corpus/statements.txt"
#define KEY_COLUMNS      "site_id,idempotency_key"
#define PARTITION_COLUMN "created_at"

static struct parser_tables tables;

/* ---- reading the files ---- */

/* A record as both files write it: "@ " lines, SQL lines, then "----". */
struct record {
	unsigned line; /* of the first "@ " line */
	unsigned nheads;
	char **heads;     /* the "@ " lines, without "@ " */
	unsigned *hlines; /* their line numbers */
	char *sql;        /* <<N*text>> expanded */
	size_t len;
};

struct expect {
	enum rule_action action;
	const char *fn;   /* RULE_MIRROR: "pgshunt.put_next", ..., "pgshunt.del_old" */
	const char *text; /* RULE_REFUSE: a substring of the reason, "" for any */
	char view[40];    /* RULE_CLAIM, RULE_BUFFER: the view's suffix */
	bool to_next;     /* RULE_MIRROR, RULE_CLAIM, RULE_BUFFER: "+next" */
	bool whole;       /* finalized: "+whole" after any action but refuse */
};

struct dfile {
	char path[300];
	bool phase[PHASE__COUNT];
	bool degraded;
	struct record *recs;
	size_t nrecs;
	struct expect **exp; /* per record, one per "@ " line */
};

static struct dfile *files;
static size_t nfiles;
static struct record *corpus;
static size_t ncorpus;

__attribute__((noreturn, format(printf, 3, 4))) static void
file_die(const char *path, unsigned line, const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "%s:%u: ", path, line);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(1);
}

static void *xrealloc(void *p, size_t n)
{
	p = realloc(p, n ? n : 1);
	if (!p)
		abort();
	return p;
}

static char *xstrdup(const char *s)
{
	char *d = strdup(s);
	if (!d)
		abort();
	return d;
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

/* <<N*text>> stands for text repeated N times (as in tests/corpus/statements.txt). */
static char *sql_expand(const char *path, unsigned line, const char *s, size_t *len)
{
	size_t cap = strlen(s) + 1, n = 0;
	char *out = xrealloc(NULL, cap);

	while (*s) {
		const char *m = strncmp(s, "<<", 2) == 0 ? strstr(s, ">>") : NULL;
		char *star = NULL;
		unsigned long count = 1;
		const char *src = s;
		size_t piece = 1;
		if (m) {
			count = strtoul(s + 2, &star, 10);
			if (*star != '*' || star > m)
				file_die(path, line, "bad <<N*text>>");
			src = star + 1;
			piece = (size_t)(m - src);
		}
		if (n + count * piece + 1 > cap)
			out = xrealloc(out, cap = n + count * piece + 1);
		for (unsigned long i = 0; i < count; i++, n += piece)
			memcpy(out + n, src, piece);
		s = m ? m + 2 : s + 1;
	}
	out[n] = '\0';
	*len = n;
	return out;
}

/*
 * Records: comments and blank lines, "@ " lines, SQL lines, then "----".  Lines starting
 * with '%' between records go to directive(), when given.
 */
static struct record *records_load(const char *path, size_t *nrecs,
                                   void (*directive)(void *, const char *, unsigned, char *),
                                   void *arg)
{
	char *text = file_read(path);
	struct record *recs = NULL, *rec = NULL;
	char *sql = NULL;
	unsigned line = 0;

	*nrecs = 0;
	for (char *l = text, *next; l && *l; l = next) {
		next = strchr(l, '\n');
		if (next)
			*next++ = '\0';
		line++;
		if (strcmp(l, "----") == 0) {
			if (rec) {
				if (!sql)
					file_die(path, line, "record without SQL");
				rec->sql = sql_expand(path, rec->line, sql, &rec->len);
				free(sql);
				sql = NULL;
				rec = NULL;
			}
			continue;
		}
		if (!rec && (l[0] == '#' || l[0] == '\0'))
			continue;
		if (!rec && l[0] == '%' && directive) {
			directive(arg, path, line, l + 1);
			continue;
		}
		if (!rec) {
			if (strncmp(l, "@ ", 2) != 0)
				file_die(path, line, "a record starts with an \"@ \" line");
			recs = xrealloc(recs, (*nrecs + 1) * sizeof(*recs));
			rec = &recs[(*nrecs)++];
			memset(rec, 0, sizeof(*rec));
			rec->line = line;
		}
		if (strncmp(l, "@ ", 2) == 0 && !sql) {
			rec->heads = xrealloc(rec->heads, (rec->nheads + 1) * sizeof(*rec->heads));
			rec->hlines =
			    xrealloc(rec->hlines, (rec->nheads + 1) * sizeof(*rec->hlines));
			rec->hlines[rec->nheads] = line;
			rec->heads[rec->nheads++] = xstrdup(l + 2);
			continue;
		}
		bool first = !sql;
		size_t old = sql ? strlen(sql) : 0;
		sql = xrealloc(sql, old + strlen(l) + 2);
		sprintf(sql + old, "%s%s", first ? "" : "\n", l);
	}
	if (rec)
		file_die(path, line, "last record not closed by ----");
	free(text);
	return recs;
}

static void records_free(struct record *recs, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		for (unsigned j = 0; j < recs[i].nheads; j++)
			free(recs[i].heads[j]);
		free(recs[i].heads);
		free(recs[i].hlines);
		free(recs[i].sql);
	}
	free(recs);
}

/* "%phase dual_write read_next", "%degraded 1" */
static void dfile_directive(void *arg, const char *path, unsigned line, char *s)
{
	struct dfile *f = arg;
	char *save = NULL, *key = strtok_r(s, " \t", &save);

	if (key && strcmp(key, "phase") == 0) {
		for (char *w = strtok_r(NULL, " \t", &save); w; w = strtok_r(NULL, " \t", &save)) {
			enum phase p;
			if (!phase_parse(w, &p))
				file_die(path, line, "unknown phase %s", w);
			f->phase[p] = true;
		}
	} else if (key && strcmp(key, "degraded") == 0) {
		char *v = strtok_r(NULL, " \t", &save);
		if (!v || (strcmp(v, "0") != 0 && strcmp(v, "1") != 0))
			file_die(path, line, "expected %%degraded 0 or 1");
		f->degraded = v[0] == '1';
	} else {
		file_die(path, line, "unknown directive %%%s", key ? key : "");
	}
}

static struct expect expect_one(const char *path, unsigned line, const char *s);

/*
 * "forward", "mirror put_next|del_next|put_old|del_old [+next]", "rename",
 * "claim VIEW [+next]", "buffer VIEW [+next]", "refuse [text]"; but refuse may end in
 * " +whole".
 */
static struct expect expect_from(const char *path, unsigned line, const char *s)
{
	static const char suffix[] = " +whole";
	size_t l = strlen(s), sl = sizeof(suffix) - 1;
	if (strncmp(s, "refuse", 6) == 0 || l <= sl || strcmp(s + l - sl, suffix) != 0)
		return expect_one(path, line, s);
	char *head = xstrdup(s);
	head[l - sl] = '\0';
	struct expect e = expect_one(path, line, head);
	free(head);
	e.whole = true;
	return e;
}

static struct expect expect_one(const char *path, unsigned line, const char *s)
{
	static const char *const fns[] = {"put_next", "del_next", "put_old", "del_old"};
	struct expect e = {.action = RULE_FORWARD};
	char word[16], arg[40], plus[8], extra[8];
	int n = sscanf(s, "%15s %39s %7s %7s", word, arg, plus, extra);

	if (strcmp(s, "forward") == 0)
		return e;
	if (strcmp(s, "rename") == 0) {
		e.action = RULE_RENAME;
		return e;
	}
	if (strcmp(s, "refuse") == 0 || strncmp(s, "refuse ", 7) == 0) {
		e.action = RULE_REFUSE;
		e.text = s[6] ? s + 7 : "";
		return e;
	}
	if ((n == 2 || (n == 3 && strcmp(plus, "+next") == 0)) &&
	    (strcmp(word, "mirror") == 0 || strcmp(word, "claim") == 0 ||
	     strcmp(word, "buffer") == 0)) {
		e.to_next = n == 3;
		snprintf(e.view, sizeof(e.view), "%s", arg);
		if (word[0] == 'c' || word[0] == 'b') {
			e.action = word[0] == 'c' ? RULE_CLAIM : RULE_BUFFER;
			return e;
		}
		e.action = RULE_MIRROR;
		for (size_t i = 0; i < sizeof(fns) / sizeof(fns[0]); i++)
			if (strcmp(arg, fns[i]) == 0)
				e.fn = i == 0   ? "pgshunt.put_next"
				       : i == 1 ? "pgshunt.del_next"
				       : i == 2 ? "pgshunt.put_old"
						: "pgshunt.del_old";
		if (e.fn)
			return e;
	}
	file_die(path, line,
	         "expected forward, mirror FN [+next], rename, claim|buffer VIEW [+next] or refuse "
	         "[text], got %s",
	         s);
}

static int name_cmp(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static void decisions_load(void)
{
	DIR *d = opendir(DECISIONS);
	char **names = NULL;
	size_t n = 0;
	struct dirent *de;

	if (!d) {
		fprintf(stderr, "cannot open %s (run from the repository root)\n", DECISIONS);
		exit(1);
	}
	while ((de = readdir(d))) {
		size_t l = strlen(de->d_name);
		if (de->d_name[0] == '.' || l < 5 || strcmp(de->d_name + l - 4, ".txt") != 0)
			continue;
		names = xrealloc(names, (n + 1) * sizeof(*names));
		names[n++] = xstrdup(de->d_name);
	}
	closedir(d);
	if (n == 0) {
		fprintf(stderr, "no decision files in %s\n", DECISIONS);
		exit(1);
	}
	qsort(names, n, sizeof(*names), name_cmp);
	files = xrealloc(NULL, n * sizeof(*files));
	nfiles = n;
	for (size_t i = 0; i < n; i++) {
		struct dfile *f = &files[i];
		bool any = false;
		memset(f, 0, sizeof(*f));
		snprintf(f->path, sizeof(f->path), "%s/%s", DECISIONS, names[i]);
		free(names[i]);
		f->recs = records_load(f->path, &f->nrecs, dfile_directive, f);
		for (int p = 0; p < PHASE__COUNT; p++)
			any |= f->phase[p];
		if (!any)
			file_die(f->path, 1, "no %%phase line");
		f->exp = xrealloc(NULL, f->nrecs * sizeof(*f->exp));
		for (size_t r = 0; r < f->nrecs; r++) {
			const struct record *rec = &f->recs[r];
			f->exp[r] = xrealloc(NULL, rec->nheads * sizeof(**f->exp));
			for (unsigned h = 0; h < rec->nheads; h++)
				f->exp[r][h] = expect_from(f->path, rec->hlines[h], rec->heads[h]);
		}
	}
	free(names);
}

static void decisions_free(void)
{
	for (size_t i = 0; i < nfiles; i++) {
		for (size_t r = 0; r < files[i].nrecs; r++)
			free(files[i].exp[r]);
		free(files[i].exp);
		records_free(files[i].recs, files[i].nrecs);
	}
	free(files);
}

/* ---- the decision files ---- */

static struct parse_result *parse(const char *sql, size_t len)
{
	struct parse_result *r = parser_parse(&tables, sql, len, KEY_COLUMNS, PARTITION_COLUMN);
	assert_non_null(r);
	return r;
}

static void describe(char *out, size_t n, struct rule_decision d)
{
	switch (d.action) {
	case RULE_FORWARD:
		snprintf(out, n, "forward");
		break;
	case RULE_MIRROR:
		snprintf(out, n, "mirror %s%s", d.mirror_fn ? d.mirror_fn : "(no function)",
		         d.to_next ? " +next" : "");
		break;
	case RULE_CLAIM:
	case RULE_BUFFER:
		snprintf(out, n, "%s %s%s", d.action == RULE_CLAIM ? "claim" : "buffer",
		         d.view ? d.view : "(no view)", d.to_next ? " +next" : "");
		break;
	case RULE_RENAME:
		snprintf(out, n, "rename");
		break;
	case RULE_REFUSE:
		snprintf(out, n, "refuse \"%s\"", d.reason ? d.reason : "(no reason)");
		break;
	default:
		snprintf(out, n, "action %d", (int)d.action);
	}
	if (d.whole) {
		size_t l = strlen(out);
		snprintf(out + l, n - l, " +whole");
	}
}

static bool decision_matches(struct rule_decision d, const struct expect *e)
{
	if (d.action != e->action || d.whole != e->whole)
		return false;
	if (d.action == RULE_MIRROR)
		return d.mirror_fn && strcmp(d.mirror_fn, e->fn) == 0 && d.to_next == e->to_next;
	if (d.action == RULE_CLAIM || d.action == RULE_BUFFER)
		return d.view && strcmp(d.view, e->view) == 0 && d.to_next == e->to_next;
	if (d.action == RULE_REFUSE)
		return d.reason && d.reason[0] && strstr(d.reason, e->text);
	return true;
}

/* What must hold whatever a record says: the rule d breaks, NULL when none. */
static const char *invariant_broken(enum phase phase, bool degraded, const struct stmt_info *st,
                                    struct rule_decision d)
{
	const struct rel_ref *target = rules_write_target(st);
	bool mentions_old = false;

	for (uint32_t i = 0; i < st->nrefs; i++)
		mentions_old |= st->refs[i].role == REL_OLD;
	if (!st->touches && d.action != RULE_FORWARD)
		return "a statement that touches no configured relation is forwarded";
	enum stmt_kind kind = st->kind == STMT_PREPARE ? st->inner : st->kind;
	bool insert = kind == STMT_INSERT || kind == STMT_INSERT_SELECT;
	if (d.action == RULE_MIRROR && (!st->writes || !target || target->role != REL_OLD))
		return "a mirror goes on a statement that writes the table";
	if (d.action == RULE_MIRROR &&
	    (phase == PHASE_CUTOVER) != (strstr(d.mirror_fn, "_old") != NULL))
		return "cutover mirrors into old, dual_write and read_next into next";
	if (d.action == RULE_MIRROR && d.to_next != (phase == PHASE_CUTOVER))
		return "cutover's writes (and only they) are pointed at next";
	if ((d.action == RULE_CLAIM || d.action == RULE_BUFFER) &&
	    (!insert || !target || target->role != REL_OLD))
		return "a claim or buffer view takes an INSERT into the table";
	if ((d.action == RULE_CLAIM || d.action == RULE_BUFFER) &&
	    (st->conflict == CONFLICT_UPDATE) != (strstr(d.view, "upsert") != NULL))
		return "DO UPDATE, and only it, goes to an _upsert view";
	if (d.action == RULE_CLAIM && (degraded || phase < PHASE_CUTOVER))
		return "claims are for cutover and finalized, out of DEGRADED";
	if (d.action == RULE_BUFFER && !degraded)
		return "buffer views are for DEGRADED only";
	if (degraded && insert && target && target->role == REL_OLD && d.action != RULE_BUFFER &&
	    d.action != RULE_REFUSE)
		return "in DEGRADED an INSERT into the table goes to the buffer or is refused";
	if (d.action == RULE_RENAME && (st->writes || target || !mentions_old))
		return "a rename goes on a statement that reads the table and writes none";
	if (d.action == RULE_RENAME && phase != PHASE_READ_NEXT && phase != PHASE_CUTOVER)
		return "only read_next and cutover read from next";
	/* finalized: the table is the partitioned table; an UPDATE or DELETE needs no mirror. */
	if ((d.action == RULE_FORWARD || d.action == RULE_RENAME) && st->writes &&
	    phase != PHASE_PASSTHROUGH &&
	    !(phase == PHASE_FINALIZED && (kind == STMT_UPDATE || kind == STMT_DELETE)))
		return "a write of a configured relation is mirrored, claimed, buffered or refused";
	return NULL;
}

static void test_decision_file(void **state)
{
	const struct dfile *f = *state;
	unsigned bad = 0, checked = 0;
	char got[400];

	for (size_t r = 0; r < f->nrecs; r++) {
		const struct record *rec = &f->recs[r];
		struct parse_result *res = parse(rec->sql, rec->len);
		if (res->status != PARSE_OK) {
			fprintf(stderr,
			        "%s:%u: does not parse (%s): the engine refuses it before "
			        "rules_decide(), keep it out of the decision files\n",
			        f->path, rec->line, res->error);
			bad++;
		} else if (res->nstmts != rec->nheads) {
			fprintf(stderr, "%s:%u: %u statements, %u \"@ \" lines\n", f->path,
			        rec->line, res->nstmts, rec->nheads);
			bad++;
		}
		for (unsigned i = 0; res->status == PARSE_OK && i < res->nstmts && i < rec->nheads;
		     i++) {
			const struct stmt_info *st = &res->stmts[i];
			const struct expect *e = &f->exp[r][i];
			for (int p = 0; p < PHASE__COUNT; p++) {
				if (!f->phase[p])
					continue;
				struct rule_decision d =
				    rules_decide((enum phase)p, f->degraded, st);
				const char *broken =
				    invariant_broken((enum phase)p, f->degraded, st, d);
				bool matches = decision_matches(d, e);
				checked++;
				if (matches && !broken)
					continue;
				describe(got, sizeof(got), d);
				fprintf(stderr,
				        "%s:%u: %s%s, statement %u (%s/%s): %s, %s %s%s%s\n",
				        f->path, rec->hlines[i], phase_name((enum phase)p),
				        f->degraded ? " DEGRADED" : "", i + 1,
				        stmt_kind_name(st->kind), stmt_kind_name(st->inner), got,
				        matches ? "as the record says:" : "expected", rec->heads[i],
				        broken ? "; but always: " : "", broken ? broken : "");
				bad++;
			}
		}
		parse_result_free(res);
	}
	if (bad)
		fail_msg("%s: %u of %u decisions differ (listed above)", f->path, bad, checked);
	if (checked == 0)
		fail_msg("%s: no decisions", f->path);
}

/* Every statement of the corpus that parses has a record, with the same SQL, in every file. */
static void test_corpus_covered(void **state)
{
	unsigned missing = 0, ok = 0;
	(void)state;

	for (size_t c = 0; c < ncorpus; c++) {
		const struct record *rec = &corpus[c];
		struct parse_result *res = parse(rec->sql, rec->len);
		bool parses = res->status == PARSE_OK;
		parse_result_free(res);
		if (!parses)
			continue;
		ok++;
		for (size_t i = 0; i < nfiles; i++) {
			bool found = false;
			for (size_t r = 0; r < files[i].nrecs && !found; r++)
				found = files[i].recs[r].len == rec->len &&
				        memcmp(files[i].recs[r].sql, rec->sql, rec->len) == 0;
			if (!found) {
				fprintf(stderr, "%s:%u: no decision in %s\n", CORPUS, rec->line,
				        files[i].path);
				missing++;
			}
		}
	}
	if (missing)
		fail_msg("%u statements of %s lack a decision (listed above)", missing, CORPUS);
	if (ok < 150)
		fail_msg("only %u statements of %s parse", ok, CORPUS);
}

/* ---- rules_write_target ---- */

static void expect_target(const char *sql, int role, const char *name, bool alias, bool cte)
{
	struct parse_result *r = parse(sql, strlen(sql));
	const struct rel_ref *t;

	if (r->status != PARSE_OK || r->nstmts != 1)
		fail_msg("%s: status %d, %u statements", sql, (int)r->status, r->nstmts);
	t = rules_write_target(&r->stmts[0]);
	if (role < 0) {
		if (t)
			fail_msg("%s: target %.*s, expected none", sql, (int)t->len,
			         sql + t->start);
	} else {
		if (!t)
			fail_msg("%s: no target, expected %s", sql, name);
		assert_true(t >= r->stmts[0].refs && t < r->stmts[0].refs + r->stmts[0].nrefs);
		assert_true(t->is_target);
		if ((int)t->role != role || t->len != strlen(name) ||
		    memcmp(sql + t->start, name, t->len) != 0 || t->has_alias != alias ||
		    t->in_cte != cte)
			fail_msg("%s: target %.*s (role %d, alias %d, cte %d), expected %s (role "
			         "%d, alias %d, cte %d)",
			         sql, (int)t->len, sql + t->start, (int)t->role, t->has_alias,
			         t->in_cte, name, role, alias, cte);
	}
	parse_result_free(r);
}

static void test_write_target(void **state)
{
	(void)state;
	expect_target("INSERT INTO ingest_idempotency (site_id) VALUES ('a')", REL_OLD,
	              "ingest_idempotency", false, false);
	expect_target("UPDATE public.ingest_idempotency AS i SET status = 'x' FROM "
	              "ingest_idempotency_next n WHERE n.site_id = i.site_id",
	              REL_OLD, "public.ingest_idempotency", true, false);
	expect_target("DELETE FROM \"ingest_idempotency\" WHERE site_id IN (SELECT site_id FROM "
	              "ingest_fallback_buffer)",
	              REL_OLD, "\"ingest_idempotency\"", false, false);
	expect_target("DELETE FROM ingest_idempotency_next WHERE true", REL_NEXT,
	              "ingest_idempotency_next", false, false);
	expect_target("INSERT INTO ingest_fallback_buffer SELECT * FROM ingest_idempotency",
	              REL_BUFFER, "ingest_fallback_buffer", false, false);
	expect_target("PREPARE d AS DELETE FROM ingest_idempotency WHERE site_id = $1", REL_OLD,
	              "ingest_idempotency", false, false);
	expect_target("EXPLAIN ANALYZE DELETE FROM ingest_idempotency", REL_OLD,
	              "ingest_idempotency", false, false);
	expect_target("WITH m AS (DELETE FROM ingest_idempotency RETURNING *) INSERT INTO "
	              "ingest_idempotency_archive SELECT * FROM m",
	              REL_OLD, "ingest_idempotency", false, true);
	expect_target("MERGE INTO ingest_idempotency_next n USING ingest_idempotency o ON "
	              "n.site_id = o.site_id WHEN MATCHED THEN DELETE",
	              REL_NEXT, "ingest_idempotency_next", true, false);
	expect_target("SELECT * FROM ingest_idempotency FOR UPDATE", -1, NULL, false, false);
	expect_target("INSERT INTO ingest_idempotency_archive SELECT * FROM ingest_idempotency", -1,
	              NULL, false, false);
	expect_target("DELETE FROM orders o USING ingest_idempotency i WHERE o.key = "
	              "i.idempotency_key",
	              -1, NULL, false, false);
	expect_target("COPY ingest_idempotency TO STDOUT", -1, NULL, false, false);
	expect_target("SELECT 1", -1, NULL, false, false);

	/* By hand: the first reference that is a target, whatever comes before it. */
	struct stmt_info st;
	memset(&st, 0, sizeof(st));
	assert_null(rules_write_target(&st));
	st.nrefs = 3;
	st.refs[0] = (struct rel_ref){.role = REL_NEXT};
	st.refs[1] = (struct rel_ref){.role = REL_BUFFER, .is_target = true};
	st.refs[2] = (struct rel_ref){.role = REL_OLD, .is_target = true};
	assert_ptr_equal(rules_write_target(&st), &st.refs[1]);
	st.refs[1].is_target = false;
	assert_ptr_equal(rules_write_target(&st), &st.refs[2]);
	st.nrefs = 2; /* refs past nrefs are not looked at */
	assert_null(rules_write_target(&st));
}

/* ---- rules_unservable ---- */

static void test_unservable(void **state)
{
	(void)state;
	/* Every phase is served, with and without DEGRADED; SET PHASE's move rules stay. */
	for (int p = 0; p < PHASE__COUNT; p++)
		for (int deg = 0; deg <= 1; deg++)
			if (rules_unservable((enum phase)p, deg))
				fail_msg("%s%s: unservable (%s), expected servable",
				         phase_name((enum phase)p), deg ? " DEGRADED" : "",
				         rules_unservable((enum phase)p, deg));
	assert_non_null(rules_unservable(PHASE__COUNT, false));
}

/* ---- main ---- */

static const struct CMUnitTest fixed_tests[] = {
    cmocka_unit_test(test_corpus_covered),
    cmocka_unit_test(test_write_target),
    cmocka_unit_test(test_unservable),
};

int main(void)
{
	size_t nfixed = sizeof(fixed_tests) / sizeof(fixed_tests[0]);
	struct CMUnitTest *tests;
	int failed;

	if (!parser_tables_init(&tables, "public.ingest_idempotency",
	                        "public.ingest_idempotency_next", "public.ingest_fallback_buffer"))
		return 1;
	decisions_load();
	corpus = records_load(CORPUS, &ncorpus, NULL, NULL);
	tests = xrealloc(NULL, (nfiles + nfixed) * sizeof(*tests));
	for (size_t i = 0; i < nfiles; i++)
		tests[i] = (struct CMUnitTest){.name = files[i].path,
		                               .test_func = test_decision_file,
		                               .initial_state = &files[i]};
	memcpy(tests + nfiles, fixed_tests, sizeof(fixed_tests));
	failed = _cmocka_run_group_tests("rules", tests, nfiles + nfixed, NULL, NULL);
	decisions_free();
	records_free(corpus, ncorpus);
	free(tests);
	pg_query_exit();
	return failed;
}
