/*
 * Micro-benchmark of statement recognition (SPEC P3: <= 25 us cold, <= 2 us cached):
 * the prefilter, a cold parse (cache miss) and a cached lookup of the ingest
 * application's idempotent INSERT, plus the pieces of a cold parse and the protobuf
 * alternative that parser.c decided against.  Microseconds per call, averaged.
 *
 *   make build/libpgshunt.a
 *   cc -O2 -I. -o build/parser_bench bench/parser_bench.c build/libpgshunt.a -lpg_query -lcjson
 *   ./build/parser_bench
 */
#include <cjson/cJSON.h>
#include <pg_query.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "parser/parser.h"

/* Exported by libpg_query; Debian packages no protobuf-c headers to declare them with. */
void *pg_query__parse_result__unpack(void *allocator, size_t len, const uint8_t *data);
void pg_query__parse_result__free_unpacked(void *message, void *allocator);

static const char insert_sql[] =
    "INSERT INTO ingest_idempotency (site_id, idempotency_key, request_hash) VALUES ($1, $2, "
    "$3) ON CONFLICT (site_id, idempotency_key) DO NOTHING RETURNING created_at;";
static const char passthrough_sql[] = "SELECT abalance FROM pgbench_accounts WHERE aid = $1;";
static const char *const key_columns = "site_id,idempotency_key";
static const char *const partition_column = "created_at";

static struct parser_tables tables;
static volatile size_t sink; /* keeps the measured calls from being optimised away */

static double now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static void report(const char *what, double start, long n)
{
	printf("%-44s %9.3f us/call  (%ld calls)\n", what, (now_us() - start) / (double)n, n);
}

static void bench_prefilter(long n)
{
	double t0 = now_us();
	for (long i = 0; i < n; i++)
		sink += parser_prefilter(&tables, passthrough_sql, sizeof(passthrough_sql) - 1);
	report("prefilter, passthrough SELECT (no match)", t0, n);
	t0 = now_us();
	for (long i = 0; i < n; i++)
		sink += parser_prefilter(&tables, insert_sql, sizeof(insert_sql) - 1);
	report("prefilter, idempotent INSERT (match)", t0, n);
}

static void bench_pieces(long n)
{
	double t0 = now_us();
	for (long i = 0; i < n; i++) {
		PgQueryParseResult r = pg_query_parse(insert_sql);
		sink += strlen(r.parse_tree);
		pg_query_free_parse_result(r);
	}
	report("  pg_query_parse (JSON)", t0, n);

	PgQueryParseResult pr = pg_query_parse(insert_sql);
	t0 = now_us();
	for (long i = 0; i < n; i++) {
		cJSON *j = cJSON_Parse(pr.parse_tree);
		sink += j != NULL;
		cJSON_Delete(j);
	}
	report("  cJSON_Parse of that JSON", t0, n);
	pg_query_free_parse_result(pr);

	t0 = now_us();
	for (long i = 0; i < n; i++) {
		PgQueryProtobufParseResult r = pg_query_parse_protobuf(insert_sql);
		void *m = pg_query__parse_result__unpack(NULL, r.parse_tree.len,
		                                         (const uint8_t *)r.parse_tree.data);
		sink += m != NULL;
		pg_query__parse_result__free_unpacked(m, NULL);
		pg_query_free_protobuf_parse_result(r);
	}
	report("  (not used) pg_query_parse_protobuf+unpack", t0, n);
}

static void bench_parse(long n)
{
	double t0 = now_us();
	for (long i = 0; i < n; i++) {
		struct parse_result *r = parser_parse(&tables, insert_sql, sizeof(insert_sql) - 1,
		                                      key_columns, partition_column);
		sink += r->nstmts;
		parse_result_free(r);
	}
	report("cold parse: parser_parse + free", t0, n);
}

static int bench_cache(long cold, long hot)
{
	struct parser_cache *c = parser_cache_new(1024);
	const struct parse_result *r;
	double t0;

	if (!c)
		return 1;
	t0 = now_us();
	for (long i = 0; i < cold; i++) /* a new epoch each time: every call misses */
		sink += parser_cache_get(c, &tables, (uint64_t)i + 1, insert_sql,
		                         sizeof(insert_sql) - 1, key_columns, partition_column)
		            ->nstmts;
	report("cold parse through the cache (miss)", t0, cold);
	t0 = now_us();
	for (long i = 0; i < hot; i++) {
		r = parser_cache_get(c, &tables, 0, insert_sql, sizeof(insert_sql) - 1, key_columns,
		                     partition_column);
		sink += r->nstmts;
	}
	report("cached lookup (hit)", t0, hot);
	printf("cache: %llu hits, %llu misses\n", (unsigned long long)parser_cache_hits(c),
	       (unsigned long long)parser_cache_misses(c));
	parser_cache_free(c);
	return 0;
}

int main(int argc, char **argv)
{
	long n = argc > 1 ? atol(argv[1]) : 20000;

	if (n <= 0 ||
	    !parser_tables_init(&tables, "public.ingest_idempotency",
	                        "public.ingest_idempotency_next", "public.ingest_fallback_buffer"))
		return 1;
	bench_parse(n / 10); /* warm up */
	bench_prefilter(n * 50);
	bench_parse(n);
	bench_pieces(n);
	if (bench_cache(n, n * 50) != 0)
		return 1;
	pg_query_exit();
	return 0;
}
