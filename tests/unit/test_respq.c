/*
 * Tests of the expected-response FIFO (proxy/respq.c): which server message completes
 * which request, the skip-till-Sync rule after an error in the extended protocol,
 * asynchronous and unsolicited messages, injected (skipped) requests, and the ring
 * buffer's growth and wraparound.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "proxy/respq.h"

static void push(struct respq *q, enum req_kind kind, enum resp_action action, uint32_t tag)
{
	assert_true(respq_push(q, kind, action, tag));
}

/* Push the request a frontend message type stands for, forwarded. */
static void push_type(struct respq *q, char type)
{
	enum req_kind kind = REQ_QUERY;
	assert_true(respq_kind_for(type, &kind));
	push(q, kind, RESP_FORWARD, (uint32_t)(uint8_t)type);
}

/* A server message that belongs to the head entry of this kind and does not finish it. */
static void expect_part(struct respq *q, char type, enum req_kind kind)
{
	uint32_t before = q->count;
	struct respq_verdict v = respq_on_message(q, type);
	assert_false(v.unsolicited);
	assert_false(v.completes);
	assert_int_equal(v.kind, kind);
	assert_int_equal(q->count, before);
}

/* A server message that finishes the head entry of this kind. */
static struct respq_verdict expect_done(struct respq *q, char type, enum req_kind kind)
{
	uint32_t before = q->count;
	struct respq_verdict v = respq_on_message(q, type);
	assert_false(v.unsolicited);
	assert_true(v.completes);
	assert_int_equal(v.kind, kind);
	assert_true(q->count < before);
	return v;
}

static void expect_unsolicited(struct respq *q, char type)
{
	uint32_t before = q->count;
	bool ignore = q->ignore_till_sync;
	struct respq_verdict v = respq_on_message(q, type);
	assert_true(v.unsolicited);
	assert_false(v.completes);
	assert_int_equal(v.action, RESP_FORWARD);
	assert_int_equal(q->count, before);
	assert_int_equal(q->ignore_till_sync, ignore);
}

static void test_simple_query(void **state)
{
	(void)state;
	struct respq q;
	respq_init(&q);
	assert_true(respq_empty(&q));
	push_type(&q, 'Q');
	assert_false(respq_empty(&q));
	expect_part(&q, 'T', REQ_QUERY);
	expect_part(&q, 'D', REQ_QUERY);
	expect_part(&q, 'D', REQ_QUERY);
	expect_part(&q, 'N', REQ_QUERY);
	expect_part(&q, 'C', REQ_QUERY);
	/* A multi-statement query: more results, an empty one, then an error. */
	expect_part(&q, 'C', REQ_QUERY);
	expect_part(&q, 'I', REQ_QUERY);
	expect_part(&q, 'E', REQ_QUERY);
	/* COPY inside the query. */
	expect_part(&q, 'G', REQ_QUERY);
	expect_part(&q, 'H', REQ_QUERY);
	expect_part(&q, 'd', REQ_QUERY);
	expect_part(&q, 'c', REQ_QUERY);
	expect_part(&q, '1', REQ_QUERY);
	struct respq_verdict v = expect_done(&q, 'Z', REQ_QUERY);
	assert_int_equal(v.action, RESP_FORWARD);
	assert_int_equal(v.tag, 'Q');
	assert_true(respq_empty(&q));
	assert_false(q.ignore_till_sync);
	/* Exactly once: the next Z has nobody to complete. */
	expect_unsolicited(&q, 'Z');
	respq_free(&q);
}

static void test_simple_query_error_no_skip(void **state)
{
	(void)state;
	/* An error in a simple Query does not start a skip: ReadyForQuery still follows. */
	struct respq q;
	respq_init(&q);
	push_type(&q, 'Q');
	push_type(&q, 'Q');
	expect_part(&q, 'E', REQ_QUERY);
	assert_int_equal(q.count, 2);
	assert_false(q.ignore_till_sync);
	expect_done(&q, 'Z', REQ_QUERY);
	expect_part(&q, 'C', REQ_QUERY);
	expect_done(&q, 'Z', REQ_QUERY);
	assert_true(respq_empty(&q));
	respq_free(&q);
}

