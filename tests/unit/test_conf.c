/*
 * Tests of the configuration module: defaults, every error class with its exact
 * message, malformed input, reload, formatting, and that conf/pgshunt.ini and
 * docs/CONFIG.md follow the key table.  Run from the repository root.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "conf/conf.h"

#define ERRLEN 512

/* Every key set to something other than its default. */
static const char full_file[] =
    "# a complete file\n"
    "[pgshunt]\n"
    "listen_addr = 0.0.0.0\n"
    "listen_port = 7432\n"
    "unix_socket_dir = /run/pgshunt\n"
    "max_client_conn = 500\n"
    "client_login_timeout = 0\n"
    "max_message_size = 64MB\n"
    "shutdown_timeout = 5\n"
    "worker_threads = 4\n"
    "server_host = /var/run/postgresql\n"
    "server_port = 5433\n"
    "control_dsn = host=db1 dbname=app user=pgshunt password=se;cr#et sslmode=verify-full\n"
    "admin_users = alice, bob\n"
    "admin_database = shuntadmin\n"
    "table = app.events\n"
    "next_table = app.events_next\n"
    "buffer_table = app.events_buffer\n"
    "partition_column = received_at\n"
    "partition_interval = week\n"
    "partition_premake = 7\n"
    "partition_retention = 90 days\n"
    "key_columns = tenant_id,event_id\n"
    "backfill_batch_rows = 5000\n"
    "backfill_max_rows_per_sec = 0\n"
    "drain_batch_rows = 250\n"
    "drain_max_rows_per_sec = 100\n"
    "thresholds_interval_s = 10\n"
    "auto_degrade = on\n"
    "auto_degrade_window_s = 120\n"
    "guard_direct_writes = yes\n"
    "pidfile = /run/pgshunt/pgshunt.pid\n"
    "metrics_addr = 127.0.0.1:9187\n"
    "log_level = debug\n"
    "log_syslog = true\n"
    "client_tls_sslmode = require\n"
    "client_tls_cert_file = /etc/pgshunt/server.crt\n"
    "client_tls_key_file = /etc/pgshunt/server.key\n"
    "server_tls_sslmode = verify-full\n"
    "server_tls_ca_file = /etc/pgshunt/root.crt\n";

/* --- helpers --- */

static void load_ok(const char *text, struct pgshunt_config *cfg)
{
	char err[ERRLEN] = "";

	if (!conf_load_string(text, "t.ini", cfg, err, sizeof(err)))
		fail_msg("unexpected error: %s\ninput:\n%s", err, text);
}

/* A failed load leaves nothing to free: every string is NULL. */
static void assert_empty_cfg(const struct pgshunt_config *cfg)
{
	for (size_t i = 0; i < conf_key_count(); i++) {
		const struct conf_key *key = conf_key_at(i);
		if (key->type == CONF_STRING)
			assert_null(*(char *const *)((const char *)cfg + key->offset));
	}
}

static void expect_error(const char *text, const char *want)
{
	struct pgshunt_config cfg;
	char err[ERRLEN] = "";

	if (conf_load_string(text, "t.ini", &cfg, err, sizeof(err))) {
		conf_free(&cfg);
		fail_msg("accepted, expected \"%s\"; input:\n%s", want, text);
	}
	assert_string_equal(err, want);
	assert_empty_cfg(&cfg);
	conf_free(&cfg); /* harmless after a failure */
}

/* "[pgshunt]\n" + body, for one-line error cases. */
static void expect_error_in(const char *body, const char *want)
{
	char text[ERRLEN * 4];

	snprintf(text, sizeof(text), "[pgshunt]\n%s", body);
	expect_error(text, want);
}

static void load_one_ok(const char *body, struct pgshunt_config *cfg)
{
	char text[ERRLEN * 4];

	snprintf(text, sizeof(text), "[pgshunt]\n%s", body);
	load_ok(text, cfg);
}

static char *write_temp(const void *data, size_t len)
{
	char *path = strdup("/tmp/test_conf.XXXXXX");
	int fd;

	assert_non_null(path);
	fd = mkstemp(path);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, data, len), (ssize_t)len);
	close(fd);
	return path;
}

static void remove_temp(char *path)
{
	unlink(path);
	free(path);
}

static char *read_text_file(const char *path)
{
	FILE *f = fopen(path, "rb");
	char *buf;
	long n;

	if (!f)
		fail_msg("cannot open %s (run the tests from the repository root)", path);
	fseek(f, 0, SEEK_END);
	n = ftell(f);
	rewind(f);
	buf = calloc(1, (size_t)n + 1);
	assert_non_null(buf);
	assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
	fclose(f);
	return buf;
}

/* xorshift: the same "random" inputs on every run and every libc. */
static uint32_t next_random(uint32_t *state)
{
	uint32_t x = *state;

	x ^= x << 13;
	x ^= x >> 17;
	x ^= x << 5;
	*state = x;
	return x;
}

/* Either outcome is fine for junk; it must not crash, leak, or fail without a message. */
static void load_anything(const char *text)
{
	struct pgshunt_config cfg;
	char err[ERRLEN] = "";

	if (conf_load_string(text, "junk.ini", &cfg, err, sizeof(err))) {
		conf_free(&cfg);
		return;
	}
	assert_true(strncmp(err, "junk.ini", 8) == 0);
	assert_empty_cfg(&cfg);
}

/* --- defaults and the table --- */

static void test_defaults(void **state)
{
	struct pgshunt_config cfg;

	(void)state;
	conf_defaults(&cfg);
	assert_string_equal(cfg.listen_addr, "127.0.0.1");
	assert_int_equal(cfg.listen_port, 6433);
	assert_string_equal(cfg.unix_socket_dir, "");
	assert_int_equal(cfg.max_client_conn, 100);
	assert_int_equal(cfg.client_login_timeout, 60);
	assert_int_equal(cfg.max_message_size, 256 * 1024 * 1024);
	assert_int_equal(cfg.shutdown_timeout, 30);
	assert_int_equal(cfg.worker_threads, 2);
	assert_string_equal(cfg.server_host, "127.0.0.1");
	assert_int_equal(cfg.server_port, 5432);
	assert_string_equal(cfg.control_dsn, "");
	assert_string_equal(cfg.admin_users, "");
	assert_string_equal(cfg.admin_database, "pgshunt");
	assert_string_equal(cfg.table, "public.ingest_idempotency");
	assert_string_equal(cfg.next_table, "public.ingest_idempotency_next");
	assert_string_equal(cfg.buffer_table, "public.ingest_fallback_buffer");
	assert_string_equal(cfg.partition_column, "created_at");
	assert_int_equal(cfg.partition_interval, PARTITION_MONTH);
	assert_int_equal(cfg.partition_premake, 3);
	assert_string_equal(cfg.partition_retention, "");
	assert_string_equal(cfg.key_columns, "site_id,idempotency_key");
	assert_int_equal(cfg.backfill_batch_rows, 1000);
	assert_int_equal(cfg.backfill_max_rows_per_sec, 10000);
	assert_int_equal(cfg.drain_batch_rows, 1000);
	assert_int_equal(cfg.drain_max_rows_per_sec, 5000);
	assert_int_equal(cfg.thresholds_interval_s, 60);
	assert_false(cfg.auto_degrade);
	assert_int_equal(cfg.auto_degrade_window_s, 30);
	assert_false(cfg.guard_direct_writes);
	assert_string_equal(cfg.pidfile, "");
	assert_string_equal(cfg.metrics_addr, "");
	assert_int_equal(cfg.log_level, LOG_LEVEL_INFO);
	assert_false(cfg.log_syslog);
	assert_int_equal(cfg.client_tls_sslmode, SSLMODE_DISABLE);
	assert_string_equal(cfg.client_tls_cert_file, "");
	assert_string_equal(cfg.client_tls_key_file, "");
	assert_int_equal(cfg.server_tls_sslmode, SSLMODE_PREFER);
	assert_string_equal(cfg.server_tls_ca_file, "");
	conf_free(&cfg);
	assert_empty_cfg(&cfg);
	conf_free(&cfg); /* twice is harmless */
}

