#include "proxy/engine.h"

#include <ctype.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "parser/parser.h"
#include "parser/scan.h"
#include "proxy/binfmt.h"
#include "proxy/control.h"
#include "proxy/log.h"
#include "proxy/mbuf.h"
#include "proxy/pgshunt.h"
#include "proxy/proto.h"
#include "proxy/session.h"
#include "rules/rules.h"

/* FIFO tags of requests the engine injects. */
enum {
	TAG_CLIENT = 0,
	TAG_SILENT = 1, /* answers and errors swallowed (the refusal's raise) */
	TAG_REPORT = 2, /* answers swallowed, an error goes to the client (re-prepare) */
};

/* A named (or the unnamed) statement whose text touches a configured table. */
struct pstmt {
	char *name;
	char *query;       /* as the client sent it */
	uint8_t *tail;     /* the Parse message after the query: parameter types */
	uint32_t tail_len;
	uint64_t epoch;    /* the phase epoch its server-side version was made for */
	uint8_t xform;
	uint8_t kind;      /* enum stmt_kind, for the duration metrics */
	bool upsert_args;  /* a claim's DO UPDATE clause uses $n: its portals carry them */
};

struct portal {
	char *name;
	uint8_t xform;
	uint8_t kind;      /* 1 + enum stmt_kind of its statement, 0 = not ours */
	char *args;        /* the values of the $n a claim's DO UPDATE clause uses, set for
			      pgshunt.upsert_clause() before each Execute (NULL: none) */
};

/* An SQL-level PREPARE of a touching statement. */
struct sqlprep {
	char *name;
	char *text;     /* the whole PREPARE statement as the client wrote it */
	char *marker;   /* an ON CONFLICT DO UPDATE's clause as a comment (upsert_marker(),
			   conflict_marker()), added to each EXECUTE: the view reads it
			   from the query being run; NULL for other statements */
	uint64_t epoch;
	uint8_t xform;  /* for its EXECUTEs */
};

struct engine {
	struct pstmt *stmts;
	size_t nstmts;
	struct portal *portals;
	size_t nportals;
	struct sqlprep *preps;
	size_t npreps;
	bool local_ignore;  /* a refused extended request: the rest up to Sync is dropped */
	char *refusal_sql;  /* run before that Sync, so the server's transaction fails too */
};

/* Per-statement transforms of one Query, in the server's order (entry->ctx). */
struct query_xforms {
	uint32_t n;
	uint8_t xf[];
};

/* ---- small helpers ---- */

static struct engine *engine_get(struct session *s)
{
	if (!s->eng)
		s->eng = calloc(1, sizeof(*s->eng));
	return s->eng;
}

static bool oom(struct session *s)
{
	session_fatal(s, "53200", "out of memory");
	return false;
}

/* Queue a client request to the server with its FIFO entry. */
static bool send_request(struct session *s, char type, const uint8_t *msg, uint32_t total,
			 enum resp_action action, uint32_t tag, uint8_t xform, void *ctx)
{
	enum req_kind kind;
	if (respq_kind_for(type, &kind)) {
		if (respq_empty(&s->respq))
			s->busy_since_us = now_us();
		if (!respq_push(&s->respq, kind, action, tag)) {
			free(ctx);
			return oom(s);
		}
		struct respq_entry *e = respq_last(&s->respq);
		if (e) {
			e->xform = xform;
			e->ctx = ctx;
		} else {
			free(ctx); /* the server will not answer it: it skips to Sync */
		}
		if (action == RESP_FORWARD && (type == 'Q' || type == 'E')) {
			s->queries++;
			stats_here->queries_total++;
		}
	} else {
		free(ctx);
	}
	return session_queue_server(s, msg, total);
}

static bool send_built(struct session *s, struct pktbuf *b, enum resp_action action,
		       uint32_t tag, uint8_t xform, void *ctx)
{
	if (!pktbuf_ok(b)) {
		free(ctx);
		pktbuf_free(b);
		return oom(s);
	}
	bool ok = send_request(s, (char)b->data[0], b->data, (uint32_t)b->len, action, tag, xform,
			       ctx);
	pktbuf_free(b);
	return ok;
}

/* word (lower case, ASCII) anywhere in text, in any case; memchr finds its first byte. */
static bool contains_ci(const char *text, size_t len, const char *word)
{
	size_t wl = strlen(word);
	const char *end = text + len;
	for (int c = 0; c < 2; c++) {
		char first = c ? (char)toupper((unsigned char)word[0]) : word[0];
		for (const char *p = text; end - p >= (ptrdiff_t)wl &&
					   (p = memchr(p, first, (size_t)(end - p) - wl + 1));
		     p++)
			if (strncasecmp(p + 1, word + 1, wl - 1) == 0)
				return true;
	}
	return false;
}

static const struct parse_result *parse_text(struct session *s, const char *text, size_t len)
{
	return parser_cache_get(parse_cache_here, &shunt.tables, s->pin.epoch, text, len,
				shunt.cfg.key_columns, shunt.cfg.partition_column);
}

const uint64_t stats_duration_bounds_us[STATS_DURATION_BUCKETS] = {
	500, 1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000, 500000, 1000000, 5000000,
};

/*
 * Whether a Query's text starts with INSERT (after blanks and comments): in
 * passthrough a statement on the table is forwarded unparsed, yet its latency feeds
 * the p99 that SHOW THRESHOLDS and auto-DEGRADED watch, which matter most before any
 * migration.  A WITH ... INSERT is not seen here; the extended protocol's statements
 * are parsed (and so timed) in every phase.
 */
static bool starts_with_insert(const char *text, size_t len)
{
	size_t i = 0;
	for (;;) {
		while (i < len && isspace((unsigned char)text[i]))
			i++;
		if (i + 1 < len && text[i] == '-' && text[i + 1] == '-') {
			while (i < len && text[i] != '\n')
				i++;
		} else if (i + 1 < len && text[i] == '/' && text[i + 1] == '*') {
			/* Comments do not nest here: a nested one only hides an INSERT. */
			const char *end = memmem(text + i + 2, len - i - 2, "*/", 2);
			if (!end)
				return false;
			i = (size_t)(end - text) + 2;
		} else {
			break;
		}
	}
	static const char word[] = "insert";
	if (len - i < sizeof(word) - 1 || strncasecmp(text + i, word, sizeof(word) - 1) != 0)
		return false;
	i += sizeof(word) - 1;
	return i == len || !(isalnum((unsigned char)text[i]) || text[i] == '_' || text[i] == '$');
}

/* Start timing the request just queued (it is the FIFO's newest entry). */
static void time_last(struct session *s, enum stmt_kind kind)
{
	struct respq_entry *e = respq_last(&s->respq);
	if (e && kind < STMT__COUNT) {
		e->timed = (uint8_t)(kind + 1);
		e->started_us = now_us();
	}
}

static void observe(const struct respq_entry *e)
{
	enum stmt_kind kind = (enum stmt_kind)(e->timed - 1);
	uint64_t us = now_us() - e->started_us;
	unsigned b = 0;
	while (b < STATS_DURATION_BUCKETS && us > stats_duration_bounds_us[b])
		b++;
	stats_here->duration_count[kind][b]++;
	stats_here->duration_sum_us[kind] += us;
}

/* The engine's decisions, for /metrics. */
static void count_decision(struct session *s, const struct stmt_info *st,
			   const struct rule_decision *d)
{
	struct stats *stats = stats_here;
	if (st->kind < STMT__COUNT && d->action < RULE__COUNT)
		stats->statements[st->kind][d->action][s->pin.phase]++;
	if (d->action != RULE_REFUSE || !d->reason)
		return;
	for (unsigned i = 0; i < stats->nrefusals; i++) {
		if (stats->refusals[i].reason == d->reason) {
			stats->refusals[i].count++;
			return;
		}
	}
	if (stats->nrefusals < sizeof(stats->refusals) / sizeof(stats->refusals[0])) {
		stats->refusals[stats->nrefusals].reason = d->reason;
		stats->refusals[stats->nrefusals++].count = 1;
	}
}

/* ---- building rewritten text ---- */

struct edit {
	uint32_t pos;  /* where, in the original text */
	uint32_t del;  /* bytes replaced */
	char *ins;     /* owned */
};

struct edits {
	struct edit e[PARSER_MAX_STMTS * 2 + 4 + PARSER_MAX_SYSREFS];
	uint32_t n;
};

static bool edit_add(struct edits *ed, uint32_t pos, uint32_t del, char *ins)
{
	if (!ins || ed->n >= sizeof(ed->e) / sizeof(ed->e[0])) {
		free(ins);
		return false;
	}
	ed->e[ed->n++] = (struct edit){pos, del, ins};
	return true;
}

static void edits_free(struct edits *ed)
{
	for (uint32_t i = 0; i < ed->n; i++)
		free(ed->e[i].ins);
	ed->n = 0;
}

static int edit_cmp(const void *a, const void *b)
{
	const struct edit *x = a, *y = b;
	return x->pos < y->pos ? -1 : x->pos > y->pos;
}

/* The text with the edits applied, NUL-terminated, into b (whose length grows). */
static void edits_apply(struct edits *ed, const char *text, size_t len, struct pktbuf *b)
{
	uint32_t at = 0;
	qsort(ed->e, ed->n, sizeof(ed->e[0]), edit_cmp);
	for (uint32_t i = 0; i < ed->n; i++) {
		/* Edits never overlap by construction; if two ever did, fail the text. */
		if (ed->e[i].pos < at || ed->e[i].pos + ed->e[i].del > len) {
			b->failed = true;
			return;
		}
		pktbuf_put_bytes(b, text + at, ed->e[i].pos - at);
		pktbuf_put_bytes(b, ed->e[i].ins, strlen(ed->e[i].ins));
		at = ed->e[i].pos + ed->e[i].del;
	}
	pktbuf_put_bytes(b, text + at, len - at);
	pktbuf_put_byte(b, 0);
}

/* The name RETURNING uses for the target row: its alias, or its last name part. */
static bool target_row_name(const char *text, size_t len, const struct rel_ref *ref, char *out,
			    size_t outlen)
{
	struct scan_tok tok = {0}, last = {0};
	size_t pos = ref->start;
	while (pos < ref->start + ref->len) {
		scan_next(text, ref->start + ref->len, &pos, &tok);
		if (tok.kind == TOK_WORD || tok.kind == TOK_QIDENT)
			last = tok;
		if (tok.kind == TOK_END)
			break;
	}
	if (ref->has_alias) {
		pos = ref->start + ref->len;
		scan_next(text, len, &pos, &tok);
		if (scan_tok_is(text, &tok, "as"))
			scan_next(text, len, &pos, &tok);
		last = tok;
	}
	if ((last.kind != TOK_WORD && last.kind != TOK_QIDENT) || last.end - last.start >= outlen)
		return false;
	memcpy(out, text + last.start, last.end - last.start);
	out[last.end - last.start] = '\0';
	return true;
}