static void test_function_call(void **state)
{
	(void)state;
	struct respq q;
	respq_init(&q);
	push_type(&q, 'F');
	expect_part(&q, 'V', REQ_FUNCTION);
	expect_done(&q, 'Z', REQ_FUNCTION);
	/* An error in a FunctionCall does not skip either. */
	push_type(&q, 'F');
	expect_part(&q, 'E', REQ_FUNCTION);
	expect_done(&q, 'Z', REQ_FUNCTION);
	assert_false(q.ignore_till_sync);
	respq_free(&q);
}

static void test_extended_batch(void **state)
{
	(void)state;
	struct respq q;
	respq_init(&q);
	/* P B D(portal) E S, then P B D E C S with other answers. */
	push_type(&q, 'P');
	push_type(&q, 'B');
	push_type(&q, 'D');
	push_type(&q, 'E');
	push_type(&q, 'S');
	assert_int_equal(q.count, 5);
	expect_part(&q, 'N', REQ_PARSE);
	expect_done(&q, '1', REQ_PARSE);
	expect_done(&q, '2', REQ_BIND);
	expect_done(&q, 'T', REQ_DESCRIBE);
	expect_part(&q, 'D', REQ_EXECUTE);
	expect_part(&q, 'D', REQ_EXECUTE);
	expect_done(&q, 'C', REQ_EXECUTE);
	expect_done(&q, 'Z', REQ_SYNC);
	assert_true(respq_empty(&q));

	push_type(&q, 'P');
	push_type(&q, 'B');
	push_type(&q, 'D');
	push_type(&q, 'E');
	push_type(&q, 'C');
	push_type(&q, 'S');
	expect_done(&q, '1', REQ_PARSE);
	expect_done(&q, '2', REQ_BIND);
	expect_done(&q, 'n', REQ_DESCRIBE);
	expect_done(&q, 'C', REQ_EXECUTE);
	expect_done(&q, '3', REQ_CLOSE);
	expect_done(&q, 'Z', REQ_SYNC);
	assert_true(respq_empty(&q));
	respq_free(&q);
}

static void test_wrong_completion_does_not_pop(void **state)
{
	(void)state;
	/* Each request is finished by its own message only. */
	struct respq q;
	respq_init(&q);
	push_type(&q, 'P');
	static const char others[] = "23TnCIsZtDNV";
	for (const char *t = others; *t; t++)
		expect_part(&q, *t, REQ_PARSE);
	expect_done(&q, '1', REQ_PARSE);
	push_type(&q, 'B');
	expect_part(&q, '1', REQ_BIND);
	expect_part(&q, '3', REQ_BIND);
	expect_done(&q, '2', REQ_BIND);
	push_type(&q, 'C');
	expect_part(&q, '1', REQ_CLOSE);
	expect_part(&q, 'C', REQ_CLOSE);
	expect_done(&q, '3', REQ_CLOSE);
	push_type(&q, 'S');
	expect_part(&q, 'C', REQ_SYNC);
	expect_done(&q, 'Z', REQ_SYNC);
	respq_free(&q);
}

static void test_describe_statement(void **state)
{
	(void)state;
	struct respq q;
	respq_init(&q);
	push_type(&q, 'P');
	push_type(&q, 'D');
	push_type(&q, 'D');
	push_type(&q, 'S');
	expect_done(&q, '1', REQ_PARSE);
	/* ParameterDescription does not finish a Describe; RowDescription or NoData does. */
	expect_part(&q, 't', REQ_DESCRIBE);
	expect_done(&q, 'T', REQ_DESCRIBE);
	expect_part(&q, 't', REQ_DESCRIBE);
	expect_done(&q, 'n', REQ_DESCRIBE);
	expect_done(&q, 'Z', REQ_SYNC);
	respq_free(&q);
}