static void test_key_table(void **state)
{
	size_t n = conf_key_count();

	(void)state;
	assert_int_equal(n, 38);
	assert_null(conf_key_at(n));
	assert_null(conf_key_find("nope"));
	assert_null(conf_key_find(""));
	assert_null(conf_key_find("LISTEN_PORT"));
	for (size_t i = 0; i < n; i++) {
		const struct conf_key *key = conf_key_at(i);
		assert_ptr_equal(conf_key_find(key->name), key);
		assert_true(key->offset < sizeof(struct pgshunt_config));
		assert_non_null(key->def);
		assert_non_null(key->doc);
		assert_true(strlen(key->doc) > 10);
		assert_null(strchr(key->doc, '\n'));
		if (key->type == CONF_INT || key->type == CONF_SIZE)
			assert_true(key->min <= key->max);
		for (size_t j = 0; j < i; j++)
			assert_true(conf_key_at(j)->offset != key->offset);
	}
}

static void test_empty_file_gives_defaults(void **state)
{
	static const char *const texts[] = {"", "[pgshunt]\n", "# only a comment\n; another\n\n",
	                                    "\n\n[pgshunt]\n\n   \n"};
	struct pgshunt_config def, cfg;

	(void)state;
	conf_defaults(&def);
	for (size_t t = 0; t < sizeof(texts) / sizeof(texts[0]); t++) {
		load_ok(texts[t], &cfg);
		for (size_t i = 0; i < conf_key_count(); i++)
			assert_true(conf_equal(&def, &cfg, conf_key_at(i)));
		conf_free(&cfg);
	}
	conf_free(&def);
}

static void test_full_valid_file(void **state)
{
	struct pgshunt_config cfg, def;

	(void)state;
	load_ok(full_file, &cfg);
	assert_string_equal(cfg.listen_addr, "0.0.0.0");
	assert_int_equal(cfg.listen_port, 7432);
	assert_string_equal(cfg.unix_socket_dir, "/run/pgshunt");
	assert_int_equal(cfg.max_client_conn, 500);
	assert_int_equal(cfg.client_login_timeout, 0);
	assert_int_equal(cfg.max_message_size, 64 * 1024 * 1024);
	assert_int_equal(cfg.shutdown_timeout, 5);
	assert_int_equal(cfg.worker_threads, 4);
	assert_string_equal(cfg.server_host, "/var/run/postgresql");
	assert_int_equal(cfg.server_port, 5433);
	assert_string_equal(
	    cfg.control_dsn,
	    "host=db1 dbname=app user=pgshunt password=se;cr#et sslmode=verify-full");
	assert_string_equal(cfg.admin_users, "alice, bob");
	assert_string_equal(cfg.admin_database, "shuntadmin");
	assert_string_equal(cfg.table, "app.events");
	assert_string_equal(cfg.next_table, "app.events_next");
	assert_string_equal(cfg.buffer_table, "app.events_buffer");
	assert_string_equal(cfg.partition_column, "received_at");
	assert_int_equal(cfg.partition_interval, PARTITION_WEEK);
	assert_int_equal(cfg.partition_premake, 7);
	assert_string_equal(cfg.partition_retention, "90 days");
	assert_string_equal(cfg.key_columns, "tenant_id,event_id");
	assert_int_equal(cfg.backfill_batch_rows, 5000);
	assert_int_equal(cfg.backfill_max_rows_per_sec, 0);
	assert_int_equal(cfg.drain_batch_rows, 250);
	assert_int_equal(cfg.drain_max_rows_per_sec, 100);
	assert_int_equal(cfg.thresholds_interval_s, 10);
	assert_true(cfg.auto_degrade);
	assert_int_equal(cfg.auto_degrade_window_s, 120);
	assert_true(cfg.guard_direct_writes);
	assert_string_equal(cfg.pidfile, "/run/pgshunt/pgshunt.pid");
	assert_string_equal(cfg.metrics_addr, "127.0.0.1:9187");
	assert_int_equal(cfg.log_level, LOG_LEVEL_DEBUG);
	assert_true(cfg.log_syslog);
	assert_int_equal(cfg.client_tls_sslmode, SSLMODE_REQUIRE);
	assert_string_equal(cfg.client_tls_cert_file, "/etc/pgshunt/server.crt");
	assert_string_equal(cfg.client_tls_key_file, "/etc/pgshunt/server.key");
	assert_int_equal(cfg.server_tls_sslmode, SSLMODE_VERIFY_FULL);
	assert_string_equal(cfg.server_tls_ca_file, "/etc/pgshunt/root.crt");
	/* The file really sets every key. */
	conf_defaults(&def);
	for (size_t i = 0; i < conf_key_count(); i++)
		assert_false(conf_equal(&def, &cfg, conf_key_at(i)));
	conf_free(&def);
	conf_free(&cfg);
}

/* --- one test per error class, with the exact message --- */

static void test_unknown_key(void **state)
{
	(void)state;
	expect_error("[pgshunt]\nlisten_port = 7000\n\nlisten_prot = 7001\n",
	             "t.ini:4: listen_prot: unknown key");
	expect_error_in("Listen_Port = 1\n", "t.ini:2: Listen_Port: unknown key");
	expect_error_in("listen port = 1\n", "t.ini:2: listen port: unknown key");
	/* The key is shown printable and cut short. */
	expect_error_in("bad\x1bkey = 1\n", "t.ini:2: bad?key: unknown key");
}

static void test_key_outside_section(void **state)
{
	(void)state;
	expect_error("listen_port = 7000\n[pgshunt]\n",
	             "t.ini:1: listen_port: outside section [pgshunt]");
	expect_error("# comment\n\nmax_client_conn = 5\n",
	             "t.ini:3: max_client_conn: outside section [pgshunt]");
}

static void test_unknown_section(void **state)
{
	(void)state;
	expect_error(
	    "[pgshunt]\nlisten_port = 7000\n[pgbouncer]\nlisten_port = 6432\n",
	    "t.ini:4: listen_port: in unknown section [pgbouncer]; only [pgshunt] is read");
	expect_error("[PGSHUNT]\nlisten_port = 7000\n",
	             "t.ini:2: listen_port: in unknown section [PGSHUNT]; only [pgshunt] is read");
	/* A section that holds no key is never seen by inih's handler: harmless. */
	struct pgshunt_config cfg;
	load_ok("[other]\n[pgshunt]\nlisten_port = 7000\n", &cfg);
	assert_int_equal(cfg.listen_port, 7000);
	conf_free(&cfg);
}

