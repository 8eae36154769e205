/*
 * Lexical helpers over SQL text; see scan.h.  Nothing here allocates: every function
 * reads the caller's bytes between an offset and an end.
 */
#include "parser/scan.h"

#include <string.h>

#include "parser/parser.h"

/*
 * The pre-parse bound on tree depth.  Brackets are one way a tree gets deep; the
 * other is a chain of left-associative operators, set operations or joins, which
 * PostgreSQL's LALR parser builds without any recursion ("1+1+1..." nests one A_Expr
 * per '+'), but which libpg_query writes out to JSON recursively.  Measured with the
 * default 8 MB stack: "SELECT 1" followed by 65,000 "+1" overflows it (about 128
 * bytes of stack a level); right-recursive chains (NOT NOT ..., nested CASE) stop at
 * bison's own limit of 10,000 levels first.
 *
 * So the scan estimates the depth from above, per bracket level: each operator
 * character and each chaining keyword adds one; a closed bracket is an operand as deep
 * as its deepest content plus one (a chain of chains nests: "((1+1...)+1...)"); a
 * comma, AND, OR, WHEN, THEN or ELSE starts a sibling operand (their operands become
 * flat lists, not nested nodes).  The estimate is the sum over the open levels.  It
 * counts high ("<=" counts 2): 4,000 keeps the real depth far below the overflow, and
 * above what cJSON reads anyway (1,000 nested JSON values, about 330 tree levels).
 */
#define SCAN_MAX_CHAIN 4000

/*
 * The other way a short text makes a huge tree: "SET (a, b, ...) = source" gives every
 * column a MultiAssignRef pointing at the one source node, and libpg_query writes the
 * source out once per column; nested (a sub-SELECT holding another such SET) the counts
 * multiply.  A 2 KB statement was measured making libpg_query allocate 1 GB and exit
 * the process.  The product of the column counts of such lists times the statement's
 * length bounds what the duplication writes; above this many bytes it is refused.
 */
#define SCAN_MAX_EXPANSION (2u << 20)

