/*
 * pgshunt configuration.  The key table below is the single description of every
 * setting: defaults are parsed from it, the file is checked against it, and SHOW
 * CONFIG, reload and docs/CONFIG.md (checked by tests/unit/test_conf.c) follow it.
 *
 * The file goes through libinih with its options pinned (see set_inih_options) and
 * through our own line reader, which lets a file be read whole first and rejects what
 * inih would otherwise misread silently: over-long lines, NUL bytes, text after a
 * section header.
 */
#include "conf/conf.h"

#include <errno.h>
#include <ini.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define FIELD(f)     offsetof(struct pgshunt_config, f)

/* clang-format off */
/* The row names its field once, so a key cannot drift from the member it sets. */
#define KEY(f, type, def, min, max, reload, doc) {#f, type, FIELD(f), def, min, max, reload, doc}

/* min/max: for strings the minimum length (1 = must not be empty); for enumerations
 * the allowed values, so client_tls_sslmode can stop at require. */
static const struct conf_key keys[] = {
	KEY(listen_addr, CONF_STRING, "127.0.0.1", 0, 0, false,
	    "address clients connect to: IP address or host name, * for all, empty for no TCP"),
	KEY(listen_port, CONF_INT, "6433", 1, 65535, false,
	    "TCP port clients connect to; also names the unix socket file .s.PGSQL.<port>"),
	KEY(unix_socket_dir, CONF_STRING, "", 0, 0, false,
	    "directory of the unix socket clients can connect to, empty for no unix socket"),
	KEY(max_client_conn, CONF_INT, "100", 1, 100000, true,
	    "most client connections open at once; further ones are refused"),
	KEY(client_login_timeout, CONF_INT, "60", 0, 86400, true,
	    "seconds a client has to finish start-up and authentication, 0 for no limit"),
	KEY(max_message_size, CONF_SIZE, "256MB", 1024, 1073741824, true,
	    "largest protocol message accepted, in bytes or with a kB/MB/GB suffix"),
	KEY(shutdown_timeout, CONF_INT, "30", 0, 86400, true,
	    "seconds SIGTERM waits for sessions to finish before closing them"),
	KEY(worker_threads, CONF_INT, "2", 0, 64, false,
	    "threads that relay client sessions, 0 for none (the main thread relays them)"),

	KEY(server_host, CONF_STRING, "127.0.0.1", 1, 0, true,
	    "PostgreSQL server: host name, IP address, or unix socket directory (starts with /)"),
	KEY(server_port, CONF_INT, "5432", 1, 65535, true, "PostgreSQL server port"),
	KEY(control_dsn, CONF_STRING, "", 0, 0, true,
	    "libpq connection string for pgshunt's own connections to the server"),

	KEY(admin_users, CONF_STRING, "", 0, 0, true,
	    "comma-separated roles allowed on the admin console, empty for nobody"),
	KEY(admin_database, CONF_STRING, "pgshunt", 1, 0, false,
	    "database name that reaches the admin console instead of the server"),

	KEY(table, CONF_STRING, "public.ingest_idempotency", 1, 0, false,
	    "the table being migrated (schema.name)"),
	KEY(next_table, CONF_STRING, "public.ingest_idempotency_next", 1, 0, false,
	    "the partitioned table that replaces table (schema.name)"),
	KEY(buffer_table, CONF_STRING, "public.ingest_fallback_buffer", 1, 0, false,
	    "table that holds writes while degraded, drained into the partitioned table later"),
	KEY(partition_column, CONF_STRING, "created_at", 1, 0, false,
	    "timestamp column next_table is partitioned by"),
	KEY(partition_interval, CONF_INTERVAL, "month", PARTITION_DAY, PARTITION_MONTH, false,
	    "span of one partition: day, week or month"),
	KEY(partition_premake, CONF_INT, "3", 1, 120, true,
	    "partitions kept created ahead of the current one"),
	KEY(partition_retention, CONF_STRING, "", 0, 0, true,
	    "PostgreSQL interval after which old partitions are dropped once finalized, empty to keep all"),
	KEY(key_columns, CONF_STRING, "site_id,idempotency_key", 1, 0, false,
	    "comma-separated columns of the idempotency key"),

	KEY(backfill_batch_rows, CONF_INT, "1000", 1, 1000000, true,
	    "rows copied per backfill transaction"),
	KEY(backfill_max_rows_per_sec, CONF_INT, "10000", 0, 100000000, true,
	    "backfill speed limit in rows per second, 0 for unthrottled"),
	KEY(drain_batch_rows, CONF_INT, "1000", 1, 1000000, true,
	    "rows moved out of buffer_table per drain transaction"),
	KEY(drain_max_rows_per_sec, CONF_INT, "5000", 0, 100000000, true,
	    "drain speed limit in rows per second, 0 for unthrottled"),
	KEY(thresholds_interval_s, CONF_INT, "60", 1, 86400, true,
	    "seconds between two catalog checks of the size thresholds (SHOW THRESHOLDS)"),
	KEY(auto_degrade, CONF_BOOL, "off", 0, 1, true,
	    "turn DEGRADED on by itself when the fleet's p99 insert latency stays over 500 ms, off under 100 ms"),
	KEY(auto_degrade_window_s, CONF_INT, "30", 1, 86400, true,
	    "seconds the p99 must stay past a limit before auto_degrade turns DEGRADED on or off"),
	KEY(guard_direct_writes, CONF_BOOL, "off", 0, 1, true,
	    "from dual_write on, the database refuses writes to table, next_table and "
	    "buffer_table that do not come through pgshunt"),

	KEY(pidfile, CONF_STRING, "", 0, 0, false,
	    "file that holds pgshunt's process ID while it runs, empty for none"),

	KEY(metrics_addr, CONF_STRING, "", 0, 0, false,
	    "host:port of the HTTP metrics endpoint, empty for none"),
	KEY(log_level, CONF_LOG_LEVEL, "info", LOG_LEVEL_ERROR, LOG_LEVEL_DEBUG, true,
	    "least severe messages logged: error, warning, info or debug"),
	KEY(log_syslog, CONF_BOOL, "off", 0, 1, false, "log to syslog instead of stderr"),

	KEY(client_tls_sslmode, CONF_SSLMODE, "disable", SSLMODE_DISABLE, SSLMODE_REQUIRE, true,
	    "TLS towards clients: disable, allow, prefer or require (all but disable need the "
	    "cert and key)"),
	KEY(client_tls_cert_file, CONF_STRING, "", 0, 0, true,
	    "PEM certificate (chain) pgshunt shows to clients"),
	KEY(client_tls_key_file, CONF_STRING, "", 0, 0, true,
	    "PEM private key of client_tls_cert_file"),
	KEY(server_tls_sslmode, CONF_SSLMODE, "prefer", SSLMODE_DISABLE, SSLMODE_VERIFY_FULL, true,
	    "TLS towards the server, as libpq's sslmode (verify-ca and verify-full need the CA)"),
	KEY(server_tls_ca_file, CONF_STRING, "", 0, 0, true,
	    "PEM CA certificates that verify the server's certificate"),
};