static void test_execute_endings(void **state)
{
	(void)state;
	struct respq q;
	respq_init(&q);
	static const char endings[] = "CIs";
	for (const char *t = endings; *t; t++) {
		push_type(&q, 'B');
		push_type(&q, 'E');
		push_type(&q, 'S');
		expect_done(&q, '2', REQ_BIND);
		expect_part(&q, 'D', REQ_EXECUTE);
		expect_part(&q, 'N', REQ_EXECUTE);
		expect_part(&q, 'D', REQ_EXECUTE);
		expect_done(&q, *t, REQ_EXECUTE);
		expect_done(&q, 'Z', REQ_SYNC);
		assert_true(respq_empty(&q));
	}
	/* Portal suspended, then executed again to the end. */
	push_type(&q, 'E');
	push_type(&q, 'E');
	push_type(&q, 'S');
	expect_part(&q, 'D', REQ_EXECUTE);
	expect_done(&q, 's', REQ_EXECUTE);
	expect_part(&q, 'D', REQ_EXECUTE);
	expect_done(&q, 'C', REQ_EXECUTE);
	expect_done(&q, 'Z', REQ_SYNC);
	/* COPY FROM STDIN through Execute: CopyInResponse, then CommandComplete. */
	push_type(&q, 'E');
	expect_part(&q, 'G', REQ_EXECUTE);
	expect_done(&q, 'C', REQ_EXECUTE);
	assert_true(respq_empty(&q));
	respq_free(&q);
}

static void test_error_on_bind_skips_to_sync(void **state)
{
	(void)state;
	struct respq q;
	respq_init(&q);
	push_type(&q, 'P');
	push_type(&q, 'B');
	push_type(&q, 'D');
	push_type(&q, 'E');
	push_type(&q, 'C');
	push_type(&q, 'S');
	push_type(&q, 'P'); /* after the Sync: answered again */
	push_type(&q, 'S');
	expect_done(&q, '1', REQ_PARSE);
	struct respq_verdict v = expect_done(&q, 'E', REQ_BIND);
	assert_int_equal(v.action, RESP_FORWARD);
	/* D, E, C are dropped; the Sync is kept and no skip is pending. */
	assert_int_equal(q.count, 3);
	assert_false(q.ignore_till_sync);
	expect_done(&q, 'Z', REQ_SYNC);
	expect_done(&q, '1', REQ_PARSE);
	expect_done(&q, 'Z', REQ_SYNC);
	assert_true(respq_empty(&q));
	respq_free(&q);
}

static void test_error_on_each_extended_kind(void **state)
{
	(void)state;
	static const char kinds[] = "PBDEC";
	for (const char *k = kinds; *k; k++) {
		struct respq q;
		respq_init(&q);
		push_type(&q, *k);
		push_type(&q, 'P');
		push_type(&q, 'S');
		enum req_kind kind = REQ_QUERY;
		assert_true(respq_kind_for(*k, &kind));
		if (*k == 'D')
			expect_part(&q, 't', REQ_DESCRIBE);
		if (*k == 'E')
			expect_part(&q, 'D', REQ_EXECUTE);
		expect_done(&q, 'E', kind);
		assert_int_equal(q.count, 1);
		expect_done(&q, 'Z', REQ_SYNC);
		respq_free(&q);
	}
}

static void test_error_before_sync_ignores_till_sync(void **state)
{
	(void)state;
	struct respq q;
	respq_init(&q);
	/* The client has not sent its Sync yet (it may be using Flush). */
	push_type(&q, 'P');
	push_type(&q, 'B');
	push_type(&q, 'E');
	expect_done(&q, '1', REQ_PARSE);
	expect_done(&q, 'E', REQ_BIND);
	assert_true(respq_empty(&q));
	assert_true(q.ignore_till_sync);
	/* The server discards everything up to the Sync, so nothing is queued for it. */
	static const char dropped[] = "PBDECQF";
	for (const char *t = dropped; *t; t++) {
		push_type(&q, *t);
		assert_true(respq_empty(&q));
		assert_true(q.ignore_till_sync);
	}
	/* Messages from the server in between are unsolicited. */
	expect_unsolicited(&q, 'N');
	push_type(&q, 'S');
	assert_false(q.ignore_till_sync);
	assert_int_equal(q.count, 1);
	push_type(&q, 'P');
	assert_int_equal(q.count, 2);
	expect_done(&q, 'Z', REQ_SYNC);
	expect_done(&q, '1', REQ_PARSE);
	respq_free(&q);
}