static void test_duplicate_key(void **state)
{
	(void)state;
	expect_error("[pgshunt]\nlisten_port = 7000\nserver_port = 5\n\nlisten_port = 7000\n",
	             "t.ini:5: listen_port: duplicate key (first set on line 2)");
	/* A second [pgshunt] header does not start over. */
	expect_error("[pgshunt]\ntable = a.b\n[pgshunt]\ntable = c.d\n",
	             "t.ini:4: table: duplicate key (first set on line 2)");
}

static void test_empty_value(void **state)
{
	struct pgshunt_config cfg;

	(void)state;
	expect_error_in("max_client_conn =\n", "t.ini:2: max_client_conn: empty value");
	expect_error_in("max_message_size =   \n", "t.ini:2: max_message_size: empty value");
	expect_error_in("auto_degrade =\n", "t.ini:2: auto_degrade: empty value");
	expect_error_in("log_level =\n", "t.ini:2: log_level: empty value");
	expect_error_in("table =\n", "t.ini:2: table: empty value");
	expect_error_in("server_host =\n", "t.ini:2: server_host: empty value");
	expect_error_in("admin_database=\n", "t.ini:2: admin_database: empty value");
	expect_error_in("control_dsn = \"\"\n",
	                "t.ini:2: control_dsn: quotes are kept as part of the value; for an empty "
	                "value write nothing after '='");
	expect_error_in("metrics_addr = ''\n",
	                "t.ini:2: metrics_addr: quotes are kept as part of the value; for an empty "
	                "value write nothing after '='");
	/* Where empty means "none", it is allowed. */
	load_one_ok("control_dsn =\nadmin_users=\npartition_retention =   \n", &cfg);
	assert_string_equal(cfg.control_dsn, "");
	assert_string_equal(cfg.admin_users, "");
	assert_string_equal(cfg.partition_retention, "");
	conf_free(&cfg);
	/* Quoted identifiers are not empty quotes. */
	load_one_ok("table = \"App\".\"Events\"\n", &cfg);
	assert_string_equal(cfg.table, "\"App\".\"Events\"");
	conf_free(&cfg);
}

static void test_int_errors(void **state)
{
	struct pgshunt_config cfg;

	(void)state;
	expect_error_in("listen_port = abc\n", "t.ini:2: listen_port: not a number");
	expect_error_in("listen_port = +5\n", "t.ini:2: listen_port: not a number");
	expect_error_in("listen_port = -\n", "t.ini:2: listen_port: not a number");
	expect_error_in("listen_port = 0x10\n",
	                "t.ini:2: listen_port: trailing characters after the number");
	expect_error_in("listen_port = 64x\n",
	                "t.ini:2: listen_port: trailing characters after the number");
	expect_error_in("listen_port = 1.5\n",
	                "t.ini:2: listen_port: trailing characters after the number");
	expect_error_in("listen_port = 7000 ; the port\n",
	                "t.ini:2: listen_port: trailing characters after the number");
	expect_error_in("listen_port = 0\n", "t.ini:2: listen_port: must be between 1 and 65535");
	expect_error_in("listen_port = 65536\n",
	                "t.ini:2: listen_port: must be between 1 and 65535");
	expect_error_in("listen_port = -1\n", "t.ini:2: listen_port: must be between 1 and 65535");
	expect_error_in("max_client_conn = 99999999999999999999999\n",
	                "t.ini:2: max_client_conn: must be between 1 and 100000");
	expect_error_in("client_login_timeout = 86401\n",
	                "t.ini:2: client_login_timeout: must be between 0 and 86400");
	expect_error_in("worker_threads = 65\n",
	                "t.ini:2: worker_threads: must be between 0 and 64");
	expect_error_in("worker_threads = -1\n",
	                "t.ini:2: worker_threads: must be between 0 and 64");
	expect_error_in("worker_threads = two\n", "t.ini:2: worker_threads: not a number");
	expect_error_in("partition_premake = 121\n",
	                "t.ini:2: partition_premake: must be between 1 and 120");
	expect_error_in("backfill_max_rows_per_sec = 100000001\n",
	                "t.ini:2: backfill_max_rows_per_sec: must be between 0 and 100000000");
	/* The edges of the range are accepted; leading zeros are plain decimal. */
	load_one_ok("listen_port = 65535\nserver_port = 1\nclient_login_timeout = 0\n"
	            "shutdown_timeout = 010\n",
	            &cfg);
	assert_int_equal(cfg.listen_port, 65535);
	assert_int_equal(cfg.server_port, 1);
	assert_int_equal(cfg.client_login_timeout, 0);
	assert_int_equal(cfg.shutdown_timeout, 10);
	conf_free(&cfg);
}

static void test_size_values(void **state)
{
	static const struct {
		const char *text;
		int64_t bytes;
	} ok[] = {
	    {"1024", 1024},
	    {"1kB", 1024},
	    {"64kB", 65536},
	    {"1MB", 1048576},
	    {"256 MB", 268435456},
	    {"1GB", 1073741824},
	    {"1073741824", 1073741824},
	};
	struct pgshunt_config cfg;
	char body[128];

	(void)state;
	for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
		snprintf(body, sizeof(body), "max_message_size = %s\n", ok[i].text);
		load_one_ok(body, &cfg);
		assert_int_equal(cfg.max_message_size, ok[i].bytes);
		conf_free(&cfg);
	}
	expect_error_in("max_message_size = 1023\n",
	                "t.ini:2: max_message_size: must be between 1kB and 1GB");
	expect_error_in("max_message_size = 2GB\n",
	                "t.ini:2: max_message_size: must be between 1kB and 1GB");
	expect_error_in("max_message_size = 9223372036854775807GB\n",
	                "t.ini:2: max_message_size: must be between 1kB and 1GB");
	expect_error_in("max_message_size = -1MB\n",
	                "t.ini:2: max_message_size: must be between 1kB and 1GB");
	expect_error_in("max_message_size = 10mb\n",
	                "t.ini:2: max_message_size: unknown unit \"mb\" (use kB, MB or GB)");
	expect_error_in("max_message_size = 1TB\n",
	                "t.ini:2: max_message_size: unknown unit \"TB\" (use kB, MB or GB)");
	expect_error_in("max_message_size = 1.5MB\n",
	                "t.ini:2: max_message_size: unknown unit \".5MB\" (use kB, MB or GB)");
	expect_error_in("max_message_size = MB\n", "t.ini:2: max_message_size: not a number");
}