/* clang-format on */

#define KEY_COUNT ARRAY_LEN(keys)

/* A line this long is a mistake (or not a config file); saying so beats splitting it. */
#define LINE_LIMIT 4096
/* Bounds the read, so a path like /dev/zero fails instead of eating memory. */
#define FILE_LIMIT 1048576
#define XSTR(x)    STR(x)
#define STR(x)     #x

static const char *const sslmode_names[] = {"disable", "allow",     "prefer",
                                            "require", "verify-ca", "verify-full"};
static const char *const log_level_names[] = {"error", "warning", "info", "debug"};
static const char *const interval_names[] = {"day", "week", "month"};
static const char *const true_names[] = {"on", "true", "yes", "1"};
static const char *const false_names[] = {"off", "false", "no", "0"};

struct name_list {
	const char *const *names;
	int count;
};

/* Feeds inih one line at a time from memory, and stops it at a line it would misread. */
struct reader {
	const char *pos, *end;
	const char *line; /* the line handed out last, for syntax error details */
	size_t line_len;
	int lineno;
	const char *bad; /* why reading stopped early, NULL if it did not */
};

struct parse {
	struct pgshunt_config *cfg;
	struct reader rd;
	int set_line[KEY_COUNT]; /* where each key was set, 0 = not yet */
	bool failed;
	char key[72];
	char reason[160];
};