static void test_error_while_head_is_sync(void **state)
{
	(void)state;
	/* A deferred constraint fails at the implicit commit of Sync: E then Z. */
	struct respq q;
	respq_init(&q);
	push_type(&q, 'E');
	push_type(&q, 'S');
	push_type(&q, 'P');
	expect_done(&q, 'C', REQ_EXECUTE);
	expect_part(&q, 'E', REQ_SYNC);
	assert_int_equal(q.count, 2);
	assert_false(q.ignore_till_sync);
	expect_done(&q, 'Z', REQ_SYNC);
	/* The Parse sent after the Sync is still expected. */
	expect_done(&q, '1', REQ_PARSE);
	assert_true(respq_empty(&q));
	respq_free(&q);
}

static void test_async_messages(void **state)
{
	(void)state;
	struct respq q;
	respq_init(&q);
	expect_unsolicited(&q, 'A');
	expect_unsolicited(&q, 'S');
	push(&q, REQ_QUERY, RESP_SKIP, 1);
	push_type(&q, 'P');
	push_type(&q, 'S');
	/* NotificationResponse and ParameterStatus never belong to the head, even a skipped one. */
	expect_unsolicited(&q, 'A');
	expect_unsolicited(&q, 'S');
	expect_done(&q, 'Z', REQ_QUERY);
	expect_unsolicited(&q, 'S');
	expect_done(&q, '1', REQ_PARSE);
	expect_unsolicited(&q, 'A');
	expect_done(&q, 'Z', REQ_SYNC);
	respq_free(&q);
}

static void test_unsolicited_on_empty_queue(void **state)
{
	(void)state;
	struct respq q;
	respq_init(&q);
	/* A FATAL at shutdown, a notice, anything: nobody asked. */
	static const char types[] = "ENZCD123TnItsVGH";
	for (const char *t = types; *t; t++)
		expect_unsolicited(&q, *t);
	assert_true(respq_empty(&q));
	/* Also after the queue has been used and emptied (head not at 0). */
	push_type(&q, 'Q');
	expect_done(&q, 'Z', REQ_QUERY);
	expect_unsolicited(&q, 'E');
	expect_unsolicited(&q, 'Z');
	/* And while a skip is pending. */
	push_type(&q, 'P');
	expect_done(&q, 'E', REQ_PARSE);
	assert_true(q.ignore_till_sync);
	expect_unsolicited(&q, 'E');
	expect_unsolicited(&q, 'Z');
	assert_true(q.ignore_till_sync);
	respq_free(&q);
}

static void test_skip_entries(void **state)
{
	(void)state;
	struct respq q;
	respq_init(&q);
	push(&q, REQ_QUERY, RESP_SKIP, 7);
	push(&q, REQ_QUERY, RESP_FORWARD, 8);
	push(&q, REQ_PARSE, RESP_SKIP, 9);
	push(&q, REQ_BIND, RESP_SKIP, 10);
	push(&q, REQ_EXECUTE, RESP_SKIP, 11);
	push(&q, REQ_SYNC, RESP_SKIP, 12);
	push(&q, REQ_PARSE, RESP_FORWARD, 13);

	static const char q1[] = "TDNCZ";
	for (const char *t = q1; *t; t++) {
		struct respq_verdict v = respq_on_message(&q, *t);
		assert_int_equal(v.action, RESP_SKIP);
		assert_int_equal(v.tag, 7);
		assert_int_equal(v.completes, *t == 'Z');
	}
	for (const char *t = q1; *t; t++) {
		struct respq_verdict v = respq_on_message(&q, *t);
		assert_int_equal(v.action, RESP_FORWARD);
		assert_int_equal(v.tag, 8);
	}
	struct respq_verdict v = expect_done(&q, '1', REQ_PARSE);
	assert_int_equal(v.action, RESP_SKIP);
	assert_int_equal(v.tag, 9);
	/* The error of an injected request is swallowed too, and skips to its Sync. */
	v = expect_done(&q, 'E', REQ_BIND);
	assert_int_equal(v.action, RESP_SKIP);
	assert_int_equal(v.tag, 10);
	v = expect_done(&q, 'Z', REQ_SYNC);
	assert_int_equal(v.action, RESP_SKIP);
	assert_int_equal(v.tag, 12);
	v = expect_done(&q, '1', REQ_PARSE);
	assert_int_equal(v.action, RESP_FORWARD);
	assert_int_equal(v.tag, 13);
	assert_true(respq_empty(&q));
	respq_free(&q);
}