static void test_bool_values(void **state)
{
	static const char *const yes[] = {"on", "true", "yes", "1", "ON", "True", "YES"};
	static const char *const no[] = {"off", "false", "no", "0", "Off", "FALSE", "No"};
	struct pgshunt_config cfg;
	char body[128];

	(void)state;
	for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++) {
		snprintf(body, sizeof(body), "auto_degrade = %s\nlog_syslog = %s\n", yes[i], no[i]);
		load_one_ok(body, &cfg);
		assert_true(cfg.auto_degrade);
		assert_false(cfg.log_syslog);
		conf_free(&cfg);
	}
	expect_error_in("auto_degrade = maybe\n",
	                "t.ini:2: auto_degrade: must be on, off, true, false, yes, no, 1 or 0");
	expect_error_in("guard_direct_writes = 2\n", "t.ini:2: guard_direct_writes: must be on, "
	                                             "off, true, false, yes, no, 1 or 0");
	expect_error_in("log_syslog = o\n",
	                "t.ini:2: log_syslog: must be on, off, true, false, yes, no, 1 or 0");
}

static void test_sslmode_values(void **state)
{
	static const char *const names[] = {"disable", "allow",     "prefer",
	                                    "require", "verify-ca", "verify-full"};
	struct pgshunt_config cfg;
	char body[256];

	(void)state;
	for (int m = SSLMODE_DISABLE; m <= SSLMODE_VERIFY_FULL; m++) {
		snprintf(body, sizeof(body), "server_tls_sslmode = %s\nserver_tls_ca_file = /ca\n",
		         names[m]);
		load_one_ok(body, &cfg);
		assert_int_equal(cfg.server_tls_sslmode, m);
		conf_free(&cfg);
	}
	for (int m = SSLMODE_DISABLE; m <= SSLMODE_REQUIRE; m++) {
		snprintf(
		    body, sizeof(body),
		    "client_tls_sslmode = %s\nclient_tls_cert_file = c\nclient_tls_key_file = k\n",
		    names[m]);
		load_one_ok(body, &cfg);
		assert_int_equal(cfg.client_tls_sslmode, m);
		conf_free(&cfg);
	}
	load_one_ok("server_tls_sslmode = Require\n", &cfg);
	assert_int_equal(cfg.server_tls_sslmode, SSLMODE_REQUIRE);
	conf_free(&cfg);
	expect_error_in(
	    "client_tls_sslmode = verify-ca\n",
	    "t.ini:2: client_tls_sslmode: must be one of disable, allow, prefer, require");
	expect_error_in(
	    "client_tls_sslmode = verify-full\n",
	    "t.ini:2: client_tls_sslmode: must be one of disable, allow, prefer, require");
	expect_error_in("server_tls_sslmode = strict\n",
	                "t.ini:2: server_tls_sslmode: must be one of disable, allow, prefer, "
	                "require, verify-ca, verify-full");
	expect_error_in("server_tls_sslmode = verify_full\n",
	                "t.ini:2: server_tls_sslmode: must be one of disable, allow, prefer, "
	                "require, verify-ca, verify-full");
}

static void test_log_level_and_interval(void **state)
{
	struct pgshunt_config cfg;

	(void)state;
	load_one_ok("log_level = warning\npartition_interval = day\n", &cfg);
	assert_int_equal(cfg.log_level, LOG_LEVEL_WARNING);
	assert_int_equal(cfg.partition_interval, PARTITION_DAY);
	conf_free(&cfg);
	load_one_ok("log_level = ERROR\npartition_interval = Week\n", &cfg);
	assert_int_equal(cfg.log_level, LOG_LEVEL_ERROR);
	assert_int_equal(cfg.partition_interval, PARTITION_WEEK);
	conf_free(&cfg);
	expect_error_in("log_level = trace\n",
	                "t.ini:2: log_level: must be one of error, warning, info, debug");
	expect_error_in("log_level = warn\n",
	                "t.ini:2: log_level: must be one of error, warning, info, debug");
	expect_error_in("partition_interval = year\n",
	                "t.ini:2: partition_interval: must be one of day, week, month");
	expect_error_in("partition_interval = 1 month\n",
	                "t.ini:2: partition_interval: must be one of day, week, month");
}

static void test_cross_key_checks(void **state)
{
	struct pgshunt_config cfg;

	(void)state;
	expect_error_in("client_tls_sslmode = require\n",
	                "t.ini: client_tls_sslmode: require needs client_tls_cert_file and "
	                "client_tls_key_file");
	expect_error_in("client_tls_sslmode = allow\nclient_tls_cert_file = /c\n",
	                "t.ini: client_tls_sslmode: allow needs client_tls_cert_file and "
	                "client_tls_key_file");
	expect_error_in("client_tls_sslmode = prefer\nclient_tls_key_file = /k\n",
	                "t.ini: client_tls_sslmode: prefer needs client_tls_cert_file and "
	                "client_tls_key_file");
	expect_error_in("server_tls_sslmode = verify-ca\n",
	                "t.ini: server_tls_sslmode: verify-ca needs server_tls_ca_file");
	expect_error_in("server_tls_sslmode = verify-full\nserver_tls_ca_file =\n",
	                "t.ini: server_tls_sslmode: verify-full needs server_tls_ca_file");
	expect_error_in("listen_addr =\n",
	                "t.ini: listen_addr: listen_addr and unix_socket_dir cannot both be empty");
	expect_error_in("listen_addr =\nunix_socket_dir =\n",
	                "t.ini: listen_addr: listen_addr and unix_socket_dir cannot both be empty");
	/* Each rule is satisfied by what it asks for. */
	load_one_ok("listen_addr =\nunix_socket_dir = /tmp\n", &cfg);
	assert_string_equal(cfg.listen_addr, "");
	conf_free(&cfg);
	load_one_ok("client_tls_sslmode = disable\nclient_tls_cert_file = /c\n", &cfg);
	conf_free(&cfg);
	load_one_ok("server_tls_sslmode = require\n", &cfg);
	conf_free(&cfg);
}

static void test_syntax_errors(void **state)
{
	(void)state;
	expect_error("[pgshunt\nlisten_port = 1\n",
	             "t.ini:1: syntax error: no ']' after the section name");
	expect_error("# c\n[pgshunt]\nlisten_port\n",
	             "t.ini:3: syntax error: expected KEY = VALUE");
	expect_error_in("listen_port 7000\n", "t.ini:2: syntax error: expected KEY = VALUE");
	expect_error_in("= 7000\n", "t.ini:2: syntax error: no key before '='");
	expect_error_in("   = 7000\n", "t.ini:2: syntax error: no key before '='");
	/* With multi-line values off an indented line is not a continuation: with '=' it is a
	 * key of its own, without it an error. */
	expect_error_in("control_dsn = host=a\n    dbname=b\n", "t.ini:3: dbname: unknown key");
	expect_error_in("admin_users = a,\n    b\n",
	                "t.ini:3: syntax error: indented line (a value cannot continue on the "
	                "next line)");
	/* inih would ignore text after ']': the whole line could be a lost setting. */
	expect_error("[pgshunt] listen_port = 1\n", "t.ini:1: syntax error: text after ']'");
	expect_error("[pgshunt]\n[other] ; x\n", "t.ini:2: syntax error: text after ']'");
	/* The first error is the one reported. */
	expect_error_in("listen_port = x\nbogus = 1\n", "t.ini:2: listen_port: not a number");
	expect_error_in("nokey\nbogus = 1\n", "t.ini:2: syntax error: expected KEY = VALUE");
}

