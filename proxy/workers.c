#include "proxy/workers.h"

#include <assert.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "parser/parser.h"
#include "proxy/iobuf.h"
#include "proxy/pgshunt.h"
#include "proxy/session.h"

#define WORKERS_MAX 64

struct worker {
	int index;                 /* 1..n; 0 is the main thread */
	pthread_t thread;
	struct event_base *base;
	int wake_fd;               /* eventfd: the main thread's knock (each loop is touched
				    * only by its own thread: libevent runs without locks) */
	struct event *wake;        /* reads wake_fd */
	/*
	 * The world lock's half for this relay (workers.h): busy while one of its callbacks
	 * runs, want while the main thread holds the world or waits for it.  Each side sets
	 * its own flag, then reads the other's (a Dekker handshake, sequentially consistent
	 * atomics), so a relay's turn costs two atomic stores and no lock; gate and the two
	 * conditions are only for the side that must wait.
	 */
	atomic_int busy, want;
	pthread_mutex_t gate;
	pthread_cond_t want_gone;  /* the relay waits for want to drop */
	pthread_cond_t busy_gone;  /* the main thread waits for busy to drop */
	struct session *sessions;  /* the sessions this relay runs */
	atomic_uint load;          /* sessions handed to it and not yet ended */
	struct stats stats;        /* this relay's counters */
	struct parser_cache *parse_cache;
	/* The mailbox, under mu: sessions to adopt, and what to do to the others. */
	pthread_mutex_t mu;
	struct session *inbox;     /* linked by next */
	bool resume, shutdown_idle, stop;
};

static struct worker *workers[WORKERS_MAX];
static int nworkers;
static struct session *main_sessions;
static int main_wake_fd = -1;       /* a relay's knock on the main loop */
static struct event *main_wake;

static _Thread_local struct worker *self; /* NULL on the main thread */
static _Thread_local int world_depth;

_Thread_local struct stats *stats_here = &shunt.stats;
_Thread_local struct parser_cache *parse_cache_here;

/* ---- the world lock ---- */

/* The main thread holds the world, or waits for it: signal it if it waits on us. */
static __attribute__((noinline)) void relay_left(struct worker *w)
{
	pthread_mutex_lock(&w->gate);
	pthread_cond_signal(&w->busy_gone);
	pthread_mutex_unlock(&w->gate);
}

/* The main thread's turn: step back until it is over, then try again. */
static __attribute__((noinline)) void relay_wait(struct worker *w)
{
	do {
		atomic_store(&w->busy, 0);
		relay_left(w);
		pthread_mutex_lock(&w->gate);
		while (atomic_load(&w->want))
			pthread_cond_wait(&w->want_gone, &w->gate);
		pthread_mutex_unlock(&w->gate);
		atomic_store(&w->busy, 1);
	} while (atomic_load(&w->want));
}

static __attribute__((noinline)) void main_enter(void)
{
	for (int i = 0; i < nworkers; i++) {
		struct worker *w = workers[i];
		pthread_mutex_lock(&w->gate);
		atomic_store(&w->want, 1);
		/* A relay's callback in progress ends; the next one waits for us. */
		while (atomic_load(&w->busy))
			pthread_cond_wait(&w->busy_gone, &w->gate);
		pthread_mutex_unlock(&w->gate);
	}
}

static __attribute__((noinline)) void main_leave(void)
{
	for (int i = nworkers - 1; i >= 0; i--) {
		struct worker *w = workers[i];
		pthread_mutex_lock(&w->gate);
		atomic_store(&w->want, 0);
		pthread_cond_broadcast(&w->want_gone);
		pthread_mutex_unlock(&w->gate);
	}
}

void world_enter(void)
{
	if (world_depth++ > 0)
		return;
	struct worker *w = self;
	if (!w) {
		main_enter();
		return;
	}
	atomic_store(&w->busy, 1);
	if (atomic_load(&w->want))
		relay_wait(w);
}

void world_leave(void)
{
	assert(world_depth > 0);
	if (--world_depth > 0)
		return;
	struct worker *w = self;
	if (!w) {
		main_leave();
		return;
	}
	atomic_store(&w->busy, 0);
	if (atomic_load(&w->want))
		relay_left(w);
}

bool world_held(void)
{
	return world_depth > 0;
}

/* ---- per-thread state ---- */

int workers_count(void)
{
	return nworkers;
}

bool workers_on_main(void)
{
	return !self;
}

struct event_base *workers_base_here(void)
{
	return self ? self->base : shunt.base;
}

struct session **workers_sessions_of(int i)
{
	if (i == 0)
		return &main_sessions;
	return i <= nworkers ? &workers[i - 1]->sessions : NULL;
}

struct session **workers_sessions_here(void)
{
	return self ? &self->sessions : &main_sessions;
}