/* RETURNING gets the mirror call: after the client's list, or as a list of its own. */
static bool mirror_edit(struct edits *ed, const char *text, size_t len, const struct stmt_info *st,
			const char *fn, uint8_t *xform)
{
	char row[160], buf[256];
	const struct rel_ref *target = rules_write_target(st);
	if (!target || !target_row_name(text, len, target, row, sizeof(row)))
		return false;
	if (st->has_returning) {
		snprintf(buf, sizeof(buf), ", %s(%s)", fn, row);
		*xform = XF_DROP_LAST;
		return edit_add(ed, st->returning_start + st->returning_len, 0, strdup(buf));
	}
	snprintf(buf, sizeof(buf), " RETURNING %s(%s)", fn, row);
	*xform = XF_DROP_ROWS;
	return edit_add(ed, st->start + st->len, 0, strdup(buf));
}

/*
 * FOR UPDATE/SHARE OF names FROM items, not tables: the renamed FROM item keeps the
 * table's name as its alias, so the name in the OF list stays as it is.
 */
static bool in_lock_clause(const char *text, const struct stmt_info *st, const struct rel_ref *ref)
{
	struct scan_tok tok, prev = {0};
	size_t pos = st->start, end = st->start + st->len;
	bool in_list = false;
	while (pos < end) {
		scan_next(text, end, &pos, &tok);
		if (tok.kind == TOK_END || tok.start >= ref->start)
			return in_list && tok.start == ref->start;
		if (scan_tok_is(text, &tok, "of") &&
		    (scan_tok_is(text, &prev, "update") || scan_tok_is(text, &prev, "share")))
			in_list = true;
		else if (in_list && tok.kind != TOK_WORD && tok.kind != TOK_QIDENT &&
			 !(tok.kind == TOK_CHAR && (text[tok.start] == ',' || text[tok.start] == '.')))
			in_list = false;
		prev = tok;
	}
	return false;
}

/*
 * `TABLE name` takes no alias after the name: there the mention is renamed without one
 * (such a statement cannot qualify columns with it anyway).  The ONLY of `TABLE ONLY
 * name`, dropped by the rename, sits between the two.
 */
static bool alias_not_allowed(const char *text, const struct stmt_info *st,
			      const struct rel_ref *ref)
{
	struct scan_tok tok, prev = {0};
	size_t pos = st->start, at = ref->only ? ref->only_start : ref->start;
	while (pos < at) {
		scan_next(text, at, &pos, &tok);
		if (tok.kind == TOK_END)
			break;
		prev = tok;
	}
	return scan_tok_is(text, &prev, "table");
}

/*
 * COPY name [(columns)] TO: PostgreSQL copies no partitioned table that way (42809), so
 * the name and its column list become the query (SELECT columns FROM rel AS name); the
 * options after TO are the same for both forms.
 */
static bool copy_edit(struct edits *ed, const char *text, size_t len, const struct stmt_info *st,
		      const struct rel_ref *ref, const char *rel, int rel_len)
{
	char row[160];
	if (!target_row_name(text, len, ref, row, sizeof(row)) || st->copy_rel_end < ref->start)
		return false;
	int cols = st->copy_cols_len ? (int)st->copy_cols_len : 1;
	const char *list = st->copy_cols_len ? text + st->copy_cols_start : "*";
	size_t n = (size_t)rel_len + strlen(row) + (size_t)cols + 32;
	char *buf = malloc(n);
	if (buf)
		snprintf(buf, n, "(SELECT %.*s FROM %.*s AS %s)", cols, list, rel_len, rel, row);
	return edit_add(ed, ref->start, st->copy_rel_end - ref->start, buf);
}

/* ONLY name, ONLY (name): the word and the brackets go, the name stays. */
static bool drop_only(struct edits *ed, const struct rel_ref *ref)
{
	if (!ref->only)
		return true;
	if (!edit_add(ed, ref->only_start, ref->start - ref->only_start, strdup("")))
		return false;
	return !ref->only_close || edit_add(ed, ref->only_close, 1, strdup(""));
}

/*
 * finalized: the table's name is the partitioned table's now.  ONLY, which changed
 * nothing on the heap table, would read or write the partitioned table's empty parent
 * alone, and COPY name TO refuses a partitioned table: ONLY is dropped, and COPY name TO
 * becomes COPY (SELECT ... FROM name) TO, the name as written.
 */
static bool whole_edits(struct edits *ed, const char *text, size_t len,
			const struct stmt_info *st, const struct rel_ref *skip)
{
	for (uint32_t i = 0; i < st->nrefs; i++) {
		const struct rel_ref *ref = &st->refs[i];
		if (ref->role != REL_OLD || ref == skip || in_lock_clause(text, st, ref))
			continue;
		if (st->kind == STMT_COPY_TO && st->copy_relation) {
			if (!copy_edit(ed, text, len, st, ref, text + ref->start, (int)ref->len))
				return false;
		} else if (!drop_only(ed, ref)) {
			return false;
		}
	}
	return true;
}

/*
 * A read in read_next: each mention of the table names next_table instead, keeping
 * the name it was written with as the alias, so qualified column references resolve.
 * ONLY is dropped: the table has no children, so it changed nothing there, but on the
 * partitioned next_table it would read (or write) the empty parent alone.  A name
 * qualified with a database stays as written: PostgreSQL refuses it (cross-database
 * reference) or, naming the current database, reads the table, kept in step in these
 * phases; writes through such a name are refused by rules_decide().
 */
static bool rename_edits(struct edits *ed, const char *text, size_t len,
			 const struct stmt_info *st, const struct rel_ref *skip)
{
	char row[160], buf[400];
	for (uint32_t i = 0; i < st->nrefs; i++) {
		const struct rel_ref *ref = &st->refs[i];
		if (ref->role != REL_OLD || ref == skip || ref->has_catalog ||
		    in_lock_clause(text, st, ref))
			continue;
		if (st->kind == STMT_COPY_TO && st->copy_relation) {
			if (!copy_edit(ed, text, len, st, ref, shunt.cfg.next_table,
				       (int)strlen(shunt.cfg.next_table)))
				return false;
			continue;
		}
		if (ref->has_alias || alias_not_allowed(text, st, ref))
			snprintf(buf, sizeof(buf), "%s", shunt.cfg.next_table);
		else if (target_row_name(text, len, ref, row, sizeof(row)))
			snprintf(buf, sizeof(buf), "%s AS %s", shunt.cfg.next_table, row);
		else
			return false;
		if (!drop_only(ed, ref) || !edit_add(ed, ref->start, ref->len, strdup(buf)))
			return false;
		/* `name *` (descendants too, the default) would put the star after the alias. */
		if (ref->star && !edit_add(ed, ref->star, 1, strdup("")))
			return false;
	}
	return true;
}

/* pgshunt."<table>_<view>", the view a claim or buffered INSERT is pointed at. */
static bool view_name(char *out, size_t n, const char *view)
{
	char rel[160];
	size_t o = 0;
	snprintf(rel, sizeof(rel), "%s_%s", shunt.tables.rel[REL_OLD].name, view);
	o = (size_t)snprintf(out, n, "pgshunt.\"");
	for (const char *c = rel; *c && o + 3 < n; c++) {
		if (*c == '"')
			out[o++] = '"';
		out[o++] = *c;
	}
	if (o + 2 > n)
		return false;
	out[o++] = '"';
	out[o] = '\0';
	return true;
}

/* The span of ON CONFLICT ... DO UPDATE's SET list and of its WHERE (0/0: none). */
struct upsert_parts {
	size_t set_start, set_end;
	size_t where_start, where_end;
};

static bool upsert_parts(const char *text, const struct stmt_info *st, struct upsert_parts *u)
{
	size_t pos = st->conflict_start, end = (size_t)st->conflict_start + st->conflict_len;
	struct scan_tok tok, prev = {0}, prev2 = {0};
	int depth = 0;
	bool in_set = false;
	memset(u, 0, sizeof(*u));
	while (pos < end) {
		scan_next(text, end, &pos, &tok);
		if (tok.kind == TOK_END)
			break;
		if (!in_set) {
			if (scan_tok_is(text, &tok, "set") && scan_tok_is(text, &prev, "update") &&
			    scan_tok_is(text, &prev2, "do")) {
				in_set = true;
				u->set_start = tok.end;
			}
			prev2 = prev;
			prev = tok;
			continue;
		}
		if (tok.kind == TOK_CHAR && (text[tok.start] == '(' || text[tok.start] == '['))
			depth++;
		else if (tok.kind == TOK_CHAR && (text[tok.start] == ')' || text[tok.start] == ']'))
			depth--;
		else if (depth == 0 && scan_tok_is(text, &tok, "where")) {
			u->set_end = tok.start;
			u->where_start = tok.end;
			u->where_end = end;
			return true;
		}
	}
	u->set_end = end;
	return in_set;
}

/* Whether an ON CONFLICT clause uses the statement's parameters ($n). */
static bool clause_has_params(const char *text, const struct stmt_info *st)
{
	struct scan_tok tok;
	size_t end = (size_t)st->conflict_start + st->conflict_len;
	for (size_t pos = st->conflict_start; pos < end;) {
		scan_next(text, end, &pos, &tok);
		if (tok.kind == TOK_END)
			return false;
		if (tok.kind == TOK_PARAM)
			return true;
	}
	return false;
}

/* Why an ON CONFLICT DO UPDATE cannot go through the claim view; NULL when it can. */
static const char *upsert_refusal(const char *text, const struct stmt_info *st, bool to_next)
{
	struct upsert_parts u;
	struct scan_tok tok;
	if (!upsert_parts(text, st, &u))
		return "pgshunt could not find the SET list of ON CONFLICT DO UPDATE";
	/* The clause travels as it is written: a read of the table in it would not be
	 * pointed at next. */
	for (uint32_t i = 0; to_next && i < st->nrefs; i++)
		if (st->refs[i].role == REL_OLD && st->refs[i].start >= st->conflict_start &&
		    st->refs[i].start < st->conflict_start + st->conflict_len)
			return "ON CONFLICT DO UPDATE that reads the table in its SET list or WHERE "
			       "cannot go through the claim view in cutover";
	(void)tok;
	/* An EXECUTE's values are SQL expressions pgshunt does not evaluate. */
	if (st->kind == STMT_PREPARE && clause_has_params(text, st))
		return "a SQL-level PREPARE of INSERT ... ON CONFLICT DO UPDATE with parameters in its "
		       "SET list or WHERE cannot go through the claim view (prepare it with the "
		       "protocol)";
	/* The clause's $n travel as chr(30) n chr(30) (put_with_excluded()). */
	if (memchr(text + st->conflict_start, 0x1e, st->conflict_len))
		return "ON CONFLICT DO UPDATE with a control character 0x1E in its clause cannot go "
		       "through the claim view";
	return NULL;
}