static void test_values_and_line_endings(void **state)
{
	struct pgshunt_config cfg;

	(void)state;
	/* Blanks around key and value go; blanks inside stay. */
	load_one_ok("   partition_retention   =   90 days   \t\n", &cfg);
	assert_string_equal(cfg.partition_retention, "90 days");
	conf_free(&cfg);
	/* CRLF files are accepted and no '\r' reaches a value. */
	load_ok("[pgshunt]\r\nlisten_addr = 10.0.0.1\r\nlisten_port = 7000\r\n\r\n", &cfg);
	assert_string_equal(cfg.listen_addr, "10.0.0.1");
	assert_int_equal(cfg.listen_port, 7000);
	conf_free(&cfg);
	/* A UTF-8 BOM at the start is skipped. */
	load_ok("\xef\xbb\xbf[pgshunt]\r\nlisten_port = 7001\r\n", &cfg);
	assert_int_equal(cfg.listen_port, 7001);
	conf_free(&cfg);
	/* No newline at the end of the file. */
	load_ok("[pgshunt]\nlisten_port = 7002", &cfg);
	assert_int_equal(cfg.listen_port, 7002);
	conf_free(&cfg);
	/* inih's "key: value" form. */
	load_one_ok("listen_port: 7003\n", &cfg);
	assert_int_equal(cfg.listen_port, 7003);
	conf_free(&cfg);
	/* ';' and '#' inside a value are kept: no inline comments. */
	load_one_ok("control_dsn = password=a ;b #c\n", &cfg);
	assert_string_equal(cfg.control_dsn, "password=a ;b #c");
	conf_free(&cfg);
	/* Control characters inside a value, a bare CR included, are refused. */
	expect_error_in("table = a\tb\n", "t.ini:2: table: control character in the value");
	expect_error_in("table = a\rb\n", "t.ini:2: table: control character in the value");
	expect_error_in("table = a\x7f\n", "t.ini:2: table: control character in the value");
	/* A BOM elsewhere is just bytes: here it makes an unknown key. */
	expect_error_in("\xef\xbb\xbflisten_port = 1\n", "t.ini:2: ???listen_port: unknown key");
}

/* "[pgshunt]\n" + prefix + count times fill + suffix, in a new string. */
static char *long_text(const char *prefix, char fill, size_t count, const char *suffix)
{
	size_t pl = strlen(prefix);
	char *text = malloc(10 + pl + count + strlen(suffix) + 1);

	assert_non_null(text);
	memcpy(text, "[pgshunt]\n", 10);
	memcpy(text + 10, prefix, pl);
	memset(text + 10 + pl, fill, count);
	strcpy(text + 10 + pl + count, suffix);
	return text;
}

static void expect_long_error(char *text)
{
	expect_error(text, "t.ini:2: line too long (the limit is 4096 bytes)");
	free(text);
}

static void test_long_lines(void **state)
{
	static const char dsn[] = "control_dsn = "; /* 14 bytes */
	struct pgshunt_config cfg;
	char *text;

	(void)state;
	/* A 10k value, and a 10k comment: inih would have split them into lines. */
	expect_long_error(long_text(dsn, 'a', 10000, "\nlisten_port = 1\n"));
	expect_long_error(long_text("#", 'a', 10000, "\n"));
	expect_long_error(long_text("", ' ', 10000, "\n"));
	/* The limit counts the newline: 4096 bytes pass, 4097 do not. */
	text = long_text(dsn, 'b', 4096 - 14 - 1, "\n");
	load_ok(text, &cfg);
	assert_int_equal(strlen(cfg.control_dsn), 4096 - 14 - 1);
	conf_free(&cfg);
	free(text);
	expect_long_error(long_text(dsn, 'b', 4096 - 14, "\n"));
	/* On a last line without a newline, 4096 bytes of text pass. */
	text = long_text(dsn, 'b', 4096 - 14, "");
	load_ok(text, &cfg);
	conf_free(&cfg);
	free(text);
	expect_long_error(long_text(dsn, 'b', 4096 - 14 + 1, ""));
}

/* --- files --- */

static void test_file_errors(void **state)
{
	static const char bad[] = "[pgshunt]\nlisten_port = 7000\nmax_client_conn = 0\n";
	static const char nul[] = "[pgshunt]\nlisten_port = 70\0"
	                          "00\n";
	struct pgshunt_config cfg;
	char err[ERRLEN], want[ERRLEN];
	char *path;

	(void)state;
	path = write_temp(bad, sizeof(bad) - 1);
	assert_false(conf_load(path, &cfg, err, sizeof(err)));
	snprintf(want, sizeof(want), "%s:3: max_client_conn: must be between 1 and 100000", path);
	assert_string_equal(err, want);
	assert_empty_cfg(&cfg);
	remove_temp(path);

	path = write_temp(nul, sizeof(nul) - 1);
	assert_false(conf_load(path, &cfg, err, sizeof(err)));
	snprintf(want, sizeof(want), "%s:2: NUL byte in the line (not a text file?)", path);
	assert_string_equal(err, want);
	remove_temp(path);

	assert_false(conf_load("/nonexistent/pgshunt.ini", &cfg, err, sizeof(err)));
	assert_string_equal(err,
	                    "/nonexistent/pgshunt.ini: cannot open: No such file or directory");
	assert_empty_cfg(&cfg);

	assert_false(conf_load("/tmp", &cfg, err, sizeof(err)));
	assert_string_equal(err, "/tmp: cannot read: Is a directory");
	assert_empty_cfg(&cfg);
}

static void test_file_too_large(void **state)
{
	size_t line = 100, lines = 1048576 / line + 1;
	char *text = malloc(line * lines), *path;
	struct pgshunt_config cfg;
	char err[ERRLEN], want[ERRLEN];

	(void)state;
	assert_non_null(text);
	for (size_t i = 0; i < lines; i++) {
		memset(text + i * line, 'x', line);
		text[i * line] = '#';
		text[i * line + line - 1] = '\n';
	}
	path = write_temp(text, line * lines);
	assert_false(conf_load(path, &cfg, err, sizeof(err)));
	snprintf(want, sizeof(want), "%s: file too large (the limit is 1048576 bytes)", path);
	assert_string_equal(err, want);
	remove_temp(path);
	/* Just under the limit is read. */
	path = write_temp(text, line * (lines - 1));
	assert_true(conf_load(path, &cfg, err, sizeof(err)));
	conf_free(&cfg);
	remove_temp(path);
	free(text);
}

static void test_file_ok(void **state)
{
	static const char crlf[] = "\xef\xbb\xbf# x\r\n[pgshunt]\r\nlisten_port = 7010\r\n";
	struct pgshunt_config cfg, from_string;
	char err[ERRLEN] = "";
	char *path;

	(void)state;
	path = write_temp(full_file, sizeof(full_file) - 1);
	if (!conf_load(path, &cfg, err, sizeof(err)))
		fail_msg("%s", err);
	load_ok(full_file, &from_string);
	for (size_t i = 0; i < conf_key_count(); i++)
		assert_true(conf_equal(&cfg, &from_string, conf_key_at(i)));
	conf_free(&cfg);
	conf_free(&from_string);
	remove_temp(path);

	path = write_temp(crlf, sizeof(crlf) - 1);
	assert_true(conf_load(path, &cfg, err, sizeof(err)));
	assert_int_equal(cfg.listen_port, 7010);
	conf_free(&cfg);
	remove_temp(path);

	path = write_temp("", 0);
	assert_true(conf_load(path, &cfg, err, sizeof(err)));
	assert_int_equal(cfg.listen_port, 6433);
	conf_free(&cfg);
	remove_temp(path);
}

