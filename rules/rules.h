/*
 * What each phase does to each statement (docs/ENGINE.md has the whole table).
 *
 * rules_decide() is the one place that maps (phase, DEGRADED, statement) to an action;
 * the session carries the action out (proxy/engine.c).  A phase whose rewrites are
 * not built yet is refused as a whole by rules_unservable(), rather than served with
 * writes that would split the two tables.
 */
#ifndef PGSHUNT_RULES_H
#define PGSHUNT_RULES_H

#include <stdbool.h>

#include "parser/parser.h"
#include "proxy/phase.h"

enum rule_action {
	RULE_FORWARD, /* send the statement as it is */
	RULE_MIRROR,  /* append the mirror call to RETURNING (mirror_fn on the target row) */
	RULE_RENAME,  /* a read: every mention of the table is pointed at next_table */
	RULE_REFUSE,  /* 0A000 with reason */
	RULE_CLAIM,   /* an INSERT: its target becomes the claim view pgshunt.<table>_<view> */
	RULE_BUFFER,  /* an INSERT in DEGRADED: its target becomes the buffer view */
	RULE__COUNT
};

const char *rule_action_name(enum rule_action action);

struct rule_decision {
	enum rule_action action;
	const char *mirror_fn; /* RULE_MIRROR: "pgshunt.put_next", "pgshunt.del_next",
				  "pgshunt.put_old" or "pgshunt.del_old" */
	const char *reason;    /* RULE_REFUSE: why, for the message naming table and phase */
	const char *view;      /* RULE_CLAIM, RULE_BUFFER: the view's name after "<table>_"
				  ("claim", "claim_nothing", "claim_final", "claim_nothing_final",
				  "buffer", "buffer_nothing") */
	bool to_next;          /* RULE_MIRROR, RULE_CLAIM, RULE_BUFFER: the table's mentions
				  (but a claim's or buffer's target) point at next_table: the
				  phase reads next, and cutover writes next first */
	bool whole;            /* finalized, any action but RULE_REFUSE: the table's name is the
				  partitioned table's now, so ONLY is dropped (it would read or
				  write the empty parent alone) and COPY name TO becomes COPY
				  (SELECT ...) TO (PostgreSQL copies no partitioned table) */
};

/* The action for one statement of a touching query in this phase. */
struct rule_decision rules_decide(enum phase phase, bool degraded, const struct stmt_info *st);

/* The configured relation a statement writes, or NULL when it writes none of them. */
const struct rel_ref *rules_write_target(const struct stmt_info *st);

/* NULL when pgshunt can serve this phase (with DEGRADED as given), else why not. */
const char *rules_unservable(enum phase phase, bool degraded);

#endif