static void test_growth_in_order(void **state)
{
	(void)state;
	static const uint32_t sizes[] = {15, 16, 17, 31, 32, 33, 1000, 5000};
	for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
		struct respq q;
		respq_init(&q);
		for (uint32_t n = 0; n < sizes[i]; n++)
			push(&q, REQ_PARSE, (n % 3) ? RESP_FORWARD : RESP_SKIP, n);
		assert_int_equal(q.count, sizes[i]);
		assert_true(q.cap >= sizes[i]);
		assert_int_equal(q.cap & (q.cap - 1), 0);
		for (uint32_t n = 0; n < sizes[i]; n++) {
			struct respq_verdict v = respq_on_message(&q, '1');
			assert_true(v.completes);
			assert_int_equal(v.tag, n);
			assert_int_equal(v.action, (n % 3) ? RESP_FORWARD : RESP_SKIP);
		}
		assert_true(respq_empty(&q));
		respq_free(&q);
	}
}

static void test_growth_while_wrapped(void **state)
{
	(void)state;
	struct respq q;
	respq_init(&q);
	uint32_t next_push = 0, next_pop = 0;

	/* Move the head off 0 and wrap the ring before it has to grow. */
	for (int i = 0; i < 10; i++)
		push(&q, REQ_BIND, RESP_FORWARD, next_push++);
	for (int i = 0; i < 7; i++) {
		struct respq_verdict v = respq_on_message(&q, '2');
		assert_int_equal(v.tag, next_pop++);
	}
	while (q.count < 16)
		push(&q, REQ_BIND, RESP_FORWARD, next_push++);
	assert_int_equal(q.cap, 16);
	assert_true(q.head != 0);
	/* Full and wrapped: the next push grows and must keep the order. */
	push(&q, REQ_BIND, RESP_FORWARD, next_push++);
	assert_int_equal(q.cap, 32);

	/* Push three, pop two, many times: the ring grows past 1000 entries wrapped. */
	while (next_push < 3000) {
		for (int i = 0; i < 3; i++)
			push(&q, REQ_BIND, RESP_FORWARD, next_push++);
		for (int i = 0; i < 2; i++) {
			struct respq_verdict v = respq_on_message(&q, '2');
			assert_true(v.completes);
			assert_int_equal(v.tag, next_pop++);
		}
	}
	assert_true(q.count > 1000);
	while (!respq_empty(&q)) {
		struct respq_verdict v = respq_on_message(&q, '2');
		assert_true(v.completes);
		assert_int_equal(v.tag, next_pop++);
	}
	assert_int_equal(next_pop, next_push);
	expect_unsolicited(&q, '2');
	respq_free(&q);
}

static void test_skip_till_sync_across_wrap(void **state)
{
	(void)state;
	/* The error drop walks across the end of the ring. */
	struct respq q;
	respq_init(&q);
	for (uint32_t i = 0; i < 12; i++)
		push(&q, REQ_PARSE, RESP_FORWARD, i);
	for (uint32_t i = 0; i < 12; i++)
		expect_done(&q, '1', REQ_PARSE);
	assert_int_equal(q.head, 12);
	for (uint32_t i = 0; i < 10; i++)
		push(&q, REQ_EXECUTE, RESP_FORWARD, 100 + i);
	push(&q, REQ_SYNC, RESP_FORWARD, 200);
	assert_int_equal(q.cap, 16);
	struct respq_verdict v = expect_done(&q, 'E', REQ_EXECUTE);
	assert_int_equal(v.tag, 100);
	assert_int_equal(q.count, 1);
	v = expect_done(&q, 'Z', REQ_SYNC);
	assert_int_equal(v.tag, 200);
	respq_free(&q);
}

static void test_free_and_reuse(void **state)
{
	(void)state;
	struct respq q;
	respq_init(&q);
	respq_free(&q); /* never used */
	push_type(&q, 'P');
	expect_done(&q, 'E', REQ_PARSE);
	assert_true(q.ignore_till_sync);
	respq_free(&q);
	assert_null(q.items);
	assert_int_equal(q.count, 0);
	assert_int_equal(q.cap, 0);
	assert_false(q.ignore_till_sync);
	push_type(&q, 'Q');
	expect_done(&q, 'Z', REQ_QUERY);
	respq_free(&q);
}