static bool is_space(unsigned char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

static bool is_ident_start(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c >= 0x80;
}

static bool is_digit(unsigned char c)
{
	return c >= '0' && c <= '9';
}

static bool is_ident_cont(unsigned char c)
{
	return is_ident_start(c) || is_digit(c) || c == '$';
}

static bool is_op_char(unsigned char c)
{
	return c != '\0' && strchr("~!@#^&|`?+-*/%<>=", c) != NULL;
}

static bool starts_comment(const char *s, size_t end, size_t p)
{
	return p + 1 < end &&
	       ((s[p] == '-' && s[p + 1] == '-') || (s[p] == '/' && s[p + 1] == '*'));
}

/* A block comment at p ("/" "*"): PostgreSQL's nest. Unterminated: to the end. */
static size_t skip_block_comment(const char *s, size_t end, size_t p)
{
	unsigned depth = 0;

	while (p < end) {
		if (p + 1 < end && s[p] == '/' && s[p + 1] == '*') {
			depth++;
			p += 2;
		} else if (p + 1 < end && s[p] == '*' && s[p + 1] == '/') {
			p += 2;
			if (--depth == 0)
				return p;
		} else {
			p++;
		}
	}
	return end;
}

static size_t skip_trivia(const char *s, size_t end, size_t p)
{
	while (p < end) {
		if (is_space((unsigned char)s[p])) {
			p++;
		} else if (s[p] == '-' && p + 1 < end && s[p + 1] == '-') {
			while (p < end && s[p] != '\n' && s[p] != '\r')
				p++;
		} else if (s[p] == '/' && p + 1 < end && s[p + 1] == '*') {
			p = skip_block_comment(s, end, p);
		} else {
			break;
		}
	}
	return p;
}

/* A literal opened by `quote` at p; backslash escapes when `backslash`. */
static size_t skip_quoted(const char *s, size_t end, size_t p, char quote, bool backslash)
{
	for (p++; p < end; p++) {
		if (backslash && s[p] == '\\') {
			p++;
		} else if (s[p] == quote) {
			if (p + 1 < end && s[p + 1] == quote)
				p++;
			else
				return p + 1;
		}
	}
	return end;
}

/* The length of a dollar-quote delimiter ($$ or $tag$) at p, 0 when there is none. */
static size_t dollar_delim_len(const char *s, size_t end, size_t p)
{
	size_t q = p + 1;

	if (q < end && is_ident_start((unsigned char)s[q])) {
		while (q < end && is_ident_cont((unsigned char)s[q]) && s[q] != '$')
			q++;
	}
	return q < end && s[q] == '$' ? q + 1 - p : 0;
}

static size_t skip_dollar_quote(const char *s, size_t end, size_t p, size_t dlen)
{
	for (size_t q = p + dlen; q + dlen <= end; q++)
		if (s[q] == '$' && memcmp(s + q, s + p, dlen) == 0)
			return q + dlen;
	return end;
}

/* '$': a parameter, a dollar-quoted string or a lone character. */
static void scan_dollar(const char *s, size_t end, size_t p, struct scan_tok *tok)
{
	size_t dlen;

	if (p + 1 < end && is_digit((unsigned char)s[p + 1])) {
		for (p++; p < end && is_digit((unsigned char)s[p]);)
			p++;
		tok->kind = TOK_PARAM;
	} else if ((dlen = dollar_delim_len(s, end, p)) > 0) {
		p = skip_dollar_quote(s, end, p, dlen);
		tok->kind = TOK_STRING;
	} else {
		p++;
		tok->kind = TOK_CHAR;
	}
	tok->end = p;
}

/* Operator characters up to a comment start, as PostgreSQL's scanner cuts them. */
static size_t skip_op(const char *s, size_t end, size_t p)
{
	do
		p++;
	while (p < end && is_op_char((unsigned char)s[p]) && !starts_comment(s, end, p));
	return p;
}

/* Tokens that open with a letter: E'..', U&'..', U&"..", or a word. */
static void scan_letter(const char *s, size_t end, size_t p, struct scan_tok *tok)
{
	char c = s[p];

	if ((c == 'e' || c == 'E') && p + 1 < end && s[p + 1] == '\'') {
		tok->kind = TOK_STRING;
		tok->end = skip_quoted(s, end, p + 1, '\'', true);
	} else if ((c == 'u' || c == 'U') && p + 2 < end && s[p + 1] == '&' &&
	           (s[p + 2] == '\'' || s[p + 2] == '"')) {
		tok->kind = s[p + 2] == '"' ? TOK_QIDENT : TOK_STRING;
		tok->end = skip_quoted(s, end, p + 2, s[p + 2], false);
	} else {
		while (++p < end && is_ident_cont((unsigned char)s[p]))
			;
		tok->kind = TOK_WORD;
		tok->end = p;
	}
}

void scan_next(const char *s, size_t end, size_t *pos, struct scan_tok *tok)
{
	size_t p = skip_trivia(s, end, *pos);
	unsigned char c = p < end ? (unsigned char)s[p] : 0;

	tok->start = p;
	tok->end = p + 1;
	if (p >= end) {
		tok->kind = TOK_END;
		tok->end = end;
	} else if (c == '\'') {
		tok->kind = TOK_STRING;
		tok->end = skip_quoted(s, end, p, '\'', false);
	} else if (c == '"') {
		tok->kind = TOK_QIDENT;
		tok->end = skip_quoted(s, end, p, '"', false);
	} else if (is_ident_start(c) || is_digit(c)) {
		scan_letter(s, end, p, tok);
	} else if (c == '$') {
		scan_dollar(s, end, p, tok);
	} else if (is_op_char(c)) {
		tok->kind = TOK_OP;
		tok->end = skip_op(s, end, p);
	} else {
		tok->kind = TOK_CHAR;
	}
	*pos = tok->end;
}

bool scan_tok_is(const char *s, const struct scan_tok *tok, const char *word)
{
	size_t n = strlen(word);

	if (tok->kind != TOK_WORD || tok->end - tok->start != n)
		return false;
	for (size_t i = 0; i < n; i++) {
		char c = s[tok->start + i];
		if (c >= 'A' && c <= 'Z')
			c = (char)(c - 'A' + 'a');
		if (c != word[i])
			return false;
	}
	return true;
}

/* ---- the bound ---- */

/* One open bracket level. */
struct bound_level {
	uint32_t cur;      /* depth of the operand being read */
	uint32_t finished; /* depth of the deepest sibling operand already read */
	uint32_t chain_kw; /* UNION, JOIN ...: they nest across commas */
	uint32_t targets;  /* items when this may be a SET (a, b, ...) list, else 0 */
	bool in_set;       /* between SET and WHERE/FROM/RETURNING/WHEN at this level */
};

struct bound {
	struct bound_level lv[PARSER_MAX_DEPTH + 1];
	unsigned depth;
	uint32_t outer;          /* the estimate of the levels below lv[depth] */
	bool after_set;          /* the last token was SET, or ',' in a SET list: "(" may
	                            open a target list */
	uint32_t closed_targets; /* the last token closed a target list of this many */
	uint64_t expansion;      /* product of multi-column SET widths in this statement */
	size_t stmt_start;
};

static const char *const chain_words[] = {"union",   "intersect", "except",  "join",
                                          "collate", "at",        "operator"};
static const char *const operand_words[] = {"and", "or", "when", "then", "else"};

static uint32_t level_depth(const struct bound_level *l)
{
	return (l->cur > l->finished ? l->cur : l->finished) + l->chain_kw + 1;
}

static void bound_next_operand(struct bound_level *l)
{
	if (l->cur > l->finished)
		l->finished = l->cur;
	l->cur = 0;
}

static void bound_word(struct bound *b, const char *s, const struct scan_tok *tok)
{
	struct bound_level *l = &b->lv[b->depth];
	size_t n = tok->end - tok->start;

	if (n < 2 || n > 9 || !strchr("uUiIeEjJcCaAoOwWtT", s[tok->start]))
		return; /* cheap test first: most words are none of these */
	for (size_t i = 0; i < sizeof(chain_words) / sizeof(chain_words[0]); i++)
		if (scan_tok_is(s, tok, chain_words[i])) {
			l->chain_kw++;
			return;
		}
	for (size_t i = 0; i < sizeof(operand_words) / sizeof(operand_words[0]); i++)
		if (scan_tok_is(s, tok, operand_words[i])) {
			bound_next_operand(l);
			return;
		}
}

/* One punctuation byte; false when brackets nest too deep. */
static bool bound_char(struct bound *b, char c)
{
	struct bound_level *l = &b->lv[b->depth];

	if (c == '(' || c == '[') {
		if (b->depth == PARSER_MAX_DEPTH)
			return false;
		b->outer += l->cur + l->chain_kw + 1;
		b->lv[++b->depth] = (struct bound_level){0, 0, 0, c == '(' && b->after_set, false};
	} else if ((c == ')' || c == ']') && b->depth > 0) {
		uint32_t inner = level_depth(l);
		b->closed_targets = l->targets;
		l = &b->lv[--b->depth];
		b->outer -= l->cur + l->chain_kw + 1;
		l->cur = (l->cur > inner ? l->cur : inner) + 1;
	} else if (c == ',') {
		bound_next_operand(l);
		l->targets += l->targets > 0;
	} else if (c == ';' && b->depth == 0) {
		*l = (struct bound_level){0, 0, 0, 0, false};
	} else if (c == ':') {
		l->cur++;
	}
	return true;
}

/* "(a, b) =": a multi-column SET; false when its statement expands too much. */
static bool bound_expansion(struct bound *b, const char *s, const struct scan_tok *tok,
                            uint32_t closed)
{
	if (tok->kind == TOK_OP && tok->end - tok->start == 1 && s[tok->start] == '=' &&
	    closed > 1) {
		b->expansion *= closed;
		if (b->expansion > SCAN_MAX_EXPANSION)
			b->expansion = SCAN_MAX_EXPANSION + 1; /* saturate: it can only grow */
	}
	if (tok->kind != TOK_END &&
	    !(tok->kind == TOK_CHAR && s[tok->start] == ';' && b->depth == 0))
		return true;
	/* The statement ends: its length times the widths bounds the duplication. */
	if (b->expansion > 1 && b->expansion * (tok->start - b->stmt_start) > SCAN_MAX_EXPANSION)
		return false;
	b->expansion = 1;
	b->stmt_start = tok->end;
	return true;
}

/* Whether a "(" after tok may open a SET (a, b, ...) list; notes where SET lists are. */
static bool bound_set_list(struct bound_level *l, const char *s, const struct scan_tok *tok)
{
	if (tok->kind == TOK_CHAR)
		return s[tok->start] == ',' && l->in_set;
	if (tok->kind != TOK_WORD || !strchr("sSwWfFrR", s[tok->start]))
		return false;
	if (scan_tok_is(s, tok, "set")) {
		l->in_set = true;
		return true;
	}
	if (scan_tok_is(s, tok, "where") || scan_tok_is(s, tok, "from") ||
	    scan_tok_is(s, tok, "returning") || scan_tok_is(s, tok, "when"))
		l->in_set = false;
	return false;
}

/* One token; the status the bound says so far. */
static int bound_token(struct bound *b, const char *s, const struct scan_tok *tok)
{
	uint32_t closed = b->closed_targets;
	struct bound_level *l = &b->lv[b->depth];

	b->closed_targets = 0;
	if (tok->kind == TOK_OP)
		l->cur += (uint32_t)(tok->end - tok->start);
	else if (tok->kind == TOK_WORD)
		bound_word(b, s, tok);
	else if (tok->kind == TOK_CHAR && !bound_char(b, s[tok->start]))
		return PARSE_TOO_DEEP;
	l = &b->lv[b->depth];
	if (b->outer + l->cur + l->chain_kw + 1 > SCAN_MAX_CHAIN)
		return PARSE_TOO_DEEP;
	if (!bound_expansion(b, s, tok, closed))
		return PARSE_TOO_LARGE;
	b->after_set = bound_set_list(l, s, tok);
	return PARSE_OK;
}

int scan_bound(const char *s, size_t len)
{
	struct bound b; /* lv[] above depth is written before it is read */
	struct scan_tok tok;
	size_t pos = 0;
	int status;

	b.lv[0] = (struct bound_level){0, 0, 0, 0, false};
	b.depth = 0;
	b.outer = 0;
	b.after_set = false;
	b.closed_targets = 0;
	b.expansion = 1;
	b.stmt_start = 0;

	do {
		scan_next(s, len, &pos, &tok);
		if ((status = bound_token(&b, s, &tok)) != PARSE_OK)
			return status;
	} while (tok.kind != TOK_END);
	return PARSE_OK;
}

/* ---- names ---- */

/* Cut a decoded name to 63 bytes without splitting a UTF-8 character. */
static void name_store(char *dst, size_t n)
{
	if (n >= SCAN_NAMELEN) {
		n = SCAN_NAMELEN - 1;
		while (n > 0 && ((unsigned char)dst[n] & 0xC0) == 0x80)
			n--;
	}
	dst[n] = '\0';
}

/* "quoted" at p (the opening quote): decode "" to ". False when unterminated. */
static bool read_quoted(const char *s, size_t end, size_t p, char *dst, size_t *after)
{
	size_t n = 0;

	for (p++; p < end; p++) {
		if (s[p] == '"') {
			if (p + 1 >= end || s[p + 1] != '"') {
				name_store(dst, n);
				*after = p + 1;
				return true;
			}
			p++;
		}
		if (n < SCAN_NAMELEN)
			dst[n++] = s[p];
	}
	return false;
}

/* U&"..." [UESCAPE 'c'] at p: the span only; the name is not decoded. */
static bool read_uident(const char *s, size_t end, size_t p, size_t *after)
{
	struct scan_tok tok;
	char ignored[SCAN_NAMELEN];
	size_t q;

	if (!read_quoted(s, end, p + 2, ignored, after))
		return false;
	q = *after;
	scan_next(s, end, &q, &tok);
	if (!scan_tok_is(s, &tok, "uescape"))
		return true;
	scan_next(s, end, &q, &tok);
	if (tok.kind == TOK_STRING && s[tok.start] == '\'')
		*after = tok.end;
	return true;
}

static void read_unquoted(const char *s, size_t end, size_t p, char *dst, size_t *after)
{
	size_t n = 0;

	for (; p < end && is_ident_cont((unsigned char)s[p]); p++) {
		char c = s[p];
		if (c >= 'A' && c <= 'Z')
			c = (char)(c - 'A' + 'a');
		if (n < SCAN_NAMELEN)
			dst[n++] = c;
	}
	name_store(dst, n);
	*after = p;
}

/* Part i of a name at p; false when no identifier starts there. */
static bool read_part(const char *s, size_t end, size_t p, struct scan_name *out, unsigned i)
{
	size_t after;

	out->wildcard[i] = false;
	out->part[i][0] = '\0';
	if (s[p] == '"') {
		if (!read_quoted(s, end, p, out->part[i], &after))
			return false;
	} else if ((s[p] == 'u' || s[p] == 'U') && p + 2 < end && s[p + 1] == '&' &&
	           s[p + 2] == '"') {
		if (!read_uident(s, end, p, &after))
			return false;
		out->wildcard[i] = true;
	} else if (is_ident_start((unsigned char)s[p])) {
		read_unquoted(s, end, p, out->part[i], &after);
	} else {
		return false;
	}
	out->part_end[i] = after;
	return true;
}

bool scan_name_at(const char *s, size_t end, size_t pos, struct scan_name *out)
{
	size_t p;

	out->nparts = 0;
	if (pos >= end || !read_part(s, end, pos, out, 0))
		return false;
	out->nparts = 1;
	while (out->nparts < SCAN_MAX_PARTS) {
		p = skip_trivia(s, end, out->part_end[out->nparts - 1]);
		if (p >= end || s[p] != '.')
			break;
		p = skip_trivia(s, end, p + 1);
		if (p >= end || !read_part(s, end, p, out, out->nparts))
			break;
		out->nparts++;
	}
	return true;
}

bool scan_name_part_is(const struct scan_name *n, unsigned i, const char *name)
{
	return i < n->nparts && (n->wildcard[i] || strcmp(n->part[i], name) == 0);
}

size_t scan_clause_end(const char *s, size_t from, size_t to, const char *stop)
{
	struct scan_tok tok;
	size_t pos = from, last = from;
	unsigned depth = 0;

	for (scan_next(s, to, &pos, &tok); tok.kind != TOK_END; scan_next(s, to, &pos, &tok)) {
		char c = s[tok.start];
		if (tok.kind == TOK_CHAR && (c == '(' || c == '['))
			depth++;
		else if (tok.kind == TOK_CHAR && (c == ')' || c == ']') && depth > 0)
			depth--;
		else if (depth == 0 && stop && scan_tok_is(s, &tok, stop))
			break;
		last = tok.end;
	}
	return last;
}