static void test_error_buffer(void **state)
{
	struct pgshunt_config cfg;
	char small[8];

	(void)state;
	/* Truncated, still terminated. */
	assert_false(
	    conf_load_string("[pgshunt]\nbogus = 1\n", "t.ini", &cfg, small, sizeof(small)));
	assert_string_equal(small, "t.ini:2");
	/* No buffer at all is allowed. */
	assert_false(conf_load_string("[pgshunt]\nbogus = 1\n", "t.ini", &cfg, NULL, 0));
	assert_false(conf_load("/nonexistent", &cfg, NULL, 0));
}

/* --- malformed input --- */

static void test_binary_garbage(void **state)
{
	uint32_t seed = 12345;
	unsigned char buf[4096];
	struct pgshunt_config cfg;
	char err[ERRLEN];
	char *path;

	(void)state;
	for (int round = 0; round < 20; round++) {
		for (size_t i = 0; i < sizeof(buf); i++)
			buf[i] = (unsigned char)next_random(&seed);
		path = write_temp(buf, sizeof(buf));
		err[0] = '\0';
		if (conf_load(path, &cfg, err, sizeof(err)))
			conf_free(&cfg);
		else
			assert_true(strncmp(err, path, strlen(path)) == 0);
		remove_temp(path);
	}
	/* An ELF header, say. */
	path = write_temp("\x7f"
	                  "ELF\x02\x01\x01\0\0\0",
	                  10);
	assert_false(conf_load(path, &cfg, err, sizeof(err)));
	remove_temp(path);
}

static void test_random_text(void **state)
{
	uint32_t seed = 42;
	char text[3000];

	(void)state;
	/* NUL-free random bytes, newlines made common so many short lines form. */
	for (int round = 0; round < 300; round++) {
		size_t n = next_random(&seed) % (sizeof(text) - 1);
		for (size_t i = 0; i < n; i++) {
			uint32_t r = next_random(&seed);
			text[i] = (r % 16 == 0) ? '\n' : (char)(1 + r % 255);
		}
		text[n] = '\0';
		load_anything(text);
	}
}

/* Random files made of plausible pieces reach the value parsers and the success path. */
static void test_token_soup(void **state)
{
	static const char *const pieces[] = {
	    "[pgshunt]",
	    "[x]",
	    "[",
	    "]",
	    "=",
	    " = ",
	    ":",
	    "\n",
	    "\r\n",
	    "#",
	    ";",
	    " ",
	    "listen_port",
	    "table",
	    "max_message_size",
	    "auto_degrade",
	    "log_level",
	    "client_tls_sslmode",
	    "unix_socket_dir",
	    "listen_addr",
	    "1",
	    "0",
	    "-",
	    "kB",
	    "GB",
	    "on",
	    "debug",
	    "require",
	    "verify-full",
	    "/tmp",
	    "\"\"",
	    "\t",
	    "99999999999",
	};
	uint32_t seed = 7;
	char text[2048];
	size_t np = sizeof(pieces) / sizeof(pieces[0]);

	(void)state;
	for (int round = 0; round < 2000; round++) {
		size_t len = 0, count = next_random(&seed) % 40;
		for (size_t i = 0; i < count; i++) {
			const char *p = pieces[next_random(&seed) % np];
			size_t pl = strlen(p);
			if (len + pl >= sizeof(text))
				break;
			memcpy(text + len, p, pl);
			len += pl;
		}
		text[len] = '\0';
		load_anything(text);
	}
}

static void test_no_leak_on_error(void **state)
{
	static const char *const tails[] = {
	    "bogus = 1\n", "table = again\n", "listen_port = x\n", "[pgshunt\n", "junk\n", "\xff\n",
	};
	static const char last[] = "server_tls_ca_file = /etc/pgshunt/root.crt\n";
	struct pgshunt_config cfg;
	char text[4096], err[ERRLEN];

	(void)state;
	/* Every string key set, then a failure at the end: the strings must all go. */
	for (size_t i = 0; i < sizeof(tails) / sizeof(tails[0]); i++) {
		snprintf(text, sizeof(text), "%s%s", full_file, tails[i]);
		assert_false(conf_load_string(text, "t.ini", &cfg, err, sizeof(err)));
		assert_empty_cfg(&cfg);
	}
	/* The same when only the cross-key check fails: verify-full without the CA. */
	snprintf(text, sizeof(text), "%.*s", (int)(strlen(full_file) - strlen(last)), full_file);
	assert_false(conf_load_string(text, "t.ini", &cfg, err, sizeof(err)));
	assert_string_equal(err, "t.ini: server_tls_sslmode: verify-full needs server_tls_ca_file");
	assert_empty_cfg(&cfg);
}

/* --- reload --- */

struct reported {
	const char *names[64];
	size_t n;
};

static void collect(const struct conf_key *key, void *arg)
{
	struct reported *r = arg;

	assert_true(r->n < 64);
	r->names[r->n++] = key->name;
}

static void test_reload(void **state)
{
	struct pgshunt_config cur, fresh;
	struct reported rep = {.n = 0};

	(void)state;
	conf_defaults(&cur);
	load_one_ok("listen_port = 7000\n"
	            "admin_database = other\n"
	            "max_client_conn = 7\n"
	            "control_dsn = host=elsewhere\n"
	            "log_level = debug\n"
	            "max_message_size = 1MB\n"
	            "auto_degrade = on\n"
	            "partition_interval = day\n",
	            &fresh);
	conf_apply_reload(&cur, &fresh, collect, &rep);
	/* Not reloadable: reported, in table order, and kept. */
	assert_int_equal(rep.n, 3);
	assert_string_equal(rep.names[0], "listen_port");
	assert_string_equal(rep.names[1], "admin_database");
	assert_string_equal(rep.names[2], "partition_interval");
	assert_int_equal(cur.listen_port, 6433);
	assert_string_equal(cur.admin_database, "pgshunt");
	assert_int_equal(cur.partition_interval, PARTITION_MONTH);
	/* Reloadable: applied. */
	assert_int_equal(cur.max_client_conn, 7);
	assert_string_equal(cur.control_dsn, "host=elsewhere");
	assert_int_equal(cur.log_level, LOG_LEVEL_DEBUG);
	assert_int_equal(cur.max_message_size, 1048576);
	assert_true(cur.auto_degrade);
	/* cur owns its copies: fresh can go first. */
	assert_ptr_not_equal(cur.control_dsn, fresh.control_dsn);
	conf_free(&fresh);
	assert_string_equal(cur.control_dsn, "host=elsewhere");
	conf_free(&cur);
}