static __attribute__((noreturn)) void out_of_memory(void)
{
	/* Nothing sensible is left to do for a daemon that cannot copy a short string. */
	fputs("pgshunt: out of memory\n", stderr);
	abort();
}

static char *xstrdup(const char *s)
{
	char *copy = strdup(s);

	if (!copy)
		out_of_memory();
	return copy;
}

static void *field(struct pgshunt_config *cfg, const struct conf_key *key)
{
	return (char *)cfg + key->offset;
}

static const void *cfield(const struct pgshunt_config *cfg, const struct conf_key *key)
{
	return (const char *)cfg + key->offset;
}

static __attribute__((format(printf, 3, 4))) bool refuse(char *reason, size_t len, const char *fmt,
                                                         ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(reason, len, fmt, ap);
	va_end(ap);
	return false;
}

/* Untrusted bytes end up on a terminal or in a log: keep them printable and short. */
static void printable(char *dst, size_t size, const char *src)
{
	size_t i;

	for (i = 0; src[i] && i + 1 < size; i++)
		dst[i] = (src[i] >= 0x20 && src[i] < 0x7f) ? src[i] : '?';
	dst[i] = '\0';
	if (src[i] && size > 4)
		memcpy(dst + size - 4, "...", 4);
}

static struct name_list enum_names(enum conf_type type)
{
	switch (type) {
	case CONF_SSLMODE:
		return (struct name_list){sslmode_names, (int)ARRAY_LEN(sslmode_names)};
	case CONF_LOG_LEVEL:
		return (struct name_list){log_level_names, (int)ARRAY_LEN(log_level_names)};
	default:
		return (struct name_list){interval_names, (int)ARRAY_LEN(interval_names)};
	}
}

static int enum_get(const struct pgshunt_config *cfg, const struct conf_key *key)
{
	const void *p = cfield(cfg, key);

	switch (key->type) {
	case CONF_SSLMODE:
		return (int)*(const enum sslmode *)p;
	case CONF_LOG_LEVEL:
		return (int)*(const enum log_level *)p;
	default:
		return (int)*(const enum partition_interval *)p;
	}
}

static void enum_set(struct pgshunt_config *cfg, const struct conf_key *key, int v)
{
	void *p = field(cfg, key);

	switch (key->type) {
	case CONF_SSLMODE:
		*(enum sslmode *)p = (enum sslmode)v;
		break;
	case CONF_LOG_LEVEL:
		*(enum log_level *)p = (enum log_level)v;
		break;
	default:
		*(enum partition_interval *)p = (enum partition_interval)v;
		break;
	}
}

static const char *enum_name(enum conf_type type, int v)
{
	struct name_list l = enum_names(type);

	return v >= 0 && v < l.count ? l.names[v] : "unknown";
}

/* --- values --- */

/* Writes the largest unit that divides v exactly, which is how a person writes sizes. */
static void format_size(int64_t v, char *buf, size_t len)
{
	static const char *const units[] = {"GB", "MB", "kB"};
	int64_t mult = INT64_C(1) << 30;

	for (size_t i = 0; i < ARRAY_LEN(units); i++, mult >>= 10) {
		if (v != 0 && v % mult == 0) {
			snprintf(buf, len, "%" PRId64 "%s", v / mult, units[i]);
			return;
		}
	}
	snprintf(buf, len, "%" PRId64, v);
}

