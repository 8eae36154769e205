/*
 * Migration phases (SPEC §2) and the phase in force.
 *
 * The truth lives in PostgreSQL (pgshunt.state, I7); this module holds the copy the
 * proxy acts on, and the one table of allowed moves: one step forward (its data
 * preconditions can be skipped with FORCE) or one step back, never back out of
 * finalized.
 */
#ifndef PGSHUNT_PHASE_H
#define PGSHUNT_PHASE_H

#include <stdbool.h>
#include <stdint.h>

enum phase {
	PHASE_PASSTHROUGH,
	PHASE_DUAL_WRITE,
	PHASE_READ_NEXT,
	PHASE_CUTOVER,
	PHASE_FINALIZED,
	PHASE__COUNT
};

struct phase_state {
	enum phase phase;
	uint64_t epoch;  /* bumped by every change of phase or DEGRADED */
	bool degraded;   /* orthogonal to the phase */
	bool known;      /* read from the database since start (or no control schema yet) */
	bool installed;  /* the control schema exists (MIGRATE PREPARE ran) */
	bool hold;       /* SET PHASE finalized holds the fleet: new transactions' table
			    statements wait (pgshunt.state.hold_until in the future) */
};

const char *phase_name(enum phase p);
bool phase_parse(const char *name, enum phase *p);

/* NULL when from → to is an allowed single step, else why not. */
const char *phase_move_refusal(enum phase from, enum phase to);

#endif