static void test_kind_for(void **state)
{
	(void)state;
	static const struct {
		char type;
		enum req_kind kind;
	} map[] = {
	    {'Q', REQ_QUERY},    {'F', REQ_FUNCTION}, {'P', REQ_PARSE}, {'B', REQ_BIND},
	    {'D', REQ_DESCRIBE}, {'E', REQ_EXECUTE},  {'C', REQ_CLOSE}, {'S', REQ_SYNC},
	};
	int found = 0;
	for (int c = 0; c < 256; c++) {
		enum req_kind kind = (enum req_kind)99;
		bool ok = respq_kind_for((char)c, &kind);
		bool want = false;
		for (size_t i = 0; i < sizeof(map) / sizeof(map[0]); i++) {
			if ((uint8_t)map[i].type == c) {
				want = true;
				assert_true(ok);
				assert_int_equal(kind, map[i].kind);
			}
		}
		assert_int_equal(ok, want);
		found += ok;
	}
	assert_int_equal(found, 8);
	/* Frontend messages without a response of their own. */
	enum req_kind k;
	assert_false(respq_kind_for('H', &k));
	assert_false(respq_kind_for('d', &k));
	assert_false(respq_kind_for('c', &k));
	assert_false(respq_kind_for('f', &k));
	assert_false(respq_kind_for('X', &k));
	assert_false(respq_kind_for('p', &k));
}


/* ---- fake entries: answered by the proxy in FIFO order ---- */

struct emitted {
	char bytes[64];
	size_t len;
	int calls;
	int fail_at; /* emit() refuses its fail_at-th call (1-based), 0 = never */
};

static bool collect(void *arg, const uint8_t *p, uint32_t n)
{
	struct emitted *e = arg;
	e->calls++;
	if (e->fail_at && e->calls == e->fail_at)
		return false;
	assert_true(e->len + n <= sizeof(e->bytes));
	memcpy(e->bytes + e->len, p, n);
	e->len += n;
	return true;
}

static void test_fake_waits_its_turn(void **state)
{
	(void)state;
	struct respq q;
	struct emitted e = {0};
	respq_init(&q);
	assert_true(respq_push(&q, REQ_PARSE, RESP_FORWARD, 0));
	assert_true(respq_push_fake(&q, REQ_PARSE, "1", 1));
	assert_true(respq_push(&q, REQ_BIND, RESP_FORWARD, 0));
	/* The forwarded Parse is ahead: nothing to release yet. */
	assert_true(respq_take_fakes(&q, collect, &e));
	assert_int_equal(e.calls, 0);
	struct respq_verdict v = respq_on_message(&q, '1');
	assert_true(v.completes);
	assert_true(respq_take_fakes(&q, collect, &e));
	assert_int_equal(e.calls, 1);
	assert_memory_equal(e.bytes, "1", 1);
	/* The Bind is now at the head, and is the server's to answer. */
	v = respq_on_message(&q, '2');
	assert_true(v.completes);
	assert_int_equal(v.action, RESP_FORWARD);
	assert_true(respq_empty(&q));
	respq_free(&q);
}

static void test_fake_on_empty_queue_goes_at_once(void **state)
{
	(void)state;
	struct respq q;
	struct emitted e = {0};
	respq_init(&q);
	assert_true(respq_push_fake(&q, REQ_PARSE, "1abc", 4));
	assert_true(respq_push_fake(&q, REQ_CLOSE, "3", 1));
	assert_true(respq_take_fakes(&q, collect, &e));
	assert_int_equal(e.calls, 2);
	assert_memory_equal(e.bytes, "1abc3", 5);
	assert_true(respq_empty(&q));
	respq_free(&q);
}

static void test_fake_dropped_after_error(void **state)
{
	(void)state;
	struct respq q;
	struct emitted e = {0};
	respq_init(&q);
	assert_true(respq_push(&q, REQ_PARSE, RESP_FORWARD, 0));
	assert_true(respq_push_fake(&q, REQ_PARSE, "1", 1));
	assert_true(respq_push(&q, REQ_SYNC, RESP_FORWARD, 0));
	/* The server rejects the first Parse and skips to Sync: so must the fake. */
	struct respq_verdict v = respq_on_message(&q, 'E');
	assert_true(v.completes);
	assert_true(respq_take_fakes(&q, collect, &e));
	assert_int_equal(e.calls, 0);
	v = respq_on_message(&q, 'Z');
	assert_int_equal(v.kind, REQ_SYNC);
	assert_true(respq_empty(&q));
	/* While skipping with no Sync queued, a fake is not even queued. */
	assert_true(respq_push(&q, REQ_BIND, RESP_FORWARD, 0));
	v = respq_on_message(&q, 'E');
	assert_true(q.ignore_till_sync);
	assert_true(respq_push_fake(&q, REQ_PARSE, "1", 1));
	assert_true(respq_empty(&q));
	respq_free(&q);
}

