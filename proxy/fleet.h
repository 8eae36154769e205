/*
 * This proxy's place in the fleet: a row in pgshunt.proxies, renewed every
 * FLEET_HEARTBEAT_MS (and at once when its acknowledged epoch moves) with a lease, the
 * epoch it has acknowledged and its transactions in flight; and the phase re-read from
 * pgshunt.state every FLEET_TICK_MS, so a change made through another proxy's console
 * reaches this one.
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

#define FLEET_TICK_MS      250 /* how often the phase is re-read from pgshunt.state */
#define FLEET_HEARTBEAT_MS 2000
#define FLEET_LEASE_S      10
/* A proxy stops serving the table this long before its lease can have lapsed. */
#define FLEET_LEASE_MARGIN_MS 1500

struct session;
struct admin_result;

void fleet_start(void);
/* Renew the row now (the phase just changed here). */
void fleet_beat_now(void);
void fleet_stop(void);

/*
 * False once the lease may be about to lapse (not renewed for FLEET_LEASE_S less the
 * margin): the fleet is about to stop waiting for this proxy, so it must not serve the
 * table under a phase it reads (I7); the phase counts as unknown until a beat renews it.
 */
bool fleet_lease_ok(void);

/* This process's id in pgshunt.proxies: host:port:pid. */
const char *fleet_proxy_id(void);

/* The epoch this proxy acknowledges now, and how many transactions are in flight. */
uint64_t fleet_acked_epoch(uint32_t *inflight);

extern const char *const fleet_proxies_columns[];
bool fleet_cmd_show_proxies(struct session *s, struct admin_result *r, const char *args);

#endif
