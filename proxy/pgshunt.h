/*
 * Process-wide state of one pgshunt instance.  The main thread owns it; relay threads
 * read it under the world lock (workers.h) and keep their own counters and parse cache.
 */
#ifndef PGSHUNT_PGSHUNT_H
#define PGSHUNT_PGSHUNT_H

#include <event2/event.h>
#include <openssl/ssl.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#include "conf/conf.h"
#include "parser/parser.h"
#include "proxy/phase.h"
#include "rules/rules.h"

struct session;

/* Entries of each thread's parse cache. */
#define PARSE_CACHE_ENTRIES 4096

/* Upper bounds of the statement duration histogram, in µs (then +Inf). */
#define STATS_DURATION_BUCKETS 12
extern const uint64_t stats_duration_bounds_us[STATS_DURATION_BUCKETS];

struct stats {
	uint64_t clients_total;    /* client connections accepted */
	uint64_t queries_total;    /* Query and Execute messages forwarded */
	uint64_t xacts_total;      /* ReadyForQuery 'I' after a request */
	uint64_t bytes_received;   /* from clients */
	uint64_t bytes_sent;       /* to clients */
	uint64_t query_time_us;    /* time with a request outstanding, summed */
	uint64_t errors_total;     /* ErrorResponses sent to clients */
	uint64_t refused_total;    /* connections refused by limits or bad input */
	uint64_t cancels_total;    /* CancelRequests routed to a server */
	/* Statements that name a configured table, by kind, the action taken, and phase. */
	uint64_t statements[STMT__COUNT][RULE__COUNT][PHASE__COUNT];
	/* Time from request to answer of statements naming the table, by kind (µs). */
	uint64_t duration_count[STMT__COUNT][STATS_DURATION_BUCKETS + 1];
	uint64_t duration_sum_us[STMT__COUNT];
	/* Refusals by reason; reasons are rules.c's static strings, compared by address. */
	struct {
		const char *reason;
		uint64_t count;
	} refusals[32];
	unsigned nrefusals;
};

/* next_table's OID and column numbers as the table's, for reads pointed at next. */
#define RELMAP_MAX_COLUMNS 256
struct relmap {
	bool loaded;
	uint32_t old_oid;
	uint32_t next_oid;
	size_t n;
	int16_t att[RELMAP_MAX_COLUMNS][2]; /* next's attnum, the table's attnum */
};

struct pgshunt {
	struct event_base *base;
	struct pgshunt_config cfg;
	const char *config_path;
	SSL_CTX *client_tls; /* NULL when client_tls_sslmode = disable */
	SSL_CTX *server_tls; /* NULL when server_tls_sslmode = disable */
	atomic_uint nsessions;    /* live sessions, every thread's (workers.h lists them) */
	atomic_uint nclients;     /* sessions counted against max_client_conn */
	uint32_t next_id;         /* session ids, also the BackendKeyData pid clients see */
	bool paused;              /* PAUSE: idle sessions hold new requests */
	bool shutting_down;       /* SIGTERM/SHUTDOWN: no new clients, close when idle */
	time_t started;
	struct stats stats;       /* the main thread's counters (stats_total() sums all) */
	struct phase_state phase; /* the copy of pgshunt.state the proxy acts on */
	uint64_t phase_read_us;   /* when pgshunt.state was last read (now_us()) */
	struct parser_tables tables;       /* table, next_table, buffer_table as parsed names */
	struct parser_cache *parse_cache;  /* the main thread's parse results by (epoch, text) */
	struct relmap relmap;
};

extern struct pgshunt shunt;

/* The running thread's counters and parse cache (workers.h). */
extern _Thread_local struct stats *stats_here;
extern _Thread_local struct parser_cache *parse_cache_here;

/* Every thread's counters summed into out; the world must be held. */
void stats_total(struct stats *out);

/* The same for one statement kind's duration histogram only. */
void stats_durations_total(enum stmt_kind kind, uint64_t out[STATS_DURATION_BUCKETS + 1]);

/* Begin a graceful shutdown (SIGTERM, SHUTDOWN): exits once every session has ended. */
void pgshunt_shutdown(void);

/* Re-read the config file (SIGHUP, RELOAD).  False with err when the file is rejected. */
bool pgshunt_reload(char *err, size_t errlen);

#endif
