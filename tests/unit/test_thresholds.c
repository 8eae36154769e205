/*
 * Tests of auto-DEGRADED's decision (auto_degrade_decide in proxy/thresholds.c) and of
 * the classification against the runbook's limits: ON only after the p99 stayed
 * above 500 ms for the whole window, OFF only after it stayed under 100 ms as long
 * (between the two limits nothing moves), never within two windows of the last
 * change, never OFF for a DEGRADED an operator turned on.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "proxy/pgshunt.h"
#include "proxy/thresholds.h"

#include "tests/unit/main_stubs.h"

#define WINDOW 30

static enum auto_action at(struct auto_state *st, uint64_t now, double p99, bool degraded)
{
	return auto_degrade_decide(st, now, p99, degraded, true, -1, WINDOW);
}

static void test_enter_after_window(void **state)
{
	struct auto_state st = {0};
	(void)state;
	assert_int_equal(at(&st, 100, 600, false), AUTO_NONE);
	assert_int_equal(at(&st, 129, 900, false), AUTO_NONE);
	assert_int_equal(at(&st, 130, 501, false), AUTO_ON);
	/* Exactly 500 is not above the action limit. */
	st = (struct auto_state){0};
	assert_int_equal(at(&st, 100, 500, false), AUTO_NONE);
	assert_int_equal(at(&st, 200, 500, false), AUTO_NONE);
}

static void test_dip_restarts_window(void **state)
{
	struct auto_state st = {0};
	(void)state;
	assert_int_equal(at(&st, 100, 600, false), AUTO_NONE);
	assert_int_equal(at(&st, 120, 400, false), AUTO_NONE); /* one dip under the limit */
	assert_int_equal(at(&st, 121, 600, false), AUTO_NONE);
	assert_int_equal(at(&st, 150, 600, false), AUTO_NONE);
	assert_int_equal(at(&st, 151, 600, false), AUTO_ON);
}

static void test_leave_with_hysteresis(void **state)
{
	struct auto_state st = {0};
	(void)state;
	/* Between 100 and 500 ms: DEGRADED stays on, however long. */
	assert_int_equal(at(&st, 100, 300, true), AUTO_NONE);
	assert_int_equal(at(&st, 1000, 300, true), AUTO_NONE);
	assert_int_equal(at(&st, 1001, 50, true), AUTO_NONE);
	assert_int_equal(at(&st, 1030, 99, true), AUTO_NONE);
	assert_int_equal(at(&st, 1031, 20, true), AUTO_OFF);
	/* No insert at all in the window (p99 < 0) counts as fast. */
	st = (struct auto_state){0};
	assert_int_equal(at(&st, 10, -1, true), AUTO_NONE);
	assert_int_equal(at(&st, 40, -1, true), AUTO_OFF);
	/* Not off while still slow; not on while already on. */
	st = (struct auto_state){0};
	assert_int_equal(at(&st, 10, 900, true), AUTO_NONE);
	assert_int_equal(at(&st, 100, 900, true), AUTO_NONE);
	st = (struct auto_state){0};
	assert_int_equal(at(&st, 10, 10, false), AUTO_NONE);
	assert_int_equal(at(&st, 100, 10, false), AUTO_NONE);
}

static void test_operator_and_min_interval(void **state)
{
	struct auto_state st = {0};
	(void)state;
	/* An operator's DEGRADED ON is left alone. */
	assert_int_equal(auto_degrade_decide(&st, 10, 10, true, false, -1, WINDOW), AUTO_NONE);
	assert_int_equal(auto_degrade_decide(&st, 100, 10, true, false, -1, WINDOW), AUTO_NONE);
	/* Within two windows of the last automatic change: nothing, then the change. */
	st = (struct auto_state){0};
	assert_int_equal(auto_degrade_decide(&st, 10, 900, false, false, 5, WINDOW), AUTO_NONE);
	assert_int_equal(auto_degrade_decide(&st, 50, 900, false, false, 45, WINDOW), AUTO_NONE);
	assert_int_equal(auto_degrade_decide(&st, 70, 900, false, false, 65, WINDOW), AUTO_ON);
}

static void test_classify(void **state)
{
	(void)state;
	assert_int_equal(thresh_classify(100, THRESH_P99_WARNING_MS, THRESH_P99_ACTION_MS),
	                 THRESH_OK);
	assert_int_equal(thresh_classify(100.1, THRESH_P99_WARNING_MS, THRESH_P99_ACTION_MS),
	                 THRESH_WARNING);
	assert_int_equal(thresh_classify(500.1, THRESH_P99_WARNING_MS, THRESH_P99_ACTION_MS),
	                 THRESH_ACTION);
	assert_int_equal(thresh_classify(11 * THRESH_GB, -1, THRESH_BRIN_INDEX_ACTION),
	                 THRESH_ACTION);
	assert_int_equal(thresh_classify(9 * THRESH_GB, -1, THRESH_BRIN_INDEX_ACTION), THRESH_OK);
	assert_int_equal(thresh_classify(60e6, THRESH_ROWS_WARNING, THRESH_ROWS_ACTION),
	                 THRESH_WARNING);
	assert_string_equal(thresh_status_name(THRESH_WARNING), "warning");
	assert_string_equal(thresh_metric_name(TM_INSERT_P99), "insert_p99_ms");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_enter_after_window),
	    cmocka_unit_test(test_dip_restarts_window),
	    cmocka_unit_test(test_leave_with_hysteresis),
	    cmocka_unit_test(test_operator_and_min_interval),
	    cmocka_unit_test(test_classify),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
