/*
 * parser_parse: bound the text, hand it to libpg_query, read the tree (walk.c).
 *
 * Why JSON: on this machine (Debian 12, libpg_query 15-4.0.0, gcc -O2) pg_query_parse()
 * of the application's 165-byte idempotent INSERT takes about 3.2 us and cJSON reads its
 * 1 KB of output in about 3.1 us, while pg_query_parse_protobuf() followed by
 * protobuf-c's unpack takes about 15 us; a whole cold parser_parse() about 10 us
 * (bench/parser_bench.c prints all of these).  Debian also packages no protobuf-c
 * headers for libpg_query's messages.
 */
#include "parser/parser.h"

#include <cjson/cJSON.h>
#include <pg_query.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "parser/scan.h"
#include "parser/walk.h"

static const char *const kind_names[STMT__COUNT] = {
    [STMT_OTHER] = "OTHER",
    [STMT_SELECT] = "SELECT",
    [STMT_SELECT_LOCKING] = "SELECT_LOCKING",
    [STMT_INSERT] = "INSERT",
    [STMT_INSERT_SELECT] = "INSERT_SELECT",
    [STMT_UPDATE] = "UPDATE",
    [STMT_DELETE] = "DELETE",
    [STMT_MERGE] = "MERGE",
    [STMT_COPY_FROM] = "COPY_FROM",
    [STMT_COPY_TO] = "COPY_TO",
    [STMT_TRUNCATE] = "TRUNCATE",
    [STMT_DDL] = "DDL",
    [STMT_PREPARE] = "PREPARE",
    [STMT_EXECUTE] = "EXECUTE",
    [STMT_DEALLOCATE] = "DEALLOCATE",
    [STMT_EXPLAIN] = "EXPLAIN",
};

const char *stmt_kind_name(enum stmt_kind kind)
{
	return (unsigned)kind < STMT__COUNT ? kind_names[kind] : "?";
}

const char *sys_column_name(enum sys_column col)
{
	static const char *const names[SYSCOL__COUNT] = {
	    [SYSCOL_XMAX] = "xmax", [SYSCOL_XMIN] = "xmin", [SYSCOL_CMIN] = "cmin",
	    [SYSCOL_CMAX] = "cmax", [SYSCOL_CTID] = "ctid", [SYSCOL_TABLEOID] = "tableoid",
	};
	return (unsigned)col < SYSCOL__COUNT ? names[col] : "?";
}

void parse_result_free(struct parse_result *r)
{
	if (!r)
		return;
	free(r->stmts);
	free(r);
}

/*
 * A result that says no.  Nothing is known about the statements, so `touches` stays
 * true: the caller only parses what the prefilter let through, and must treat an
 * unparsed statement as one that may touch the tables.
 */
__attribute__((format(printf, 3, 4))) static struct parse_result *
result_fail(struct parse_result *r, enum parse_status status, const char *fmt, ...)
{
	va_list ap;

	free(r->stmts);
	r->stmts = NULL;
	r->nstmts = 0;
	r->status = status;
	r->touches = true;
	va_start(ap, fmt);
	vsnprintf(r->error, sizeof(r->error), fmt, ap);
	va_end(ap);
	return r;
}

/* The deepest nesting of a JSON text, to tell cJSON's depth limit from a lack of memory. */
static unsigned json_depth(const char *json)
{
	unsigned depth = 0, max = 0;
	bool in_string = false;

	for (const char *p = json; *p; p++) {
		if (in_string) {
			if (*p == '\\' && p[1])
				p++;
			else if (*p == '"')
				in_string = false;
		} else if (*p == '"') {
			in_string = true;
		} else if (*p == '{' || *p == '[') {
			if (++depth > max)
				max = depth;
		} else if ((*p == '}' || *p == ']') && depth > 0) {
			depth--;
		}
	}
	return max;
}

/* One RawStmt: its span (stmt_len 0 means "to the end of the text"), then the walk. */
static enum parse_status result_stmt(struct parse_result *r, const struct walk_in *in,
                                     const cJSON *raw, struct stmt_info *si)
{
	const cJSON *loc = cJSON_GetObjectItemCaseSensitive(raw, "stmt_location");
	const cJSON *len = cJSON_GetObjectItemCaseSensitive(raw, "stmt_len");
	size_t start = cJSON_IsNumber(loc) && loc->valueint > 0 ? (size_t)loc->valueint : 0;
	size_t end =
	    cJSON_IsNumber(len) && len->valueint > 0 ? start + (size_t)len->valueint : in->len;

	if (start > in->len || end > in->len || end < start) {
		snprintf(r->error, sizeof(r->error), "statement span %zu..%zu outside the text",
		         start, end);
		return PARSE_SYNTAX_ERROR;
	}
	return walk_stmt(in, cJSON_GetObjectItemCaseSensitive(raw, "stmt"), start, end, si,
	                 r->error, sizeof(r->error));
}

