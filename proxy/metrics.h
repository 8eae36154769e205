/*
 * The HTTP endpoint on metrics_addr, served by libevent's evhttp on the proxy's loop:
 *
 *   /metrics   Prometheus text exposition format 0.0.4
 *   /healthz   liveness: 200 while the process runs
 *   /readyz    readiness: 200 when the phase is known and the server answers a
 *              TCP connect (checked every 2 s on the loop), else 503 and why
 *
 * Only GET and HEAD are served (405 for other methods, 404 for other paths).
 */
#ifndef PGSHUNT_METRICS_H
#define PGSHUNT_METRICS_H

#include <stdbool.h>
#include <stddef.h>

/*
 * Bind the endpoint on shunt.base at cfg.metrics_addr.  True without doing anything
 * when metrics_addr is empty; false with err (naming metrics_addr) when the address
 * is not host:port or cannot be bound.
 */
bool metrics_start(char *err, size_t errlen) __attribute__((warn_unused_result));

/* Close the endpoint and its connections; a no-op when it never started. */
void metrics_stop(void);

#endif
