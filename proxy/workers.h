/*
 * Relay threads (worker_threads): each runs its own libevent loop and relays the
 * sessions handed to it, so that the proxy is not one process's worth of CPU in front
 * of a server that has many.
 *
 * The main thread keeps everything else: the listeners, each connection until its
 * startup packet is read (TLS, CancelRequest, limits), console sessions, the control
 * connection, jobs, metrics and signals.  A session that is not the console's moves to
 * a relay thread (the least loaded) just before its server connection is opened, and
 * stays there until it ends.
 *
 * The world lock: process-wide state (the configuration, the phase, the sessions'
 * pins, the parsed table names, the views' columns) is written by the main thread and
 * read by the relays.  Every event callback runs between world_enter() and
 * world_leave() (WORLD_HELD() in its first line): a relay enters its own half of the
 * lock, and waits only while the main thread holds it; the main thread waits until
 * no relay is in a callback, and holds them all off.  (The main thread's connections
 * whose startup packet is not read yet touch only its own state: their events skip
 * it, so TLS handshakes do not hold the relays up.)  So a relay's callback sees
 * the world as if single-threaded, and a main-thread callback may read or change
 * anything, sessions of relays included, as long as it does no I/O on them: that goes
 * through workers_post_*(), which the relay runs on its own thread.
 *
 * What relays change concurrently with each other is per thread: the counters
 * (stats_here), the parse cache (parse_cache_here), the buffer pool, each thread's
 * list of sessions.  Only the client count is shared (atomic).
 */
#ifndef PGSHUNT_WORKERS_H
#define PGSHUNT_WORKERS_H

#include <event2/event.h>
#include <stdbool.h>

struct session;
struct stats;
struct parser_cache;

/* Start n relay threads (0: the main thread relays everything).  False with err. */
bool workers_start(int n, char *err, size_t errlen) __attribute__((warn_unused_result));

/* Stop and join them; their sessions stay, for the main thread to close. */
void workers_stop(void);

/* Free the stopped relays' loops, once their sessions are gone. */
void workers_free(void);

/* Stop the main loop, from any thread (the end of a graceful shutdown). */
void workers_loopbreak_main(void);

/* How many relay threads run. */
int workers_count(void);

/* Move a session (detached from the main loop) to the least loaded relay thread, which
 * goes on with session_adopted(). */
void workers_adopt(struct session *s);

/* A session of relay index (session.worker) ended. */
void workers_session_ended(int index);

/* Have every relay revisit its parked sessions / end its idle ones (asynchronous). */
void workers_post_resume(void);
void workers_post_shutdown_idle(void);

/* Whether the thread running is the main one (not a relay). */
bool workers_on_main(void);

/* The event loop of the thread running: the main one or a relay's. */
struct event_base *workers_base_here(void);

/* The per-thread session lists: head of thread i (0 = main), or NULL past the last. */
struct session **workers_sessions_of(int i);
struct session **workers_sessions_here(void);

/* Counters and parse cache of thread i (0 = main): summed by the readers. */
struct stats *workers_stats_of(int i);
struct parser_cache *workers_parse_cache_of(int i);

void world_enter(void);
void world_leave(void);
bool world_held(void);

static inline void world_leave_at_scope_end(int *unused)
{
	(void)unused;
	world_leave();
}

/* First line of every event callback: holds the world until the callback returns. */
#define WORLD_HELD()                                                                               \
	int world_held_ __attribute__((cleanup(world_leave_at_scope_end), unused)) =               \
		(world_enter(), 0)

#endif
