/*
 * The expected-response FIFO of one server connection.
 *
 * Every request the server will answer (Query, Parse, Bind, Describe, Execute, Close,
 * Sync, FunctionCall) gets an entry when it is sent, in order, with what to do with its
 * responses: forward them to the client, or skip them (the proxy injected the request
 * and the client never asked).  Each server message is attributed to the head entry;
 * the entry is popped by the message that completes it.  Nothing is guessed from timing.
 *
 * A request the proxy answers itself (say, a Parse of a statement the server already
 * has) gets a fake entry holding its answer; the answer is released to the client when
 * the entry reaches the head, so it keeps its place among the server's answers.
 *
 * After an ErrorResponse to an extended-protocol request, the server discards every
 * message until the next Sync; the FIFO does the same with its entries.
 *
 * During COPY FROM STDIN the server ignores Sync (and Flush): libpq sends one with the
 * Execute of an extended-protocol COPY, before it knows the statement is a COPY, and
 * another after CopyDone or CopyFail.  So a CopyInResponse drops the Sync entries
 * queued right behind the Execute, and no entry is queued for a Sync the client sends
 * until it ends the copy (respq_copy_end()), or the server does (ErrorResponse).
 *
 * A replication connection's START_REPLICATION answers CopyBothResponse and streams
 * CopyData both ways until one side sends CopyDone; the stream belongs to the Query,
 * which ReadyForQuery completes as usual.  copy_both says a stream is open: it runs no
 * statement until it ends.
 */
#ifndef PGSHUNT_RESPQ_H
#define PGSHUNT_RESPQ_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#define WARN_UNUSED __attribute__((warn_unused_result))

enum req_kind {
	REQ_QUERY,    /* 'Q': answered until ReadyForQuery */
	REQ_FUNCTION, /* 'F': answered until ReadyForQuery */
	REQ_PARSE,    /* 'P': ParseComplete */
	REQ_BIND,     /* 'B': BindComplete */
	REQ_DESCRIBE, /* 'D': [ParameterDescription] RowDescription | NoData */
	REQ_EXECUTE,  /* 'E': rows, then CommandComplete | EmptyQuery | PortalSuspended */
	REQ_CLOSE,    /* 'C': CloseComplete */
	REQ_SYNC,     /* 'S': ReadyForQuery */
};

enum resp_action {
	RESP_FORWARD, /* the client's own request: its responses go to the client */
	RESP_SKIP,    /* injected by the proxy: its responses are swallowed */
	RESP_FAKE,    /* never sent: answered by the proxy when it reaches the head */
};

struct respq_entry {
	uint8_t kind;      /* enum req_kind */
	uint8_t action;    /* enum resp_action */
	uint8_t xform;     /* the caller's transform of the answers (engine.h), 0 = none */
	uint32_t tag;      /* caller's cookie, e.g. which injected step this is */
	uint32_t step;     /* caller's progress through the answers (e.g. statement index) */
	void *ctx;         /* caller's data for the answers, freed (free()) with the entry */
	uint8_t timed;     /* caller's: 1 + the statement kind timed for /metrics, 0 = none */
	uint64_t started_us; /* when a timed request was sent */
	uint8_t *fake;     /* RESP_FAKE: the answer, owned by the queue */
	uint32_t fake_len;
};

struct respq {
	struct respq_entry *items; /* ring of cap entries */
	uint32_t head;             /* index of the oldest entry */
	uint32_t count;            /* entries in use */
	uint32_t cap;              /* power of two, 0 before the first push */
	bool ignore_till_sync;     /* an extended request failed and no Sync is queued yet */
	bool copy_in;              /* the server is in COPY FROM STDIN: it ignores Sync */
	bool copy_both;            /* a replication stream (CopyBothResponse) is open */
	bool last_pushed;          /* the newest entry is the last push's (respq_last) */
};

/* What a server message means for the FIFO. */
struct respq_verdict {
	enum resp_action action; /* forward or swallow this message */
	bool completes;          /* it completed (popped) an entry */
	bool unsolicited;        /* no entry was waiting: async or FATAL */
	uint8_t kind;            /* the entry it belongs to (when not unsolicited): its kind */
	uint32_t tag;            /* and its tag */
};

void respq_init(struct respq *q);
void respq_free(struct respq *q);

/* Queue the entry of a request being sent.  False only on allocation failure. */
bool respq_push(struct respq *q, enum req_kind kind, enum resp_action action,
		uint32_t tag) WARN_UNUSED;

