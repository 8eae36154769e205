#include "proxy/pqevent.h"

#include "proxy/pgshunt.h"

bool pqevent_arm(struct event **io, PGconn *conn, short what, event_callback_fn cb, void *arg)
{
	if (*io)
		event_free(*io);
	*io = event_new(shunt.base, PQsocket(conn), what, cb, arg);
	if (*io && event_add(*io, NULL) != 0) {
		event_free(*io);
		*io = NULL;
	}
	return *io != NULL;
}
