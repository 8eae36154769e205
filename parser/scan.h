/*
 * Lexical helpers over SQL text for the parser module (not for the proxy): a token
 * reader that skips what PostgreSQL's scanner skips (whitespace, -- and nested block
 * comments) and steps over what it treats as one token (string literals of every
 * prefix, quoted identifiers, dollar quotes), the pre-parse bound on nesting, and the
 * reading of a possibly qualified, possibly quoted relation name at a location.
 *
 * The scanner follows PostgreSQL 15 with standard_conforming_strings on (libpg_query's
 * setting): a backslash escapes only inside E'...'.
 */
#ifndef PGSHUNT_PARSER_SCAN_H
#define PGSHUNT_PARSER_SCAN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum scan_tok_kind {
	TOK_END,    /* no more tokens */
	TOK_WORD,   /* keyword, unquoted identifier or number */
	TOK_QIDENT, /* "quoted" or U&"quoted" identifier */
	TOK_STRING, /* any string literal, dollar-quoted included */
	TOK_PARAM,  /* $n */
	TOK_OP,     /* a run of operator characters */
	TOK_CHAR,   /* any other single byte: ( ) [ ] , ; . : and the rest */
};

struct scan_tok {
	enum scan_tok_kind kind;
	size_t start; /* first byte */
	size_t end;   /* one past the last byte; an unterminated literal ends at the text's end */
};

/* The next token at or after *pos (before `end`); *pos moves past it. */
void scan_next(const char *s, size_t end, size_t *pos, struct scan_tok *tok);

/* True when the token is the keyword `word` (lower case), in any case. */
bool scan_tok_is(const char *s, const struct scan_tok *tok, const char *word);

/*
 * The pre-parse bound: PARSE_TOO_DEEP (as an int of enum parse_status) when brackets
 * nest deeper than PARSER_MAX_DEPTH or the estimated depth of the parse tree exceeds
 * an internal limit, else PARSE_OK.  See scan.c for the estimate.
 */
int scan_bound(const char *s, size_t len);

#define SCAN_MAX_PARTS 3
#define SCAN_NAMELEN   64 /* NAMEDATALEN: names are cut to 63 bytes, as PostgreSQL does */

/* A qualified name read from the text: catalog.schema.name, each part decoded. */
struct scan_name {
	unsigned nparts;
	char part[SCAN_MAX_PARTS][SCAN_NAMELEN]; /* as stored: unquoted folded to lower case */
	bool wildcard[SCAN_MAX_PARTS];           /* U&"..." part: not decoded, matches any name */
	size_t part_end[SCAN_MAX_PARTS];         /* offset one past each part in the text */
};

/*
 * Read the name that starts exactly at pos: up to SCAN_MAX_PARTS identifiers joined by
 * dots, with whitespace or comments allowed around the dots.  The span is
 * [pos, out->part_end[out->nparts - 1]).  False when no identifier starts at pos.
 */
bool scan_name_at(const char *s, size_t end, size_t pos, struct scan_name *out);

/* True when decoded part i of n equals name (a wildcard part equals anything). */
bool scan_name_part_is(const struct scan_name *n, unsigned i, const char *name);

/* The end of the last token in [from, to) before a bracket-level-0 `stop` keyword
   (NULL: none); from when there is none. */
size_t scan_clause_end(const char *s, size_t from, size_t to, const char *stop);

#endif
