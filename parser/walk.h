/*
 * The reading of one statement's parse tree, as libpg_query writes it in JSON and
 * cJSON reads it, into a struct stmt_info.  Internal to the parser module.
 */
#ifndef PGSHUNT_PARSER_WALK_H
#define PGSHUNT_PARSER_WALK_H

#include <cjson/cJSON.h>
#include <stddef.h>

#include "parser/parser.h"

/* What every statement of one query string is read against. */
struct walk_in {
	const struct parser_tables *t;
	const char *text; /* the whole query string (offsets in the tree are into it) */
	size_t len;
	const char *key_columns;      /* comma-separated, may be NULL */
	const char *partition_column; /* may be NULL */
};

/*
 * Fill si from one RawStmt's "stmt" value, the statement spanning [start, end) of the
 * text.  Returns PARSE_OK, or the failure with a message in err.
 */
enum parse_status walk_stmt(const struct walk_in *in, const cJSON *stmt, size_t start, size_t end,
                            struct stmt_info *si, char *err, size_t errlen)
    __attribute__((warn_unused_result));

#endif
