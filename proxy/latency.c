#include "proxy/latency.h"

#include <string.h>
#include <time.h>

#include "conf/conf.h"
#include "parser/parser.h"

void latency_ring_fold(struct latency_ring *r, uint64_t now, const uint64_t *cum)
{
	size_t slot = (size_t)(now % LATENCY_MAX_WINDOW_S);
	if (!r->primed) {
		memcpy(r->last_total, cum, sizeof(r->last_total));
		r->primed = true;
		return;
	}
	if (r->second[slot] != now) {
		memset(r->count[slot], 0, sizeof(r->count[slot]));
		r->second[slot] = now;
	}
	for (size_t b = 0; b < LATENCY_NBUCKETS; b++) {
		/* The counters never go down; a smaller value would be a reset: start again. */
		uint64_t d = cum[b] >= r->last_total[b] ? cum[b] - r->last_total[b] : 0;
		r->count[slot][b] += d;
		r->last_total[b] = cum[b];
	}
}

bool latency_hist_p99(const uint64_t *counts, double *ms, uint64_t *samples)
{
	uint64_t n = 0, cum = 0;
	for (size_t b = 0; b < LATENCY_NBUCKETS; b++)
		n += counts[b];
	*samples = n;
	if (n == 0)
		return false;
	/* The smallest value with at least 99% of the samples at or below it. */
	uint64_t rank = (n * 99 + 99) / 100;
	for (size_t b = 0; b < LATENCY_NBUCKETS; b++) {
		if (cum + counts[b] < rank) {
			cum += counts[b];
			continue;
		}
		double lo = b == 0 ? 0.0 : (double)stats_duration_bounds_us[b - 1];
		if (b == STATS_DURATION_BUCKETS) {
			*ms = lo / 1000.0;
			return true;
		}
		double hi = (double)stats_duration_bounds_us[b];
		*ms = (lo + (hi - lo) * (double)(rank - cum) / (double)counts[b]) / 1000.0;
		return true;
	}
	return false; /* not reached: rank <= n */
}

bool latency_ring_p99(const struct latency_ring *r, uint64_t now, unsigned window, double *ms,
                      uint64_t *samples)
{
	uint64_t sum[LATENCY_NBUCKETS] = {0};
	if (window > LATENCY_MAX_WINDOW_S)
		window = LATENCY_MAX_WINDOW_S;
	for (size_t i = 0; i < LATENCY_MAX_WINDOW_S; i++) {
		if (!r->second[i] || r->second[i] > now || r->second[i] + window <= now)
			continue;
		for (size_t b = 0; b < LATENCY_NBUCKETS; b++)
			sum[b] += r->count[i][b];
	}
	return latency_hist_p99(sum, ms, samples);
}

static struct latency_ring ring;

void latency_tick(void)
{
	uint64_t counts[STATS_DURATION_BUCKETS + 1];
	stats_durations_total(STMT_INSERT, counts);
	latency_ring_fold(&ring, (uint64_t)time(NULL), counts);
}

bool latency_p99(double *ms, uint64_t *samples)
{
	latency_tick();
	return latency_ring_p99(&ring, (uint64_t)time(NULL), LATENCY_WINDOW_S, ms, samples);
}