struct stats *workers_stats_of(int i)
{
	if (i == 0)
		return &shunt.stats;
	return i <= nworkers ? &workers[i - 1]->stats : NULL;
}

struct parser_cache *workers_parse_cache_of(int i)
{
	if (i == 0)
		return shunt.parse_cache;
	return i <= nworkers ? workers[i - 1]->parse_cache : NULL;
}

/* ---- the mailbox ---- */

static void knock(int fd)
{
	uint64_t one = 1;
	/* EAGAIN: the counter is full, so the knock is already pending. */
	while (write(fd, &one, sizeof(one)) < 0 && errno == EINTR)
		;
}

static void knocked(int fd)
{
	uint64_t n;
	while (read(fd, &n, sizeof(n)) < 0 && errno == EINTR)
		;
}

static void on_wake(evutil_socket_t fd, short what, void *arg)
{
	WORLD_HELD();
	struct worker *w = arg;
	(void)what;
	knocked(fd);
	pthread_mutex_lock(&w->mu);
	struct session *in = w->inbox;
	bool resume = w->resume, shutdown_idle = w->shutdown_idle, stop = w->stop;
	w->inbox = NULL;
	w->resume = w->shutdown_idle = false;
	pthread_mutex_unlock(&w->mu);
	if (stop) {
		/* What came in stays in the mailbox's place for workers_stop(). */
		w->inbox = in;
		event_base_loopbreak(w->base);
		return;
	}
	while (in) {
		struct session *s = in;
		in = s->next;
		session_adopted(s);
	}
	if (resume)
		session_resume_all();
	if (shutdown_idle)
		session_shutdown_idle();
}

static void post(struct worker *w, struct session *s, bool resume, bool shutdown_idle, bool stop)
{
	pthread_mutex_lock(&w->mu);
	if (s) {
		s->next = w->inbox;
		w->inbox = s;
	}
	w->resume |= resume;
	w->shutdown_idle |= shutdown_idle;
	w->stop |= stop;
	pthread_mutex_unlock(&w->mu);
	knock(w->wake_fd);
}

void workers_adopt(struct session *s)
{
	struct worker *best = workers[0];
	for (int i = 1; i < nworkers; i++)
		if (atomic_load(&workers[i]->load) < atomic_load(&best->load))
			best = workers[i];
	atomic_fetch_add(&best->load, 1);
	s->worker = best->index;
	post(best, s, false, false, false);
}

void workers_session_ended(int index)
{
	if (index > 0 && index <= nworkers)
		atomic_fetch_sub(&workers[index - 1]->load, 1);
}

void workers_post_resume(void)
{
	for (int i = 0; i < nworkers; i++)
		post(workers[i], NULL, true, false, false);
}

void workers_post_shutdown_idle(void)
{
	for (int i = 0; i < nworkers; i++)
		post(workers[i], NULL, false, true, false);
}

/* ---- threads ---- */

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	self = w;
	stats_here = &w->stats;
	parse_cache_here = w->parse_cache;
	event_base_loop(w->base, EVLOOP_NO_EXIT_ON_EMPTY);
	iobuf_pool_release();
	return NULL;
}

static void worker_free(struct worker *w)
{
	if (w->wake)
		event_free(w->wake);
	if (w->wake_fd >= 0)
		close(w->wake_fd);
	if (w->base)
		event_base_free(w->base);
	parser_cache_free(w->parse_cache);
	pthread_cond_destroy(&w->want_gone);
	pthread_cond_destroy(&w->busy_gone);
	pthread_mutex_destroy(&w->gate);
	pthread_mutex_destroy(&w->mu);
	free(w);
}

static struct worker *worker_new(int index)
{
	struct worker *w = calloc(1, sizeof(*w));
	if (!w)
		return NULL;
	w->index = index;
	w->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	atomic_init(&w->busy, 0);
	atomic_init(&w->want, 0);
	pthread_mutex_init(&w->gate, NULL);
	pthread_cond_init(&w->want_gone, NULL);
	pthread_cond_init(&w->busy_gone, NULL);
	pthread_mutex_init(&w->mu, NULL);
	atomic_init(&w->load, 0);
	w->parse_cache = parser_cache_new(PARSE_CACHE_ENTRIES);
	w->base = w->parse_cache ? event_base_new() : NULL;
	if (w->base && w->wake_fd >= 0)
		w->wake = event_new(w->base, w->wake_fd, EV_READ | EV_PERSIST, on_wake, w);
	if (!w->wake || event_add(w->wake, NULL) != 0) {
		worker_free(w);
		return NULL;
	}
	return w;
}

/* A relay ended the last session of a shutdown: the main loop can stop. */
static void on_main_wake(evutil_socket_t fd, short what, void *arg)
{
	WORLD_HELD();
	(void)what;
	(void)arg;
	knocked(fd);
	if (shunt.shutting_down && atomic_load(&shunt.nsessions) == 0)
		event_base_loopbreak(shunt.base);
}