/* PostgreSQL's spelling and 1024-based meaning; a space before the unit is fine. */
static bool size_unit(const char *s, int64_t *mult)
{
	static const char *const units[] = {"", "kB", "MB", "GB"};

	while (*s == ' ')
		s++;
	for (size_t i = 0; i < ARRAY_LEN(units); i++) {
		if (strcmp(s, units[i]) == 0) {
			*mult = INT64_C(1) << (10 * i);
			return true;
		}
	}
	return false;
}

static bool range_error(const struct conf_key *key, char *reason, size_t len)
{
	char lo[32], hi[32];

	if (key->type == CONF_INT)
		return refuse(reason, len, "must be between %" PRId64 " and %" PRId64, key->min,
		              key->max);
	format_size(key->min, lo, sizeof(lo));
	format_size(key->max, hi, sizeof(hi));
	return refuse(reason, len, "must be between %s and %s", lo, hi);
}

static bool parse_number(const struct conf_key *key, const char *value, int64_t *out, char *reason,
                         size_t len)
{
	char *end;
	long long n;
	int64_t mult = 1;

	errno = 0;
	n = strtoll(value, &end, 10);
	if (end == value || (*value != '-' && (*value < '0' || *value > '9')))
		return refuse(reason, len, "not a number");
	if (key->type == CONF_INT && *end)
		return refuse(reason, len, "trailing characters after the number");
	if (key->type == CONF_SIZE && !size_unit(end, &mult))
		return refuse(reason, len, "unknown unit \"%.16s\" (use kB, MB or GB)", end);
	if (errno == ERANGE || n > INT64_MAX / mult || n < INT64_MIN / mult ||
	    n * mult < key->min || n * mult > key->max)
		return range_error(key, reason, len);
	*out = n * mult;
	return true;
}

static int find_name(const char *const *names, int count, const char *value)
{
	for (int i = 0; i < count; i++)
		if (strcasecmp(names[i], value) == 0)
			return i;
	return -1;
}

static bool parse_bool(const char *value, bool *out, char *reason, size_t len)
{
	if (find_name(true_names, (int)ARRAY_LEN(true_names), value) >= 0)
		*out = true;
	else if (find_name(false_names, (int)ARRAY_LEN(false_names), value) >= 0)
		*out = false;
	else
		return refuse(reason, len, "must be on, off, true, false, yes, no, 1 or 0");
	return true;
}

static bool enum_error(const struct conf_key *key, char *reason, size_t len)
{
	char list[128] = "";
	size_t used = 0;

	for (int64_t i = key->min; i <= key->max; i++) {
		int n = snprintf(list + used, sizeof(list) - used, "%s%s", i > key->min ? ", " : "",
		                 enum_name(key->type, (int)i));
		if (n < 0 || (size_t)n >= sizeof(list) - used)
			break;
		used += (size_t)n;
	}
	return refuse(reason, len, "must be one of %s", list);
}

static bool parse_enum(const struct conf_key *key, const char *value, int *out, char *reason,
                       size_t len)
{
	struct name_list l = enum_names(key->type);
	int v = find_name(l.names, l.count, value);

	if (v < key->min || v > key->max)
		return enum_error(key, reason, len);
	*out = v;
	return true;
}

static bool has_control_char(const char *s)
{
	for (; *s; s++)
		if ((unsigned char)*s < 0x20 || *s == 0x7f)
			return true;
	return false;
}

static bool check_text(const struct conf_key *key, const char *value, char *reason, size_t len)
{
	if (has_control_char(value))
		return refuse(reason, len, "control character in the value");
	/* The docs say "empty"; someone who writes "" would otherwise get two quotes. */
	if (strcmp(value, "\"\"") == 0 || strcmp(value, "''") == 0)
		return refuse(reason, len,
		              "quotes are kept as part of the value; for an empty "
		              "value write nothing after '='");
	if (*value == '\0' && (key->type != CONF_STRING || key->min > 0))
		return refuse(reason, len, "empty value");
	return true;
}

