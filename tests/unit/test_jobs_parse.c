/*
 * Tests of the jobs' console arguments (jobs_parse_action in proxy/jobs.c): exactly one
 * of the allowed words, any case, surrounding whitespace; anything else is refused.
 * And the console's job commands: found by their words, with stable column lists.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "proxy/admin.h"
#include "proxy/jobs.h"
#include "proxy/pgshunt.h"

#include "tests/unit/main_stubs.h"

static const char *const backfill[] = {"START", "PAUSE", "RESUME", "CANCEL", NULL};

/* Parse a heap copy of exactly args, so that an over-read shows under ASan. */
static bool parse(const char *args, int *which)
{
	size_t n = strlen(args) + 1;
	char *copy = malloc(n);
	assert_non_null(copy);
	memcpy(copy, args, n);
	bool ok = jobs_parse_action(copy, backfill, which);
	free(copy);
	return ok;
}

static void expect(const char *args, int want)
{
	int which = -1;
	if (!parse(args, &which))
		fail_msg("\"%s\" refused", args);
	assert_int_equal(which, want);
}

static void refused(const char *args)
{
	int which = 42;
	if (parse(args, &which))
		fail_msg("\"%s\" accepted as %d", args, which);
	assert_int_equal(which, 42); /* untouched */
}

static void test_words(void **state)
{
	(void)state;
	expect("START", 0);
	expect("PAUSE", 1);
	expect("RESUME", 2);
	expect("CANCEL", 3);
	expect("start", 0);
	expect("Cancel", 3);
	expect("  resume\t\n", 2);
	expect("\tPAUSE ", 1);
}

static void test_malformed(void **state)
{
	(void)state;
	refused("");
	refused("   ");
	refused("\t\n");
	refused("STAR");
	refused("STARTS");
	refused("START START");
	refused("START PAUSE");
	refused("START;");
	refused("START ;");
	refused("'START'");
	refused("\"START\"");
	refused("START\x01");
	refused("DRAIN");
	refused("STOP");
	refused("START x");
	/* Longer than any word: cut at the buffer, never matched, never overrun. */
	refused("STARTSTARTSTARTSTARTSTARTSTARTSTARTSTART");
	refused("CANCELXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX");
	int which = 7;
	assert_false(jobs_parse_action(NULL, backfill, &which));
	assert_int_equal(which, 7);
}

static void test_drain_words(void **state)
{
	static const char *const drain[] = {"START", "PAUSE", NULL};
	int which = -1;
	(void)state;
	assert_true(jobs_parse_action("pause", drain, &which));
	assert_int_equal(which, 1);
	assert_false(jobs_parse_action("RESUME", drain, &which));
	assert_false(jobs_parse_action("CANCEL", drain, &which));
}

static void columns_are(const char *words, const char *expected)
{
	const char *args;
	const struct admin_cmd *cmd = admin_lookup(words, &args);
	char got[512] = "";
	if (!cmd)
		fail_msg("no console command %s", words);
	for (size_t i = 0; cmd->columns && cmd->columns[i]; i++) {
		if (i)
			strcat(got, ",");
		strcat(got, cmd->columns[i]);
	}
	assert_string_equal(got, expected);
}

/* Column names are an API: changing one is a decision, made here too. */
static void test_console(void **state)
{
	(void)state;
	columns_are("SHOW BACKFILL", "state,rows_done,rows_total,percent,rows_per_sec,eta,cursor,"
	                             "inserted,runner,started_at,updated_at,error");
	columns_are("SHOW VERIFY", "state,keys_checked,rows_old,rows_next,differences,"
	                           "first_differences,cursor,runner,started_at,updated_at,error");
	columns_are("VERIFY",
	            "state,keys_checked,rows_old,rows_next,differences,first_differences");
	columns_are("SHOW DRAIN", "state,buffered,drained,inserted,duplicates,ledgered,skipped,"
	                          "updated,rows_per_sec,eta,runner,updated_at,error");
	columns_are("SHOW PARTITIONS", "table,partition,from,to,est_rows,size,bytes");
	columns_are("PARTITIONS MAINTAIN", "action,partition,detail");
	columns_are("BACKFILL START", "");
	columns_are("DRAIN PAUSE", "");
	const char *args;
	assert_null(admin_lookup("VERIFY now", &args));
	assert_null(admin_lookup("PARTITIONS", &args));
	assert_null(admin_lookup("PARTITIONS MAINTAIN x", &args));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_words),
	    cmocka_unit_test(test_malformed),
	    cmocka_unit_test(test_drain_words),
	    cmocka_unit_test(test_console),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
