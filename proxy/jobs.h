/*
 * The background jobs (SPEC §5): backfill, verify, drain and partition upkeep.
 *
 * The work is in SQL (proxy/sql/jobs.sql): one call is one batch in one transaction,
 * which also advances the job's cursor and counters in pgshunt.jobs.  This module
 * schedules the calls, throttles them and reports.  Each job runs on a libpq
 * connection of its own (asynchronous, on the loop; the control connection stays free
 * for the phase and the heartbeats), which holds the job's session-level advisory
 * lock while the job runs here: one runner per job across the fleet.  Every
 * JOBS_TICK_MS each proxy looks for jobs in state 'running' and tries to take the lock
 * of those it does not run, so a job whose runner died (its connection, and the lock,
 * gone with it) is resumed from its cursor by another proxy.
 *
 * A batch that writes runs under the epoch in force when it was sent: until it ends,
 * this proxy acknowledges no newer epoch (jobs_pinned_epoch(), read by the fleet), and
 * the batch itself refuses to run when pgshunt.state has moved on.
 */
#ifndef PGSHUNT_JOBS_H
#define PGSHUNT_JOBS_H

#include <stdbool.h>
#include <stdint.h>

#define JOBS_TICK_MS            1000
#define JOBS_PROGRESS_LOG_MS    5000
#define JOBS_PARTITIONS_FIRST_S 60
#define JOBS_PARTITIONS_EVERY_S 600
#define JOBS_VERIFY_CHUNK       10000
#define JOBS_BACKFILL_P99_MS    100 /* the backfill backs off while inserts are slower */

struct session;
struct admin_result;

void jobs_start(void);
void jobs_stop(void);

/* The oldest epoch a running batch was started under, 0 when none runs. */
uint64_t jobs_pinned_epoch(void);

/* A console session went away: forget the answers it waits for. */
void jobs_session_gone(struct session *s);

/*
 * Console arguments: exactly one of words (case-insensitive), nothing after it.
 * The index of the word in *which; false for anything else.
 */
bool jobs_parse_action(const char *args, const char *const *words, int *which)
    __attribute__((warn_unused_result));

extern const char *const jobs_backfill_columns[];
extern const char *const jobs_verify_columns[];
extern const char *const jobs_verify_result_columns[];
extern const char *const jobs_drain_columns[];
extern const char *const jobs_partitions_columns[];
extern const char *const jobs_maintain_columns[];

bool jobs_cmd_backfill(struct session *s, struct admin_result *r, const char *args);
bool jobs_cmd_show_backfill(struct session *s, struct admin_result *r, const char *args);
bool jobs_cmd_verify(struct session *s, struct admin_result *r, const char *args);
bool jobs_cmd_show_verify(struct session *s, struct admin_result *r, const char *args);
bool jobs_cmd_drain(struct session *s, struct admin_result *r, const char *args);
bool jobs_cmd_show_drain(struct session *s, struct admin_result *r, const char *args);
bool jobs_cmd_partitions_maintain(struct session *s, struct admin_result *r, const char *args);
bool jobs_cmd_show_partitions(struct session *s, struct admin_result *r, const char *args);

#endif