static bool set_number(struct pgshunt_config *cfg, const struct conf_key *key, const char *value,
                       char *reason, size_t len)
{
	int64_t n = 0;

	if (!parse_number(key, value, &n, reason, len))
		return false;
	if (key->type == CONF_INT)
		*(int *)field(cfg, key) = (int)n; /* the ranges of CONF_INT keys fit an int */
	else
		*(int64_t *)field(cfg, key) = n;
	return true;
}

static bool set_enum(struct pgshunt_config *cfg, const struct conf_key *key, const char *value,
                     char *reason, size_t len)
{
	int v = 0;

	if (!parse_enum(key, value, &v, reason, len))
		return false;
	enum_set(cfg, key, v);
	return true;
}

/* Sets key in cfg from its text, or explains in reason why the text is wrong. */
static bool set_value(struct pgshunt_config *cfg, const struct conf_key *key, const char *value,
                      char *reason, size_t len)
{
	char **s;

	if (!check_text(key, value, reason, len))
		return false;
	switch (key->type) {
	case CONF_STRING:
		s = field(cfg, key);
		free(*s);
		*s = xstrdup(value);
		return true;
	case CONF_INT:
	case CONF_SIZE:
		return set_number(cfg, key, value, reason, len);
	case CONF_BOOL:
		return parse_bool(value, (bool *)field(cfg, key), reason, len);
	default:
		return set_enum(cfg, key, value, reason, len);
	}
}

/* --- the key table --- */

size_t conf_key_count(void)
{
	return KEY_COUNT;
}

const struct conf_key *conf_key_at(size_t i)
{
	return i < KEY_COUNT ? &keys[i] : NULL;
}

const struct conf_key *conf_key_find(const char *name)
{
	for (size_t i = 0; i < KEY_COUNT; i++)
		if (strcmp(keys[i].name, name) == 0)
			return &keys[i];
	return NULL;
}

void conf_defaults(struct pgshunt_config *cfg)
{
	char reason[160];

	memset(cfg, 0, sizeof(*cfg));
	for (size_t i = 0; i < KEY_COUNT; i++) {
		/* Defaults go through the parser so that a bad row cannot go unnoticed. */
		if (!set_value(cfg, &keys[i], keys[i].def, reason, sizeof(reason))) {
			fprintf(stderr, "pgshunt: bad default for %s: %s\n", keys[i].name, reason);
			abort();
		}
	}
}

void conf_free(struct pgshunt_config *cfg)
{
	for (size_t i = 0; i < KEY_COUNT; i++) {
		if (keys[i].type == CONF_STRING) {
			char **s = field(cfg, &keys[i]);
			free(*s);
			*s = NULL;
		}
	}
}

/* --- reading the file --- */

static const char *check_section_line(const char *s, size_t n)
{
	const char *close = memchr(s, ']', n);

	if (!close)
		return NULL; /* inih reports the missing ']' */
	for (close++; close < s + n; close++)
		if (*close != ' ' && *close != '\t' && *close != '\r' && *close != '\n')
			return "syntax error: text after ']'";
	return NULL;
}

/* What inih would misread without a word: these stop the parse with a reason. */
static const char *check_line(const struct reader *rd, size_t size)
{
	const char *s = rd->line;
	size_t n = rd->line_len;

	if (n >= size || n > LINE_LIMIT)
		return "line too long (the limit is " XSTR(LINE_LIMIT) " bytes)";
	if (memchr(s, '\0', n))
		return "NUL byte in the line (not a text file?)";
	if (rd->lineno == 1 && n >= 3 && memcmp(s, "\xef\xbb\xbf", 3) == 0) {
		s += 3;
		n -= 3;
	}
	while (n > 0 && (*s == ' ' || *s == '\t')) {
		s++;
		n--;
	}
	return n > 0 && *s == '[' ? check_section_line(s, n) : NULL;
}

