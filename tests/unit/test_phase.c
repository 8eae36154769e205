/*
 * Tests of the migration phases (proxy/phase.c): names as the console and
 * pgshunt.state spell them, malformed names refused, and the one table of allowed
 * moves: one step forward or back, nothing out of finalized, nothing in place.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <string.h>

#include "proxy/phase.h"

static void test_names_round_trip(void **state)
{
	(void)state;
	for (int i = 0; i < PHASE__COUNT; i++) {
		enum phase p = PHASE__COUNT;
		assert_true(phase_parse(phase_name((enum phase)i), &p));
		assert_int_equal(p, i);
	}
	enum phase p;
	assert_true(phase_parse("FINALIZED", &p));
	assert_int_equal(p, PHASE_FINALIZED);
	assert_string_equal(phase_name(PHASE__COUNT), "?");
}

static void test_malformed_names(void **state)
{
	static const char *const bad[] = {"", " finalized", "finalized ", "finalize",
					  "finalizedx", "cut over", "read-next", "dual_write\n",
					  "passthroughpassthroughpassthroughpassthrough"};
	(void)state;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		enum phase p = PHASE_CUTOVER;
		assert_false(phase_parse(bad[i], &p));
		assert_int_equal(p, PHASE_CUTOVER); /* untouched on failure */
	}
}

static void test_moves(void **state)
{
	(void)state;
	for (int from = 0; from < PHASE__COUNT; from++) {
		for (int to = 0; to < PHASE__COUNT; to++) {
			const char *why = phase_move_refusal((enum phase)from, (enum phase)to);
			bool step = to == from + 1 || to + 1 == from;
			if (from == PHASE_FINALIZED || from == to || !step) {
				assert_non_null(why);
			} else {
				assert_null(why);
			}
		}
	}
	assert_non_null(strstr(phase_move_refusal(PHASE_FINALIZED, PHASE_CUTOVER), "final"));
	assert_null(phase_move_refusal(PHASE_CUTOVER, PHASE_FINALIZED));
	assert_null(phase_move_refusal(PHASE_CUTOVER, PHASE_READ_NEXT));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_names_round_trip),
	    cmocka_unit_test(test_malformed_names),
	    cmocka_unit_test(test_moves),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