/*
 * DEGRADED: the drain replays the clause as written after its own INSERT into the
 * table, so it must not name an alias or a parameter the drain does not have.
 */
static const char *buffer_upsert_refusal(const char *text, const struct stmt_info *st)
{
	struct scan_tok tok;
	const struct rel_ref *target = rules_write_target(st);
	if (target && target->has_alias)
		return "INSERT ... AS alias ... ON CONFLICT DO UPDATE cannot be buffered (the "
		       "drain replays the clause on the table's own name)";
	for (size_t pos = st->conflict_start; pos < st->conflict_start + st->conflict_len;) {
		scan_next(text, st->conflict_start + st->conflict_len, &pos, &tok);
		if (tok.kind == TOK_END)
			break;
		if (tok.kind == TOK_PARAM)
			return "ON CONFLICT DO UPDATE with parameters in its clause cannot be "
			       "buffered (use EXCLUDED.column)";
	}
	return NULL;
}

/*
 * The text of [start, end) with every EXCLUDED.col as ($1).col, the trigger's NEW, and
 * every $n as chr(30) n chr(30), the value pgshunt.upsert_clause() puts there.
 */
static void put_with_excluded(struct pktbuf *b, const char *text, size_t start, size_t end)
{
	struct scan_tok tok, prev = {0}, next;
	size_t pos = start, at = start;
	while (pos < end) {
		scan_next(text, end, &pos, &tok);
		if (tok.kind == TOK_END)
			break;
		size_t peek = pos;
		scan_next(text, end, &peek, &next);
		bool word = scan_tok_is(text, &tok, "excluded") ||
			    (tok.kind == TOK_QIDENT && tok.end - tok.start == 10 &&
			     memcmp(text + tok.start, "\"excluded\"", 10) == 0);
		bool after_dot = prev.kind == TOK_CHAR && text[prev.start] == '.';
		if (word && !after_dot && next.kind == TOK_CHAR && text[next.start] == '.') {
			pktbuf_put_bytes(b, text + at, tok.start - at);
			pktbuf_put_bytes(b, "($1)", 4);
			at = tok.end;
		} else if (tok.kind == TOK_PARAM) {
			/* pgshunt.upsert_clause() puts the value the client bound there. */
			pktbuf_put_bytes(b, text + at, tok.start - at);
			pktbuf_put_byte(b, 0x1e);
			pktbuf_put_bytes(b, text + tok.start + 1, tok.end - tok.start - 1);
			pktbuf_put_byte(b, 0x1e);
			at = tok.end;
		}
		prev = tok;
	}
	pktbuf_put_bytes(b, text + at, end - at);
}

/*
 * ON CONFLICT DO UPDATE through the claim view: the clause is replaced by a comment
 * carrying the alias, the SET list and the WHERE (joined by chr(31), hex), which the
 * claim's trigger reads back with pgshunt.upsert_clause().
 */
static char *marker_of(const char *kind, struct pktbuf *b)
{
	static const char hex[] = "0123456789abcdef";
	struct pktbuf out;
	char *marker = NULL;
	pktbuf_init(&out);
	pktbuf_put_bytes(&out, " /*pgshunt:", 11);
	pktbuf_put_bytes(&out, kind, strlen(kind));
	pktbuf_put_byte(&out, ':');
	for (size_t i = 0; pktbuf_ok(b) && i < b->len; i++) {
		pktbuf_put_byte(&out, (uint8_t)hex[b->data[i] >> 4]);
		pktbuf_put_byte(&out, (uint8_t)hex[b->data[i] & 15]);
	}
	pktbuf_put_bytes(&out, "*/ ", 4); /* with the NUL */
	if (pktbuf_ok(b) && pktbuf_ok(&out))
		marker = strdup((char *)out.data);
	pktbuf_free(b);
	pktbuf_free(&out);
	return marker;
}

/* DEGRADED: the clause as written, for the buffer's pgshunt_conflict_clause. */
static char *conflict_marker(const char *text, const struct stmt_info *st)
{
	struct pktbuf b;
	pktbuf_init(&b);
	pktbuf_put_bytes(&b, text + st->conflict_start, st->conflict_len);
	return marker_of("conflict", &b);
}

static char *upsert_marker(const char *text, const struct stmt_info *st, const char *row)
{
	struct upsert_parts u;
	struct pktbuf b;
	if (!upsert_parts(text, st, &u))
		return NULL;
	pktbuf_init(&b);
	pktbuf_put_bytes(&b, row, strlen(row));
	pktbuf_put_byte(&b, 31);
	put_with_excluded(&b, text, u.set_start, u.set_end);
	pktbuf_put_byte(&b, 31);
	if (u.where_end > u.where_start)
		put_with_excluded(&b, text, u.where_start, u.where_end);
	else
		pktbuf_put_bytes(&b, "true", 4);
	return marker_of("upsert", &b);
}

/*
 * A DO UPDATE clause with $n: the clause leaves the statement for a comment, and a
 * parameter it alone used would lose the type PostgreSQL infers for it from there (or
 * be unknown, failing the Parse).  A data-modifying CTE that updates no row (WHERE
 * false: no scan at all) keeps the SET list and WHERE, as written, where they give
 * their parameters the same types (ParameterDescription included).
 */
static bool typing_cte_edit(struct edits *ed, const char *text, const struct stmt_info *st,
			    const char *row, bool final)
{
	struct upsert_parts u;
	struct scan_tok tok;
	struct pktbuf b;
	size_t pos = st->start, at;
	const char *rel = final ? shunt.cfg.table : shunt.cfg.next_table;
	if (!upsert_parts(text, st, &u))
		return false;
	scan_next(text, (size_t)st->start + st->len, &pos, &tok);
	bool with = scan_tok_is(text, &tok, "with");
	at = with ? tok.end : st->start;
	if (with) {
		size_t peek = pos;
		scan_next(text, (size_t)st->start + st->len, &peek, &tok);
		if (scan_tok_is(text, &tok, "recursive"))
			at = tok.end;
	}
	char head[600], from[300];
	int hn = snprintf(head, sizeof(head), "%s pgshunt_types AS (UPDATE %s AS %s SET ",
			  with ? "" : "WITH", rel, row);
	int fn = snprintf(from, sizeof(from), " FROM %s AS excluded WHERE false", rel);
	if (hn < 0 || (size_t)hn >= sizeof(head) || fn < 0 || (size_t)fn >= sizeof(from))
		return false;
	pktbuf_init(&b);
	pktbuf_put_bytes(&b, head, (size_t)hn);
	pktbuf_put_bytes(&b, text + u.set_start, u.set_end - u.set_start);
	pktbuf_put_bytes(&b, from, (size_t)fn);
	if (u.where_end > u.where_start) {
		pktbuf_put_bytes(&b, " AND (", 6);
		pktbuf_put_bytes(&b, text + u.where_start, u.where_end - u.where_start);
		pktbuf_put_byte(&b, ')');
	}
	pktbuf_put_bytes(&b, with ? "), " : ") ", with ? 3 : 2);
	char *ins = pktbuf_ok(&b) ? strndup((char *)b.data, b.len) : NULL;
	pktbuf_free(&b);
	return edit_add(ed, (uint32_t)at, 0, ins);
}

/*
 * An INSERT into the table goes into a view instead (the claim's or the buffer's),
 * aliased with the name the client wrote so RETURNING's references still resolve;
 * its ON CONFLICT clause is cut (the view's trigger or rule does what it asked for; DO
 * UPDATE's SET list travels in a comment, upsert_marker()).  Other mentions of the
 * table read next when the phase does.  RETURNING's xmax, a system column the view
 * lacks, becomes pgshunt.xmax(): what the claim trigger recorded for the row (0
 * inserted, the updating transaction's id), or 0 for a buffered row, reported as
 * inserted; named like the function, its column keeps the name "xmax" and type xid
 * (rules_decide() refuses the other system columns).
 */
static bool view_edits(struct edits *ed, const char *text, size_t len, const struct stmt_info *st,
		       const struct rule_decision *d)
{
	char row[160], name[200], buf[400];
	const struct rel_ref *target = rules_write_target(st);
	if (!target || !view_name(name, sizeof(name), d->view) ||
	    !target_row_name(text, len, target, row, sizeof(row)))
		return false;
	if (target->has_alias)
		snprintf(buf, sizeof(buf), "%s", name);
	else
		snprintf(buf, sizeof(buf), "%s AS %s", name, row);
	if (!edit_add(ed, target->start, target->len, strdup(buf)))
		return false;
	if (st->conflict == CONFLICT_UPDATE &&
	    !edit_add(ed, st->conflict_start, st->conflict_len,
		      d->action == RULE_BUFFER ? conflict_marker(text, st)
					       : upsert_marker(text, st, row)))
		return false;
	if (st->conflict == CONFLICT_UPDATE && d->action == RULE_CLAIM &&
	    clause_has_params(text, st) && !typing_cte_edit(ed, text, st, row, !d->to_next))
		return false;
	if (st->conflict == CONFLICT_NOTHING &&
	    !edit_add(ed, st->conflict_start, st->conflict_len, strdup("")))
		return false;
	for (uint32_t i = 0; i < st->nsysrefs && i < PARSER_MAX_SYSREFS; i++)
		if (st->sysrefs[i].column == SYSCOL_XMAX &&
		    !edit_add(ed, st->sysrefs[i].start, st->sysrefs[i].len,
			      strdup(d->action == RULE_CLAIM ? "pgshunt.xmax(true)"
							     : "pgshunt.xmax(false)")))
			return false;
	return !d->to_next || rename_edits(ed, text, len, st, target);
}

/*
 * Where the table's mentions become another relation (next_table, a view) aliased with
 * the table's name, schema.table.column no longer resolves: the schema goes, table.column
 * names the alias.  With an alias of the client's own, PostgreSQL refuses such a
 * reference on the table too, and it is left for the server to refuse the same way.
 */