static void test_fake_emit_failure_stops(void **state)
{
	(void)state;
	struct respq q;
	struct emitted e = {.fail_at = 2};
	respq_init(&q);
	assert_true(respq_push_fake(&q, REQ_PARSE, "1", 1));
	assert_true(respq_push_fake(&q, REQ_PARSE, "1", 1));
	assert_true(respq_push_fake(&q, REQ_PARSE, "1", 1));
	assert_false(respq_take_fakes(&q, collect, &e));
	assert_int_equal(e.calls, 2);
	assert_int_equal(q.count, 1); /* the third waits; freeing the queue frees it */
	respq_free(&q);
}

/* CopyInResponse: part of the head's answer; the server is now in COPY FROM STDIN. */
static void expect_copy_in(struct respq *q, enum req_kind kind)
{
	struct respq_verdict v = respq_on_message(q, 'G');
	assert_false(v.unsolicited);
	assert_false(v.completes);
	assert_int_equal(v.kind, kind);
	assert_true(q->copy_in);
}

/*
 * libpq's extended-protocol COPY FROM STDIN: Parse, Bind, Execute and Sync are sent
 * together; the server answers CopyInResponse and ignores that Sync (and any Sync the
 * client sends during the copy); after CopyFail it reports the error, and the Sync sent
 * after the CopyFail gets the only ReadyForQuery.  Twice in a row: no entry is left
 * over to take the answer of the next request.
 */
static void test_extended_copy_in_fail(void **state)
{
	(void)state;
	struct respq q;
	respq_init(&q);
	for (int round = 0; round < 2; round++) {
		push_type(&q, 'P');
		push_type(&q, 'B');
		push_type(&q, 'E');
		push_type(&q, 'S');
		expect_done(&q, '1', REQ_PARSE);
		expect_done(&q, '2', REQ_BIND);
		expect_copy_in(&q, REQ_EXECUTE);
		assert_int_equal(q.count, 1); /* the Sync the server ignores is gone */
		push_type(&q, 'S');           /* a Sync during the copy: ignored too */
		assert_int_equal(q.count, 1);
		respq_copy_end(&q); /* CopyFail */
		push_type(&q, 'S');
		expect_done(&q, 'E', REQ_EXECUTE);
		expect_done(&q, 'Z', REQ_SYNC);
		assert_true(respq_empty(&q));
	}
	push_type(&q, 'Q');
	expect_part(&q, 'T', REQ_QUERY);
	expect_done(&q, 'Z', REQ_QUERY);
	assert_true(respq_empty(&q));
	respq_free(&q);
}

/* The same COPY ending with CopyDone: CommandComplete, then the one ReadyForQuery. */
static void test_extended_copy_in_done(void **state)
{
	(void)state;
	struct respq q;
	respq_init(&q);
	push_type(&q, 'P');
	push_type(&q, 'B');
	push_type(&q, 'E');
	push_type(&q, 'S');
	expect_done(&q, '1', REQ_PARSE);
	expect_done(&q, '2', REQ_BIND);
	expect_copy_in(&q, REQ_EXECUTE);
	assert_int_equal(q.count, 1);
	respq_copy_end(&q); /* CopyDone */
	push_type(&q, 'S');
	expect_done(&q, 'C', REQ_EXECUTE);
	expect_done(&q, 'Z', REQ_SYNC);
	assert_true(respq_empty(&q));
	/* A simple-protocol COPY: the Query's ReadyForQuery ends it as before. */
	push_type(&q, 'Q');
	expect_copy_in(&q, REQ_QUERY);
	respq_copy_end(&q);
	expect_part(&q, 'C', REQ_QUERY);
	expect_done(&q, 'Z', REQ_QUERY);
	assert_true(respq_empty(&q));
	respq_free(&q);
}

