/*
 * Tests of the insert latency ring (proxy/latency.c): the p99 read from histogram
 * buckets (interpolated, exact at the runbook's 100 ms and 500 ms limits), the
 * sliding window over per-second slots, slot reuse after the ring wraps, and the
 * first fold taking only a baseline.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <string.h>

#include "proxy/latency.h"

#include "tests/unit/main_stubs.h"

/* Index of the bucket whose upper bound is us. */
static size_t bucket_of(uint64_t us)
{
	for (size_t b = 0; b < STATS_DURATION_BUCKETS; b++)
		if (stats_duration_bounds_us[b] == us)
			return b;
	fail_msg("no bucket bound %llu", (unsigned long long)us);
	return 0;
}

static void test_hist_p99(void **state)
{
	uint64_t h[LATENCY_NBUCKETS] = {0}, n;
	double ms;
	(void)state;
	assert_false(latency_hist_p99(h, &ms, &n));
	assert_int_equal(n, 0);

	/* 99 fast, 1 slow: the p99 is the 99th sample, still fast. */
	h[bucket_of(1000)] = 99;
	h[bucket_of(1000000)] = 1;
	assert_true(latency_hist_p99(h, &ms, &n));
	assert_int_equal(n, 100);
	assert_true(ms > 0.5 && ms <= 1.0);

	/* 2 slow in 100: the p99 lands among them, above 500 ms. */
	h[bucket_of(1000)] = 98;
	h[bucket_of(1000000)] = 2;
	assert_true(latency_hist_p99(h, &ms, &n));
	assert_true(ms > 500.0 && ms <= 1000.0);

	/* Everything in (250, 500]: never reported above the action limit. */
	memset(h, 0, sizeof(h));
	h[bucket_of(500000)] = 1000;
	assert_true(latency_hist_p99(h, &ms, &n));
	assert_true(ms > 250.0 && ms <= 500.0);

	/* The open-ended bucket reports its lower bound. */
	memset(h, 0, sizeof(h));
	h[STATS_DURATION_BUCKETS] = 3;
	assert_true(latency_hist_p99(h, &ms, &n));
	assert_true(ms == 5000.0);
}

static void test_ring_window(void **state)
{
	static struct latency_ring r;
	uint64_t cum[LATENCY_NBUCKETS] = {0}, n;
	double ms;
	(void)state;
	memset(&r, 0, sizeof(r));
	/* The first fold is a baseline: 50 earlier samples are not in the window. */
	cum[bucket_of(1000000)] = 50;
	latency_ring_fold(&r, 1000, cum);
	assert_false(latency_ring_p99(&r, 1000, 60, &ms, &n));

	cum[bucket_of(1000000)] += 5; /* 5 slow inserts in second 1001 */
	latency_ring_fold(&r, 1001, cum);
	cum[bucket_of(2500)] += 100; /* 100 fast ones in second 1030 */
	latency_ring_fold(&r, 1030, cum);
	assert_true(latency_ring_p99(&r, 1030, 60, &ms, &n));
	assert_int_equal(n, 105);
	assert_true(ms > 500.0);
	/* 30 s later the slow second has left a 30 s window, not a 60 s one. */
	assert_true(latency_ring_p99(&r, 1031, 30, &ms, &n));
	assert_int_equal(n, 100);
	assert_true(ms > 1.0 && ms <= 2.5);
	assert_true(latency_ring_p99(&r, 1060, 60, &ms, &n));
	assert_int_equal(n, 105);
	assert_true(latency_ring_p99(&r, 1061, 60, &ms, &n));
	assert_int_equal(n, 100);
	assert_false(latency_ring_p99(&r, 1090, 60, &ms, &n));

	/* Two folds in one second add up; a slot reused after a wrap starts empty. */
	cum[bucket_of(500)] += 1;
	latency_ring_fold(&r, 1030 + LATENCY_MAX_WINDOW_S, cum);
	cum[bucket_of(500)] += 1;
	latency_ring_fold(&r, 1030 + LATENCY_MAX_WINDOW_S, cum);
	assert_true(latency_ring_p99(&r, 1030 + LATENCY_MAX_WINDOW_S, 600, &ms, &n));
	assert_int_equal(n, 2);
	assert_true(ms <= 0.5);

	/* A window larger than the ring is the ring. */
	assert_true(latency_ring_p99(&r, 1030 + LATENCY_MAX_WINDOW_S, 100000, &ms, &n));
	assert_int_equal(n, 2);
}

static void test_counter_reset(void **state)
{
	static struct latency_ring r;
	uint64_t cum[LATENCY_NBUCKETS] = {0}, n;
	double ms;
	(void)state;
	memset(&r, 0, sizeof(r));
	cum[0] = 10;
	latency_ring_fold(&r, 5, cum);
	cum[0] = 3; /* went down: counted as nothing, the new value is the baseline */
	latency_ring_fold(&r, 6, cum);
	assert_false(latency_ring_p99(&r, 6, 60, &ms, &n));
	cum[0] = 4;
	latency_ring_fold(&r, 7, cum);
	assert_true(latency_ring_p99(&r, 7, 60, &ms, &n));
	assert_int_equal(n, 1);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_hist_p99),
	    cmocka_unit_test(test_ring_window),
	    cmocka_unit_test(test_counter_reset),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