static char *read_line(char *buf, int size, void *stream)
{
	struct reader *rd = stream;
	const char *nl;

	if (rd->pos >= rd->end || rd->bad || size < 2)
		return NULL;
	nl = memchr(rd->pos, '\n', (size_t)(rd->end - rd->pos));
	rd->line = rd->pos;
	rd->line_len = nl ? (size_t)(nl - rd->pos) + 1 : (size_t)(rd->end - rd->pos);
	rd->lineno++;
	rd->bad = check_line(rd, (size_t)size);
	if (rd->bad)
		return NULL;
	memcpy(buf, rd->pos, rd->line_len);
	buf[rd->line_len] = '\0';
	rd->pos += rd->line_len;
	return buf;
}

/* inih only says which line failed; this says why, from the line itself. */
static const char *syntax_detail(const struct reader *rd)
{
	const char *s = rd->line;
	size_t n = rd->line_len;

	if (n > 0 && (*s == ' ' || *s == '\t'))
		return "syntax error: indented line (a value cannot continue on the next line)";
	if (rd->lineno == 1 && n >= 3 && memcmp(s, "\xef\xbb\xbf", 3) == 0)
		s += 3;
	if (*s == '[')
		return "syntax error: no ']' after the section name";
	return "syntax error: expected KEY = VALUE";
}

static bool check_entry(struct parse *p, const char *section, const char *name, const char *value)
{
	char shown[64];
	const struct conf_key *key;
	size_t i;

	if (strcmp(section, "pgshunt") != 0) {
		printable(shown, sizeof(shown), section);
		return *section ? refuse(p->reason, sizeof(p->reason),
		                         "in unknown section [%s]; only [pgshunt] is read", shown)
		                : refuse(p->reason, sizeof(p->reason), "outside section [pgshunt]");
	}
	key = conf_key_find(name);
	if (!key)
		return refuse(p->reason, sizeof(p->reason), "unknown key");
	i = (size_t)(key - keys);
	if (p->set_line[i])
		return refuse(p->reason, sizeof(p->reason), "duplicate key (first set on line %d)",
		              p->set_line[i]);
	p->set_line[i] = p->rd.lineno;
	return set_value(p->cfg, key, value, p->reason, sizeof(p->reason));
}

static int on_entry(void *user, const char *section, const char *name, const char *value)
{
	struct parse *p = user;

	/* "= value" reaches us with an empty name; it is a syntax error, not a key. */
	if (*name == '\0') {
		refuse(p->reason, sizeof(p->reason), "syntax error: no key before '='");
		p->key[0] = '\0';
	} else if (!check_entry(p, section, name, value)) {
		printable(p->key, sizeof(p->key), name);
	} else {
		return 1;
	}
	p->failed = true;
	return 0;
}

static void set_error(char *err, size_t errlen, const char *path, int line, const char *key,
                      const char *reason)
{
	if (!err || errlen == 0)
		return;
	if (line > 0 && *key)
		snprintf(err, errlen, "%s:%d: %s: %s", path, line, key, reason);
	else if (line > 0)
		snprintf(err, errlen, "%s:%d: %s", path, line, reason);
	else if (*key)
		snprintf(err, errlen, "%s: %s: %s", path, key, reason);
	else
		snprintf(err, errlen, "%s: %s", path, reason);
}

/* Rules that involve more than one key, checked once the whole file is read. */
static bool check_cross(const struct pgshunt_config *cfg, const char **key, char *reason,
                        size_t len)
{
	if (cfg->client_tls_sslmode != SSLMODE_DISABLE &&
	    (!*cfg->client_tls_cert_file || !*cfg->client_tls_key_file)) {
		*key = "client_tls_sslmode";
		return refuse(reason, len, "%s needs client_tls_cert_file and client_tls_key_file",
		              conf_sslmode_name(cfg->client_tls_sslmode));
	}
	if (cfg->server_tls_sslmode >= SSLMODE_VERIFY_CA && !*cfg->server_tls_ca_file) {
		*key = "server_tls_sslmode";
		return refuse(reason, len, "%s needs server_tls_ca_file",
		              conf_sslmode_name(cfg->server_tls_sslmode));
	}
	if (!*cfg->listen_addr && !*cfg->unix_socket_dir) {
		*key = "listen_addr";
		return refuse(reason, len, "listen_addr and unix_socket_dir cannot both be empty");
	}
	return true;
}

