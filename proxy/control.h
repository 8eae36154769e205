/*
 * pgshunt's own connection to the application database (control_dsn), driven by
 * libpq's asynchronous API on the event loop: it never blocks the sessions.
 *
 * Queries are queued and run one at a time, in order; each gets its callback with the
 * final PGresult (the first error, if any), or with NULL when the connection failed
 * before an answer came.  The connection is re-established with a back-off after a
 * failure; queued queries wait for it.
 */
#ifndef PGSHUNT_CONTROL_H
#define PGSHUNT_CONTROL_H

#include <libpq-fe.h>
#include <stdbool.h>

/* res is owned by the control module: do not PQclear() it. */
typedef void (*control_cb)(const PGresult *res, void *arg);

/* A NOTIFY on the LISTENed channel; payload is the notification's (never NULL). */
typedef void (*control_notify_cb)(const char *payload);

/* Start connecting (no-op when control_dsn is empty: control_available() says so). */
void control_start(void);
void control_stop(void);

/* True when control_dsn is set, whether or not the connection is up right now. */
bool control_available(void);
bool control_connected(void);

/*
 * Queue sql with text parameters (params may be NULL when nparams is 0; without
 * parameters it goes by the simple protocol, so it may hold several statements, and
 * the answer is the first error or the last result).  Strings are copied.  False when control_dsn is empty or memory ran out; cb is not called then.
 */
bool control_query(const char *sql, int nparams, const char *const *params, control_cb cb,
		   void *arg) __attribute__((warn_unused_result));

/*
 * At exit: run the loop until the queued queries are answered (a proxy's goodbye),
 * at most timeout_ms.  Call after the sessions are closed, before control_stop().
 */
void control_drain(int timeout_ms);

/*
 * LISTEN on channel (a plain identifier) on this and every later connection, and call
 * cb for each notification on it, whenever it arrives.
 */
bool control_listen(const char *channel, control_notify_cb cb) __attribute__((warn_unused_result));

/* Forget the callbacks that carry arg (its owner is going away); the queries still run. */
void control_forget(void *arg);

/* A SQLSTATE and message for a failed result (or a lost connection when res is NULL). */
const char *control_sqlstate(const PGresult *res);
const char *control_message(const PGresult *res);
bool control_ok(const PGresult *res);

#endif