void workers_loopbreak_main(void)
{
	if (!self)
		event_base_loopbreak(shunt.base);
	else
		knock(main_wake_fd);
}

bool workers_start(int n, char *err, size_t errlen)
{
	static const int faults[] = {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP, SIGABRT, SIGSYS};
	sigset_t all, old;

	assert(nworkers == 0 && world_depth == 0);
	if (n > WORKERS_MAX)
		n = WORKERS_MAX;
	if (n == 0)
		return true;
	main_wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (main_wake_fd >= 0)
		main_wake = event_new(shunt.base, main_wake_fd, EV_READ | EV_PERSIST, on_main_wake, NULL);
	if (!main_wake || event_add(main_wake, NULL) != 0) {
		snprintf(err, errlen, "cannot set up the relay threads' wake-up: %s", strerror(errno));
		workers_free();
		return false;
	}
	/*
	 * Signals are the main loop's (evsignal): relays block them, all but those a fault
	 * raises in the thread itself, whose handlers (a sanitizer's) must still run.
	 */
	sigfillset(&all);
	for (size_t i = 0; i < sizeof(faults) / sizeof(faults[0]); i++)
		sigdelset(&all, faults[i]);
	pthread_sigmask(SIG_BLOCK, &all, &old);
	for (int i = 0; i < n; i++) {
		struct worker *w = worker_new(i + 1);
		if (!w) {
			snprintf(err, errlen, "out of memory starting relay thread %d", i + 1);
			break;
		}
		int rc = pthread_create(&w->thread, NULL, worker_main, w);
		if (rc != 0) {
			snprintf(err, errlen, "cannot start relay thread %d: %s", i + 1, strerror(rc));
			worker_free(w);
			break;
		}
		workers[nworkers++] = w;
	}
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (nworkers == n)
		return true;
	workers_stop();
	workers_free();
	return false;
}

void workers_stop(void)
{
	assert(world_depth == 0);
	for (int i = 0; i < nworkers; i++)
		post(workers[i], NULL, false, false, true);
	for (int i = 0; i < nworkers; i++)
		pthread_join(workers[i]->thread, NULL);
	/*
	 * The main thread is alone from here on.  Sessions still in a mailbox join their
	 * relay's list, so that closing every session finds them; the relays' loops stay
	 * until workers_free(), since those sessions' events are on them.
	 */
	for (int i = 0; i < nworkers; i++) {
		struct worker *w = workers[i];
		while (w->inbox) {
			struct session *s = w->inbox;
			w->inbox = s->next;
			s->prev = NULL;
			s->next = w->sessions;
			if (w->sessions)
				w->sessions->prev = s;
			w->sessions = s;
		}
	}
}

void workers_free(void)
{
	if (main_wake)
		event_free(main_wake);
	main_wake = NULL;
	if (main_wake_fd >= 0)
		close(main_wake_fd);
	main_wake_fd = -1;
	for (int i = 0; i < nworkers; i++) {
		assert(!workers[i]->sessions);
		worker_free(workers[i]);
		workers[i] = NULL;
	}
	nworkers = 0;
}

/* ---- counters ---- */

static void stats_add(struct stats *to, const struct stats *from)
{
	/* Everything before refusals is a uint64_t counter. */
	_Static_assert(offsetof(struct stats, refusals) % sizeof(uint64_t) == 0,
		       "struct stats starts with counters");
	uint64_t *t = (uint64_t *)(void *)to;
	const uint64_t *f = (const uint64_t *)(const void *)from;
	for (size_t i = 0; i < offsetof(struct stats, refusals) / sizeof(uint64_t); i++)
		t[i] += f[i];
	for (unsigned i = 0; i < from->nrefusals; i++) {
		unsigned j = 0;
		while (j < to->nrefusals && to->refusals[j].reason != from->refusals[i].reason)
			j++;
		if (j == to->nrefusals) {
			if (j == sizeof(to->refusals) / sizeof(to->refusals[0]))
				continue;
			to->refusals[j].reason = from->refusals[i].reason;
			to->nrefusals++;
		}
		to->refusals[j].count += from->refusals[i].count;
	}
}

void stats_total(struct stats *out)
{
	assert(world_depth > 0 || nworkers == 0);
	memset(out, 0, sizeof(*out));
	for (int i = 0; i <= nworkers; i++)
		stats_add(out, workers_stats_of(i));
}

void stats_durations_total(enum stmt_kind kind, uint64_t out[STATS_DURATION_BUCKETS + 1])
{
	memset(out, 0, sizeof(uint64_t) * (STATS_DURATION_BUCKETS + 1));
	for (int i = 0; i <= nworkers; i++)
		for (int b = 0; b <= STATS_DURATION_BUCKETS; b++)
			out[b] += workers_stats_of(i)->duration_count[kind][b];
}
