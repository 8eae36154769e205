#include "proxy/respq.h"

#include <stdlib.h>
#include <string.h>

void respq_init(struct respq *q)
{
	memset(q, 0, sizeof(*q));
}

void respq_free(struct respq *q)
{
	while (q->count > 0)
		respq_pop(q);
	free(q->items);
	respq_init(q);
}

static bool respq_grow(struct respq *q)
{
	uint32_t cap = q->cap ? q->cap * 2 : 16;
	struct respq_entry *items = malloc(sizeof(*items) * cap);
	if (!items)
		return false;
	for (uint32_t i = 0; i < q->count; i++)
		items[i] = q->items[(q->head + i) & (q->cap - 1)];
	free(q->items);
	q->items = items;
	q->head = 0;
	q->cap = cap;
	return true;
}

bool respq_push(struct respq *q, enum req_kind kind, enum resp_action action, uint32_t tag)
{
	/* The server will discard this request unanswered: queue nothing for it. */
	q->last_pushed = false;
	if (q->ignore_till_sync && kind != REQ_SYNC)
		return true;
	if (q->copy_in && kind == REQ_SYNC)
		return true; /* ignored by the server in COPY FROM STDIN */
	q->ignore_till_sync = false;
	if (q->count == q->cap && !respq_grow(q))
		return false;
	struct respq_entry *e = &q->items[(q->head + q->count) & (q->cap - 1)];
	e->kind = (uint8_t)kind;
	e->action = (uint8_t)action;
	e->tag = tag;
	e->xform = 0;
	e->step = 0;
	e->ctx = NULL;
	e->timed = 0;
	e->fake = NULL;
	e->fake_len = 0;
	q->count++;
	q->last_pushed = true;
	return true;
}

bool respq_push_fake(struct respq *q, enum req_kind kind, const void *answer, uint32_t len)
{
	if (q->ignore_till_sync && kind != REQ_SYNC)
		return true;
	uint8_t *copy = malloc(len ? len : 1);
	if (!copy)
		return false;
	memcpy(copy, answer, len);
	if (!respq_push(q, kind, RESP_FAKE, 0)) {
		free(copy);
		return false;
	}
	struct respq_entry *e = &q->items[(q->head + q->count - 1) & (q->cap - 1)];
	e->fake = copy;
	e->fake_len = len;
	return true;
}

bool respq_take_fakes_slow(struct respq *q, bool (*emit)(void *arg, const uint8_t *p, uint32_t n),
			   void *arg)
{
	while (q->count > 0 && q->items[q->head].action == RESP_FAKE) {
		struct respq_entry *e = &q->items[q->head];
		bool ok = emit(arg, e->fake, e->fake_len);
		respq_pop(q);
		if (!ok)
			return false;
	}
	return true;
}

/* The server entered COPY FROM STDIN for the head entry: the Syncs queued right behind
 * it were sent before the client knew, and the server will ignore them. */
static void respq_enter_copy_in(struct respq *q)
{
	q->copy_in = true;
	while (q->count > 1) {
		uint32_t next = (q->head + 1) & (q->cap - 1);
		if (q->items[next].kind != REQ_SYNC)
			break;
		free(q->items[next].fake);
		free(q->items[next].ctx);
		/* Close the gap: move the entries behind it one place forward. */
		for (uint32_t i = 1; i + 1 < q->count; i++) {
			uint32_t to = (q->head + i) & (q->cap - 1);
			uint32_t from = (q->head + i + 1) & (q->cap - 1);
			q->items[to] = q->items[from];
		}
		q->count--;
		q->last_pushed = false;
	}
}

/* The server now skips to Sync: drop the entries it will not answer. */
static void respq_skip_till_sync(struct respq *q)
{
	while (q->count > 0 && q->items[q->head].kind != REQ_SYNC)
		respq_pop(q);
	if (q->count == 0)
		q->ignore_till_sync = true;
}

static bool is_extended(enum req_kind kind)
{
	return kind != REQ_QUERY && kind != REQ_FUNCTION && kind != REQ_SYNC;
}

struct respq_verdict respq_on_special(struct respq *q, char type, struct respq_verdict v)
{
	struct respq_entry *head = &q->items[q->head];
	if (type == 'G') {
		if (head->kind == REQ_EXECUTE)
			respq_enter_copy_in(q);
		else
			q->copy_in = true;
		return v;
	}
	if (type == 'W') {
		q->copy_both = true;
		return v;
	}
	/* 'E' or 'Z': the server left COPY (an error ends it) */
	q->copy_in = false;
	q->copy_both = false;
	if (type == 'E' && is_extended((enum req_kind)head->kind)) {
		respq_pop(q);
		respq_skip_till_sync(q);
		v.completes = true;
	} else if (respq_completes((enum req_kind)head->kind, type)) {
		respq_pop(q);
		v.completes = true;
	}
	return v;
}
