/*
 * What each phase does to each statement (docs/ENGINE.md has the whole table).
 *
 * This version of pgshunt serves passthrough only: the rewrites of the other phases
 * are being built, and until a phase's row is complete pgshunt refuses to enter it,
 * rather than forward writes that would split the two tables.
 */
#ifndef PGSHUNT_RULES_H
#define PGSHUNT_RULES_H

#include <stdbool.h>

#include "proxy/phase.h"

/* NULL when pgshunt can serve this phase (with DEGRADED as given), else why not. */
const char *rules_unservable(enum phase phase, bool degraded);

#endif
