/*
 * pgshunt's own libpq connections (the control connection, the jobs' runners, INDEX
 * BRIN) are driven from the libevent loop: each waits for its socket with one event,
 * replaced whenever it needs to wait for something else (reading or writing).
 */
#ifndef PGSHUNT_PQEVENT_H
#define PGSHUNT_PQEVENT_H

#include <event2/event.h>
#include <libpq-fe.h>
#include <stdbool.h>

/* Replace *io with an event for `what` on conn's socket, calling cb(arg); false when
 * it could not be made (*io is then NULL). */
bool pqevent_arm(struct event **io, PGconn *conn, short what, event_callback_fn cb, void *arg);

#endif