static bool qualcol_edits(struct edits *ed, const struct stmt_info *st)
{
	if (st->nqualcols > PARSER_MAX_QUALCOLS)
		return false;
	for (uint32_t i = 0; i < st->nrefs; i++)
		if (st->refs[i].role == REL_OLD && st->refs[i].has_alias)
			return true;
	for (uint32_t i = 0; i < st->nqualcols; i++)
		if (!edit_add(ed, st->qualcols[i].start, st->qualcols[i].len, strdup("")))
			return false;
	return true;
}

/*
 * The comment a SQL-level PREPARE's ON CONFLICT DO UPDATE becomes, for its EXECUTEs:
 * the view reads the clause from the query being run, which is the EXECUTE.  NULL for
 * other statements (and when out of memory: the EXECUTE then fails in the view).
 */
static char *view_marker(const char *text, size_t len, const struct stmt_info *st,
			 const struct rule_decision *d)
{
	char row[160];
	const struct rel_ref *target = rules_write_target(st);
	if ((d->action != RULE_CLAIM && d->action != RULE_BUFFER) || st->conflict != CONFLICT_UPDATE ||
	    !target || !target_row_name(text, len, target, row, sizeof(row)))
		return NULL;
	return d->action == RULE_BUFFER ? conflict_marker(text, st) : upsert_marker(text, st, row);
}

/* The edits a decision makes to one statement, and the transform of its answers. */
static bool decision_edits(struct edits *ed, const char *text, size_t len,
			   const struct stmt_info *st, const struct rule_decision *d, uint8_t *xf)
{
	/* A claim's or buffer's target becomes the view: its name is edited there. */
	bool view = d->action == RULE_CLAIM || d->action == RULE_BUFFER;
	if (d->whole && !whole_edits(ed, text, len, st, view ? rules_write_target(st) : NULL))
		return false;
	if ((view || d->to_next || d->action == RULE_RENAME) && !qualcol_edits(ed, st))
		return false;
	switch (d->action) {
	case RULE_MIRROR:
		if (d->to_next && !rename_edits(ed, text, len, st, NULL))
			return false;
		if (!mirror_edit(ed, text, len, st, d->mirror_fn, xf))
			return false;
		if (d->to_next && *xf == XF_DROP_LAST)
			*xf = XF_DROP_LAST_MAP;
		return true;
	case RULE_RENAME:
		*xf = XF_MAP_OIDS;
		return rename_edits(ed, text, len, st, NULL);
	case RULE_CLAIM:
	case RULE_BUFFER:
		/* A buffered INSERT runs no trigger: only its RowDescription needs mapping. */
		if (d->action == RULE_CLAIM || st->has_returning)
			*xf = XF_VIEW;
		return view_edits(ed, text, len, st, d);
	default:
		return true;
	}
}

/* A statement that fails with 0A000 and pgshunt's reason, in place of a refused one. */
static char *refusal_statement(enum phase phase, const char *reason)
{
	char msg[512], quoted[1100], *q = quoted;
	snprintf(msg, sizeof(msg), "pgshunt refuses this statement on %s in phase %s: %s",
		 shunt.cfg.table, phase_name(phase), reason);
	for (const char *p = msg; *p && q < quoted + sizeof(quoted) - 3; p++) {
		if (*p == '\'')
			*q++ = '\'';
		if (*p != '$')
			*q++ = *p;
	}
	*q = '\0';
	size_t n = strlen(quoted) + 128;
	char *sql = malloc(n);
	if (sql)
		snprintf(sql, n,
			 "DO $pgshunt$BEGIN RAISE EXCEPTION USING ERRCODE = 'feature_not_supported', "
			 "MESSAGE = '%s'; END$pgshunt$",
			 quoted);
	return sql;
}

/* ---- SQL-level PREPARE / EXECUTE / DEALLOCATE ---- */

static struct sqlprep *prep_find(struct engine *e, const char *name)
{
	for (size_t i = 0; e && i < e->npreps; i++)
		if (strcmp(e->preps[i].name, name) == 0)
			return &e->preps[i];
	return NULL;
}

static void prep_remove(struct engine *e, const char *name)
{
	struct sqlprep *p = prep_find(e, name);
	if (!p)
		return;
	free(p->name);
	free(p->text);
	free(p->marker);
	*p = e->preps[--e->npreps];
}

/* DEALLOCATE name, or DEALLOCATE ALL (the parser gives "" for ALL). */
static void prep_forget(struct engine *e, const char *name)
{
	if (!e)
		return;
	if (name[0]) {
		prep_remove(e, name);
		return;
	}
	while (e->npreps)
		prep_remove(e, e->preps[0].name);
}

/* marker: owned (NULL: none). */
static bool prep_record(struct session *s, const char *name, const char *text, size_t len,
			uint8_t xform, char *marker)
{
	struct engine *e = engine_get(s);
	if (!e) {
		free(marker);
		return false;
	}
	prep_remove(e, name);
	struct sqlprep *grown = realloc(e->preps, sizeof(*grown) * (e->npreps + 1));
	if (!grown) {
		free(marker);
		return false;
	}
	e->preps = grown;
	struct sqlprep *p = &e->preps[e->npreps];
	p->name = strdup(name);
	p->text = strndup(text, len);
	p->epoch = s->pin.epoch;
	p->xform = xform;
	p->marker = marker;
	if (!p->name || !p->text) {
		free(p->name);
		free(p->text);
		free(p->marker);
		return false;
	}
	e->npreps++;
	return true;
}

/* DISCARD ALL drops every prepared statement, SQL-level or protocol-level. */
static bool is_discard_all(const char *text, size_t len)
{
	struct scan_tok tok;
	size_t pos = 0;
	scan_next(text, len, &pos, &tok);
	if (!scan_tok_is(text, &tok, "discard"))
		return false;
	scan_next(text, len, &pos, &tok);
	return scan_tok_is(text, &tok, "all");
}

static void pstmt_remove(struct engine *e, const char *name);

static void forget_all_statements(struct engine *e)
{
	prep_forget(e, "");
	while (e && e->nstmts)
		pstmt_remove(e, e->stmts[0].name);
}

/* ---- the simple protocol ---- */

/*
 * A claim for ON CONFLICT DO UPDATE reads its SET list from the one marker in the
 * query being run: refused when the clause cannot be carried, or when the query string
 * already holds one.
 */
static char *view_marker(const char *text, size_t len, const struct stmt_info *st,
			 const struct rule_decision *d);

/*
 * The view reads its clause from the query string: the DO UPDATEs of one string (and
 * the EXECUTEs of SQL-level PREPAREs of one) must carry the same clause.  *first: the
 * first one's comment, owned by the caller.
 */
static void upsert_check(const char *text, size_t len, const struct stmt_info *st,
			 struct rule_decision *d, char **first)
{
	const char *why;
	if ((d->action != RULE_CLAIM && d->action != RULE_BUFFER) ||
	    st->conflict != CONFLICT_UPDATE)
		return;
	if (d->action == RULE_BUFFER)
		why = buffer_upsert_refusal(text, st);
	else
		why = upsert_refusal(text, st, d->to_next);
	if (!why) {
		char *marker = view_marker(text, len, st, d);
		if (!*first)
			*first = marker;
		else if (!marker || strcmp(marker, *first) != 0)
			why = "one INSERT ... ON CONFLICT DO UPDATE clause per query string in this phase "
			      "(the view reads its clause from the query)";
		if (marker != *first)
			free(marker);
	}
	if (why)
		*d = (struct rule_decision){.action = RULE_REFUSE, .reason = why};
}

struct query_plan {
	struct edits ed;
	uint8_t xf[PARSER_MAX_STMTS * 3];
	uint32_t nxf;
	bool any_xform;
	uint8_t timed; /* 1 + the kind of the first statement naming the table, 0 = none */
	char *upsert_marker; /* the clause of the string's ON CONFLICT DO UPDATE (upsert_check) */
};

static bool plan_stmt(struct session *s, const char *text, size_t len, const struct stmt_info *st,
		      struct query_plan *plan);

static void put_quoted_ident(struct pktbuf *b, const char *name)
{
	pktbuf_put_byte(b, '"');
	for (const char *p = name; *p; p++) {
		if (*p == '"')
			pktbuf_put_byte(b, '"');
		pktbuf_put_byte(b, (uint8_t)*p);
	}
	pktbuf_put_byte(b, '"');
}

/*
 * EXECUTE of a statement PREPAREd under an older epoch: DEALLOCATE it and PREPARE it
 * again for this one, in front of the EXECUTE, their answers swallowed.  The parse is
 * not cached: the caller still holds a cached result.
 */
static bool plan_reprepare(struct session *s, const struct stmt_info *st, const char *name,
			   const char *text, struct query_plan *plan)
{
	struct parse_result *r = parser_parse(&shunt.tables, text, strlen(text),
					      shunt.cfg.key_columns, shunt.cfg.partition_column);
	struct query_plan inner = {0};
	bool ok = r && r->status == PARSE_OK && r->nstmts == 1 &&
		  r->stmts[0].kind == STMT_PREPARE &&
		  plan_stmt(s, text, strlen(text), &r->stmts[0], &inner);
	parse_result_free(r);
	free(inner.upsert_marker);
	if (!ok || prep_find(s->eng, name) == NULL) {
		edits_free(&inner.ed);
		return false; /* refused now: the EXECUTE fails as the statement is unknown */
	}
	struct pktbuf b;
	pktbuf_init(&b);
	pktbuf_put_bytes(&b, "DEALLOCATE ", 11);
	put_quoted_ident(&b, name);
	pktbuf_put_bytes(&b, "; ", 2);
	edits_apply(&inner.ed, text, strlen(text), &b);
	edits_free(&inner.ed);
	if (pktbuf_ok(&b))
		b.data[b.len - 1] = ';'; /* the NUL edits_apply ended with */
	pktbuf_put_bytes(&b, " ", 2);
	ok = pktbuf_ok(&b) && edit_add(&plan->ed, st->start, 0, strdup((char *)b.data));
	pktbuf_free(&b);
	if (!ok)
		return false;
	plan->xf[plan->nxf++] = XF_SWALLOW; /* DEALLOCATE */
	plan->xf[plan->nxf++] = XF_SWALLOW; /* PREPARE */
	plan->any_xform = true;
	return true;
}