/* The entry just pushed (NULL when the push queued nothing), to attach xform/ctx to. */
static inline struct respq_entry *respq_last(struct respq *q)
{
	if (!q->last_pushed || q->count == 0)
		return NULL;
	return &q->items[(q->head + q->count - 1) & (q->cap - 1)];
}

/* The oldest entry, or NULL: the one the next server message belongs to. */
static inline struct respq_entry *respq_first(struct respq *q)
{
	return q->count ? &q->items[q->head] : NULL;
}

/* Queue a request answered locally with these bytes (copied).  False on no memory. */
bool respq_push_fake(struct respq *q, enum req_kind kind, const void *answer,
		     uint32_t len) WARN_UNUSED;

/*
 * Release the fake answers now at the head, in order, through emit(); stops and
 * returns false when emit() does.  Call after every push and every completed entry.
 */
bool respq_take_fakes_slow(struct respq *q, bool (*emit)(void *arg, const uint8_t *p, uint32_t n),
			   void *arg) WARN_UNUSED;

/* Inline: called for every request and every answer, and almost never has work. */
static inline bool WARN_UNUSED respq_take_fakes(struct respq *q,
						bool (*emit)(void *arg, const uint8_t *p,
							     uint32_t n),
						void *arg)
{
	if (q->count == 0 || q->items[q->head].action != RESP_FAKE)
		return true;
	return respq_take_fakes_slow(q, emit, arg);
}

/* The client ended a COPY FROM STDIN (CopyDone or CopyFail): its Syncs count again. */
static inline void respq_copy_end(struct respq *q)
{
	q->copy_in = false;
}

/* Drop the oldest entry. */
static inline void respq_pop(struct respq *q)
{
	struct respq_entry *e = &q->items[q->head];
	/* Most entries own nothing: no call into free() for them. */
	if (e->fake) {
		free(e->fake);
		e->fake = NULL;
	}
	if (e->ctx) {
		free(e->ctx);
		e->ctx = NULL;
	}
	q->last_pushed = false;
	q->head = (q->head + 1) & (q->cap - 1);
	q->count--;
}

/* Does a message of this type finish a request of this kind? */
static inline bool respq_completes(enum req_kind kind, char type)
{
	switch (kind) {
	case REQ_QUERY:
	case REQ_FUNCTION:
	case REQ_SYNC:
		return type == 'Z';
	case REQ_PARSE:
		return type == '1';
	case REQ_BIND:
		return type == '2';
	case REQ_CLOSE:
		return type == '3';
	case REQ_DESCRIBE:
		return type == 'T' || type == 'n';
	case REQ_EXECUTE:
		return type == 'C' || type == 'I' || type == 's';
	}
	return false;
}

/* respq_on_message() for CopyInResponse, CopyBothResponse, ErrorResponse and ReadyForQuery. */
struct respq_verdict respq_on_special(struct respq *q, char type, struct respq_verdict v);

/* Attribute one server message (by its type byte) and pop what it completes.  Inline:
 * it runs for every message the server sends. */
static inline __attribute__((always_inline)) struct respq_verdict
respq_on_message(struct respq *q, char type)
{
	struct respq_verdict v = {.action = RESP_FORWARD};

	/* Notifications and parameter changes belong to nobody's request. */
	if (type == 'A' || type == 'S' || q->count == 0) {
		v.unsolicited = true;
		return v;
	}
	const struct respq_entry *head = &q->items[q->head];
	v.kind = head->kind;
	v.tag = head->tag;
	v.action = (enum resp_action)head->action;
	if (type == 'G' || type == 'W' || type == 'E' || type == 'Z')
		return respq_on_special(q, type, v);
	if (respq_completes((enum req_kind)head->kind, type)) {
		respq_pop(q);
		v.completes = true;
	}
	return v;
}

static inline bool respq_empty(const struct respq *q)
{
	return q->count == 0;
}

/* Request kind for a frontend message type; false for messages with no response. */
static inline bool respq_kind_for(char type, enum req_kind *kind)
{
	switch (type) {
	case 'Q':
		*kind = REQ_QUERY;
		return true;
	case 'F':
		*kind = REQ_FUNCTION;
		return true;
	case 'P':
		*kind = REQ_PARSE;
		return true;
	case 'B':
		*kind = REQ_BIND;
		return true;
	case 'D':
		*kind = REQ_DESCRIBE;
		return true;
	case 'E':
		*kind = REQ_EXECUTE;
		return true;
	case 'C':
		*kind = REQ_CLOSE;
		return true;
	case 'S':
		*kind = REQ_SYNC;
		return true;
	default:
		return false;
	}
}

#endif
