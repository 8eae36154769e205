/*
 * Tests of the admin console's statement lookup (admin_lookup in proxy/admin.c):
 * exact words, any case, any whitespace, nothing else; and the command table itself.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "proxy/admin.h"
#include "proxy/pgshunt.h"

#include "tests/unit/main_stubs.h"

static const struct admin_cmd *find(const char *words)
{
	for (size_t i = 0; i < admin_command_count(); i++)
		if (strcmp(admin_command_at(i)->words, words) == 0)
			return admin_command_at(i);
	fail_msg("no command \"%s\" in the table", words);
	return NULL;
}

/* admin_lookup on a heap copy of exactly the statement, so over-reads show. */
static const struct admin_cmd *lookup(const char *stmt)
{
	size_t n = strlen(stmt) + 1;
	char *copy = malloc(n);
	assert_non_null(copy);
	memcpy(copy, stmt, n);
	const char *args = NULL;
	const struct admin_cmd *cmd = admin_lookup(copy, &args);
	if (cmd && !cmd->takes_args) {
		/* Nothing may follow the words, so args is the (empty) end of the statement. */
		assert_non_null(args);
		assert_ptr_equal(args, copy + n - 1);
	}
	free(copy);
	return cmd;
}

static void expect_cmd(const char *stmt, const char *words)
{
	const struct admin_cmd *cmd = lookup(stmt);
	if (!cmd)
		fail_msg("\"%s\" should be %s", stmt, words);
	assert_ptr_equal(cmd, find(words));
}

static void expect_none(const char *stmt)
{
	const struct admin_cmd *cmd = lookup(stmt);
	if (cmd)
		fail_msg("\"%s\" should be no command, got %s", stmt, cmd->words);
}

static void test_exact(void **state)
{
	(void)state;
	expect_cmd("SHOW HELP", "SHOW HELP");
	expect_cmd("SHOW CLIENTS", "SHOW CLIENTS");
	expect_cmd("SHOW SERVERS", "SHOW SERVERS");
	expect_cmd("SHOW STATS", "SHOW STATS");
	expect_cmd("SHOW CONFIG", "SHOW CONFIG");
	expect_cmd("RELOAD", "RELOAD");
	expect_cmd("PAUSE", "PAUSE");
	expect_cmd("RESUME", "RESUME");
	expect_cmd("SHUTDOWN", "SHUTDOWN");
	expect_cmd("BEGIN", "BEGIN");
	expect_cmd("START TRANSACTION", "START TRANSACTION");
	expect_cmd("COMMIT", "COMMIT");
	expect_cmd("END", "END");
	expect_cmd("ROLLBACK", "ROLLBACK");
	expect_cmd("ABORT", "ABORT");
}

static void test_case_insensitive(void **state)
{
	(void)state;
	expect_cmd("show clients", "SHOW CLIENTS");
	expect_cmd("Show Clients", "SHOW CLIENTS");
	expect_cmd("sHoW sTaTs", "SHOW STATS");
	expect_cmd("reload", "RELOAD");
	expect_cmd("start transaction", "START TRANSACTION");
	expect_cmd("Rollback", "ROLLBACK");
}

static void test_whitespace(void **state)
{
	(void)state;
	expect_cmd("SHOW  CLIENTS", "SHOW CLIENTS");
	expect_cmd("SHOW\tCLIENTS", "SHOW CLIENTS");
	expect_cmd("SHOW\nCLIENTS", "SHOW CLIENTS");
	expect_cmd("SHOW \t\r\n CLIENTS", "SHOW CLIENTS");
	expect_cmd("  SHOW CLIENTS", "SHOW CLIENTS");
	expect_cmd("\n\tshow servers", "SHOW SERVERS");
	expect_cmd("SHOW CLIENTS  ", "SHOW CLIENTS");
	expect_cmd("SHOW CLIENTS\n", "SHOW CLIENTS");
	expect_cmd(" \t SHOW \n\n CONFIG \t\r\n", "SHOW CONFIG");
	expect_cmd("\vPAUSE\f", "PAUSE");
	expect_cmd("START\n\nTRANSACTION", "START TRANSACTION");
}

static void test_trailing_garbage(void **state)
{
	(void)state;
	expect_none("SHOW CLIENTS x");
	expect_none("SHOW CLIENTS;");
	expect_none("SHOW CLIENTS ;");
	expect_none("SHOW CLIENTSX");
	expect_none("SHOW CLIENTS\tnow");
	expect_none("RELOAD now");
	expect_none("PAUSE;");
	expect_none("BEGIN ISOLATION LEVEL SERIALIZABLE");
	expect_none("ENDX");
	expect_none("END;");
	expect_none("SHOWCLIENTS");
	expect_none("SHOW_CLIENTS");
	expect_none("SHOW-CLIENTS");
	expect_none("xSHOW CLIENTS");
	expect_none("; SHOW CLIENTS");
}

