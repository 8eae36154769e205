/*
 * pgshunt configuration: one table of keys drives parsing, defaults, validation,
 * SHOW CONFIG, reload and the configuration reference (docs/CONFIG.md).
 *
 * The file is an ini file with a single section [pgshunt]; it is read with
 * libinih (Debian's libinih-dev).  An unknown key, a duplicate key, a key outside
 * [pgshunt] or a bad value makes conf_load() fail with "FILE:LINE: KEY: reason".
 */
#ifndef PGSHUNT_CONF_H
#define PGSHUNT_CONF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define WARN_UNUSED __attribute__((warn_unused_result))

/* libpq's sslmode names, in increasing strictness. */
enum sslmode {
	SSLMODE_DISABLE,
	SSLMODE_ALLOW,
	SSLMODE_PREFER,
	SSLMODE_REQUIRE,
	SSLMODE_VERIFY_CA,
	SSLMODE_VERIFY_FULL,
};

enum log_level {
	LOG_LEVEL_ERROR,
	LOG_LEVEL_WARNING,
	LOG_LEVEL_INFO,
	LOG_LEVEL_DEBUG,
};

enum partition_interval {
	PARTITION_DAY,
	PARTITION_WEEK,
	PARTITION_MONTH,
};

/*
 * Every string is heap-owned by the config and never NULL after conf_defaults()
 * or a successful conf_load() (an unset optional string is "").
 */
struct pgshunt_config {
	/* listening */
	char *listen_addr;        /* "" = no TCP listener; "*" = all addresses */
	int listen_port;          /* 1..65535, also names the unix socket file */
	char *unix_socket_dir;    /* "" = no unix socket */
	int max_client_conn;      /* >= 1 */
	int client_login_timeout; /* seconds, 0 = none */
	int64_t max_message_size; /* bytes, >= 1024 */
	int shutdown_timeout;     /* seconds SIGTERM waits for sessions to finish */
	int worker_threads;       /* relay threads; 0: the main thread relays */

	/* the server */
	char *server_host; /* host name, IP address, or a unix socket directory (starts with '/') */
	int server_port;
	char *control_dsn; /* libpq conninfo for pgshunt's own connections */

	/* admin console */
	char *admin_users;    /* comma-separated role names */
	char *admin_database; /* the pseudo-database that reaches the console */

	/* the table being migrated */
	char *table;            /* default public.ingest_idempotency */
	char *next_table;       /* default public.ingest_idempotency_next */
	char *buffer_table;     /* default public.ingest_fallback_buffer */
	char *partition_column; /* default created_at */
	enum partition_interval partition_interval;
	int partition_premake;     /* intervals created ahead, >= 1 */
	char *partition_retention; /* PostgreSQL interval text, "" = keep forever */
	char *key_columns;         /* comma-separated, default "site_id,idempotency_key" */

	/* jobs */
	int backfill_batch_rows;
	int backfill_max_rows_per_sec; /* 0 = unthrottled */
	int drain_batch_rows;
	int drain_max_rows_per_sec; /* 0 = unthrottled */
	int thresholds_interval_s;
	bool auto_degrade;
	int auto_degrade_window_s;
	bool guard_direct_writes;

	/* the process */
	char *pidfile; /* "" = none; written once the listeners are up, removed at exit */

	/* observability */
	char *metrics_addr; /* "host:port", "" = no HTTP endpoint */
	enum log_level log_level;
	bool log_syslog; /* log to syslog instead of stderr */

	/* TLS */
	enum sslmode client_tls_sslmode; /* disable, allow, prefer, require */
	char *client_tls_cert_file;
	char *client_tls_key_file;
	enum sslmode server_tls_sslmode; /* any libpq sslmode */
	char *server_tls_ca_file;
};

enum conf_type {
	CONF_STRING,
	CONF_INT,
	CONF_SIZE, /* integer with optional kB/MB/GB suffix */
	CONF_BOOL,
	CONF_SSLMODE,
	CONF_LOG_LEVEL,
	CONF_INTERVAL,
};

/* One row of the key table. */
struct conf_key {
	const char *name;
	enum conf_type type;
	size_t offset;          /* of the field in struct pgshunt_config */
	const char *def;        /* default, as it would be written in the file */
	int64_t min, max;       /* CONF_INT, CONF_SIZE: range; CONF_STRING: min length (0 or 1);
				   enumerations: the allowed values */
	bool reloadable;        /* SIGHUP / RELOAD applies it without a restart */
	const char *doc;        /* one line for SHOW CONFIG and docs/CONFIG.md */
};

/* Fill cfg with the defaults of every key (cfg is assumed uninitialised). */
void conf_defaults(struct pgshunt_config *cfg);

/*
 * Parse the file at path into cfg (defaults first, then the file).  On failure cfg
 * holds nothing to free, and err gets "PATH:LINE: KEY: reason" (or "PATH: reason").
 */
bool conf_load(const char *path, struct pgshunt_config *cfg, char *err, size_t errlen) WARN_UNUSED;

/* Same as conf_load() but from a string; name stands in for the path in errors. */
bool conf_load_string(const char *text, const char *name, struct pgshunt_config *cfg, char *err,
		      size_t errlen) WARN_UNUSED;

/* Release every string of cfg; cfg may be passed to conf_defaults() again. */
void conf_free(struct pgshunt_config *cfg);

/* The key table, for SHOW CONFIG, reload and the docs. */
size_t conf_key_count(void);
const struct conf_key *conf_key_at(size_t i);
const struct conf_key *conf_key_find(const char *name);

/* Write the value of key in cfg as the file would spell it. Returns buf. */
const char *conf_format(const struct pgshunt_config *cfg, const struct conf_key *key, char *buf,
			size_t len);

/* True when key has the same value in a and b. */
bool conf_equal(const struct pgshunt_config *a, const struct pgshunt_config *b,
		const struct conf_key *key);

/*
 * Reload: copy into cur every reloadable key whose value differs in fresh.  For each
 * non-reloadable key that differs, call report(key) so the caller can say that it needs
 * a restart; those keep their current value.  fresh is left valid for conf_free().
 */
void conf_apply_reload(struct pgshunt_config *cur, const struct pgshunt_config *fresh,
		       void (*report)(const struct conf_key *key, void *arg), void *arg);

/* True when name (case-sensitive) is listed in the comma-separated list. */
bool conf_list_contains(const char *list, const char *name);

const char *conf_sslmode_name(enum sslmode mode);
const char *conf_log_level_name(enum log_level level);

#endif
