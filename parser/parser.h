/*
 * Statement recognition: which statements of a query string touch the configured
 * tables, what kind each is, and where in the text the pieces a rewrite splices are.
 *
 * Two stages (SPEC I6): parser_prefilter() is a cheap byte scan; a statement string in
 * which it finds no configured table name is forwarded unchanged and never parsed.  The
 * rest goes through libpg_query (PostgreSQL's own grammar, JSON output read with cJSON),
 * bounded in size and nesting depth so a hostile statement cannot exhaust the stack.
 * Results are cached by (phase epoch, text).
 */
#ifndef PGSHUNT_PARSER_H
#define PGSHUNT_PARSER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* A relation name as configured: "public.ingest_idempotency" → schema "public". */
struct rel_name {
	char schema[64]; /* "" when the config gave no schema: matches any schema */
	char name[64];   /* as PostgreSQL stores it (unquoted names folded to lower case) */
};

/* The relations pgshunt cares about, in the order of enum rel_role. */
enum rel_role {
	REL_OLD,    /* table */
	REL_NEXT,   /* next_table */
	REL_BUFFER, /* buffer_table */
	REL__COUNT
};

struct parser_tables {
	struct rel_name rel[REL__COUNT];
	/* For the prefilter, made by parser_tables_init(): per byte, a bit per relation
	   whose name can begin there (1 << role, either case), and 0x80 for '&' (U&");
	   each relation's needle, [needle_at, needle_at + needle_len) of its name. */
	uint8_t first[256];
	uint8_t needle_at[REL__COUNT];
	uint8_t needle_len[REL__COUNT];
	char first_set[2 * REL__COUNT + 2]; /* the bytes of first[], as a C string */
};

/* Fill t from the config's three names; false when one is not a valid [schema.]name. */
bool parser_tables_init(struct parser_tables *t, const char *table, const char *next_table,
			const char *buffer_table) __attribute__((warn_unused_result));

/*
 * The byte scan: true when text may mention a configured table (any of the names,
 * case-insensitively, or a U&"..." identifier that could spell one).  False means
 * "certainly does not": the statement is forwarded without parsing.
 */
bool parser_prefilter(const struct parser_tables *t, const char *text, size_t len);

/* The same for a text with a NUL at text[len] and none before (a Query's, a Parse's):
   strcspn finds the candidate bytes with the C library's vector code. */
bool parser_prefilter_cstr(const struct parser_tables *t, const char *text, size_t len);

enum stmt_kind {
	STMT_OTHER,         /* touches a configured table in a way not listed below (e.g.
			       DECLARE CURSOR, CALL with a subquery argument; a name inside a
			       string literal is no reference at all, a view definition is DDL) */
	STMT_SELECT,        /* plain read (incl. SELECT ... INTO? no: that is DDL, see below) */
	STMT_SELECT_LOCKING,/* SELECT ... FOR UPDATE / FOR NO KEY UPDATE / FOR SHARE / FOR KEY SHARE */
	STMT_INSERT,        /* INSERT ... VALUES / DEFAULT VALUES */
	STMT_INSERT_SELECT, /* INSERT ... SELECT */
	STMT_UPDATE,
	STMT_DELETE,
	STMT_MERGE,
	STMT_COPY_FROM,     /* COPY table FROM ... (a write the proxy cannot mirror) */
	STMT_COPY_TO,       /* COPY table TO / COPY (query) TO */
	STMT_TRUNCATE,
	STMT_DDL,           /* ALTER / DROP / CREATE INDEX / RENAME / LOCK / CREATE TABLE AS /
			       SELECT INTO / VACUUM / ANALYZE / CLUSTER / REINDEX / GRANT ... */
	STMT_PREPARE,       /* PREPARE name AS <statement>: see inner */
	STMT_EXECUTE,       /* EXECUTE name (...) */
	STMT_DEALLOCATE,
	STMT_EXPLAIN,       /* EXPLAIN [ANALYZE] <statement>: see inner */
	STMT__COUNT
};