static void test_reload_everything(void **state)
{
	struct pgshunt_config cur, fresh;
	struct reported rep = {.n = 0};
	size_t fixed = 0;

	(void)state;
	conf_defaults(&cur);
	load_ok(full_file, &fresh);
	conf_apply_reload(&cur, &fresh, collect, &rep);
	for (size_t i = 0; i < conf_key_count(); i++) {
		const struct conf_key *key = conf_key_at(i);
		assert_int_equal(conf_equal(&cur, &fresh, key), key->reloadable);
		fixed += !key->reloadable;
	}
	assert_int_equal(rep.n, fixed);
	/* Again with the same file: nothing is left to report or change. */
	rep.n = 0;
	conf_free(&cur);
	load_ok(full_file, &cur);
	conf_apply_reload(&cur, &fresh, collect, &rep);
	assert_int_equal(rep.n, 0);
	/* A NULL report is allowed. */
	conf_free(&cur);
	conf_defaults(&cur);
	conf_apply_reload(&cur, &fresh, NULL, NULL);
	conf_free(&cur);
	conf_free(&fresh);
}

/* --- formatting --- */

/* Formats every key of src into a file, parses it back and compares. */
static void round_trip(const struct pgshunt_config *src)
{
	char text[8192], value[1024];
	size_t len = (size_t)snprintf(text, sizeof(text), "[pgshunt]\n");
	struct pgshunt_config back;

	for (size_t i = 0; i < conf_key_count(); i++) {
		const struct conf_key *key = conf_key_at(i);
		conf_format(src, key, value, sizeof(value));
		len +=
		    (size_t)snprintf(text + len, sizeof(text) - len, "%s = %s\n", key->name, value);
	}
	assert_true(len < sizeof(text));
	load_ok(text, &back);
	for (size_t i = 0; i < conf_key_count(); i++)
		if (!conf_equal(src, &back, conf_key_at(i)))
			fail_msg("%s does not round-trip", conf_key_at(i)->name);
	conf_free(&back);
}

static void test_format_defaults(void **state)
{
	struct pgshunt_config def;
	char buf[256];

	(void)state;
	conf_defaults(&def);
	/* The formatted default is the table's default text. */
	for (size_t i = 0; i < conf_key_count(); i++) {
		const struct conf_key *key = conf_key_at(i);
		assert_string_equal(conf_format(&def, key, buf, sizeof(buf)), key->def);
	}
	round_trip(&def);
	conf_free(&def);
}

static void test_format_values(void **state)
{
	struct pgshunt_config cfg;
	char buf[256];

	(void)state;
	load_ok(full_file, &cfg);
	round_trip(&cfg);
	assert_string_equal(conf_format(&cfg, conf_key_find("max_message_size"), buf, 256), "64MB");
	assert_string_equal(conf_format(&cfg, conf_key_find("auto_degrade"), buf, 256), "on");
	assert_string_equal(conf_format(&cfg, conf_key_find("log_syslog"), buf, 256), "on");
	assert_string_equal(conf_format(&cfg, conf_key_find("server_tls_sslmode"), buf, 256),
	                    "verify-full");
	assert_string_equal(conf_format(&cfg, conf_key_find("partition_interval"), buf, 256),
	                    "week");
	assert_string_equal(conf_format(&cfg, conf_key_find("listen_port"), buf, 256), "7432");
	conf_free(&cfg);
	/* Sizes use the largest exact unit, or bytes. */
	load_one_ok("max_message_size = 1025\n", &cfg);
	assert_string_equal(conf_format(&cfg, conf_key_find("max_message_size"), buf, 256), "1025");
	round_trip(&cfg);
	conf_free(&cfg);
	load_one_ok("max_message_size = 3072kB\n", &cfg);
	assert_string_equal(conf_format(&cfg, conf_key_find("max_message_size"), buf, 256), "3MB");
	conf_free(&cfg);
	/* A short buffer is cut, not overrun. */
	conf_defaults(&cfg);
	assert_string_equal(conf_format(&cfg, conf_key_find("table"), buf, 7), "public");
	conf_free(&cfg);
}

static void test_equal(void **state)
{
	struct pgshunt_config a, b;

	(void)state;
	conf_defaults(&a);
	conf_defaults(&b);
	for (size_t i = 0; i < conf_key_count(); i++)
		assert_true(conf_equal(&a, &b, conf_key_at(i)));
	free(b.table);
	b.table = strdup("public.other");
	b.listen_port = 1;
	b.log_level = LOG_LEVEL_ERROR;
	assert_false(conf_equal(&a, &b, conf_key_find("table")));
	assert_false(conf_equal(&a, &b, conf_key_find("listen_port")));
	assert_false(conf_equal(&a, &b, conf_key_find("log_level")));
	assert_true(conf_equal(&a, &b, conf_key_find("next_table")));
	conf_free(&a);
	conf_free(&b);
}

/* --- small helpers of the API --- */

static void test_list_contains(void **state)
{
	(void)state;
	assert_true(conf_list_contains("alice,bob", "alice"));
	assert_true(conf_list_contains("alice,bob", "bob"));
	assert_true(conf_list_contains("  alice ,\tbob  ", "alice"));
	assert_true(conf_list_contains("  alice ,\tbob  ", "bob"));
	assert_true(conf_list_contains("solo", "solo"));
	assert_true(conf_list_contains(",,x,,", "x"));
	assert_false(conf_list_contains("alice,bob", "Alice"));
	assert_false(conf_list_contains("alice,bob", "ali"));
	assert_false(conf_list_contains("alice,bob", "alice,bob"));
	assert_false(conf_list_contains("alicebob", "alice"));
	assert_false(conf_list_contains("", "alice"));
	assert_false(conf_list_contains("a,,b", ""));
	assert_false(conf_list_contains(NULL, "alice"));
	assert_true(conf_list_contains("a b, c", "a b"));
}

static void test_names(void **state)
{
	(void)state;
	assert_string_equal(conf_sslmode_name(SSLMODE_DISABLE), "disable");
	assert_string_equal(conf_sslmode_name(SSLMODE_VERIFY_CA), "verify-ca");
	assert_string_equal(conf_sslmode_name(SSLMODE_VERIFY_FULL), "verify-full");
	assert_string_equal(conf_sslmode_name((enum sslmode)42), "unknown");
	assert_string_equal(conf_log_level_name(LOG_LEVEL_ERROR), "error");
	assert_string_equal(conf_log_level_name(LOG_LEVEL_WARNING), "warning");
	assert_string_equal(conf_log_level_name(LOG_LEVEL_DEBUG), "debug");
	assert_string_equal(conf_log_level_name((enum log_level) - 1), "unknown");
}

/* --- the sample file and the reference follow the table --- */

/* "#key = value", ";key=value" or "key = value": the key, or NULL for other lines. */
static const char *key_like(const char *line, char *name, size_t size, const char **value)
{
	size_t n = 0;

	if (*line == '#' || *line == ';')
		line++;
	while (*line == ' ' || *line == '\t')
		line++;
	while (n + 1 < size && ((*line >= 'a' && *line <= 'z') || (*line >= 'A' && *line <= 'Z') ||
	                        (*line >= '0' && *line <= '9') || *line == '_'))
		name[n++] = *line++;
	name[n] = '\0';
	while (*line == ' ' || *line == '\t')
		line++;
	if (n == 0 || *line != '=')
		return NULL;
	for (line++; *line == ' '; line++)
		;
	*value = line;
	return name;
}

