/*
 * Link stand-ins for the proxy's main.c, which is not in libpgshunt.a: the library
 * refers to the process state (shunt) and to reload and shutdown, which unit tests and
 * fuzz targets never run.  Included once by each such program.
 */
#ifndef PGSHUNT_TESTS_MAIN_STUBS_H
#define PGSHUNT_TESTS_MAIN_STUBS_H

#include <stdbool.h>
#include <stddef.h>

#include "proxy/pgshunt.h"

struct pgshunt shunt;

void pgshunt_shutdown(void)
{
}

bool pgshunt_reload(char *err, size_t errlen)
{
	if (errlen)
		err[0] = '\0';
	return false;
}

#endif
