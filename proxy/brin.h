/*
 * INDEX BRIN: swap the authoritative table's B-tree on expires_at for a BRIN index
 * (runbook §3), without blocking writes, on a connection of its own (a CREATE INDEX
 * CONCURRENTLY over a large table takes as long as a scan of it; the control
 * connection must stay free for the phase and the heartbeat).
 *
 * A plain table: CREATE INDEX CONCURRENTLY <name>_brin USING brin, DROP INDEX
 * CONCURRENTLY the B-tree, rename the BRIN index to the B-tree's name.  A partitioned
 * table (CONCURRENTLY does not work on a partitioned parent): CREATE INDEX ... ON ONLY
 * the parent (invalid, no scan), then per partition CREATE INDEX CONCURRENTLY and
 * ATTACH PARTITION (the parent's becomes valid with the last one), then DROP INDEX on
 * the parent's B-tree (a short ACCESS EXCLUSIVE lock on the partitions, lock_timeout
 * 10 s, no scan), and the renames.  A failed run leaves the B-tree in place and the
 * next run drops what it left (the _brin indexes) first.
 *
 * The console gets one row per step (step, detail) when the whole swap is done.
 */
#ifndef PGSHUNT_BRIN_H
#define PGSHUNT_BRIN_H

#include <stdbool.h>

struct session;
struct admin_result;

extern const char *const brin_columns[];
bool brin_cmd_index(struct session *s, struct admin_result *r, const char *args);

/* The console session went away: the swap goes on, its answer is dropped. */
void brin_session_gone(struct session *s);
void brin_stop(void);

#endif
