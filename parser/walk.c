/*
 * The walk over one statement's parse tree (see walk.h).
 *
 * The tree is walked generically: every object and array is visited, so a relation
 * named anywhere (a subquery, a CTE, a join, a LATERAL item, an ON CONFLICT clause...)
 * is found without a list of where relations may appear.  A RangeVar is recognised by
 * its "relname" member, whether it is wrapped ({"RangeVar": {...}} in lists) or a typed
 * field (InsertStmt.relation, IntoClause.rel, PartitionCmd.name...).  A few node types
 * carry a handler (table `nodes`): write statements mark their target and record their
 * clauses, DDL marks what it acts on, WITH scopes its CTE names.
 *
 * What is a relation reference is decided by RangeVars only.  A name inside a string
 * literal (a function argument such as pg_relation_size('ingest_idempotency'), a
 * regclass cast, a function or DO body) is not a reference: the server resolves those
 * at run time, where no proxy can follow.  The exceptions are DROP, COMMENT ON and
 * SECURITY LABEL, whose parse trees hold the relation as a list of name strings with
 * no location; their names are found in the text by token scanning.
 *
 * Locations, as libpg_query 15-4.0 gives them (checked against its output, and by the
 * corpus test): byte offsets into the whole query string, members equal to 0 left out.
 *   RawStmt       stmt_location: just after the previous ";" (leading blanks and
 *                 comments belong to the statement); stmt_len excludes the ";"; 0 or
 *                 absent on the last statement means "to the end of the string".
 *   RangeVar      the first byte of the possibly qualified name ("db.public.t", a
 *                 quote, U&); never ONLY, a bracket around the name, "*" or the alias.
 *                 The name's length is read from the text (scan_name_at), and checked
 *                 against relname/schemaname.
 *   OnConflictClause  the ON of "ON CONFLICT" (its infer clause: the "(" or ON CONSTRAINT).
 *   ResTarget     in a RETURNING or SELECT list: the start of the expression, an opening
 *                 parenthesis included; in a SET list: the column name.
 *   ParamRef      the "$".
 *   ColumnRef     the first byte of its first name (a quote included).
 */
#include "parser/walk.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "parser/scan.h"

/* Nested JSON values visited; cJSON refuses more than 1000 anyway. */
#define WALK_MAX_DEPTH  1100
#define WALK_MAX_SHADOW 32

struct walk {
	const struct walk_in *in;
	struct stmt_info *si;
	size_t stmt_start, stmt_end; /* the statement's span in in->text */
	const cJSON *principal;      /* the write statement whose ON CONFLICT and RETURNING count */
	const char *target_name;     /* an INSERT principal: its target's alias, or its name */
	bool locking;                /* some SELECT has FOR UPDATE/SHARE */
	size_t name_cursor;          /* DROP/COMMENT: where the next listed name is looked for */
	const char *shadow[WALK_MAX_SHADOW]; /* CTE names in scope equal to a configured name */
	unsigned nshadow;
	enum parse_status status; /* the first failure */
	char *err;
	size_t errlen;
};

/* What the position in the tree says about a relation named there. */
struct ctx {
	unsigned depth;
	bool in_cte;       /* under a WITH clause */
	bool executes;     /* false where the text is not run now: EXPLAIN without ANALYZE,
	                      a rule's actions */
	bool ddl_target;   /* a relation named here is what a DDL statement acts on */
	uint8_t returning; /* in an INSERT principal's RETURNING list: RET_* */
};

enum {
	RET_NO,
	RET_TOP,      /* a bare column name is the inserted row's */
	RET_SUBQUERY, /* inside a sub-SELECT of it: a bare name may be the subquery's */
};

typedef bool (*node_fn)(struct walk *w, const cJSON *body, struct ctx ctx);

static bool walk_value(struct walk *w, const cJSON *v, struct ctx ctx);
static bool walk_object(struct walk *w, const cJSON *obj, struct ctx ctx, const cJSON *skip);

__attribute__((format(printf, 3, 4))) static bool
walk_fail(struct walk *w, enum parse_status status, const char *fmt, ...)
{
	va_list ap;

	if (w->status == PARSE_OK) {
		w->status = status;
		va_start(ap, fmt);
		vsnprintf(w->err, w->errlen, fmt, ap);
		va_end(ap);
	}
	return false;
}

/* ---- small readers of the JSON ---- */

static const cJSON *get(const cJSON *obj, const char *key)
{
	return cJSON_GetObjectItemCaseSensitive(obj, key);
}