/* A server error during the copy ends it: the client's next Sync is answered. */
static void test_extended_copy_in_server_error(void **state)
{
	(void)state;
	struct respq q;
	respq_init(&q);
	push_type(&q, 'E');
	push_type(&q, 'S');
	expect_copy_in(&q, REQ_EXECUTE);
	expect_done(&q, 'E', REQ_EXECUTE); /* bad CopyData */
	assert_false(q.copy_in);
	push_type(&q, 'S'); /* sent after the client's CopyDone, which the server discards */
	expect_done(&q, 'Z', REQ_SYNC);
	assert_true(respq_empty(&q));
	respq_free(&q);
}

/*
 * A replication stream: START_REPLICATION answers CopyBothResponse, then CopyData flows
 * both ways (the client's have no entry) until the client's CopyDone; the server's
 * CopyDone, a timeline's result set and CommandComplete are still the Query's, and its
 * ReadyForQuery closes the stream.  An error ends a stream too.
 */
static void test_copy_both(void **state)
{
	(void)state;
	struct respq q;
	respq_init(&q);
	expect_unsolicited(&q, 'W'); /* no request waiting: nobody's */
	assert_false(q.copy_both);
	push_type(&q, 'Q');
	expect_part(&q, 'W', REQ_QUERY);
	assert_true(q.copy_both);
	assert_false(q.copy_in);
	for (int i = 0; i < 3; i++)
		expect_part(&q, 'd', REQ_QUERY);
	enum req_kind kind;
	assert_false(respq_kind_for('d', &kind)); /* the client's CopyData: no answer */
	respq_copy_end(&q);                        /* the client's CopyDone */
	assert_true(q.copy_both);
	expect_part(&q, 'c', REQ_QUERY);
	expect_part(&q, 'T', REQ_QUERY);
	expect_part(&q, 'D', REQ_QUERY);
	expect_part(&q, 'C', REQ_QUERY);
	expect_part(&q, 'C', REQ_QUERY);
	assert_true(q.copy_both);
	expect_done(&q, 'Z', REQ_QUERY);
	assert_false(q.copy_both);
	assert_true(respq_empty(&q));

	push_type(&q, 'Q');
	expect_part(&q, 'W', REQ_QUERY);
	expect_part(&q, 'd', REQ_QUERY);
	expect_part(&q, 'E', REQ_QUERY); /* requested WAL segment has already been removed */
	assert_false(q.copy_both);
	expect_done(&q, 'Z', REQ_QUERY);
	assert_true(respq_empty(&q));
	respq_free(&q);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_fake_waits_its_turn),
	    cmocka_unit_test(test_fake_on_empty_queue_goes_at_once),
	    cmocka_unit_test(test_fake_dropped_after_error),
	    cmocka_unit_test(test_fake_emit_failure_stops),
	    cmocka_unit_test(test_simple_query),
	    cmocka_unit_test(test_simple_query_error_no_skip),
	    cmocka_unit_test(test_function_call),
	    cmocka_unit_test(test_extended_batch),
	    cmocka_unit_test(test_wrong_completion_does_not_pop),
	    cmocka_unit_test(test_describe_statement),
	    cmocka_unit_test(test_execute_endings),
	    cmocka_unit_test(test_error_on_bind_skips_to_sync),
	    cmocka_unit_test(test_error_on_each_extended_kind),
	    cmocka_unit_test(test_error_before_sync_ignores_till_sync),
	    cmocka_unit_test(test_error_while_head_is_sync),
	    cmocka_unit_test(test_async_messages),
	    cmocka_unit_test(test_unsolicited_on_empty_queue),
	    cmocka_unit_test(test_skip_entries),
	    cmocka_unit_test(test_growth_in_order),
	    cmocka_unit_test(test_growth_while_wrapped),
	    cmocka_unit_test(test_skip_till_sync_across_wrap),
	    cmocka_unit_test(test_free_and_reuse),
	    cmocka_unit_test(test_kind_for),
	    cmocka_unit_test(test_extended_copy_in_fail),
	    cmocka_unit_test(test_extended_copy_in_done),
	    cmocka_unit_test(test_extended_copy_in_server_error),
	    cmocka_unit_test(test_copy_both),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