enum conflict_action {
	CONFLICT_NONE,    /* no ON CONFLICT clause */
	CONFLICT_NOTHING, /* ON CONFLICT ... DO NOTHING */
	CONFLICT_UPDATE,  /* ON CONFLICT ... DO UPDATE */
};

/* One mention of a configured relation in the text. */
struct rel_ref {
	enum rel_role role;
	uint32_t start; /* byte offset of the (possibly schema-qualified, possibly quoted) name */
	uint32_t len;   /* bytes of the name, schema and quotes included, alias excluded */
	bool has_alias; /* written "AS x" or "x" after the name */
	bool is_target; /* the relation the statement writes (INSERT INTO, UPDATE, DELETE FROM,
			   MERGE INTO, COPY ... FROM, TRUNCATE, DDL target) */
	bool in_cte;    /* inside a WITH clause */
	bool has_catalog; /* written catalog.schema.name: the server resolves (or refuses)
			     the catalog part, so a rename could not keep its meaning */
	bool only;      /* written "ONLY name" or "ONLY (name)" (a RangeVar without inh): on a
			   partitioned table ONLY reads the empty parent, so a rename to
			   next_table must drop it */
	uint32_t only_start; /* only: offset of the ONLY keyword */
	uint32_t only_close; /* "ONLY (name)": offset of the ")" after the name, else 0 */
	uint32_t star;  /* "name *" (descendants included, the default written out): offset
			   of the "*", else 0; a rename that adds an alias must drop it */
};

#define PARSER_MAX_REFS 32

/* The system columns every table has and no view has. */
enum sys_column {
	SYSCOL_XMAX,
	SYSCOL_XMIN,
	SYSCOL_CMIN,
	SYSCOL_CMAX,
	SYSCOL_CTID,
	SYSCOL_TABLEOID,
	SYSCOL__COUNT
};

const char *sys_column_name(enum sys_column col);

/*
 * A column reference in the RETURNING list that names a system column of the written
 * row: `xmax` (not inside a sub-SELECT, where a bare name would be the subquery's) or
 * `<alias-or-table>.xmax` (the target's alias, or its name when it has none).  An
 * INSERT pointed at a view cannot read them there (42703): pgshunt rewrites xmax and
 * refuses the others (rules_decide, the engine).
 */
struct sys_ref {
	uint32_t start; /* the reference as written: xmax, t.xmax, "T" . "xmax" */
	uint32_t len;
	enum sys_column column;
};

#define PARSER_MAX_SYSREFS 8

/*
 * A column reference written schema.table.column (or .*, or with the catalog in front)
 * naming the table: where the engine points the table's mention at another relation
 * with the table's name as alias, only table.column resolves, so it deletes the
 * prefix, [start, start + len) ("public." of public.t.col).
 */
struct qual_col {
	uint32_t start;
	uint32_t len;
};

#define PARSER_MAX_QUALCOLS 64

