/*
 * The runbook's thresholds (shared runbook §1, SPEC §5), measured by every proxy on
 * its control connection, and what hangs off them:
 *
 *   SHOW THRESHOLDS   metric, value, warning, action, status (ok|warning|action), detail
 *   auto-DEGRADED     (auto_degrade = on) DEGRADED ON when the fleet's p99 insert
 *                     latency stays above the action limit for auto_degrade_window_s,
 *                     OFF once it stayed under the warning limit as long (hysteresis),
 *                     decided by the one proxy holding an advisory lock
 *   /metrics          the same values as gauges, the buffer's depth, the backfill and
 *                     drain progress read from pgshunt.jobs
 *
 * Everything is read from the catalog and the control schema; nothing here writes
 * but auto-DEGRADED, which goes through migrate_set_degraded().
 */
#ifndef PGSHUNT_THRESHOLDS_H
#define PGSHUNT_THRESHOLDS_H

#include <stdbool.h>
#include <stdint.h>

struct session;
struct admin_result;

/* The runbook's limits.  Constants: they are the runbook's, not a tuning knob. */
#define THRESH_GB                 (1024.0 * 1024.0 * 1024.0)
#define THRESH_TABLE_SIZE_WARNING (10.0 * THRESH_GB)
#define THRESH_TABLE_SIZE_ACTION  (100.0 * THRESH_GB)
#define THRESH_ROWS_WARNING       50e6
#define THRESH_ROWS_ACTION        250e6
#define THRESH_P99_WARNING_MS     100.0
#define THRESH_P99_ACTION_MS      500.0
#define THRESH_BRIN_INDEX_ACTION  (10.0 * THRESH_GB)
/* The column whose B-tree the runbook wants swapped for a BRIN index (§3). */
#define THRESH_BRIN_COLUMN "expires_at"
/* The buffer's depth is counted exactly up to this, estimated beyond. */
#define THRESH_BUFFER_COUNT_CAP 10000

enum thresh_metric {
	TM_TABLE_SIZE,    /* bytes, every partition with its indexes and TOAST */
	TM_ROW_ESTIMATE,  /* reltuples summed over the partitions */
	TM_INSERT_P99,    /* ms, the fleet's: max over the live proxies' own p99 */
	TM_PROXY_P99,     /* ms, this proxy's */
	TM_EXPIRES_INDEX, /* bytes of the B-tree on expires_at */
	TM__COUNT
};

enum thresh_status { THRESH_OK, THRESH_WARNING, THRESH_ACTION };

struct thresh_value {
	bool known;
	double value;
	enum thresh_status status;
};

enum ops_job { OPS_JOB_BACKFILL, OPS_JOB_DRAIN, OPS_JOB__COUNT };

/* What the last reads found, for /metrics. */
struct ops_view {
	struct thresh_value metric[TM__COUNT];
	bool buffer_known;
	uint64_t buffer_rows;
	struct {
		bool present; /* the pgshunt.jobs row exists */
		char state[32];
		uint64_t rows_done;
		uint64_t rows_total;
	} job[OPS_JOB__COUNT];
	uint64_t auto_degrade_total[2]; /* [0] turned off, [1] turned on */
	bool auto_degrade_leader;       /* this proxy decides auto-DEGRADED */
};

const struct ops_view *ops_view(void);
const char *thresh_metric_name(enum thresh_metric m);
const char *thresh_status_name(enum thresh_status s);
const char *ops_job_name(enum ops_job j);
/* Where a value stands against its limits (warning or action may be < 0: none). */
enum thresh_status thresh_classify(double value, double warning, double action);

/*
 * auto-DEGRADED's decision, given the fleet's p99 now (ms, < 0 when no proxy had an
 * insert), whether DEGRADED is on and was set by auto-DEGRADED (an operator's DEGRADED
 * ON is never undone by it), and the seconds since the last automatic change (< 0:
 * none).  ON once the p99 stayed above the action limit for window seconds; OFF once
 * it stayed under the warning limit as long (hysteresis); nothing within two windows
 * of the last change.  st keeps since when the p99 has been above or below.
 */
struct auto_state {
	uint64_t above_since; /* seconds; 0 while not above */
	uint64_t below_since;
};
enum auto_action { AUTO_NONE, AUTO_ON, AUTO_OFF };
enum auto_action auto_degrade_decide(struct auto_state *st, uint64_t now, double p99, bool degraded,
                                     bool auto_set, double since_flip, unsigned window);

/* The table the thresholds and INDEX BRIN are about: the write primary (the table up
 * to read_next, next_table at cutover, the table again once renamed at finalized). */
const char *thresholds_authoritative_table(void);

void thresholds_start(void);
void thresholds_stop(void);

extern const char *const thresholds_columns[];
bool thresholds_cmd_show(struct session *s, struct admin_result *r, const char *args);

#endif
