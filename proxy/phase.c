#include "proxy/phase.h"

#include <stddef.h>
#include <strings.h>

static const char *const names[PHASE__COUNT] = {
	[PHASE_PASSTHROUGH] = "passthrough", [PHASE_DUAL_WRITE] = "dual_write",
	[PHASE_READ_NEXT] = "read_next",     [PHASE_CUTOVER] = "cutover",
	[PHASE_FINALIZED] = "finalized",
};

const char *phase_name(enum phase p)
{
	return p < PHASE__COUNT ? names[p] : "?";
}

bool phase_parse(const char *name, enum phase *p)
{
	for (int i = 0; i < PHASE__COUNT; i++) {
		if (strcasecmp(name, names[i]) == 0) {
			*p = (enum phase)i;
			return true;
		}
	}
	return false;
}

const char *phase_move_refusal(enum phase from, enum phase to)
{
	if (from == to)
		return "the phase is already that";
	if (from == PHASE_FINALIZED)
		return "finalized is final: the partitioned table has taken the table's name";
	if (to == from + 1 || to + 1 == from)
		return NULL;
	return "phases change one step at a time";
}