/* What one statement of a query string is. Offsets are into the whole string. */
struct stmt_info {
	enum stmt_kind kind;
	uint32_t start;          /* the statement's text, as libpg_query delimits it */
	uint32_t len;
	bool touches;            /* mentions at least one configured relation */
	bool writes;             /* a configured relation is written (target of a write kind or
				    of a data-modifying CTE, or of DDL).  EXPLAIN without ANALYZE
				    writes nothing; PREPARE: what the prepared statement writes */
	bool writable_cte;       /* a WITH clause holds an INSERT/UPDATE/DELETE/MERGE */
	enum conflict_action conflict;
	bool conflict_on_constraint; /* ON CONFLICT ON CONSTRAINT name (vs a column list) */
	uint32_t conflict_start; /* the whole "ON CONFLICT ..." clause, 0/0 when none */
	uint32_t conflict_len;
	bool has_returning;
	uint32_t returning_start;/* the text after RETURNING (the list), 0/0 when none */
	uint32_t returning_len;
	bool sets_key_columns;   /* UPDATE/MERGE/ON CONFLICT DO UPDATE assigns a key column or
				    the partition column (see parser_parse's key_columns) */
	bool has_params;         /* $n parameters appear */
	char prepared_name[64];  /* PREPARE/EXECUTE/DEALLOCATE: the name ("" = DEALLOCATE ALL) */
	bool uses_ctid;          /* a column reference named ctid (qualified or not): ctid is not
				    unique across the partitions of next_table */
	bool copy_relation;      /* COPY name [(columns)] TO (not COPY (query) TO): a partitioned
				    table cannot be copied that way, the rename makes it a query */
	bool copy_legacy;        /* copy_relation written with pre-9.0 options (BINARY before the
				    name, [USING] DELIMITERS) that COPY (query) does not take */
	uint32_t copy_cols_start;/* copy_relation: the text inside the column list's brackets,
				    0/0 when there is no list */
	uint32_t copy_cols_len;
	uint32_t copy_rel_end;   /* copy_relation: one past the name, or past the list's ")" */
	uint32_t nsysrefs;       /* system-column references of RETURNING (struct sys_ref);
				    may exceed PARSER_MAX_SYSREFS: only the first ones are kept */
	struct sys_ref sysrefs[PARSER_MAX_SYSREFS];
	uint32_t nqualcols;      /* struct qual_col; may exceed PARSER_MAX_QUALCOLS: only
				    the first ones are kept */
	struct qual_col qualcols[PARSER_MAX_QUALCOLS];
	enum stmt_kind inner;    /* PREPARE/EXPLAIN (and DECLARE CURSOR, kind OTHER): the kind
				    of the wrapped statement */
	uint32_t nrefs;
	struct rel_ref refs[PARSER_MAX_REFS];
};

enum parse_status {
	PARSE_OK,
	PARSE_SYNTAX_ERROR, /* libpg_query rejected it (the server might not: newer syntax) */
	PARSE_TOO_LARGE,    /* longer than PARSER_MAX_TEXT, or multi-column SET lists that
			       would make libpg_query's tree explode */
	PARSE_TOO_DEEP,     /* nesting beyond PARSER_MAX_DEPTH */
	PARSE_TOO_MANY,     /* more than PARSER_MAX_STMTS statements or PARSER_MAX_REFS refs */
	PARSE_NO_MEMORY,
};

#define PARSER_MAX_TEXT  (1u << 20) /* bytes */
#define PARSER_MAX_DEPTH 200        /* parentheses/brackets nesting, counted before parsing */
#define PARSER_MAX_STMTS 64

struct parse_result {
	enum parse_status status;
	char error[256];   /* for the refusal message when status != PARSE_OK */
	bool touches;      /* any statement touches a configured relation (true when
			      status != PARSE_OK: not known, so assumed) */
	uint32_t nstmts;
	struct stmt_info *stmts; /* nstmts entries, owned */
};

/*
 * Parse text (len bytes, need not be NUL-terminated).  key_columns is the config's
 * comma-separated list, partition_column the config's; both decide sets_key_columns.
 * Always returns a result (NULL only when out of memory); free it with
 * parse_result_free() unless it came from the cache.
 */
struct parse_result *parser_parse(const struct parser_tables *t, const char *text, size_t len,
				  const char *key_columns, const char *partition_column);
void parse_result_free(struct parse_result *r);

const char *stmt_kind_name(enum stmt_kind kind);

/*
 * The parse cache: results keyed by (epoch, text), at most `capacity` entries, least
 * recently used evicted.  Returned results are owned by the cache and stay valid until
 * the next parser_cache_* call.
 */
struct parser_cache;
struct parser_cache *parser_cache_new(size_t capacity);
void parser_cache_free(struct parser_cache *c);
const struct parse_result *parser_cache_get(struct parser_cache *c, const struct parser_tables *t,
					    uint64_t epoch, const char *text, size_t len,
					    const char *key_columns, const char *partition_column);
uint64_t parser_cache_hits(const struct parser_cache *c);
uint64_t parser_cache_misses(const struct parser_cache *c);

#endif