static bool plan_execute(struct session *s, const struct stmt_info *st, struct query_plan *plan)
{
	struct sqlprep *p = prep_find(s->eng, st->prepared_name);
	if (p && p->epoch != s->pin.epoch) {
		char *name = strdup(p->name), *text = strdup(p->text);
		bool ok = name && text && plan_reprepare(s, st, name, text, plan);
		free(name);
		free(text);
		if (!ok)
			return false;
		p = prep_find(s->eng, st->prepared_name); /* recorded anew */
	}
	if (p && p->marker) {
		/* The view reads its clause from the query string: one clause per string. */
		if (!plan->upsert_marker)
			plan->upsert_marker = strdup(p->marker);
		if (!plan->upsert_marker || strcmp(plan->upsert_marker, p->marker) != 0) {
			static const char why[] = "one INSERT ... ON CONFLICT DO UPDATE clause per query "
						  "string in this phase (the view reads its clause from "
						  "the query)";
			slog(LOG_LEVEL_WARNING, s->prefix, "refused (EXECUTE): %s", why);
			plan->xf[plan->nxf++] = XF_REFUSED;
			plan->any_xform = true;
			return edit_add(&plan->ed, st->start, st->len,
					refusal_statement(s->pin.phase, why));
		}
		if (!edit_add(&plan->ed, st->start + st->len, 0, strdup(p->marker)))
			return false;
	}
	plan->xf[plan->nxf++] = p ? p->xform : XF_NONE;
	plan->any_xform |= p && p->xform;
	return true;
}

/* Decide one statement of a Query: its edits and the transform of its answers. */
static bool plan_stmt(struct session *s, const char *text, size_t len, const struct stmt_info *st,
		      struct query_plan *plan)
{
	struct rule_decision d = rules_decide(s->pin.phase, s->pin.degraded, st);
	uint8_t xf = XF_NONE;
	upsert_check(text, len, st, &d, &plan->upsert_marker);
	if (st->touches)
		count_decision(s, st, &d);
	if (st->touches && !plan->timed)
		plan->timed = (uint8_t)(st->kind + 1);
	if (st->kind == STMT_EXECUTE)
		return plan_execute(s, st, plan);
	if (st->kind == STMT_DEALLOCATE)
		prep_forget(s->eng, st->prepared_name);
	if (st->kind == STMT_OTHER && is_discard_all(text + st->start, st->len))
		forget_all_statements(s->eng);
	if (d.action == RULE_REFUSE) {
		slog(LOG_LEVEL_WARNING, s->prefix, "refused (%s): %s", stmt_kind_name(st->kind),
		     d.reason);
		if (!edit_add(&plan->ed, st->start, st->len, refusal_statement(s->pin.phase, d.reason)))
			return false;
		xf = XF_REFUSED;
	} else if (!decision_edits(&plan->ed, text, len, st, &d, &xf)) {
		return false;
	}
	if (st->kind == STMT_PREPARE) {
		/* A name prepared again for a statement that does not touch the table is
		 * no longer ours to re-prepare. */
		prep_forget(s->eng, st->prepared_name);
		if (st->touches && d.action != RULE_REFUSE &&
		    !prep_record(s, st->prepared_name, text + st->start, st->len, xf,
				 view_marker(text, len, st, &d)))
			return false;
		if (d.action != RULE_REFUSE)
			xf = XF_NONE; /* PREPARE itself answers with its tag only */
	}
	plan->xf[plan->nxf++] = xf;
	plan->any_xform |= xf != XF_NONE;
	return true;
}

static bool refuse_query(struct session *s, const char *reason)
{
	char *sql = refusal_statement(s->pin.phase, reason);
	struct pktbuf b;
	if (!sql)
		return oom(s);
	pktbuf_init(&b);
	pktbuf_start(&b, 'Q');
	pktbuf_put_string(&b, sql);
	pktbuf_finish(&b);
	free(sql);
	slog(LOG_LEVEL_WARNING, s->prefix, "refused: %s", reason);
	return send_built(s, &b, RESP_FORWARD, TAG_CLIENT, XF_REFUSED, NULL);
}

static bool on_query(struct session *s, const uint8_t *msg, uint32_t total)
{
	const char *text = (const char *)msg + 5;
	/* memchr, not strnlen: libpg_query exports a strnlen of its own, a byte loop. */
	const char *nul = memchr(text, 0, total - 5);
	size_t len = nul ? (size_t)(nul - text) : total - 5;
	if (len == total - 5) {
		session_fatal(s, "08P01", "invalid Query message: no terminator");
		return false;
	}
	bool passthrough = s->pin.phase == PHASE_PASSTHROUGH && !s->pin.degraded;
	/* With SQL-level statements of ours alive, their EXECUTE, DEALLOCATE and PREPARE
	 * matter even where the table is not named. */
	bool tracked = s->eng && (s->eng->npreps || s->eng->nstmts);
	bool execs = tracked && (contains_ci(text, len, "execute") ||
				 contains_ci(text, len, "deallocate") ||
				 contains_ci(text, len, "prepare") || contains_ci(text, len, "discard"));
	bool touch = parser_prefilter_cstr(&shunt.tables, text, len);
	if (!execs && (!touch || (passthrough && !contains_ci(text, len, "prepare")))) {
		bool ok = send_request(s, 'Q', msg, total, RESP_FORWARD, TAG_CLIENT, XF_NONE, NULL);
		if (ok && touch && starts_with_insert(text, len))
			time_last(s, STMT_INSERT);
		return ok;
	}
	const struct parse_result *r = parse_text(s, text, len);
	if (!r)
		return oom(s);
	if (r->status != PARSE_OK)
		return passthrough ? send_request(s, 'Q', msg, total, RESP_FORWARD, TAG_CLIENT,
						  XF_NONE, NULL)
				   : refuse_query(s, r->error);
	struct query_plan plan = {0};
	bool planned = true;
	for (uint32_t i = 0; planned && i < r->nstmts; i++)
		planned = plan_stmt(s, text, len, &r->stmts[i], &plan);
	free(plan.upsert_marker);
	if (!planned) {
		edits_free(&plan.ed);
		return refuse_query(s, "pgshunt could not rewrite the statement");
	}
	struct query_xforms *ctx = NULL;
	if (plan.any_xform) {
		ctx = malloc(sizeof(*ctx) + plan.nxf);
		if (!ctx) {
			edits_free(&plan.ed);
			return oom(s);
		}
		ctx->n = plan.nxf;
		memcpy(ctx->xf, plan.xf, plan.nxf);
	}
	bool ok;
	if (plan.ed.n == 0) {
		ok = send_request(s, 'Q', msg, total, RESP_FORWARD, TAG_CLIENT, XF_NONE, ctx);
	} else {
		struct pktbuf b;
		pktbuf_init(&b);
		pktbuf_start(&b, 'Q');
		edits_apply(&plan.ed, text, len, &b);
		pktbuf_finish(&b);
		edits_free(&plan.ed);
		ok = send_built(s, &b, RESP_FORWARD, TAG_CLIENT, XF_NONE, ctx);
	}
	if (ok && plan.timed)
		time_last(s, (enum stmt_kind)(plan.timed - 1));
	return ok;
}

/* ---- the extended protocol ---- */

static struct pstmt *pstmt_find(struct engine *e, const char *name)
{
	for (size_t i = 0; e && i < e->nstmts; i++)
		if (strcmp(e->stmts[i].name, name) == 0)
			return &e->stmts[i];
	return NULL;
}

static void pstmt_remove(struct engine *e, const char *name)
{
	struct pstmt *p = pstmt_find(e, name);
	if (!p)
		return;
	free(p->name);
	free(p->query);
	free(p->tail);
	*p = e->stmts[--e->nstmts];
}

static struct pstmt *pstmt_add(struct session *s, const char *name, const char *query,
			       const uint8_t *tail, uint32_t tail_len)
{
	struct engine *e = engine_get(s);
	if (!e)
		return NULL;
	pstmt_remove(e, name);
	struct pstmt *grown = realloc(e->stmts, sizeof(*grown) * (e->nstmts + 1));
	if (!grown)
		return NULL;
	e->stmts = grown;
	struct pstmt *p = &e->stmts[e->nstmts];
	memset(p, 0, sizeof(*p));
	p->name = strdup(name);
	p->query = strdup(query);
	p->tail = malloc(tail_len ? tail_len : 1);
	if (!p->name || !p->query || !p->tail) {
		free(p->name);
		free(p->query);
		free(p->tail);
		return NULL;
	}
	memcpy(p->tail, tail, tail_len);
	p->tail_len = tail_len;
	e->nstmts++;
	return p;
}

static struct portal *portal_find(struct engine *e, const char *name)
{
	for (size_t i = 0; e && i < e->nportals; i++)
		if (strcmp(e->portals[i].name, name) == 0)
			return &e->portals[i];
	return NULL;
}

static void portal_remove(struct engine *e, const char *name)
{
	struct portal *p = portal_find(e, name);
	if (!p)
		return;
	free(p->name);
	free(p->args);
	*p = e->portals[--e->nportals];
}

/* kind: 1 + the statement's kind when it is one of ours (timed), else 0; args: owned. */
static bool portal_set(struct session *s, const char *name, uint8_t xform, uint8_t kind,
		       char *args)
{
	struct engine *e = s->eng;
	if (!e || (!xform && !kind && !portal_find(e, name)))
		return true; /* nothing tracked, nothing to change */
	portal_remove(e, name);
	if (!xform && !kind)
		return true;
	struct portal *grown = realloc(e->portals, sizeof(*grown) * (e->nportals + 1));
	if (!grown) {
		free(args);
		return false;
	}
	e->portals = grown;
	grown[e->nportals].name = strdup(name);
	grown[e->nportals].xform = xform;
	grown[e->nportals].kind = kind;
	grown[e->nportals].args = args;
	if (!grown[e->nportals].name) {
		free(args);
		return false;
	}
	e->nportals++;
	return true;
}

/*
 * Refuse an extended request: its answer is an ErrorResponse in FIFO order, what the
 * client sends up to Sync is dropped (as the server would skip it), and before that
 * Sync a raising statement puts the server's transaction where PostgreSQL's would be.
 */
static bool refuse_extended(struct session *s, enum req_kind kind, const char *reason)
{
	char msg[512];
	struct pktbuf b;
	struct engine *e = engine_get(s);
	if (!e)
		return oom(s);
	snprintf(msg, sizeof(msg), "pgshunt refuses this statement on %s in phase %s: %s",
		 shunt.cfg.table, phase_name(s->pin.phase), reason);
	slog(LOG_LEVEL_WARNING, s->prefix, "refused: %s", reason);
	pktbuf_init(&b);
	pktbuf_error(&b, "ERROR", "0A000", msg, NULL, NULL);
	bool ok = pktbuf_ok(&b) && respq_push_fake(&s->respq, kind, b.data, (uint32_t)b.len);
	pktbuf_free(&b);
	if (!ok)
		return oom(s);
	stats_here->errors_total++;
	e->local_ignore = true;
	free(e->refusal_sql);
	e->refusal_sql = refusal_statement(s->pin.phase, reason);
	return e->refusal_sql ? true : oom(s);
}

