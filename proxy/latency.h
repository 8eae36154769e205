/*
 * Insert latency as this proxy measures it: the request-to-answer time of INSERT ...
 * VALUES statements naming the table (stats.duration_count[STMT_INSERT], DEGRADED
 * ones included), folded once a second into a ring of per-second histograms, so the
 * p99 over the last LATENCY_WINDOW_S seconds is cheap to read at any time.
 *
 * Resolution is the duration histogram's buckets (stats_duration_bounds_us): the p99
 * is interpolated inside its bucket.  100 ms and 500 ms, the runbook's limits, are
 * bucket bounds, so "p99 above the limit" is decided exactly.
 */
#ifndef PGSHUNT_LATENCY_H
#define PGSHUNT_LATENCY_H

#include <stdbool.h>
#include <stdint.h>

#include "proxy/pgshunt.h"

#define LATENCY_WINDOW_S     60 /* the window SHOW THRESHOLDS and the heartbeat report */
#define LATENCY_MAX_WINDOW_S 600
#define LATENCY_NBUCKETS     (STATS_DURATION_BUCKETS + 1)

struct latency_ring {
	uint64_t second[LATENCY_MAX_WINDOW_S]; /* the second each slot holds (0: empty) */
	uint64_t count[LATENCY_MAX_WINDOW_S][LATENCY_NBUCKETS];
	uint64_t last_total[LATENCY_NBUCKETS]; /* the cumulative counts folded so far */
	bool primed;                           /* last_total holds a first snapshot */
};

/*
 * Fold the cumulative histogram cum (monotonic counters) into the slot of second now:
 * what arrived since the previous call is counted in that second.  The first call
 * only takes the snapshot (earlier statements predate the ring).
 */
void latency_ring_fold(struct latency_ring *r, uint64_t now, const uint64_t *cum);

/*
 * The p99 in ms over the seconds (now - window, now], and how many samples it rests
 * on.  False when there is none (no insert in the window).  A p99 in the open-ended
 * last bucket is reported as that bucket's lower bound.
 */
bool latency_ring_p99(const struct latency_ring *r, uint64_t now, unsigned window, double *ms,
                      uint64_t *samples) __attribute__((warn_unused_result));

/* The p99 of one histogram of LATENCY_NBUCKETS counts, in ms; false when it is empty. */
bool latency_hist_p99(const uint64_t *counts, double *ms, uint64_t *samples)
    __attribute__((warn_unused_result));

/* This process's ring, over STMT_INSERT. */
void latency_tick(void);
bool latency_p99(double *ms, uint64_t *samples) __attribute__((warn_unused_result));

#endif