static void test_prefixes(void **state)
{
	(void)state;
	expect_none("");
	expect_none(" ");
	expect_none("\t\n ");
	expect_none("SHOW");
	expect_none("SHOW ");
	expect_none("show\n");
	expect_none("SHOW CLIENT");
	expect_none("SHOW C");
	expect_none("SHOW SERVER");
	expect_none("START");
	expect_none("START TRANS");
	expect_none("REL");
	expect_none("EN");
	expect_none("S");
}

static void test_unknown(void **state)
{
	(void)state;
	expect_none("SHOW POOLS");
	expect_none("SHOW TABLES");
	expect_none("SELECT 1");
	expect_none("KILL");
	expect_none("CLIENTS SHOW");
	expect_none("TRANSACTION START");
	/* A NUL ends the statement for lookup; what is after it is not seen. */
	expect_none("SHOW\0CLIENTS");
}

/* Every command is found by its own words, in several spellings. */
static void test_every_command(void **state)
{
	(void)state;
	size_t n = admin_command_count();
	assert_true(n > 0);
	assert_null(admin_command_at(n));
	assert_null(admin_command_at(n + 100));
	for (size_t i = 0; i < n; i++) {
		const struct admin_cmd *cmd = admin_command_at(i);
		assert_non_null(cmd);
		assert_non_null(cmd->words);
		assert_true(cmd->words[0] != '\0');
		assert_non_null(cmd->run);
		assert_non_null(cmd->help);
		assert_true(cmd->help[0] != '\0');
		expect_cmd(cmd->words, cmd->words);

		char buf[128];
		size_t len = strlen(cmd->words);
		assert_true(len + 8 < sizeof(buf));
		/* Lower case. */
		for (size_t j = 0; j <= len; j++)
			buf[j] = (char)tolower((unsigned char)cmd->words[j]);
		expect_cmd(buf, cmd->words);
		/* Tabs for spaces, padded around. */
		size_t k = 0;
		buf[k++] = '\t';
		for (size_t j = 0; j < len; j++)
			buf[k++] = cmd->words[j] == ' ' ? '\t' : cmd->words[j];
		buf[k++] = '\n';
		buf[k] = '\0';
		expect_cmd(buf, cmd->words);
		/* Any extra word after it is not the command, unless it takes arguments. */
		snprintf(buf, sizeof(buf), "%s x", cmd->words);
		if (cmd->takes_args)
			expect_cmd(buf, cmd->words);
		else
			expect_none(buf);
		/* Nor is it without its last character. */
		snprintf(buf, sizeof(buf), "%.*s", (int)len - 1, cmd->words);
		expect_none(buf);
		/* No two commands share their words. */
		for (size_t j = 0; j < i; j++)
			assert_true(strcasecmp(admin_command_at(j)->words, cmd->words) != 0);
	}
}

static void test_show_columns(void **state)
{
	(void)state;
	for (size_t i = 0; i < admin_command_count(); i++) {
		const struct admin_cmd *cmd = admin_command_at(i);
		bool is_show = strncmp(cmd->words, "SHOW ", 5) == 0;
		/* Every SHOW returns rows; other commands may (MIGRATE PREPARE reports steps). */
		if (!is_show && !cmd->columns)
			continue;
		assert_non_null(cmd->columns);
		size_t n = 0;
		for (; cmd->columns[n]; n++) {
			assert_true(n < 64); /* the list is NULL-terminated */
			assert_true(cmd->columns[n][0] != '\0');
			for (size_t j = 0; j < n; j++)
				assert_string_not_equal(cmd->columns[j], cmd->columns[n]);
		}
		assert_true(n > 0);
	}
	/* SHOW HELP returns its rows in two columns. */
	const struct admin_cmd *help = find("SHOW HELP");
	assert_string_equal(help->columns[0], "command");
	assert_string_equal(help->columns[1], "description");
	assert_null(help->columns[2]);
}

static void test_arguments(void **state)
{
	(void)state;
	const char *args = NULL;
	const struct admin_cmd *cmd = admin_lookup("set phase  dual_write FORCE", &args);
	assert_non_null(cmd);
	assert_string_equal(cmd->words, "SET PHASE");
	assert_string_equal(args, "dual_write FORCE");
	cmd = admin_lookup("DEGRADED\ton", &args);
	assert_non_null(cmd);
	assert_string_equal(cmd->words, "DEGRADED");
	assert_string_equal(args, "on");
	/* Words still end at a boundary, and commands without arguments take none. */
	assert_null(admin_lookup("SET PHASEdual_write", &args));
	assert_null(admin_lookup("DEGRADEDON", &args));
	assert_null(admin_lookup("SHOW PHASE now", &args));
	assert_null(admin_lookup("MIGRATE PREPARE twice", &args));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_arguments),
	    cmocka_unit_test(test_exact),         cmocka_unit_test(test_case_insensitive),
	    cmocka_unit_test(test_whitespace),    cmocka_unit_test(test_trailing_garbage),
	    cmocka_unit_test(test_prefixes),      cmocka_unit_test(test_unknown),
	    cmocka_unit_test(test_every_command), cmocka_unit_test(test_show_columns),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