/* The server-side text of a statement for the pinned phase; NULL + reason to refuse. */
static char *extended_text(struct session *s, const char *query, uint8_t *xform, uint8_t *kind,
			   bool *args, const char **reason)
{
	static _Thread_local char why[300];
	*xform = XF_NONE;
	*kind = STMT_OTHER;
	*args = false;
	const struct parse_result *r = parse_text(s, query, strlen(query));
	if (!r) {
		*reason = "out of memory";
		return NULL;
	}
	bool passthrough = s->pin.phase == PHASE_PASSTHROUGH && !s->pin.degraded;
	if (r->status != PARSE_OK || r->nstmts != 1) {
		snprintf(why, sizeof(why), "%s", r->status != PARSE_OK ? r->error : "not one statement");
		*reason = why;
		return passthrough || r->status == PARSE_OK ? strdup(query) : NULL;
	}
	const struct stmt_info *st = &r->stmts[0];
	struct rule_decision d;
	char *out = engine_statement_text(s->pin.phase, s->pin.degraded, query, st, &d, xform,
					  reason);
	*kind = (uint8_t)st->kind;
	*args = out && d.action == RULE_CLAIM && st->conflict == CONFLICT_UPDATE &&
		clause_has_params(query, st);
	if (st->touches)
		count_decision(s, st, &d);
	return out;
}

char *engine_statement_text(enum phase phase, bool degraded, const char *query,
			    const struct stmt_info *st, struct rule_decision *d, uint8_t *xform,
			    const char **reason)
{
	char *upsert_marker = NULL;
	*xform = XF_NONE;
	*d = rules_decide(phase, degraded, st);
	upsert_check(query, strlen(query), st, d, &upsert_marker);
	free(upsert_marker);
	if (d->action == RULE_REFUSE) {
		*reason = d->reason;
		return NULL;
	}
	struct edits ed = {0};
	if (!decision_edits(&ed, query, strlen(query), st, d, xform)) {
		edits_free(&ed);
		*reason = "pgshunt could not rewrite the statement";
		return NULL;
	}
	struct pktbuf b;
	pktbuf_init(&b);
	edits_apply(&ed, query, strlen(query), &b);
	edits_free(&ed);
	char *out = pktbuf_ok(&b) ? strdup((char *)b.data) : NULL;
	pktbuf_free(&b);
	if (!out)
		*reason = "out of memory";
	return out;
}

static bool send_parse(struct session *s, const char *name, const char *query,
		       const uint8_t *tail, uint32_t tail_len, enum resp_action action, uint32_t tag)
{
	struct pktbuf b;
	pktbuf_init(&b);
	pktbuf_start(&b, 'P');
	pktbuf_put_string(&b, name);
	pktbuf_put_string(&b, query);
	pktbuf_put_bytes(&b, tail, tail_len);
	pktbuf_finish(&b);
	return send_built(s, &b, action, tag, XF_NONE, NULL);
}

static bool on_parse(struct session *s, const uint8_t *msg, uint32_t total)
{
	struct mbuf m;
	const char *name, *query;
	mbuf_init(&m, msg + 5, total - 5);
	if (!mbuf_get_string(&m, &name) || !mbuf_get_string(&m, &query)) {
		session_fatal(s, "08P01", "invalid Parse message");
		return false;
	}
	if (!parser_prefilter_cstr(&shunt.tables, query, strlen(query))) {
		if (s->eng)
			pstmt_remove(s->eng, name);
		return send_request(s, 'P', msg, total, RESP_FORWARD, TAG_CLIENT, XF_NONE, NULL);
	}
	uint8_t xform, kind;
	bool args;
	const char *reason = NULL;
	char *text = extended_text(s, query, &xform, &kind, &args, &reason);
	if (!text)
		return refuse_extended(s, REQ_PARSE, reason);
	struct pstmt *p = pstmt_add(s, name, query, m.data + m.pos, (uint32_t)mbuf_avail(&m));
	bool ok = p != NULL;
	if (p) {
		p->epoch = s->pin.epoch;
		p->xform = xform;
		p->kind = kind;
		p->upsert_args = args;
		ok = send_parse(s, name, text, m.data + m.pos, (uint32_t)mbuf_avail(&m),
				RESP_FORWARD, TAG_CLIENT);
	}
	free(text);
	return ok || s->state == SS_CLOSED ? ok : oom(s);
}

/* A Close ('C') of a statement ('S') or portal ('P') the client does not see answered. */
static bool send_own_close(struct session *s, char what, const char *name)
{
	struct pktbuf b;
	pktbuf_init(&b);
	pktbuf_start(&b, 'C');
	pktbuf_put_byte(&b, (uint8_t)what);
	pktbuf_put_string(&b, name);
	pktbuf_finish(&b);
	return send_built(s, &b, RESP_SKIP, TAG_REPORT, XF_NONE, NULL);
}

/* A statement made for an older epoch is made again, unseen, before it is bound. */
static bool reprepare(struct session *s, struct pstmt *p)
{
	uint8_t xform, kind;
	bool args;
	const char *reason = NULL;
	char *text = extended_text(s, p->query, &xform, &kind, &args, &reason);
	if (!text)
		return refuse_extended(s, REQ_BIND, reason);
	bool ok = true;
	if (p->name[0])
		ok = send_own_close(s, 'S', p->name);
	ok = ok && send_parse(s, p->name, text, p->tail, p->tail_len, RESP_SKIP, TAG_REPORT);
	free(text);
	if (ok) {
		slog(LOG_LEVEL_DEBUG, s->prefix, "statement \"%s\" prepared again for epoch %llu",
		     p->name, (unsigned long long)s->pin.epoch);
		p->epoch = s->pin.epoch;
		p->xform = xform;
		p->kind = kind;
		p->upsert_args = args;
	}
	return ok;
}

/*
 * The values a claim's DO UPDATE clause takes from the Bind, for its portal: "n:oid:hex"
 * per $n of the clause (oid: the type the Parse declared, 0 for none; hex: the value in
 * the client's encoding, "-" for NULL), comma-separated.  pgshunt.upsert_clause() puts
 * each where its $n stood, as a literal (cast to the declared type): what PostgreSQL
 * does with an untyped parameter, it does with an untyped literal.  A binary value
 * cannot be written as a literal here: refused.  A Bind the server will refuse anyway
 * (too few parameters, malformed) carries none.  False when refused.
 */
static bool bind_args(struct session *s, const struct pstmt *p, const uint8_t *msg,
		      uint32_t total, char **out)
{
	static const char hex[] = "0123456789abcdef";
	const struct parse_result *r = parse_text(s, p->query, strlen(p->query));
	*out = NULL;
	if (!r || r->status != PARSE_OK || r->nstmts != 1)
		return true;
	const struct stmt_info *st = &r->stmts[0];
	size_t end = (size_t)st->conflict_start + st->conflict_len;
	struct scan_tok tok;
	struct pktbuf b;
	pktbuf_init(&b);
	for (size_t pos = st->conflict_start; pos < end;) {
		scan_next(p->query, end, &pos, &tok);
		if (tok.kind == TOK_END)
			break;
		if (tok.kind != TOK_PARAM)
			continue;
		unsigned long n = strtoul(p->query + tok.start + 1, NULL, 10);
		struct bind_param bp;
		if (n == 0 || n > UINT16_MAX ||
		    proto_bind_param(msg, total, (uint16_t)(n - 1), &bp) != 1) {
			pktbuf_free(&b);
			return true;
		}
		int64_t oid = proto_parse_param_type(p->tail, p->tail_len, (uint16_t)(n - 1));
		struct pktbuf text;
		pktbuf_init(&text);
		if (bp.binary && bp.len >= 0 &&
		    (oid <= 0 || !binfmt_to_text((uint32_t)oid, bp.value, (size_t)bp.len, &text))) {
			char why[200];
			snprintf(why, sizeof(why),
				 "ON CONFLICT DO UPDATE with a binary-format parameter $%lu (type OID "
				 "%lld) in its SET list or WHERE cannot go through the claim view "
				 "(pgshunt passes those values as text; send it as text)",
				 n, (long long)oid);
			pktbuf_free(&text);
			pktbuf_free(&b);
			refuse_extended(s, REQ_BIND, why);
			return false;
		}
		const uint8_t *val = bp.binary ? text.data : bp.value;
		size_t vlen = bp.binary ? text.len : (size_t)(bp.len < 0 ? 0 : bp.len);
		char head[40];
		int hn = snprintf(head, sizeof(head), "%s%lu:%lld:", b.len ? "," : "", n,
				  (long long)(oid < 0 ? 0 : oid));
		pktbuf_put_bytes(&b, head, (size_t)hn);
		if (bp.len < 0)
			pktbuf_put_byte(&b, '-');
		for (size_t i = 0; bp.len >= 0 && i < vlen; i++) {
			pktbuf_put_byte(&b, (uint8_t)hex[val[i] >> 4]);
			pktbuf_put_byte(&b, (uint8_t)hex[val[i] & 15]);
		}
		if (!pktbuf_ok(&text))
			b.failed = true;
		pktbuf_free(&text);
	}
	pktbuf_put_byte(&b, 0);
	if (!pktbuf_ok(&b)) {
		pktbuf_free(&b);
		return oom(s);
	}
	*out = strdup((char *)b.data);
	pktbuf_free(&b);
	return *out ? true : oom(s);
}

static bool on_bind(struct session *s, const uint8_t *msg, uint32_t total)
{
	struct mbuf m;
	const char *portal, *stmt;
	mbuf_init(&m, msg + 5, total - 5);
	if (!mbuf_get_string(&m, &portal) || !mbuf_get_string(&m, &stmt)) {
		session_fatal(s, "08P01", "invalid Bind message");
		return false;
	}
	struct pstmt *p = pstmt_find(s->eng, stmt);
	uint8_t xform = XF_NONE;
	if (p && p->epoch != s->pin.epoch) {
		if (!reprepare(s, p))
			return s->state != SS_CLOSED;
		if (s->eng->local_ignore)
			return true;
	}
	if (p)
		xform = p->xform;
	char *args = NULL;
	if (p && p->upsert_args && !bind_args(s, p, msg, total, &args))
		return s->state != SS_CLOSED;
	if (!portal_set(s, portal, xform, p ? (uint8_t)(p->kind + 1) : 0, args))
		return oom(s);
	if (xform != XF_DROP_LAST && xform != XF_DROP_LAST_MAP)
		return send_request(s, 'B', msg, total, RESP_FORWARD, TAG_CLIENT, XF_NONE, NULL);
	/* Result formats listed per column must cover the mirror column too. */
	struct pktbuf b;
	pktbuf_init(&b);
	int rc = proto_bind_extend_formats(msg, total, &b);
	if (rc <= 0) {
		pktbuf_free(&b);
		if (rc < 0) {
			session_fatal(s, "08P01", "invalid Bind message");
			return false;
		}
		return send_request(s, 'B', msg, total, RESP_FORWARD, TAG_CLIENT, XF_NONE, NULL);
	}
	return send_built(s, &b, RESP_FORWARD, TAG_CLIENT, XF_NONE, NULL);
}