static struct parse_result *result_fill(struct parse_result *r, const struct walk_in *in,
                                        const char *json)
{
	cJSON *root = cJSON_Parse(json);
	const cJSON *stmts = cJSON_GetObjectItemCaseSensitive(root, "stmts");
	int n = cJSON_GetArraySize(stmts);
	const cJSON *raw;
	enum parse_status st = PARSE_OK;

	if (!root)
		return json_depth(json) >= CJSON_NESTING_LIMIT
		           ? result_fail(r, PARSE_TOO_DEEP, "statement nested too deeply")
		           : result_fail(r, PARSE_NO_MEMORY,
		                         "out of memory reading the parse tree");
	if (n > PARSER_MAX_STMTS) {
		cJSON_Delete(root);
		return result_fail(r, PARSE_TOO_MANY, "more than %d statements", PARSER_MAX_STMTS);
	}
	r->stmts = calloc(n > 0 ? (size_t)n : 1, sizeof(*r->stmts));
	if (!r->stmts) {
		cJSON_Delete(root);
		return result_fail(r, PARSE_NO_MEMORY, "out of memory");
	}
	cJSON_ArrayForEach(raw, stmts)
	{
		struct stmt_info *si = &r->stmts[r->nstmts];
		if ((st = result_stmt(r, in, raw, si)) != PARSE_OK)
			break;
		r->touches |= si->touches;
		r->nstmts++;
	}
	cJSON_Delete(root);
	if (st != PARSE_OK) {
		char msg[sizeof(r->error)];
		memcpy(msg, r->error, sizeof(msg));
		return result_fail(r, st, "%s", msg);
	}
	return r;
}

/* libpg_query's refusal; bison's "memory exhausted" is its 10,000-level stack. */
static struct parse_result *result_pg_error(struct parse_result *r, const PgQueryError *e)
{
	const char *msg = e->message ? e->message : "syntax error";

	if (strstr(msg, "memory exhausted") || strstr(msg, "stack depth limit exceeded"))
		return result_fail(r, PARSE_TOO_DEEP, "statement nested too deeply (%s)", msg);
	if (strcmp(msg, "out of memory") == 0)
		return result_fail(r, PARSE_NO_MEMORY, "%s", msg);
	if (e->cursorpos > 0)
		return result_fail(r, PARSE_SYNTAX_ERROR, "%s at character %d", msg, e->cursorpos);
	return result_fail(r, PARSE_SYNTAX_ERROR, "%s", msg);
}

/* The checks that need no parser: size, NUL bytes, nesting (libpg_query recurses). */
static bool parse_bounded(struct parse_result *r, const char *text, size_t len)
{
	if (len > PARSER_MAX_TEXT) {
		result_fail(r, PARSE_TOO_LARGE, "statement of %zu bytes (at most %u are parsed)",
		            len, PARSER_MAX_TEXT);
		return false;
	}
	if (len > 0 && memchr(text, '\0', len)) {
		result_fail(r, PARSE_SYNTAX_ERROR, "statement text holds a NUL byte");
		return false;
	}
	switch (scan_bound(text, len)) {
	case PARSE_OK:
		break;
	case PARSE_TOO_LARGE:
		result_fail(r, PARSE_TOO_LARGE,
		            "statement too large to parse: multi-column SET "
		            "lists would copy their source too often");
		return false;
	default:
		result_fail(r, PARSE_TOO_DEEP,
		            "statement nested too deeply (more than %d brackets "
		            "or a too long chain of operators)",
		            PARSER_MAX_DEPTH);
		return false;
	}
	return true;
}

struct parse_result *parser_parse(const struct parser_tables *t, const char *text, size_t len,
                                  const char *key_columns, const char *partition_column)
{
	struct parse_result *r = calloc(1, sizeof(*r));
	struct walk_in in = {t, text, len, key_columns, partition_column};
	char *copy;

	if (!r)
		return NULL;
	if (!parse_bounded(r, text, len))
		return r;
	copy = malloc(len + 1);
	if (!copy)
		return result_fail(r, PARSE_NO_MEMORY, "out of memory");
	if (len > 0)
		memcpy(copy, text, len);
	copy[len] = '\0';
	PgQueryParseResult pr = pg_query_parse(copy);
	if (pr.error)
		result_pg_error(r, pr.error);
	else
		result_fill(r, &in, pr.parse_tree);
	pg_query_free_parse_result(pr);
	free(copy);
	return r;
}