static const char *get_str(const cJSON *obj, const char *key)
{
	const cJSON *v = get(obj, key);
	return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* libpg_query leaves out members equal to 0 (a location 0, a false flag). */
static int get_int(const cJSON *obj, const char *key)
{
	const cJSON *v = get(obj, key);
	return cJSON_IsNumber(v) ? v->valueint : 0;
}

/* The body of a one-member node object: {"InsertStmt": {...}} -> the {...}. */
static const cJSON *node_body(const cJSON *node, const char *type)
{
	const cJSON *c = node ? node->child : NULL;
	return c && c->string && strcmp(c->string, type) == 0 ? c : NULL;
}

static const char *node_type(const cJSON *node)
{
	return node && node->child ? node->child->string : NULL;
}

static void copy_name(char *dst, size_t size, const char *src)
{
	snprintf(dst, size, "%s", src ? src : "");
}

/* ---- configured relations ---- */

static int rel_match(const struct parser_tables *t, const char *schema, const char *name)
{
	for (int i = 0; i < REL__COUNT; i++) {
		const struct rel_name *r = &t->rel[i];
		/* The proxy cannot know search_path: an unqualified name is the configured one. */
		if (strcmp(name, r->name) == 0 &&
		    (r->schema[0] == '\0' || !schema || strcmp(schema, r->schema) == 0))
			return i;
	}
	return -1;
}

/* True when name is listed in the comma-separated list (blanks around items ignored). */
static bool list_has(const char *list, const char *name)
{
	size_t n = strlen(name);

	while (list && *list) {
		list += strspn(list, " \t");
		size_t item = strcspn(list, ",");
		size_t len = item;
		while (len > 0 && (list[len - 1] == ' ' || list[len - 1] == '\t'))
			len--;
		if (len == n && memcmp(list, name, n) == 0)
			return true;
		list += item + (list[item] == ',');
	}
	return false;
}

static bool is_key_column(const struct walk *w, const char *col)
{
	return list_has(w->in->key_columns, col) ||
	       (w->in->partition_column && strcmp(col, w->in->partition_column) == 0);
}

/* ---- references ---- */

static bool ref_add(struct walk *w, int role, size_t start, size_t len, bool alias, bool target,
                    struct ctx ctx)
{
	struct stmt_info *si = w->si;
	struct rel_ref *r = NULL;

	/* libpg_query writes a shared subtree (UPDATE ... SET (a, b) = (SELECT ...)) once per
	   column: the same place in the text is one reference. */
	for (uint32_t i = 0; i < si->nrefs && !r; i++)
		if (si->refs[i].start == start)
			r = &si->refs[i];
	if (!r) {
		if (si->nrefs == PARSER_MAX_REFS)
			return walk_fail(w, PARSE_TOO_MANY, "more than %d references to %s",
			                 PARSER_MAX_REFS, w->in->t->rel[role].name);
		r = &si->refs[si->nrefs++];
		*r = (struct rel_ref){
		    .role = (enum rel_role)role, .start = (uint32_t)start, .len = (uint32_t)len};
	}
	r->has_alias |= alias;
	r->is_target |= target;
	r->in_cte |= ctx.in_cte;
	if (target && ctx.executes)
		si->writes = true;
	return true;
}

static struct rel_ref *ref_at(struct walk *w, size_t start)
{
	for (uint32_t i = 0; i < w->si->nrefs; i++)
		if (w->si->refs[i].start == start)
			return &w->si->refs[i];
	return NULL; /* not reached: called right after ref_add() */
}

/*
 * A RangeVar without inh: the grammar wrote it "ONLY name" or "ONLY ( name )"
 * (relation_expr), the keyword being the token before the name or before its "(".  The
 * tree has no location for ONLY, so the tokens of the statement up to the name are read
 * (comments and blanks skipped as the server's scanner does).  Other RangeVars without
 * inh (DDL that takes no ONLY) find no keyword there and stay as they are.
 */
static void ref_only(struct walk *w, struct rel_ref *r)
{
	const char *text = w->in->text;
	struct scan_tok tok, prev = {0}, before = {0};
	size_t pos = w->stmt_start;

	for (scan_next(text, r->start, &pos, &tok); tok.kind != TOK_END;
	     scan_next(text, r->start, &pos, &tok)) {
		before = prev;
		prev = tok;
	}
	bool paren = prev.kind == TOK_CHAR && text[prev.start] == '(';
	const struct scan_tok *kw = paren ? &before : &prev;
	if (!scan_tok_is(text, kw, "only"))
		return;
	if (paren) {
		pos = r->start + r->len;
		scan_next(text, w->stmt_end, &pos, &tok);
		if (tok.kind != TOK_CHAR || text[tok.start] != ')')
			return;
		r->only_close = (uint32_t)tok.start;
	}
	r->only = true;
	r->only_start = (uint32_t)kw->start;
}

/*
 * A RangeVar with inh may be written "name *" (relation_expr): the "*" is the token
 * right after the name, where no other relation's name can be followed by one.
 */
static void ref_star(struct walk *w, struct rel_ref *r)
{
	const char *text = w->in->text;
	struct scan_tok tok;
	size_t pos = (size_t)r->start + r->len;

	scan_next(text, w->stmt_end, &pos, &tok);
	if (tok.kind == TOK_OP && tok.end == tok.start + 1 && text[tok.start] == '*')
		r->star = (uint32_t)tok.start;
}

/* The span of the name a RangeVar's location points at, checked against the tree. */
static bool ref_locate(struct walk *w, int loc, const char *schema, const char *relname,
                       size_t *len)
{
	struct scan_name sn;
	const char *text = w->in->text;

	if (loc < (int)w->stmt_start || (size_t)loc >= w->stmt_end ||
	    !scan_name_at(text, w->stmt_end, (size_t)loc, &sn) ||
	    !scan_name_part_is(&sn, sn.nparts - 1, relname) ||
	    (schema && (sn.nparts < 2 || !scan_name_part_is(&sn, sn.nparts - 2, schema))))
		return walk_fail(w, PARSE_SYNTAX_ERROR,
		                 "cannot find relation name %s at offset %d of the text", relname,
		                 loc);
	*len = sn.part_end[sn.nparts - 1] - (size_t)loc;
	return true;
}

static bool shadowed(const struct walk *w, const char *name)
{
	for (unsigned i = 0; i < w->nshadow; i++)
		if (strcmp(w->shadow[i], name) == 0)
			return true;
	return false;
}

/*
 * A RangeVar.  `shadowable`: an unqualified name here may be a CTE of that name in
 * scope (not so for the target of INSERT/UPDATE/DELETE/MERGE/COPY, always a table).
 */
static bool walk_rangevar(struct walk *w, const cJSON *rv, struct ctx ctx, bool target,
                          bool shadowable, int *role_out)
{
	const char *relname = get_str(rv, "relname");
	const char *schema = get_str(rv, "schemaname");
	int role;
	size_t len = 0;

	if (!relname || (role = rel_match(w->in->t, schema, relname)) < 0)
		return true;
	if (shadowable && !schema && shadowed(w, relname))
		return true;
	if (role_out)
		*role_out = role;
	int loc = get_int(rv, "location");
	if (!ref_locate(w, loc, schema, relname, &len))
		return false;
	if (!ref_add(w, role, (size_t)loc, len, get(rv, "alias") != NULL, target, ctx))
		return false;
	struct rel_ref *r = ref_at(w, (size_t)loc);
	if (!r)
		return walk_fail(w, PARSE_SYNTAX_ERROR, "reference to %s lost", relname);
	r->has_catalog |= get_str(rv, "catalogname") != NULL;
	if (!cJSON_IsTrue(get(rv, "inh")))
		ref_only(w, r);
	else
		ref_star(w, r);
	return true;
}

/* ---- names given as string lists (DROP, COMMENT ON, SECURITY LABEL) ---- */

enum list_shape {
	SHAPE_NONE,      /* the object is no relation */
	SHAPE_WHOLE,     /* [[catalog,] schema,] table */
	SHAPE_MINUS_ONE, /* table parts, then the trigger/rule/policy/constraint name */
	SHAPE_COLUMN,    /* table parts, then the column: written table.column */
};

static enum list_shape list_shape(const char *objtype)
{
	static const char *const whole[] = {"OBJECT_TABLE", "OBJECT_FOREIGN_TABLE", "OBJECT_VIEW",
	                                    "OBJECT_MATVIEW"};
	static const char *const minus_one[] = {"OBJECT_TRIGGER", "OBJECT_RULE", "OBJECT_POLICY",
	                                        "OBJECT_TABCONSTRAINT"};

	for (size_t i = 0; objtype && i < sizeof(whole) / sizeof(whole[0]); i++)
		if (strcmp(objtype, whole[i]) == 0)
			return SHAPE_WHOLE;
	for (size_t i = 0; objtype && i < sizeof(minus_one) / sizeof(minus_one[0]); i++)
		if (strcmp(objtype, minus_one[i]) == 0)
			return SHAPE_MINUS_ONE;
	return objtype && strcmp(objtype, "OBJECT_COLUMN") == 0 ? SHAPE_COLUMN : SHAPE_NONE;
}

/* The next name in the text (from the cursor) made of exactly these parts. */
static bool name_find(struct walk *w, const char *const *parts, unsigned n, size_t *start,
                      struct scan_name *sn)
{
	const char *text = w->in->text;
	struct scan_tok tok;
	size_t pos = w->name_cursor;

	for (scan_next(text, w->stmt_end, &pos, &tok); tok.kind != TOK_END;
	     scan_next(text, w->stmt_end, &pos, &tok)) {
		if ((tok.kind != TOK_WORD && tok.kind != TOK_QIDENT) ||
		    !scan_name_at(text, w->stmt_end, tok.start, sn))
			continue;
		unsigned i = 0;
		while (sn->nparts == n && i < n && scan_name_part_is(sn, i, parts[i]))
			i++;
		/* A whole name is skipped, so "s.t" never offers its "t" alone. */
		pos = sn->part_end[sn->nparts - 1];
		if (i == n) {
			*start = tok.start;
			w->name_cursor = pos;
			return true;
		}
	}
	return false;
}

/* One {"List": {"items": [{"String": {"sval": ...}}, ...]}} naming an object. */
static bool list_ref(struct walk *w, const cJSON *list, enum list_shape shape, struct ctx ctx)
{
	const char *parts[SCAN_MAX_PARTS + 1];
	unsigned n = 0, nrel;
	const cJSON *item;
	struct scan_name sn;
	size_t start;
	int role;

	cJSON_ArrayForEach(item, get(node_body(list, "List"), "items"))
	{
		const char *s = get_str(node_body(item, "String"), "sval");
		if (!s || n == SCAN_MAX_PARTS + 1)
			return true; /* not a name PostgreSQL accepts for a relation */
		parts[n++] = s;
	}
	nrel = shape == SHAPE_WHOLE ? n : n - 1;
	if (n == 0 || nrel == 0 || nrel > SCAN_MAX_PARTS)
		return true;
	role = rel_match(w->in->t, nrel > 1 ? parts[nrel - 2] : NULL, parts[nrel - 1]);
	if (role < 0)
		return true;
	/* "TRIGGER trg ON tbl": the relation follows the object's own name. */
	if ((shape == SHAPE_MINUS_ONE && !name_find(w, parts + nrel, 1, &start, &sn)) ||
	    !name_find(w, parts, shape == SHAPE_COLUMN ? n : nrel, &start, &sn))
		return walk_fail(w, PARSE_SYNTAX_ERROR, "cannot find relation name %s in the text",
		                 parts[nrel - 1]);
	return ref_add(w, role, start, sn.part_end[nrel - 1] - start, false, ctx.ddl_target, ctx);
}

/* ---- node handlers ---- */

static bool h_param(struct walk *w, const cJSON *body, struct ctx ctx)
{
	(void)body;
	(void)ctx;
	w->si->has_params = true;
	return true;
}

static bool h_ddl(struct walk *w, const cJSON *body, struct ctx ctx)
{
	ctx.ddl_target = true;
	return walk_object(w, body, ctx, NULL);
}

/* Positions that name a relation only to read its definition: LIKE, REFERENCES. */
static bool h_refonly(struct walk *w, const cJSON *body, struct ctx ctx)
{
	ctx.ddl_target = false;
	return walk_object(w, body, ctx, NULL);
}

static bool h_names(struct walk *w, const cJSON *body, struct ctx ctx)
{
	const char *type = get_str(body, "removeType");
	enum list_shape shape = list_shape(type ? type : get_str(body, "objtype"));
	const cJSON *list;

	ctx.ddl_target = true;
	w->name_cursor = w->stmt_start;
	if (shape != SHAPE_NONE) {
		cJSON_ArrayForEach(list, get(body, "objects"))
		{
			if (!list_ref(w, list, shape, ctx))
				return false;
		}
		list = get(body, "object");
		if (list && !list_ref(w, list, shape, ctx))
			return false;
	}
	return walk_object(w, body, ctx, NULL);
}

static bool h_rule(struct walk *w, const cJSON *body, struct ctx ctx)
{
	const cJSON *rel = get(body, "relation");

	if (rel && !walk_rangevar(w, rel, ctx, true, false, NULL))
		return false;
	/* The actions run later, when the rule fires, not now. */
	ctx.ddl_target = false;
	ctx.executes = false;
	return walk_object(w, body, ctx, rel);
}

static bool h_select(struct walk *w, const cJSON *body, struct ctx ctx)
{
	const cJSON *into = get(body, "intoClause");
	struct ctx into_ctx = ctx;

	if (get(body, "lockingClause"))
		w->locking = true;
	if (ctx.returning != RET_NO)
		ctx.returning = RET_SUBQUERY;
	/* SELECT ... INTO creates the relation it names. */
	into_ctx.ddl_target = true;
	into_ctx.depth++;
	if (into && !walk_value(w, into, into_ctx))
		return false;
	ctx.ddl_target = false;
	return walk_object(w, body, ctx, into);
}

/*
 * COPY name [(columns)] TO: where the name and its column list end, and whether pre-9.0
 * options are written (BINARY before the name, [USING] DELIMITERS after it), which the
 * COPY (query) form the rename turns it into does not accept.
 */
static bool copy_relation(struct walk *w, const struct rel_ref *r, bool cols)
{
	const char *text = w->in->text;
	struct stmt_info *si = w->si;
	struct scan_tok tok, prev = {0};
	size_t pos = w->stmt_start;

	if (!r)
		return walk_fail(w, PARSE_SYNTAX_ERROR, "COPY relation not found");
	for (scan_next(text, r->start, &pos, &tok); tok.kind != TOK_END;
	     scan_next(text, r->start, &pos, &tok))
		prev = tok;
	si->copy_legacy = scan_tok_is(text, &prev, "binary");
	si->copy_relation = true;
	si->copy_rel_end = r->start + r->len;
	pos = si->copy_rel_end;
	if (cols) {
		/* A column list holds names only: the first ")" closes it. */
		scan_next(text, w->stmt_end, &pos, &tok);
		if (tok.kind != TOK_CHAR || text[tok.start] != '(')
			return walk_fail(w, PARSE_SYNTAX_ERROR, "COPY column list not found");
		si->copy_cols_start = (uint32_t)tok.end;
		do
			scan_next(text, w->stmt_end, &pos, &tok);
		while (tok.kind != TOK_END && !(tok.kind == TOK_CHAR && text[tok.start] == ')'));
		if (tok.kind == TOK_END)
			return walk_fail(w, PARSE_SYNTAX_ERROR, "COPY column list not closed");
		si->copy_cols_len = (uint32_t)(tok.start - si->copy_cols_start);
		si->copy_rel_end = (uint32_t)tok.end;
	}
	for (scan_next(text, w->stmt_end, &pos, &tok); tok.kind != TOK_END;
	     scan_next(text, w->stmt_end, &pos, &tok))
		if (scan_tok_is(text, &tok, "delimiters"))
			si->copy_legacy = true;
	return true;
}

static bool h_copy(struct walk *w, const cJSON *body, struct ctx ctx)
{
	const cJSON *rel = get(body, "relation");
	bool from = cJSON_IsTrue(get(body, "is_from"));
	int role = -1;

	ctx.ddl_target = false;
	if (rel && !walk_rangevar(w, rel, ctx, from, false, &role))
		return false;
	if (rel && role >= 0 && !from &&
	    !copy_relation(w, ref_at(w, (size_t)get_int(rel, "location")),
	                   cJSON_GetArraySize(get(body, "attlist")) > 0))
		return false;
	return walk_object(w, body, ctx, rel);
}

/*
 * A system column of the inserted row named in RETURNING (struct sys_ref): bare at the
 * list's own level, or qualified by the name the target is visible under.  A bare name
 * inside a sub-SELECT belongs to the subquery's relations when they have it (all tables
 * do), so it is left alone (a qualified one is taken as the target's there, unless
 * the sub-SELECT hides that name with one of its own: not looked for); schema.table.xmax
 * is the target's when it names the table in its configured schema (the engine replaces
 * the whole reference; the view's alias could not take the schema).
 */
static bool sysref_note(struct walk *w, const cJSON *body, const cJSON *fields, const char *name,
                        struct ctx ctx)
{
	struct stmt_info *si = w->si;
	int n = cJSON_GetArraySize(fields);
	const char *first = get_str(node_body(cJSON_GetArrayItem(fields, 0), "String"), "sval");
	int loc = get_int(body, "location");
	struct scan_name sn;
	int col = 0;

	while (col < SYSCOL__COUNT && strcmp(name, sys_column_name((enum sys_column)col)) != 0)
		col++;
	if (col == SYSCOL__COUNT)
		return true;
	/* schema.table.xmax: the target's name with the schema the table is configured in. */
	const char *second = n == 3 ? get_str(node_body(cJSON_GetArrayItem(fields, 1), "String"), "sval")
	                            : NULL;
	bool qualified = n == 3 && first && second && strcmp(second, w->target_name) == 0 &&
	                 rel_match(w->in->t, first, second) == REL_OLD;
	if (n == 1 ? ctx.returning != RET_TOP
	           : !qualified && (n != 2 || !first || strcmp(first, w->target_name) != 0))
		return true;
	if (loc < (int)w->stmt_start || (size_t)loc >= w->stmt_end ||
	    !scan_name_at(w->in->text, w->stmt_end, (size_t)loc, &sn) || sn.nparts != (unsigned)n ||
	    !scan_name_part_is(&sn, sn.nparts - 1, name))
		return walk_fail(w, PARSE_SYNTAX_ERROR,
		                 "cannot find column %s at offset %d of the text", name, loc);
	if (si->nsysrefs < PARSER_MAX_SYSREFS) {
		struct sys_ref *r = &si->sysrefs[si->nsysrefs];
		r->start = (uint32_t)loc;
		r->len = (uint32_t)(sn.part_end[sn.nparts - 1] - (size_t)loc);
		r->column = (enum sys_column)col;
	}
	si->nsysrefs++;
	return true;
}

/* A ColumnRef's field i as a name, NULL when it is no String (the * of t.*). */
static const char *field_name(const cJSON *fields, int i)
{
	return get_str(node_body(cJSON_GetArrayItem(fields, i), "String"), "sval");
}

/*
 * schema.table.column naming the table (struct qual_col): the span up to and including
 * the dot before the table's name.  PostgreSQL reads three or more names as
 * [catalog.]schema.table.column first, so the table is the second to last field.
 */
static bool qualcol_note(struct walk *w, const cJSON *body, const cJSON *fields)
{
	struct stmt_info *si = w->si;
	int n = cJSON_GetArraySize(fields);
	const char *schema = n >= 3 ? field_name(fields, n - 3) : NULL;
	const char *table = n >= 3 ? field_name(fields, n - 2) : NULL;
	int loc = get_int(body, "location");
	struct scan_name sn;
	struct scan_tok dot;

	if (!schema || !table || rel_match(w->in->t, schema, table) != REL_OLD)
		return true;
	if (loc < (int)w->stmt_start || (size_t)loc >= w->stmt_end ||
	    !scan_name_at(w->in->text, w->stmt_end, (size_t)loc, &sn) ||
	    sn.nparts < (unsigned)n - 1 || !scan_name_part_is(&sn, (unsigned)n - 2, table))
		return walk_fail(w, PARSE_SYNTAX_ERROR,
		                 "cannot find column reference %s.%s... at offset %d of the text",
		                 schema, table, loc);
	size_t pos = sn.part_end[n - 3];
	scan_next(w->in->text, w->stmt_end, &pos, &dot);
	if (dot.kind != TOK_CHAR || w->in->text[dot.start] != '.')
		return walk_fail(w, PARSE_SYNTAX_ERROR, "no dot after %s at offset %zu", schema,
		                 sn.part_end[n - 3]);
	if (si->nqualcols < PARSER_MAX_QUALCOLS) {
		si->qualcols[si->nqualcols].start = (uint32_t)loc;
		si->qualcols[si->nqualcols].len = (uint32_t)(dot.end - (size_t)loc);
	}
	si->nqualcols++;
	return true;
}

/* ctid names a row's place in its heap; in a partitioned table each partition has its own. */
static bool h_columnref(struct walk *w, const cJSON *body, struct ctx ctx)
{
	const cJSON *fields = get(body, "fields");
	const cJSON *last = cJSON_GetArrayItem(fields, cJSON_GetArraySize(fields) - 1);
	const char *name = get_str(node_body(last, "String"), "sval");

	if (name && strcmp(name, "ctid") == 0)
		w->si->uses_ctid = true;
	uint32_t nsys = w->si->nsysrefs;
	if (name && ctx.returning != RET_NO && !sysref_note(w, body, fields, name, ctx))
		return false;
	/* A system column rewritten whole (sysref) loses its schema with it. */
	if (w->si->nsysrefs == nsys && !qualcol_note(w, body, fields))
		return false;
	return walk_object(w, body, ctx, NULL);
}

static bool is_write_node(const cJSON *node)
{
	const char *type = node_type(node);
	return type && (strcmp(type, "InsertStmt") == 0 || strcmp(type, "UpdateStmt") == 0 ||
	                strcmp(type, "DeleteStmt") == 0 || strcmp(type, "MergeStmt") == 0);
}

static bool h_cte(struct walk *w, const cJSON *body, struct ctx ctx)
{
	if (is_write_node(get(body, "ctequery")))
		w->si->writable_cte = true;
	ctx.in_cte = true;
	return walk_object(w, body, ctx, NULL);
}

/* ANALYZE runs the statement: "ANALYZE", "(ANALYZE)", "(ANALYZE on)", not "(ANALYZE 0)". */
static bool explain_analyze(const cJSON *options)
{
	const cJSON *opt;
	bool on = false;

	cJSON_ArrayForEach(opt, options)
	{
		const cJSON *def = node_body(opt, "DefElem");
		const char *name = get_str(def, "defname");
		if (!name || strcmp(name, "analyze") != 0)
			continue;
		const cJSON *arg = get(def, "arg");
		const char *s = get_str(node_body(arg, "String"), "sval");
		if (!arg)
			on = true;
		else if (s)
			on =
			    strcmp(s, "false") != 0 && strcmp(s, "off") != 0 && strcmp(s, "0") != 0;
		else if (node_body(arg, "Integer"))
			on = get_int(node_body(arg, "Integer"), "ival") != 0;
		else if (node_body(arg, "Boolean"))
			on = cJSON_IsTrue(get(node_body(arg, "Boolean"), "boolval"));
		else
			on = true; /* unknown spelling: assume it runs */
	}
	return on;
}

static bool h_explain(struct walk *w, const cJSON *body, struct ctx ctx)
{
	ctx.executes = ctx.executes && explain_analyze(get(body, "options"));
	return walk_object(w, body, ctx, NULL);
}

static bool h_named(struct walk *w, const cJSON *body, struct ctx ctx)
{
	copy_name(w->si->prepared_name, sizeof(w->si->prepared_name), get_str(body, "name"));
	return walk_object(w, body, ctx, NULL);
}

/* ---- write statements ---- */

static void targets_check_keys(struct walk *w, const cJSON *list)
{
	const cJSON *item;

	cJSON_ArrayForEach(item, list)
	{
		const char *col = get_str(node_body(item, "ResTarget"), "name");
		if (col && is_key_column(w, col))
			w->si->sets_key_columns = true;
	}
}

static void write_check_keys(struct walk *w, const cJSON *body)
{
	const cJSON *when;

	targets_check_keys(w, get(body, "targetList")); /* UpdateStmt */
	targets_check_keys(w, get(get(body, "onConflictClause"), "targetList"));
	cJSON_ArrayForEach(when, get(body, "mergeWhenClauses"))
	{
		const cJSON *c = node_body(when, "MergeWhenClause");
		const char *cmd = get_str(c, "commandType");
		if (cmd && strcmp(cmd, "CMD_UPDATE") == 0)
			targets_check_keys(w, get(c, "targetList"));
	}
}

/* "ON CONFLICT ... " from the location libpg_query gives (the ON) to RETURNING or the end. */
static bool write_conflict(struct walk *w, const cJSON *occ)
{
	struct stmt_info *si = w->si;
	const char *action = get_str(occ, "action");
	int loc = get_int(occ, "location");
	struct scan_tok tok;
	size_t pos = (size_t)loc;

	if (loc < (int)w->stmt_start || (size_t)loc >= w->stmt_end)
		return walk_fail(w, PARSE_SYNTAX_ERROR, "ON CONFLICT outside its statement");
	scan_next(w->in->text, w->stmt_end, &pos, &tok);
	if (tok.start != (size_t)loc || !scan_tok_is(w->in->text, &tok, "on"))
		return walk_fail(w, PARSE_SYNTAX_ERROR, "ON CONFLICT not at offset %d", loc);
	si->conflict =
	    action && strcmp(action, "ONCONFLICT_UPDATE") == 0 ? CONFLICT_UPDATE : CONFLICT_NOTHING;
	si->conflict_on_constraint = get_str(get(occ, "infer"), "conname") != NULL;
	si->conflict_start = (uint32_t)loc;
	si->conflict_len =
	    (uint32_t)(scan_clause_end(w->in->text, (size_t)loc, w->stmt_end, "returning") -
	               (size_t)loc);
	return true;
}

/*
 * The RETURNING list: from the first item's location (the start of its expression, an
 * opening parenthesis included) to the end of the last token of the statement.  RETURNING
 * is the last clause of INSERT, UPDATE, DELETE (and MERGE in later versions), so the list
 * ends where the statement does, less trailing blanks and comments.
 */
static bool write_returning(struct walk *w, const cJSON *list)
{
	int loc = get_int(node_body(cJSON_GetArrayItem(list, 0), "ResTarget"), "location");

	if (loc < (int)w->stmt_start || (size_t)loc >= w->stmt_end)
		return walk_fail(w, PARSE_SYNTAX_ERROR, "RETURNING list outside its statement");
	w->si->has_returning = true;
	w->si->returning_start = (uint32_t)loc;
	w->si->returning_len =
	    (uint32_t)(scan_clause_end(w->in->text, (size_t)loc, w->stmt_end, NULL) - (size_t)loc);
	return true;
}

static bool h_write(struct walk *w, const cJSON *body, struct ctx ctx)
{
	const cJSON *rel = get(body, "relation");
	const cJSON *occ = get(body, "onConflictClause");
	const cJSON *ret = get(body, "returningList");
	int role = -1;

	ctx.ddl_target = false;
	if (rel && !walk_rangevar(w, rel, ctx, true, false, &role))
		return false;
	if (role >= 0) /* only a configured table's key matters */
		write_check_keys(w, body);
	if (body == w->principal) {
		/* RETURNING of an INSERT sees the target alone: its alias, else its name. */
		if (rel && strcmp(body->string, "InsertStmt") == 0) {
			const char *alias = get_str(get(rel, "alias"), "aliasname");
			w->target_name = alias ? alias : get_str(rel, "relname");
		}
		if (occ && !write_conflict(w, occ))
			return false;
		if (cJSON_GetArraySize(ret) > 0 && !write_returning(w, ret))
			return false;
	}
	return walk_object(w, body, ctx, rel);
}

/* ---- the walk ---- */

struct node_entry {
	const char *type;
	enum stmt_kind kind; /* of a statement of this type (refined in stmt_classify) */
	node_fn fn;
};

/* Sorted by type for bsearch. */
static const struct node_entry nodes[] = {
    {"AlterObjectSchemaStmt", STMT_DDL, h_ddl},
    {"AlterOwnerStmt", STMT_DDL, h_ddl},
    {"AlterPolicyStmt", STMT_DDL, h_ddl},
    {"AlterPublicationStmt", STMT_DDL, h_ddl},
    {"AlterTableStmt", STMT_DDL, h_ddl},
    {"ClusterStmt", STMT_DDL, h_ddl},
    {"ColumnRef", STMT_OTHER, h_columnref},
    {"CommentStmt", STMT_DDL, h_names},
    {"CommonTableExpr", STMT_OTHER, h_cte},
    {"Constraint", STMT_OTHER, h_refonly},
    {"CopyStmt", STMT_COPY_TO, h_copy},
    {"CreateForeignTableStmt", STMT_DDL, h_ddl},
    {"CreatePolicyStmt", STMT_DDL, h_ddl},
    {"CreatePublicationStmt", STMT_DDL, h_ddl},
    {"CreateStatsStmt", STMT_DDL, h_ddl},
    {"CreateStmt", STMT_DDL, h_ddl},
    {"CreateTableAsStmt", STMT_DDL, h_ddl},
    {"CreateTrigStmt", STMT_DDL, h_ddl},
    {"DeallocateStmt", STMT_DEALLOCATE, h_named},
    {"DeleteStmt", STMT_DELETE, h_write},
    {"DropStmt", STMT_DDL, h_names},
    {"ExecuteStmt", STMT_EXECUTE, h_named},
    {"ExplainStmt", STMT_EXPLAIN, h_explain},
    {"GrantStmt", STMT_DDL, h_ddl},
    {"IndexStmt", STMT_DDL, h_ddl},
    {"InsertStmt", STMT_INSERT, h_write},
    {"LockStmt", STMT_DDL, h_ddl},
    {"MergeStmt", STMT_MERGE, h_write},
    {"ParamRef", STMT_OTHER, h_param},
    {"PrepareStmt", STMT_PREPARE, h_named},
    {"RefreshMatViewStmt", STMT_DDL, h_ddl},
    {"ReindexStmt", STMT_DDL, h_ddl},
    {"RenameStmt", STMT_DDL, h_ddl},
    {"RuleStmt", STMT_DDL, h_rule},
    {"SecLabelStmt", STMT_DDL, h_names},
    {"SelectStmt", STMT_SELECT, h_select},
    {"TableLikeClause", STMT_OTHER, h_refonly},
    {"TruncateStmt", STMT_TRUNCATE, h_ddl},
    {"UpdateStmt", STMT_UPDATE, h_write},
    {"VacuumStmt", STMT_DDL, h_ddl},
    {"ViewStmt", STMT_DDL, h_ddl},
};

static int node_cmp(const void *key, const void *entry)
{
	return strcmp(key, ((const struct node_entry *)entry)->type);
}

static const struct node_entry *node_find(const char *type)
{
	/* Node types are capitalised, member names are not: most keys skip the search. */
	if (!type || type[0] < 'A' || type[0] > 'Z')
		return NULL;
	return bsearch(type, nodes, sizeof(nodes) / sizeof(nodes[0]), sizeof(nodes[0]), node_cmp);
}

static bool shadow_push(struct walk *w, const cJSON *cte)
{
	const char *name = get_str(node_body(cte, "CommonTableExpr"), "ctename");

	if (!name || rel_match(w->in->t, NULL, name) < 0)
		return true;
	if (w->nshadow == WALK_MAX_SHADOW)
		return walk_fail(w, PARSE_TOO_MANY, "too many CTEs named like %s", name);
	w->shadow[w->nshadow++] = name;
	return true;
}

/*
 * WITH: a CTE's name hides a table of that name in the statement, and in the CTEs
 * after it; with RECURSIVE, in all of them.  Names stay pushed until the statement
 * that holds the WITH is done (walk_object pops them).
 */
static bool walk_with(struct walk *w, const cJSON *with, struct ctx ctx)
{
	const cJSON *ctes = get(with, "ctes");
	const cJSON *cte;
	bool recursive = cJSON_IsTrue(get(with, "recursive"));

	ctx.in_cte = true;
	ctx.depth++;
	cJSON_ArrayForEach(cte, ctes)
	{
		if (recursive && !shadow_push(w, cte))
			return false;
	}
	cJSON_ArrayForEach(cte, ctes)
	{
		if (!walk_value(w, cte, ctx) || (!recursive && !shadow_push(w, cte)))
			return false;
	}
	return true;
}

static bool walk_object(struct walk *w, const cJSON *obj, struct ctx ctx, const cJSON *skip)
{
	const cJSON *with = NULL;
	const cJSON *c;
	unsigned mark = w->nshadow;
	bool ok = true;

	if (++ctx.depth > WALK_MAX_DEPTH)
		return walk_fail(w, PARSE_TOO_DEEP, "parse tree nested too deeply");
	/* One pass for the two members that change how the others are read. */
	for (c = obj->child; c; c = c->next) {
		if (c->string[0] == 'r' && strcmp(c->string, "relname") == 0 && cJSON_IsString(c))
			return walk_rangevar(w, obj, ctx, ctx.ddl_target, true, NULL);
		if (c->string[0] == 'w' && strcmp(c->string, "withClause") == 0)
			with = c;
	}
	if (with)
		ok = walk_with(w, with, ctx);
	for (c = obj->child; ok && c; c = c->next) {
		const struct node_entry *e = node_find(c->string);
		struct ctx cc = ctx;
		if (c == with || c == skip)
			continue;
		if (obj == w->principal && w->target_name &&
		    strcmp(c->string, "returningList") == 0)
			cc.returning = RET_TOP;
		ok = e ? e->fn(w, c, cc) : walk_value(w, c, cc);
	}
	w->nshadow = mark;
	return ok;
}

static bool walk_value(struct walk *w, const cJSON *v, struct ctx ctx)
{
	const cJSON *c;

	if (cJSON_IsObject(v))
		return walk_object(w, v, ctx, NULL);
	if (!cJSON_IsArray(v))
		return true;
	if (++ctx.depth > WALK_MAX_DEPTH)
		return walk_fail(w, PARSE_TOO_DEEP, "parse tree nested too deeply");
	for (c = v->child; c; c = c->next)
		if (!walk_value(w, c, ctx))
			return false;
	return true;
}

/* ---- the statement ---- */

/* INSERT ... VALUES (one VALUES list, however ordered or limited) vs INSERT ... SELECT. */
static enum stmt_kind insert_kind(const cJSON *body)
{
	const cJSON *sel = node_body(get(body, "selectStmt"), "SelectStmt");
	const char *op = get_str(sel, "op");

	if (!sel || (get(sel, "valuesLists") && (!op || strcmp(op, "SETOP_NONE") == 0)))
		return STMT_INSERT;
	return STMT_INSERT_SELECT;
}

static enum stmt_kind stmt_classify(const struct walk *w, const cJSON *stmt)
{
	const cJSON *body = stmt ? stmt->child : NULL;
	const struct node_entry *e = body ? node_find(body->string) : NULL;

	if (!e)
		return STMT_OTHER;
	switch (e->kind) {
	case STMT_SELECT:
		if (get(body, "intoClause"))
			return STMT_DDL;
		return w->locking ? STMT_SELECT_LOCKING : STMT_SELECT;
	case STMT_INSERT:
		return insert_kind(body);
	case STMT_COPY_TO:
		return cJSON_IsTrue(get(body, "is_from")) ? STMT_COPY_FROM : STMT_COPY_TO;
	default:
		return e->kind;
	}
}

/* The statement PREPARE, EXPLAIN and DECLARE CURSOR wrap, NULL for other kinds. */
static const cJSON *stmt_wrapped(const cJSON *stmt)
{
	const char *type = node_type(stmt);

	if (type && (strcmp(type, "PrepareStmt") == 0 || strcmp(type, "ExplainStmt") == 0 ||
	             strcmp(type, "DeclareCursorStmt") == 0))
		return get(stmt->child, "query");
	return NULL;
}

enum parse_status walk_stmt(const struct walk_in *in, const cJSON *stmt, size_t start, size_t end,
                            struct stmt_info *si, char *err, size_t errlen)
{
	const cJSON *inner = stmt_wrapped(stmt);
	struct walk w = {
	    .in = in,
	    .si = si,
	    .stmt_start = start,
	    .stmt_end = end,
	    .principal = inner ? (inner->child) : (stmt ? stmt->child : NULL),
	    .status = PARSE_OK,
	    .err = err,
	    .errlen = errlen,
	};
	struct ctx ctx = {.executes = true};

	memset(si, 0, sizeof(*si));
	si->start = (uint32_t)start;
	si->len = (uint32_t)(end - start);
	if (!walk_value(&w, stmt, ctx))
		return w.status;
	si->kind = stmt_classify(&w, stmt);
	si->inner = inner ? stmt_classify(&w, inner) : STMT_OTHER;
	si->touches = si->nrefs > 0;
	return PARSE_OK;
}