static bool on_describe(struct session *s, const uint8_t *msg, uint32_t total)
{
	uint8_t xform = XF_NONE;
	if (s->eng && total > 6) {
		const char *name = (const char *)msg + 6;
		if (memchr(name, 0, total - 6)) {
			if (msg[5] == 'S') {
				struct pstmt *p = pstmt_find(s->eng, name);
				xform = p ? p->xform : XF_NONE;
			} else {
				struct portal *p = portal_find(s->eng, name);
				xform = p ? p->xform : XF_NONE;
			}
		}
	}
	return send_request(s, 'D', msg, total, RESP_FORWARD, TAG_CLIENT, xform, NULL);
}

static bool send_execute(struct session *s, const uint8_t *msg, uint32_t total, uint8_t xform,
			 const uint8_t *nul);

/*
 * Before a claim's DO UPDATE with $n runs, its values go where its trigger reads them:
 * the transaction-local setting pgshunt.upsert_args, set by a statement of pgshunt's own
 * (prepared afresh each time, under a name of its own so that the client's unnamed
 * statement and portal stay as they are).  Set at each Execute, not at Bind: two
 * portals bound before either runs each get their own values.  Its answers are
 * swallowed; an error of it is the client's Execute's (the server then skips that).
 */
static bool send_upsert_args(struct session *s, const char *args)
{
	static const char name[] = "pgshunt_upsert_args";
	static const uint8_t text_oid[] = {0, 1, 0, 0, 0, 25};
	struct pktbuf b;
	if (!send_own_close(s, 'S', name) ||
	    !send_parse(s, name, "SELECT pg_catalog.set_config('pgshunt.upsert_args', $1, true)",
			text_oid, sizeof(text_oid), RESP_SKIP, TAG_REPORT))
		return false;
	pktbuf_init(&b);
	pktbuf_start(&b, 'B');
	pktbuf_put_string(&b, name);
	pktbuf_put_string(&b, name);
	pktbuf_put_uint16(&b, 0);
	pktbuf_put_uint16(&b, 1);
	pktbuf_put_uint32(&b, (uint32_t)strlen(args));
	pktbuf_put_bytes(&b, args, strlen(args));
	pktbuf_put_uint16(&b, 0);
	pktbuf_finish(&b);
	if (!send_built(s, &b, RESP_SKIP, TAG_REPORT, XF_NONE, NULL))
		return false;
	pktbuf_init(&b);
	pktbuf_start(&b, 'E');
	pktbuf_put_string(&b, name);
	pktbuf_put_uint32(&b, 0);
	pktbuf_finish(&b);
	return send_built(s, &b, RESP_SKIP, TAG_REPORT, XF_NONE, NULL) &&
	       send_own_close(s, 'P', name);
}

static bool on_execute(struct session *s, const uint8_t *msg, uint32_t total)
{
	uint8_t xform = XF_NONE, timed = 0;
	const uint8_t *nul = s->eng ? memchr(msg + 5, 0, total - 5) : NULL;
	if (nul) {
		struct portal *p = portal_find(s->eng, (const char *)msg + 5);
		xform = p ? p->xform : XF_NONE;
		timed = p ? p->kind : 0;
		if (p && p->args && !send_upsert_args(s, p->args))
			return false;
	}
	bool ok = send_execute(s, msg, total, xform, nul);
	if (ok && timed)
		time_last(s, (enum stmt_kind)(timed - 1));
	return ok;
}

static bool send_execute(struct session *s, const uint8_t *msg, uint32_t total, uint8_t xform,
			 const uint8_t *nul)
{
	/*
	 * The client's statement returns no rows, so a row limit (JDBC sends 1) would only
	 * suspend the portal on the mirror column and lose the CommandComplete: drop it.
	 */
	size_t limit_at = nul ? (size_t)(nul - msg) + 1 : 0;
	if (xform == XF_DROP_ROWS && limit_at + 4 == total && read_uint32_be(msg + limit_at) != 0) {
		uint8_t *copy = malloc(total);
		if (!copy)
			return oom(s);
		memcpy(copy, msg, total);
		memset(copy + limit_at, 0, 4);
		bool ok = send_request(s, 'E', copy, total, RESP_FORWARD, TAG_CLIENT, xform, NULL);
		free(copy);
		return ok;
	}
	return send_request(s, 'E', msg, total, RESP_FORWARD, TAG_CLIENT, xform, NULL);
}

static bool on_close(struct session *s, const uint8_t *msg, uint32_t total)
{
	if (s->eng && total > 6 && memchr(msg + 6, 0, total - 6)) {
		if (msg[5] == 'S')
			pstmt_remove(s->eng, (const char *)msg + 6);
		else
			portal_remove(s->eng, (const char *)msg + 6);
	}
	return send_request(s, 'C', msg, total, RESP_FORWARD, TAG_CLIENT, XF_NONE, NULL);
}

static bool on_sync(struct session *s, const uint8_t *msg, uint32_t total)
{
	struct engine *e = s->eng;
	if (e && e->local_ignore) {
		e->local_ignore = false;
		struct pktbuf b;
		pktbuf_init(&b);
		pktbuf_start(&b, 'Q');
		pktbuf_put_string(&b, e->refusal_sql ? e->refusal_sql : "SELECT 1");
		pktbuf_finish(&b);
		if (!send_built(s, &b, RESP_SKIP, TAG_SILENT, XF_NONE, NULL))
			return false;
	}
	return send_request(s, 'S', msg, total, RESP_FORWARD, TAG_CLIENT, XF_NONE, NULL);
}

/* ---- entry points ---- */

bool engine_must_hold(const struct session *s, char type, const uint8_t *msg, uint32_t total)
{
	if (!control_available())
		return false;
	/*
	 * Inside a transaction its pinned phase serves it; a new one waits while the phase
	 * is unknown or the fleet is held for the rename, and so does one begun during the
	 * hold (it has not touched the table: it is re-pinned when the hold ends).
	 */
	if (session_idle(s) ? shunt.phase.known && !shunt.phase.hold : !s->pin.hold)
		return false;
	const char *text = NULL;
	size_t len = 0;
	struct mbuf m;
	mbuf_init(&m, msg + 5, total - 5);
	if (type == 'Q') {
		if (!mbuf_get_string(&m, &text))
			return false;
	} else if (type == 'P') {
		const char *name;
		if (!mbuf_get_string(&m, &name) || !mbuf_get_string(&m, &text))
			return false;
	} else if (type == 'B') {
		/* A statement of ours is re-prepared for the phase at its Bind. */
		const char *portal, *stmt;
		return mbuf_get_string(&m, &portal) && mbuf_get_string(&m, &stmt) &&
		       pstmt_find(s->eng, stmt) != NULL;
	} else {
		return false;
	}
	len = strlen(text);
	return parser_prefilter(&shunt.tables, text, len) ||
	       (s->eng && s->eng->npreps && contains_ci(text, len, "execute"));
}

bool engine_client_message(struct session *s, char type, const uint8_t *msg, uint32_t total)
{
	/* I8: the phase in force when the transaction began serves it to its end. */
	if (session_idle(s))
		s->pin = shunt.phase;
	if (s->eng && s->eng->local_ignore && type != 'S')
		return true;
	switch (type) {
	case 'Q':
		return on_query(s, msg, total);
	case 'P':
		return on_parse(s, msg, total);
	case 'B':
		return on_bind(s, msg, total);
	case 'D':
		return on_describe(s, msg, total);
	case 'E':
		return on_execute(s, msg, total);
	case 'C':
		return on_close(s, msg, total);
	case 'S':
		return on_sync(s, msg, total);
	case 'c': /* CopyDone, CopyFail: the Sync that follows is answered again */
	case 'f':
		respq_copy_end(&s->respq);
		return send_request(s, type, msg, total, RESP_FORWARD, TAG_CLIENT, XF_NONE, NULL);
	default:
		return send_request(s, type, msg, total, RESP_FORWARD, TAG_CLIENT, XF_NONE, NULL);
	}
}

static uint8_t head_xform(struct respq_entry *head)
{
	if (head->kind != REQ_QUERY || !head->ctx)
		return head->xform;
	struct query_xforms *q = head->ctx;
	return head->step < q->n ? q->xf[head->step] : XF_NONE;
}

bool engine_needs_whole(const struct respq_entry *head)
{
	return head && (head->xform || head->ctx);
}

static bool replace_with(struct session *s, bool ok, struct pktbuf *b, bool *drop)
{
	*drop = true;
	if (!ok) {
		pktbuf_free(b);
		session_fatal(s, "08P01", "server sent a malformed row");
		return false;
	}
	bool sent = session_queue_client(s, b->data, b->len);
	pktbuf_free(b);
	return sent;
}

/* ---- answers of statements pointed at next or at a view ---- */

/* The claim and buffer views' columns as the table's (engine_views_load()). */
struct view_column {
	uint32_t view;
	uint32_t table[2]; /* old's OID (0 once next has its name), next's */
	int16_t att[3];    /* the view's attnum, old's, next's */
};

static struct {
	struct view_column *cols; /* grouped by view */
	size_t n;
	uint64_t epoch; /* the phase epoch the columns were read under */
	bool loading;
	bool again; /* asked to load while loading: the answer may predate the change */
} views;

static void on_views(const PGresult *res, void *arg)
{
	(void)arg;
	views.loading = false;
	if (control_ok(res)) {
		size_t n = (size_t)PQntuples(res);
		struct view_column *cols = calloc(n ? n : 1, sizeof(*cols));
		if (cols) {
			for (size_t i = 0; i < n; i++) {
				cols[i].view = (uint32_t)strtoul(PQgetvalue(res, (int)i, 0), NULL, 10);
				cols[i].att[0] = (int16_t)atoi(PQgetvalue(res, (int)i, 1));
				for (int t = 0; t < 2; t++) {
					cols[i].table[t] = (uint32_t)strtoul(
						PQgetvalue(res, (int)i, 2 + 2 * t), NULL, 10);
					cols[i].att[1 + t] =
						(int16_t)atoi(PQgetvalue(res, (int)i, 3 + 2 * t));
				}
			}
			free(views.cols);
			views.cols = cols;
			views.n = n;
		}
	}
	if (views.again) {
		views.again = false;
		engine_views_load();
	}
}

