/*
 * The parse cache: (phase epoch, statement text) -> parse_result, least recently used
 * evicted.  The hash table is uthash (Debian's uthash-dev, header only); the recency
 * list is its utlist.h.
 *
 * A result also depends on the configured tables and columns.  They change only with
 * a restart today, but the cache does not rely on that: it remembers the configuration
 * its entries were parsed under and empties itself when called with another one.
 */
#include "parser/parser.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

/* What an entry is found by: the key uthash stores a pointer to. */
struct cache_key {
	uint64_t epoch;
	const char *text; /* the entry's own copy */
	size_t len;
};

static int cache_key_cmp(const struct cache_key *a, const struct cache_key *b);

#define HASH_KEYCMP(a, b, n)       ((void)(n), cache_key_cmp((a), (b)))
#define HASH_NONFATAL_OOM          1
#define uthash_nonfatal_oom(entry) ((entry)->oom = true)
#include <uthash.h>
#include <utlist.h>

/* Longer statements are parsed every time: caching them would let a few clients pin
   megabytes, and such texts (bulk literal inserts) rarely repeat. */
#define CACHE_MAX_TEXT (64u * 1024)

struct cache_entry {
	struct cache_key key;
	struct parse_result *result; /* owned */
	struct cache_entry *lru_prev, *lru_next;
	UT_hash_handle hh;
	bool oom; /* set by uthash when it could not grow its table for this entry */
	char text[];
};

struct parser_cache {
	struct cache_entry *map; /* uthash head */
	struct cache_entry *lru; /* least recently used first */
	size_t count;            /* entries in map and lru, <= capacity */
	size_t capacity;
	uint64_t hits, misses;
	uint64_t seed;                 /* of the hash, so texts cannot be chosen to collide */
	struct parse_result *uncached; /* the last result handed out but not kept */
	bool have_conf;                /* the next three describe the entries */
	struct parser_tables tables;
	char *key_columns;
	char *partition_column;
};

static int cache_key_cmp(const struct cache_key *a, const struct cache_key *b)
{
	return a->epoch != b->epoch || a->len != b->len || memcmp(a->text, b->text, a->len) != 0;
}

static uint64_t mix64(uint64_t h)
{
	h ^= h >> 33;
	h *= 0xff51afd7ed558ccdULL;
	h ^= h >> 33;
	h *= 0xc4ceb9fe1a85ec53ULL;
	h ^= h >> 33;
	return h;
}

/* Eight bytes at a time through a multiply-xorshift finaliser (MurmurHash3's). */
static unsigned cache_hash(const struct parser_cache *c, const struct cache_key *k)
{
	uint64_t h = c->seed ^ mix64(k->epoch) ^ (k->len * 0x9e3779b97f4a7c15ULL);
	uint64_t word;
	size_t i = 0;

	for (; i + 8 <= k->len; i += 8) {
		memcpy(&word, k->text + i, 8);
		h = (h ^ mix64(word)) * 0x9e3779b97f4a7c15ULL;
	}
	word = 0;
	if (i < k->len)
		memcpy(&word, k->text + i, k->len - i);
	h = mix64(h ^ mix64(word));
	return (unsigned)(h ^ (h >> 32));
}

struct parser_cache *parser_cache_new(size_t capacity)
{
	struct parser_cache *c = calloc(1, sizeof(*c));
	struct timespec ts;

	if (!c)
		return NULL;
	c->capacity = capacity;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	c->seed = mix64((uint64_t)(uintptr_t)c ^ (uint64_t)ts.tv_nsec ^ (uint64_t)ts.tv_sec << 32);
	return c;
}

static void cache_evict(struct parser_cache *c, struct cache_entry *e)
{
	HASH_DELETE(hh, c->map, e);
	DL_DELETE2(c->lru, e, lru_prev, lru_next);
	parse_result_free(e->result);
	free(e);
	c->count--;
}

static void cache_clear(struct parser_cache *c)
{
	while (c->lru)
		cache_evict(c, c->lru);
}

void parser_cache_free(struct parser_cache *c)
{
	if (!c)
		return;
	cache_clear(c);
	parse_result_free(c->uncached);
	free(c->key_columns);
	free(c->partition_column);
	free(c);
}

static bool str_same(const char *a, const char *b)
{
	return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

static char *str_dup(const char *s, bool *ok)
{
	char *d = s ? strdup(s) : NULL;
	*ok = *ok && (d || !s);
	return d;
}

/* Empty the cache when the configuration differs from its entries'. False: no memory. */
static bool cache_check_conf(struct parser_cache *c, const struct parser_tables *t,
                             const char *key_columns, const char *partition_column)
{
	bool ok = true;

	if (c->have_conf && memcmp(&c->tables, t, sizeof(*t)) == 0 &&
	    str_same(c->key_columns, key_columns) &&
	    str_same(c->partition_column, partition_column))
		return true;
	cache_clear(c);
	free(c->key_columns);
	free(c->partition_column);
	c->key_columns = str_dup(key_columns, &ok);
	c->partition_column = str_dup(partition_column, &ok);
	memcpy(&c->tables, t, sizeof(*t));
	c->have_conf = ok;
	return ok;
}

/* Keep r under key; false (r not kept) when it is too large or memory is short. */
static bool cache_insert(struct parser_cache *c, const struct cache_key *key, unsigned hash,
                         struct parse_result *r)
{
	struct cache_entry *e;

	if (c->capacity == 0 || key->len > CACHE_MAX_TEXT)
		return false;
	if (c->count >= c->capacity)
		cache_evict(c, c->lru);
	e = malloc(sizeof(*e) + key->len);
	if (!e)
		return false;
	if (key->len > 0)
		memcpy(e->text, key->text, key->len);
	e->key = (struct cache_key){key->epoch, e->text, key->len};
	e->result = r;
	e->oom = false;
	HASH_ADD_KEYPTR_BYHASHVALUE(hh, c->map, &e->key, sizeof(e->key), hash, e);
	if (e->oom) {
		free(e);
		return false;
	}
	DL_APPEND2(c->lru, e, lru_prev, lru_next);
	c->count++;
	return true;
}

const struct parse_result *parser_cache_get(struct parser_cache *c, const struct parser_tables *t,
                                            uint64_t epoch, const char *text, size_t len,
                                            const char *key_columns, const char *partition_column)
{
	struct cache_key key = {epoch, text, len};
	struct cache_entry *e;
	struct parse_result *r;
	unsigned hash;

	parse_result_free(c->uncached);
	c->uncached = NULL;
	if (!cache_check_conf(c, t, key_columns, partition_column))
		return NULL;
	hash = cache_hash(c, &key);
	HASH_FIND_BYHASHVALUE(hh, c->map, &key, sizeof(key), hash, e);
	if (e) {
		c->hits++;
		DL_DELETE2(c->lru, e, lru_prev, lru_next);
		DL_APPEND2(c->lru, e, lru_prev, lru_next);
		return e->result;
	}
	c->misses++;
	r = parser_parse(t, text, len, key_columns, partition_column);
	if (r && !cache_insert(c, &key, hash, r))
		c->uncached = r;
	return r;
}

uint64_t parser_cache_hits(const struct parser_cache *c)
{
	return c->hits;
}

uint64_t parser_cache_misses(const struct parser_cache *c)
{
	return c->misses;
}