/* inih's options are process globals in Debian's build (INI_RUNTIME_OPTIONS); pin them
 * on every parse.  Not thread-safe: pgshunt reads its file from the main thread only. */
static void set_inih_options(void)
{
	ini_allow_multiline = false;       /* an indented line is an error, not a continuation */
	ini_allow_inline_comments = false; /* ';' can be part of a DSN or a password */
	ini_stop_on_first_error = true;    /* report the first error, not a cascade */
	ini_allow_no_value = false;
	ini_allow_bom = true;
	ini_use_stack = true;
	ini_allow_realloc = false;
	ini_max_line = LINE_LIMIT + 1;
}

/* Runs inih over the text; on failure fills err (line > 0) and returns false. */
static bool parse_lines(struct parse *p, const char *name, char *err, size_t errlen)
{
	int r;

	set_inih_options();
	r = ini_parse_stream(read_line, &p->rd, on_entry, p);
	if (r > 0 && p->failed)
		set_error(err, errlen, name, r, p->key, p->reason);
	else if (r > 0)
		set_error(err, errlen, name, r, "", syntax_detail(&p->rd));
	else if (p->rd.bad)
		set_error(err, errlen, name, p->rd.lineno, "", p->rd.bad);
	else if (r < 0)
		set_error(err, errlen, name, 0, "", "cannot parse (inih failed)");
	return r == 0 && !p->rd.bad;
}

static bool parse_text(const char *text, size_t len, const char *name, struct pgshunt_config *cfg,
                       char *err, size_t errlen)
{
	struct parse p = {.cfg = cfg, .rd = {.pos = text, .end = text + len}};
	const char *key = "";
	bool ok;

	conf_defaults(cfg);
	ok = parse_lines(&p, name, err, errlen);
	if (ok && !check_cross(cfg, &key, p.reason, sizeof(p.reason))) {
		set_error(err, errlen, name, 0, key, p.reason);
		ok = false;
	}
	if (!ok) {
		conf_free(cfg);
		memset(cfg, 0, sizeof(*cfg));
	}
	return ok;
}

/* Reads the whole file first, so the parse can see NUL bytes and bound the size.
 * Returns 0 or an errno value; *out is always to be freed. */
static int read_file(FILE *f, char **out, size_t *outlen)
{
	size_t cap = 4096, len = 0;
	char *buf = malloc(cap);

	for (;;) {
		if (!buf)
			out_of_memory();
		len += fread(buf + len, 1, cap - len, f);
		if (len < cap || cap > FILE_LIMIT)
			break;
		cap *= 2;
		buf = realloc(buf, cap); /* on failure we abort, so the old block may leak */
	}
	*out = buf;
	*outlen = len;
	if (ferror(f))
		return errno ? errno : EIO;
	return 0;
}

static bool file_error(char *err, size_t errlen, const char *path, const char *what, int e)
{
	char reason[160];

	snprintf(reason, sizeof(reason), "%s: %s", what, strerror(e));
	set_error(err, errlen, path, 0, "", reason);
	return false;
}

bool conf_load(const char *path, struct pgshunt_config *cfg, char *err, size_t errlen)
{
	FILE *f;
	char *text;
	size_t len;
	int e;
	bool ok = false;

	memset(cfg, 0, sizeof(*cfg));
	f = fopen(path, "rb");
	if (!f)
		return file_error(err, errlen, path, "cannot open", errno);
	errno = 0;
	e = read_file(f, &text, &len);
	fclose(f);
	if (e)
		file_error(err, errlen, path, "cannot read", e);
	else if (len > FILE_LIMIT)
		set_error(err, errlen, path, 0, "",
		          "file too large (the limit is " XSTR(FILE_LIMIT) " bytes)");
	else
		ok = parse_text(text, len, path, cfg, err, errlen);
	free(text);
	return ok;
}