void engine_views_load(void)
{
	const char *params[] = {shunt.cfg.table, shunt.tables.rel[REL_OLD].name};
	/* The views keep their OIDs when made again: found once, read again only when the
	 * phase moves (the rename at finalized changes what the table's name is). */
	if (views.n > 0 && views.epoch == shunt.phase.epoch)
		return;
	if (views.loading) {
		views.again = true;
		return;
	}
	views.epoch = shunt.phase.epoch;
	/*
	 * next is the claim view's base relation (found by OID: the rename at finalized
	 * gives it the table's name); old is what the table's name resolves to while it is
	 * not next.
	 */
	views.loading = control_query(
		"WITH nx AS (SELECT d.refobjid AS oid FROM pg_rewrite r JOIN pg_depend d ON "
		"d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid AND d.refclassid = "
		"'pg_class'::regclass AND d.refobjid <> r.ev_class WHERE r.ev_class = "
		"to_regclass('pgshunt.' || quote_ident($2 || '_claim')) LIMIT 1) "
		"SELECT v.oid, va.attnum, coalesce(o.attrelid, 0), coalesce(o.attnum, 0), "
		"coalesce(n.attrelid, 0), coalesce(n.attnum, 0) FROM pg_class v "
		"JOIN pg_namespace vn ON vn.oid = v.relnamespace AND vn.nspname = 'pgshunt' "
		"JOIN pg_attribute va ON va.attrelid = v.oid AND va.attnum > 0 "
		"LEFT JOIN pg_attribute o ON o.attrelid = to_regclass($1) AND o.attrelid IS "
		"DISTINCT FROM (SELECT oid FROM nx) AND o.attname = va.attname AND NOT o.attisdropped "
		"LEFT JOIN pg_attribute n ON n.attrelid = (SELECT oid FROM nx) AND n.attname = "
		"va.attname AND NOT n.attisdropped WHERE v.relkind = 'v' AND v.relname IN ($2 || "
		"'_claim', $2 || '_claim_nothing', $2 || '_claim_upsert', $2 || '_claim_final', "
		"$2 || '_claim_nothing_final', $2 || '_claim_upsert_final', $2 || '_buffer', "
		"$2 || '_buffer_nothing', $2 || '_buffer_upsert') "
		"ORDER BY v.oid, va.attnum",
		2, params, on_views, NULL);
}

/*
 * RowDescription of a RETURNING through a view names the table the client named (I3):
 * old, or in finalized next, which has old's name by then.
 */
static bool rowdesc_map_views(const uint8_t *msg, uint32_t total, bool final, struct pktbuf *out)
{
	int t = final ? 1 : 0;
	struct pktbuf cur;
	pktbuf_init(&cur);
	pktbuf_put_bytes(&cur, msg, total);
	for (size_t i = 0; i < views.n && pktbuf_ok(&cur);) {
		size_t j = i;
		int16_t att[RELMAP_MAX_COLUMNS][2];
		while (j < views.n && views.cols[j].view == views.cols[i].view &&
		       j - i < RELMAP_MAX_COLUMNS) {
			att[j - i][0] = views.cols[j].att[0];
			att[j - i][1] = views.cols[j].att[1 + t];
			j++;
		}
		struct pktbuf next;
		pktbuf_init(&next);
		bool ok = proto_rowdesc_map_table(cur.data, (uint32_t)cur.len, views.cols[i].view,
						  views.cols[i].table[t], (const int16_t(*)[2])att,
						  j - i, &next);
		pktbuf_free(&cur);
		cur = next;
		if (!ok)
			break;
		while (j < views.n && views.cols[j].view == views.cols[i].view)
			j++;
		i = j;
	}
	bool ok = pktbuf_ok(&cur);
	*out = cur;
	return ok;
}

/* A write pointed at next with the mirror column: next named as the table, then dropped. */
static bool rowdesc_map_drop_last(const uint8_t *msg, uint32_t total, struct pktbuf *out)
{
	const struct relmap *rm = &shunt.relmap;
	struct pktbuf mapped;
	if (!rm->loaded)
		return proto_rowdesc_drop_last(msg, total, out);
	pktbuf_init(&mapped);
	bool ok = proto_rowdesc_map_table(msg, total, rm->next_oid, rm->old_oid,
					  (const int16_t(*)[2])rm->att, rm->n, &mapped) &&
		  proto_rowdesc_drop_last(mapped.data, (uint32_t)mapped.len, out);
	pktbuf_free(&mapped);
	return ok;
}

/*
 * The relation an error of a claim or buffer view names, as the table's own error would
 * name it: next_table or one of its partitions (named <next>_y.. / <next>_p.., before
 * and after the rename at finalized), or the buffer, is the table.  NULL: keep it.
 */
static const char *table_for(const char *rel, size_t len)
{
	const char *next = shunt.tables.rel[REL_NEXT].name, *buf = shunt.tables.rel[REL_BUFFER].name;
	size_t nl = strlen(next);
	bool partition = len > nl + 2 && memcmp(rel, next, nl) == 0 && rel[nl] == '_' &&
			 (rel[nl + 1] == 'y' || rel[nl + 1] == 'p') &&
			 isdigit((unsigned char)rel[nl + 2]);
	if ((len == nl && memcmp(rel, next, nl) == 0) || partition ||
	    (len == strlen(buf) && memcmp(rel, buf, len) == 0))
		return shunt.tables.rel[REL_OLD].name;
	return NULL;
}

/* A message field with `relation "X"` naming what table_for() maps, mapped. */
static void put_message(struct pktbuf *out, const char *value)
{
	static const char mark[] = "relation \"";
	const char *at = strstr(value, mark), *name, *end;
	const char *table = NULL;
	if (at) {
		name = at + sizeof(mark) - 1;
		end = strchr(name, '"');
		table = end ? table_for(name, (size_t)(end - name)) : NULL;
	}
	if (!table) {
		pktbuf_put_string(out, value);
		return;
	}
	pktbuf_put_bytes(out, value, (size_t)(name - value));
	pktbuf_put_bytes(out, table, strlen(table));
	pktbuf_put_string(out, end);
}

/*
 * An error raised inside a claim trigger carries a CONTEXT line naming pgshunt's
 * function; PostgreSQL's own error for the client's statement has none (I3).  A
 * constraint failing there names the relation written (a partition of next, the
 * buffer), where the table's own error names the table: its name goes in the message
 * and the table field instead (the constraints carry the table's names already).
 */
static bool error_drop_context(const uint8_t *msg, uint32_t total, bool map_table,
			       struct pktbuf *out)
{
	struct mbuf m;
	uint8_t code;
	if (total < 5)
		return false;
	mbuf_init(&m, msg + 5, total - 5);
	pktbuf_start(out, 'E');
	while (mbuf_get_byte(&m, &code) && code != 0) {
		const char *value, *table;
		if (!mbuf_get_string(&m, &value))
			return false;
		if (code == 'W')
			continue;
		pktbuf_put_byte(out, code);
		if (map_table && code == 'M')
			put_message(out, value);
		else if (map_table && code == 't' && (table = table_for(value, strlen(value))))
			pktbuf_put_string(out, table);
		else
			pktbuf_put_string(out, value);
	}
	pktbuf_put_byte(out, 0);
	pktbuf_finish(out);
	return code == 0 && pktbuf_ok(out);
}

bool engine_server_message(struct session *s, struct respq_entry *head, char type,
			   const uint8_t *msg, uint32_t total, bool *drop)
{
	*drop = false;
	if (!head || type == 'A' || type == 'S' || type == 'N')
		return true;
	if (head->timed && ((head->kind == REQ_QUERY && type == 'Z') ||
			    (head->kind == REQ_EXECUTE && strchr("CIsE", type))))
		observe(head);
	/* An injected re-prepare that fails: its error is the client's request's error. */
	if (head->action == RESP_SKIP)
		return (*drop = !(type == 'E' && head->tag == TAG_REPORT)), true;
	uint8_t xf = head_xform(head);
	if (head->kind == REQ_QUERY && head->ctx && (type == 'C' || type == 'I')) {
		head->step++;
		*drop = xf == XF_SWALLOW;
		return true;
	}
	struct pktbuf b;
	pktbuf_init(&b);
	switch (xf) {
	case XF_DROP_LAST:
		if (type == 'T')
			return replace_with(s, proto_rowdesc_drop_last(msg, total, &b), &b, drop);
		if (type == 'D')
			return replace_with(s, proto_datarow_drop_last(msg, total, &b), &b, drop);
		return true;
	case XF_DROP_ROWS:
		if (type == 'T' && head->kind == REQ_DESCRIBE) {
			static const uint8_t nodata[5] = {'n', 0, 0, 0, 4};
			*drop = true;
			return session_queue_client(s, nodata, sizeof(nodata));
		}
		*drop = type == 'T' || type == 'D';
		return true;
	case XF_SWALLOW:
		*drop = type != 'E';
		return true;
	case XF_MAP_OIDS: {
		const struct relmap *rm = &shunt.relmap;
		if (type != 'T' || !rm->loaded)
			return true;
		bool ok = proto_rowdesc_map_table(msg, total, rm->next_oid, rm->old_oid,
						  (const int16_t(*)[2])rm->att, rm->n, &b);
		return replace_with(s, ok, &b, drop);
	}
	case XF_DROP_LAST_MAP:
		if (type == 'T')
			return replace_with(s, rowdesc_map_drop_last(msg, total, &b), &b, drop);
		if (type == 'D')
			return replace_with(s, proto_datarow_drop_last(msg, total, &b), &b, drop);
		return true;
	case XF_VIEW:
		if (type == 'T')
			return replace_with(
				s, rowdesc_map_views(msg, total, s->pin.phase == PHASE_FINALIZED, &b),
				&b, drop);
		if (type == 'E')
			return replace_with(s, error_drop_context(msg, total, true, &b), &b, drop);
		return true;
	case XF_REFUSED:
		if (type == 'E')
			return replace_with(s, error_drop_context(msg, total, false, &b), &b, drop);
		return true;
	default:
		return true;
	}
}

void engine_free(struct session *s)
{
	struct engine *e = s->eng;
	if (!e)
		return;
	while (e->nstmts)
		pstmt_remove(e, e->stmts[0].name);
	while (e->nportals)
		portal_remove(e, e->portals[0].name);
	while (e->npreps)
		prep_remove(e, e->preps[0].name);
	free(e->stmts);
	free(e->portals);
	free(e->preps);
	free(e->refusal_sql);
	free(e);
	s->eng = NULL;
}
