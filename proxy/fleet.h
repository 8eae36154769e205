/*
 * This proxy's place in the fleet: a row in pgshunt.proxies, renewed every
 * FLEET_HEARTBEAT_S seconds with a lease, the epoch it has acknowledged and its
 * transactions in flight.
 *
 * The acknowledged epoch is the oldest phase epoch still serving a transaction here
 * (I8 pins each transaction to the phase in force when it began), or the current
 * epoch when none is older: a proxy acks an epoch only once its transactions from the
 * older phase have ended (SPEC §6).
 */
#ifndef PGSHUNT_FLEET_H
#define PGSHUNT_FLEET_H

#include <stdbool.h>
#include <stdint.h>

#define FLEET_HEARTBEAT_S 2
#define FLEET_LEASE_S     10

struct session;
struct admin_result;

void fleet_start(void);
void fleet_stop(void);

/* This process's id in pgshunt.proxies: host:port:pid. */
const char *fleet_proxy_id(void);

/* The epoch this proxy acknowledges now, and how many transactions are in flight. */
uint64_t fleet_acked_epoch(uint32_t *inflight);

extern const char *const fleet_proxies_columns[];
bool fleet_cmd_show_proxies(struct session *s, struct admin_result *r, const char *args);

#endif