/* Checks one line of the sample; returns whether it shows a key. */
static bool check_sample_line(const char *line, bool reload_marked, int *seen)
{
	char name[64];
	const char *value, *key_name = key_like(line, name, sizeof(name), &value);
	const struct conf_key *key;

	if (!key_name)
		return false;
	key = conf_key_find(key_name);
	if (!key)
		fail_msg("conf/pgshunt.ini: \"%s\" is not a key", key_name);
	seen[key - conf_key_at(0)]++;
	if (strcmp(value, key->def) != 0)
		fail_msg("conf/pgshunt.ini: %s shows \"%s\", the default is \"%s\"", key->name,
		         value, key->def);
	if (reload_marked != key->reloadable)
		fail_msg("conf/pgshunt.ini: %s: the [reload] mark is wrong", key->name);
	return true;
}

static void test_sample_file_lists_every_key(void **state)
{
	char *text = read_text_file("conf/pgshunt.ini"), *line, *nl;
	int seen[64] = {0};
	bool reload_marked = false;

	(void)state;
	assert_true(conf_key_count() <= 64);
	assert_non_null(strstr(text, "\n[pgshunt]\n"));
	/* "[reload]" marks the comment paragraph just above a reloadable key. */
	for (line = text; *line; line = nl ? nl + 1 : line + strlen(line)) {
		nl = strchr(line, '\n');
		if (nl)
			*nl = '\0';
		if (*line == '\0')
			reload_marked = false;
		else if (strstr(line, "[reload]"))
			reload_marked = true;
		if (check_sample_line(line, reload_marked, seen))
			reload_marked = false;
	}
	for (size_t i = 0; i < conf_key_count(); i++)
		if (seen[i] != 1)
			fail_msg("conf/pgshunt.ini: %s appears %d times", conf_key_at(i)->name,
			         seen[i]);
	free(text);
}

static void test_sample_file_loads(void **state)
{
	struct pgshunt_config cfg, def;
	char err[ERRLEN] = "";

	(void)state;
	if (!conf_load("conf/pgshunt.ini", &cfg, err, sizeof(err)))
		fail_msg("%s", err);
	conf_defaults(&def);
	for (size_t i = 0; i < conf_key_count(); i++)
		assert_true(conf_equal(&cfg, &def, conf_key_at(i)));
	conf_free(&def);
	conf_free(&cfg);
}

static const char *const type_names[] = {
    [CONF_STRING] = "string",     [CONF_INT] = "int",         [CONF_SIZE] = "size",
    [CONF_BOOL] = "bool",         [CONF_SSLMODE] = "sslmode", [CONF_LOG_LEVEL] = "log_level",
    [CONF_INTERVAL] = "interval",
};

/* Splits "| a | b | c |" into trimmed cells, in place. */
static int split_row(char *line, char **cells, int max)
{
	int n = 0;
	char *p = line + 1, *bar;

	while (n < max && (bar = strchr(p, '|'))) {
		*bar = '\0';
		while (*p == ' ')
			p++;
		for (char *e = bar; e > p && e[-1] == ' ';)
			*--e = '\0';
		cells[n++] = p;
		p = bar + 1;
	}
	return n;
}

/* A key row: | `name` | type | `default` or empty | yes/no | meaning | */
static void check_doc_row(char *line, int *seen)
{
	char *cells[6], name[64], def[128];
	const struct conf_key *key;

	assert_int_equal(split_row(line, cells, 6), 5);
	assert_int_equal(sscanf(cells[0], "`%63[^`]`", name), 1);
	key = conf_key_find(name);
	if (!key)
		fail_msg("docs/CONFIG.md: \"%s\" is not a key", name);
	seen[key - conf_key_at(0)]++;
	if (strncmp(cells[1], type_names[key->type], strlen(type_names[key->type])) != 0)
		fail_msg("docs/CONFIG.md: %s: type \"%s\" is wrong", name, cells[1]);
	if (strcmp(cells[2], "empty") == 0)
		def[0] = '\0';
	else
		assert_int_equal(sscanf(cells[2], "`%127[^`]`", def), 1);
	if (strcmp(def, key->def) != 0)
		fail_msg("docs/CONFIG.md: %s: default \"%s\" is wrong", name, cells[2]);
	if (strcmp(cells[3], key->reloadable ? "yes" : "no") != 0)
		fail_msg("docs/CONFIG.md: %s: reload \"%s\" is wrong", name, cells[3]);
	assert_true(strlen(cells[4]) > 10);
}

static void test_docs_list_every_key(void **state)
{
	char *text = read_text_file("docs/CONFIG.md");
	int seen[64] = {0};

	(void)state;
	assert_non_null(strstr(text, "libinih"));
	assert_non_null(strstr(text, "SIGHUP"));
	assert_non_null(strstr(text, "status 2"));
	for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n"))
		if (strncmp(line, "| `", 3) == 0)
			check_doc_row(line, seen);
	for (size_t i = 0; i < conf_key_count(); i++)
		if (seen[i] != 1)
			fail_msg("docs/CONFIG.md: %s appears in %d rows", conf_key_at(i)->name,
			         seen[i]);
	free(text);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_defaults),
	    cmocka_unit_test(test_key_table),
	    cmocka_unit_test(test_empty_file_gives_defaults),
	    cmocka_unit_test(test_full_valid_file),
	    cmocka_unit_test(test_unknown_key),
	    cmocka_unit_test(test_key_outside_section),
	    cmocka_unit_test(test_unknown_section),
	    cmocka_unit_test(test_duplicate_key),
	    cmocka_unit_test(test_empty_value),
	    cmocka_unit_test(test_int_errors),
	    cmocka_unit_test(test_size_values),
	    cmocka_unit_test(test_bool_values),
	    cmocka_unit_test(test_sslmode_values),
	    cmocka_unit_test(test_log_level_and_interval),
	    cmocka_unit_test(test_cross_key_checks),
	    cmocka_unit_test(test_syntax_errors),
	    cmocka_unit_test(test_values_and_line_endings),
	    cmocka_unit_test(test_long_lines),
	    cmocka_unit_test(test_file_errors),
	    cmocka_unit_test(test_file_too_large),
	    cmocka_unit_test(test_file_ok),
	    cmocka_unit_test(test_error_buffer),
	    cmocka_unit_test(test_binary_garbage),
	    cmocka_unit_test(test_random_text),
	    cmocka_unit_test(test_token_soup),
	    cmocka_unit_test(test_no_leak_on_error),
	    cmocka_unit_test(test_reload),
	    cmocka_unit_test(test_reload_everything),
	    cmocka_unit_test(test_format_defaults),
	    cmocka_unit_test(test_format_values),
	    cmocka_unit_test(test_equal),
	    cmocka_unit_test(test_list_contains),
	    cmocka_unit_test(test_names),
	    cmocka_unit_test(test_sample_file_lists_every_key),
	    cmocka_unit_test(test_sample_file_loads),
	    cmocka_unit_test(test_docs_list_every_key),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