bool conf_load_string(const char *text, const char *name, struct pgshunt_config *cfg, char *err,
                      size_t errlen)
{
	memset(cfg, 0, sizeof(*cfg));
	return parse_text(text, strlen(text), name, cfg, err, errlen);
}

/* --- using a loaded config --- */

const char *conf_format(const struct pgshunt_config *cfg, const struct conf_key *key, char *buf,
                        size_t len)
{
	const void *p = cfield(cfg, key);
	const char *s;

	switch (key->type) {
	case CONF_STRING:
		s = *(char *const *)p;
		snprintf(buf, len, "%s", s ? s : "");
		break;
	case CONF_INT:
		snprintf(buf, len, "%d", *(const int *)p);
		break;
	case CONF_SIZE:
		format_size(*(const int64_t *)p, buf, len);
		break;
	case CONF_BOOL:
		snprintf(buf, len, "%s", *(const bool *)p ? "on" : "off");
		break;
	default:
		snprintf(buf, len, "%s", enum_name(key->type, enum_get(cfg, key)));
		break;
	}
	return buf;
}

bool conf_equal(const struct pgshunt_config *a, const struct pgshunt_config *b,
                const struct conf_key *key)
{
	const void *pa = cfield(a, key), *pb = cfield(b, key);
	const char *sa, *sb;

	switch (key->type) {
	case CONF_STRING:
		sa = *(char *const *)pa;
		sb = *(char *const *)pb;
		return sa == sb || (sa && sb && strcmp(sa, sb) == 0);
	case CONF_INT:
		return *(const int *)pa == *(const int *)pb;
	case CONF_SIZE:
		return *(const int64_t *)pa == *(const int64_t *)pb;
	case CONF_BOOL:
		return *(const bool *)pa == *(const bool *)pb;
	default:
		return enum_get(a, key) == enum_get(b, key);
	}
}

static void copy_value(struct pgshunt_config *dst, const struct pgshunt_config *src,
                       const struct conf_key *key)
{
	char **s;

	switch (key->type) {
	case CONF_STRING:
		s = field(dst, key);
		free(*s);
		*s = xstrdup(*(char *const *)cfield(src, key));
		break;
	case CONF_INT:
		*(int *)field(dst, key) = *(const int *)cfield(src, key);
		break;
	case CONF_SIZE:
		*(int64_t *)field(dst, key) = *(const int64_t *)cfield(src, key);
		break;
	case CONF_BOOL:
		*(bool *)field(dst, key) = *(const bool *)cfield(src, key);
		break;
	default:
		enum_set(dst, key, enum_get(src, key));
		break;
	}
}

/* Cross-key rules only join keys that are all reloadable or all not, so a merged config
 * still satisfies them when fresh did. */
void conf_apply_reload(struct pgshunt_config *cur, const struct pgshunt_config *fresh,
                       void (*report)(const struct conf_key *key, void *arg), void *arg)
{
	for (size_t i = 0; i < KEY_COUNT; i++) {
		if (conf_equal(cur, fresh, &keys[i]))
			continue;
		if (keys[i].reloadable)
			copy_value(cur, fresh, &keys[i]);
		else if (report)
			report(&keys[i], arg);
	}
}

bool conf_list_contains(const char *list, const char *name)
{
	size_t want = strlen(name);
	const char *p = list, *end;
	size_t n;

	if (!list || want == 0)
		return false;
	for (;; p = end + 1) {
		end = strchr(p, ',');
		n = end ? (size_t)(end - p) : strlen(p);
		while (n > 0 && (*p == ' ' || *p == '\t')) {
			p++;
			n--;
		}
		while (n > 0 && (p[n - 1] == ' ' || p[n - 1] == '\t'))
			n--;
		if (n == want && memcmp(p, name, n) == 0)
			return true;
		if (!end)
			return false;
	}
}

const char *conf_sslmode_name(enum sslmode mode)
{
	return enum_name(CONF_SSLMODE, (int)mode);
}

const char *conf_log_level_name(enum log_level level)
{
	return enum_name(CONF_LOG_LEVEL, (int)level);
}
