/*
 * libFuzzer target for statement recognition: the input is a query string as a client
 * sends it.  It goes through parser_prefilter, parser_parse and the parse cache, from a
 * heap block of exactly its size (so ASan sees a read one byte too far), with the
 * default table names.
 *
 * Besides "no crash, no leak, no over-read, no stack overflow", the results are checked
 * against what they promise: a string the prefilter rules out has no statement that
 * touches a configured table; statement spans are in order and inside the text; every
 * reference spans a name that reads back as the configured relation; the ON CONFLICT
 * span starts with ON; the cache answers what a fresh parse does.
 *
 *   make fuzz-build (for the library), then
 *   clang -I. -O1 -g -fsanitize=fuzzer,address,undefined -o build/fuzz/fuzz_parser \
 *       tests/fuzz/fuzz_parser.c build/fuzz/libpgshunt.a -lpg_query -lcjson
 *   ./build/fuzz/fuzz_parser -max_len=4096 tests/fuzz/corpus-parser
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "parser/parser.h"
#include "parser/scan.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);   \
			abort();                                                                   \
		}                                                                                  \
	} while (0)

static struct parser_tables tables;
static bool tables_ready;

static void check_ref(const char *text, const struct stmt_info *si, const struct rel_ref *ref)
{
	const struct rel_name *rel;
	struct scan_name sn;

	CHECK(ref->role < REL__COUNT);
	CHECK(ref->len > 0 && ref->start >= si->start);
	CHECK(ref->start + ref->len <= si->start + si->len);
	rel = &tables.rel[ref->role];
	CHECK(scan_name_at(text, si->start + si->len, ref->start, &sn));
	/* The reference ends with a part that is the relation's name; the name read there
	   may go on (COMMENT ON COLUMN tbl.col). */
	unsigned last = 0;
	while (last < sn.nparts && sn.part_end[last] != ref->start + ref->len)
		last++;
	CHECK(last < sn.nparts);
	CHECK(scan_name_part_is(&sn, last, rel->name));
}

static void check_stmt(const char *text, size_t size, const struct stmt_info *si)
{
	CHECK(si->start + si->len <= size);
	CHECK(si->kind < STMT__COUNT && si->inner < STMT__COUNT);
	CHECK(si->nrefs <= PARSER_MAX_REFS);
	CHECK(si->touches == (si->nrefs > 0));
	for (uint32_t j = 0; j < si->nrefs; j++)
		check_ref(text, si, &si->refs[j]);
	if (si->conflict != CONFLICT_NONE) {
		CHECK(si->conflict_start >= si->start && si->conflict_len >= 2);
		CHECK(si->conflict_start + si->conflict_len <= si->start + si->len);
		CHECK((text[si->conflict_start] | 0x20) == 'o' &&
		      (text[si->conflict_start + 1] | 0x20) == 'n');
	}
	if (si->has_returning) {
		CHECK(si->returning_start >= si->start && si->returning_len > 0);
		CHECK(si->returning_start + si->returning_len <= si->start + si->len);
	}
	CHECK(memchr(si->prepared_name, '\0', sizeof(si->prepared_name)) != NULL);
}

static void check_result(const char *text, size_t size, bool prefilter,
                         const struct parse_result *r)
{
	bool touches = false;

	CHECK(r != NULL);
	CHECK(memchr(r->error, '\0', sizeof(r->error)) != NULL);
	if (r->status != PARSE_OK) {
		CHECK(r->nstmts == 0 && r->touches && r->error[0] != '\0');
		CHECK(r->status != PARSE_TOO_LARGE || size > PARSER_MAX_TEXT ||
		      strstr(r->error, "multi-column SET"));
		return;
	}
	CHECK(r->nstmts <= PARSER_MAX_STMTS);
	for (uint32_t i = 0; i < r->nstmts; i++) {
		const struct stmt_info *si = &r->stmts[i];
		if (i > 0)
			CHECK(si->start >= r->stmts[i - 1].start + r->stmts[i - 1].len);
		check_stmt(text, size, si);
		touches |= si->touches;
	}
	CHECK(r->touches == touches);
	CHECK(prefilter || !touches); /* the prefilter never hides a reference */
}

static void check_cache(const char *text, size_t size, const struct parse_result *fresh)
{
	struct parser_cache *c = parser_cache_new(2);
	const struct parse_result *r;

	CHECK(c != NULL);
	for (int pass = 0; pass < 2; pass++) {
		r = parser_cache_get(c, &tables, 1, text, size, "site_id,idempotency_key",
		                     "created_at");
		CHECK(r != NULL && r->status == fresh->status && r->nstmts == fresh->nstmts);
		CHECK(r->nstmts == 0 ||
		      memcmp(r->stmts, fresh->stmts, r->nstmts * sizeof(*r->stmts)) == 0);
	}
	CHECK(parser_cache_misses(c) >= 1);
	parser_cache_free(c);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *text = malloc(size ? size : 1);
	struct parse_result *r;
	bool prefilter;

	if (!tables_ready) {
		CHECK(parser_tables_init(&tables, "public.ingest_idempotency",
		                         "public.ingest_idempotency_next",
		                         "public.ingest_fallback_buffer"));
		tables_ready = true;
	}
	CHECK(text != NULL);
	if (size)
		memcpy(text, data, size);
	prefilter = parser_prefilter(&tables, text, size);
	/* The C-string variant agrees on the text up to its first NUL. */
	const char *nul = memchr(data, 0, size);
	size_t clen = nul ? (size_t)(nul - (const char *)data) : size;
	char *cstr = malloc(clen + 1);
	CHECK(cstr != NULL);
	memcpy(cstr, data, clen);
	cstr[clen] = '\0';
	CHECK(parser_prefilter_cstr(&tables, cstr, clen) == parser_prefilter(&tables, cstr, clen));
	free(cstr);
	r = parser_parse(&tables, text, size, "site_id,idempotency_key", "created_at");
	check_result(text, size, prefilter, r);
	check_cache(text, size, r);
	parse_result_free(r);
	free(text);
	return 0;
}
