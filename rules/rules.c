#include "rules/rules.h"

#include <stddef.h>

const char *rules_unservable(enum phase phase, bool degraded)
{
	if (degraded)
		return "redirecting inserts to the buffer table is not built in this version";
	if (phase != PHASE_PASSTHROUGH)
		return "mirroring and rewriting statements is not built in this version";
	return NULL;
}
