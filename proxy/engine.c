#include "proxy/engine.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "parser/parser.h"
#include "parser/scan.h"
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
};

struct portal {
	char *name;
	uint8_t xform;
	uint8_t kind;      /* 1 + enum stmt_kind of its statement, 0 = not ours */
};

/* An SQL-level PREPARE of a touching statement. */
struct sqlprep {
	char *name;
	char *text;     /* the whole PREPARE statement as the client wrote it */
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
			shunt.stats.queries_total++;
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

static bool contains_ci(const char *text, size_t len, const char *word)
{
	size_t wl = strlen(word);
	for (size_t i = 0; i + wl <= len; i++)
		if (strncasecmp(text + i, word, wl) == 0)
			return true;
	return false;
}

static const struct parse_result *parse_text(struct session *s, const char *text, size_t len)
{
	return parser_cache_get(shunt.parse_cache, &shunt.tables, s->pin.epoch, text, len,
				shunt.cfg.key_columns, shunt.cfg.partition_column);
}

const uint64_t stats_duration_bounds_us[STATS_DURATION_BUCKETS] = {
	500, 1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000, 500000, 1000000, 5000000,
};

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
	shunt.stats.duration_count[kind][b]++;
	shunt.stats.duration_sum_us[kind] += us;
}

/* The engine's decisions, for /metrics. */
static void count_decision(struct session *s, const struct stmt_info *st,
			   const struct rule_decision *d)
{
	struct stats *stats = &shunt.stats;
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
	struct edit e[PARSER_MAX_STMTS * 2 + 4];
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
 * `TABLE name` and `ONLY (name)` take no alias after the name: there the mention is
 * renamed without one (such statements cannot qualify columns with it anyway).
 */
static bool alias_not_allowed(const char *text, const struct stmt_info *st,
			      const struct rel_ref *ref)
{
	struct scan_tok tok, prev = {0}, before = {0};
	size_t pos = st->start;
	while (pos < ref->start) {
		scan_next(text, ref->start, &pos, &tok);
		if (tok.kind == TOK_END)
			break;
		before = prev;
		prev = tok;
	}
	return scan_tok_is(text, &prev, "table") ||
	       (prev.kind == TOK_CHAR && text[prev.start] == '(' && scan_tok_is(text, &before, "only"));
}

/*
 * A read in read_next: each mention of the table names next_table instead, keeping
 * the name it was written with as the alias, so qualified column references resolve.
 */
static bool rename_edits(struct edits *ed, const char *text, size_t len,
			 const struct stmt_info *st)
{
	char row[160], buf[400];
	for (uint32_t i = 0; i < st->nrefs; i++) {
		const struct rel_ref *ref = &st->refs[i];
		if (ref->role != REL_OLD || in_lock_clause(text, st, ref))
			continue;
		if (ref->has_alias || st->kind == STMT_COPY_TO || alias_not_allowed(text, st, ref))
			snprintf(buf, sizeof(buf), "%s", shunt.cfg.next_table);
		else if (target_row_name(text, len, ref, row, sizeof(row)))
			snprintf(buf, sizeof(buf), "%s AS %s", shunt.cfg.next_table, row);
		else
			return false;
		if (!edit_add(ed, ref->start, ref->len, strdup(buf)))
			return false;
	}
	return true;
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

static bool prep_record(struct session *s, const char *name, const char *text, size_t len,
			uint8_t xform)
{
	struct engine *e = engine_get(s);
	if (!e)
		return false;
	prep_remove(e, name);
	struct sqlprep *grown = realloc(e->preps, sizeof(*grown) * (e->npreps + 1));
	if (!grown)
		return false;
	e->preps = grown;
	struct sqlprep *p = &e->preps[e->npreps];
	p->name = strdup(name);
	p->text = strndup(text, len);
	p->epoch = s->pin.epoch;
	p->xform = xform;
	if (!p->name || !p->text) {
		free(p->name);
		free(p->text);
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

struct query_plan {
	struct edits ed;
	uint8_t xf[PARSER_MAX_STMTS * 3];
	uint32_t nxf;
	bool any_xform;
	uint8_t timed; /* 1 + the kind of the first statement naming the table, 0 = none */
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
	} else if (d.action == RULE_MIRROR &&
		   !mirror_edit(&plan->ed, text, len, st, d.mirror_fn, &xf)) {
		return false;
	} else if (d.action == RULE_RENAME) {
		if (!rename_edits(&plan->ed, text, len, st))
			return false;
		xf = XF_MAP_OIDS;
	}
	if (st->kind == STMT_PREPARE) {
		/* A name prepared again for a statement that does not touch the table is
		 * no longer ours to re-prepare. */
		prep_forget(s->eng, st->prepared_name);
		if (st->touches && d.action != RULE_REFUSE &&
		    !prep_record(s, st->prepared_name, text + st->start, st->len, xf))
			return false;
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
	return send_built(s, &b, RESP_FORWARD, TAG_CLIENT, XF_NONE, NULL);
}

static bool on_query(struct session *s, const uint8_t *msg, uint32_t total)
{
	const char *text = (const char *)msg + 5;
	size_t len = strnlen(text, total - 5);
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
	bool touch = parser_prefilter(&shunt.tables, text, len);
	if (!execs && (!touch || (passthrough && !contains_ci(text, len, "prepare"))))
		return send_request(s, 'Q', msg, total, RESP_FORWARD, TAG_CLIENT, XF_NONE, NULL);
	const struct parse_result *r = parse_text(s, text, len);
	if (!r)
		return oom(s);
	if (r->status != PARSE_OK)
		return passthrough ? send_request(s, 'Q', msg, total, RESP_FORWARD, TAG_CLIENT,
						  XF_NONE, NULL)
				   : refuse_query(s, r->error);
	struct query_plan plan = {0};
	for (uint32_t i = 0; i < r->nstmts; i++) {
		if (!plan_stmt(s, text, len, &r->stmts[i], &plan)) {
			edits_free(&plan.ed);
			return refuse_query(s, "pgshunt could not rewrite the statement");
		}
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
	*p = e->portals[--e->nportals];
}

/* kind: 1 + the statement's kind when it is one of ours (timed), else 0. */
static bool portal_set(struct session *s, const char *name, uint8_t xform, uint8_t kind)
{
	struct engine *e = s->eng;
	if (!e || (!xform && !kind && !portal_find(e, name)))
		return true; /* nothing tracked, nothing to change */
	portal_remove(e, name);
	if (!xform && !kind)
		return true;
	struct portal *grown = realloc(e->portals, sizeof(*grown) * (e->nportals + 1));
	if (!grown)
		return false;
	e->portals = grown;
	grown[e->nportals].name = strdup(name);
	grown[e->nportals].xform = xform;
	grown[e->nportals].kind = kind;
	if (!grown[e->nportals].name)
		return false;
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
	shunt.stats.errors_total++;
	e->local_ignore = true;
	free(e->refusal_sql);
	e->refusal_sql = refusal_statement(s->pin.phase, reason);
	return e->refusal_sql ? true : oom(s);
}

/* The server-side text of a statement for the pinned phase; NULL + reason to refuse. */
static char *extended_text(struct session *s, const char *query, uint8_t *xform, uint8_t *kind,
			   const char **reason)
{
	static char why[300];
	*xform = XF_NONE;
	*kind = STMT_OTHER;
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
	struct rule_decision d = rules_decide(s->pin.phase, s->pin.degraded, st);
	*kind = (uint8_t)st->kind;
	if (st->touches)
		count_decision(s, st, &d);
	if (d.action == RULE_REFUSE) {
		*reason = d.reason;
		return NULL;
	}
	struct edits ed = {0};
	if (d.action == RULE_RENAME)
		*xform = XF_MAP_OIDS;
	if ((d.action == RULE_MIRROR &&
	     !mirror_edit(&ed, query, strlen(query), st, d.mirror_fn, xform)) ||
	    (d.action == RULE_RENAME && !rename_edits(&ed, query, strlen(query), st))) {
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
	if (!parser_prefilter(&shunt.tables, query, strlen(query))) {
		if (s->eng)
			pstmt_remove(s->eng, name);
		return send_request(s, 'P', msg, total, RESP_FORWARD, TAG_CLIENT, XF_NONE, NULL);
	}
	uint8_t xform, kind;
	const char *reason = NULL;
	char *text = extended_text(s, query, &xform, &kind, &reason);
	if (!text)
		return refuse_extended(s, REQ_PARSE, reason);
	struct pstmt *p = pstmt_add(s, name, query, m.data + m.pos, (uint32_t)mbuf_avail(&m));
	bool ok = p != NULL;
	if (p) {
		p->epoch = s->pin.epoch;
		p->xform = xform;
		p->kind = kind;
		ok = send_parse(s, name, text, m.data + m.pos, (uint32_t)mbuf_avail(&m),
				RESP_FORWARD, TAG_CLIENT);
	}
	free(text);
	return ok || s->state == SS_CLOSED ? ok : oom(s);
}

/* A statement made for an older epoch is made again, unseen, before it is bound. */
static bool reprepare(struct session *s, struct pstmt *p)
{
	uint8_t xform, kind;
	const char *reason = NULL;
	char *text = extended_text(s, p->query, &xform, &kind, &reason);
	if (!text)
		return refuse_extended(s, REQ_BIND, reason);
	bool ok = true;
	if (p->name[0]) {
		struct pktbuf b;
		pktbuf_init(&b);
		pktbuf_start(&b, 'C');
		pktbuf_put_byte(&b, 'S');
		pktbuf_put_string(&b, p->name);
		pktbuf_finish(&b);
		ok = send_built(s, &b, RESP_SKIP, TAG_REPORT, XF_NONE, NULL);
	}
	ok = ok && send_parse(s, p->name, text, p->tail, p->tail_len, RESP_SKIP, TAG_REPORT);
	free(text);
	if (ok) {
		slog(LOG_LEVEL_DEBUG, s->prefix, "statement \"%s\" prepared again for epoch %llu",
		     p->name, (unsigned long long)s->pin.epoch);
		p->epoch = s->pin.epoch;
		p->xform = xform;
		p->kind = kind;
	}
	return ok;
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
	if (!portal_set(s, portal, xform, p ? (uint8_t)(p->kind + 1) : 0))
		return oom(s);
	if (xform != XF_DROP_LAST)
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

static bool on_execute(struct session *s, const uint8_t *msg, uint32_t total)
{
	uint8_t xform = XF_NONE, timed = 0;
	const uint8_t *nul = s->eng ? memchr(msg + 5, 0, total - 5) : NULL;
	if (nul) {
		struct portal *p = portal_find(s->eng, (const char *)msg + 5);
		xform = p ? p->xform : XF_NONE;
		timed = p ? p->kind : 0;
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
