/*
 * libFuzzer target for the protocol code a client's bytes reach.
 *
 * The input is what a client sends: a startup packet, then a stream of messages.
 * The startup packet goes through proto_parse_startup; the rest is framed with
 * proto_frame and every whole message is handed to the other parsers (error fields,
 * auth code, SASL filter), to the response FIFO (as a request, then as a server
 * message) and, NUL-terminated, to the admin console's lookup.
 *
 * Besides "no crash, no leak, no over-read" (each packet and message is parsed from
 * a heap block of exactly its size, so ASan sees a read one byte too far), the results
 * are checked against what they promise, and the FIFO against a plain array model.
 *
 *   make fuzz-build && ./build/fuzz/fuzz_proto -max_len=4096 tests/fuzz/corpus
 */
#include <ctype.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proxy/admin.h"
#include "proxy/binfmt.h"
#include "proxy/mbuf.h"
#include "proxy/pgshunt.h"
#include "proxy/pktbuf.h"
#include "proxy/proto.h"
#include "proxy/respq.h"

#define FUZZ_MAX_MSG (1u << 20)

#include "tests/unit/main_stubs.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);   \
			abort();                                                                   \
		}                                                                                  \
	} while (0)

static uint8_t *dup_exact(const uint8_t *p, size_t n)
{
	uint8_t *c = malloc(n ? n : 1);
	CHECK(c != NULL);
	if (n)
		memcpy(c, p, n);
	return c;
}

/* s is a NUL-terminated string that starts and ends inside [base, base + len). */
static bool string_inside(const char *s, const uint8_t *base, size_t len)
{
	const uint8_t *p = (const uint8_t *)s;
	if (p < base || p >= base + len)
		return false;
	return memchr(p, '\0', (size_t)(base + len - p)) != NULL;
}

/* ---- the startup packet ---- */

static void check_startup_info(enum startup_kind k, const struct startup_info *si,
                               const uint8_t *pkt)
{
	switch (k) {
	case STARTUP_INCOMPLETE:
	case STARTUP_BAD_LENGTH:
		break;
	case STARTUP_V3:
		CHECK((si->version >> 16) == 3);
		CHECK(si->user && si->user[0] != '\0' && string_inside(si->user, pkt, si->len));
		CHECK(si->database && si->database[0] != '\0' &&
		      string_inside(si->database, pkt, si->len));
		CHECK(!si->application_name || string_inside(si->application_name, pkt, si->len));
		CHECK(pkt[si->len - 1] == '\0');
		break;
	case STARTUP_SSL:
		CHECK(si->len == 8 && si->version == PROTO_SSL_REQUEST);
		break;
	case STARTUP_GSSENC:
		CHECK(si->len == 8 && si->version == PROTO_GSSENC_REQUEST);
		break;
	case STARTUP_CANCEL:
		CHECK(si->len == 16 && si->version == PROTO_CANCEL_REQUEST);
		CHECK(si->cancel_pid == read_uint32_be(pkt + 8));
		CHECK(si->cancel_key == read_uint32_be(pkt + 12));
		break;
	case STARTUP_BAD_VERSION:
		CHECK((si->version >> 16) != 3);
		break;
	case STARTUP_BAD_LAYOUT:
	case STARTUP_NO_USER:
		CHECK((si->version >> 16) == 3);
		break;
	}
}

/* Parse the startup packet; the length it occupies, 0 when it has none. */
static size_t fuzz_startup(const uint8_t *data, size_t size)
{
	struct startup_info si;
	uint8_t *copy = dup_exact(data, size);
	enum startup_kind k = proto_parse_startup(copy, size, &si);
	check_startup_info(k, &si, copy);
	if (k == STARTUP_INCOMPLETE) {
		CHECK(size < 4 || size < read_uint32_be(copy));
		free(copy);
		return 0;
	}
	if (k == STARTUP_BAD_LENGTH) {
		uint32_t len = read_uint32_be(copy);
		CHECK(len < 8 || len > PROTO_MAX_STARTUP || si.version == PROTO_SSL_REQUEST ||
		      si.version == PROTO_GSSENC_REQUEST || si.version == PROTO_CANCEL_REQUEST);
		free(copy);
		return 0;
	}
	free(copy);

	/* Decided by the packet alone: bytes after it change nothing ... */
	CHECK(si.len >= 8 && si.len <= PROTO_MAX_STARTUP && si.len <= size);
	CHECK(si.len == read_uint32_be(data));
	struct startup_info si2;
	copy = dup_exact(data, si.len);
	CHECK(proto_parse_startup(copy, si.len, &si2) == k);
	check_startup_info(k, &si2, copy);
	CHECK(si2.len == si.len && si2.version == si.version);
	free(copy);
	/* ... and a byte less is not yet a packet. */
	copy = dup_exact(data, si.len - 1);
	CHECK(proto_parse_startup(copy, si.len - 1, &si2) == STARTUP_INCOMPLETE);
	free(copy);
	return si.len;
}

/* ---- one message's parsers ---- */

static void fuzz_error_fields(const uint8_t *body, size_t len)
{
	const char *sev, *code, *text;
	if (!proto_error_fields(body, len, &sev, &code, &text))
		return;
	CHECK(sev && string_inside(sev, body, len));
	CHECK(code && string_inside(code, body, len));
	CHECK(!text || string_inside(text, body, len));

	/* What pgshunt writes from them reads back the same. */
	struct pktbuf b;
	pktbuf_init(&b);
	pktbuf_error(&b, sev, code, text, NULL, NULL);
	CHECK(pktbuf_ok(&b));
	CHECK(b.len >= 5 && b.data[0] == 'E' && read_uint32_be(b.data + 1) == b.len - 1);
	const char *sev2, *code2, *text2;
	CHECK(proto_error_fields(b.data + 5, b.len - 5, &sev2, &code2, &text2));
	CHECK(strcmp(sev, sev2) == 0 && strcmp(code, code2) == 0);
	CHECK((text == NULL) == (text2 == NULL) && (!text || strcmp(text, text2) == 0));
	pktbuf_free(&b);
}

static void fuzz_sasl(const uint8_t *body, size_t len)
{
	uint32_t code = 0;
	bool have_code = proto_auth_code(body, len, &code);
	CHECK(have_code == (len >= 4));
	CHECK(!have_code || code == read_uint32_be(body));

	struct pktbuf out;
	pktbuf_init(&out);
	bool ok = proto_sasl_strip_plus(body, len, &out);
	if (ok) {
		CHECK(have_code && code == 10);
		/* One whole R message, code 10, the input's mechanisms minus PLUS. */
		CHECK(out.len >= 10 && out.data[0] == 'R');
		CHECK(read_uint32_be(out.data + 1) == out.len - 1);
		CHECK(read_uint32_be(out.data + 5) == 10);
		CHECK(out.data[out.len - 1] == '\0');
		struct mbuf in, got;
		mbuf_init(&in, body + 4, len - 4);
		mbuf_init(&got, out.data + 9, out.len - 9);
		size_t kept = 0;
		for (;;) {
			const char *m, *g;
			CHECK(mbuf_get_string(&in, &m));
			if (m[0] == '\0')
				break;
			if (strcmp(m, "SCRAM-SHA-256-PLUS") == 0)
				continue;
			CHECK(mbuf_get_string(&got, &g));
			CHECK(strcmp(m, g) == 0);
			kept++;
		}
		CHECK(kept > 0 && mbuf_avail(&in) == 0);
		uint8_t term;
		CHECK(mbuf_get_byte(&got, &term) && term == 0 && mbuf_avail(&got) == 0);
	}
	pktbuf_free(&out);
}

/* Collapse whitespace runs to one space, trim, upper-case: the words admin_lookup sees. */
static void normalize(const char *s, char *out)
{
	size_t n = 0;
	bool space = false;
	for (; *s; s++) {
		if (isspace((unsigned char)*s)) {
			space = n > 0;
			continue;
		}
		if (space)
			out[n++] = ' ';
		space = false;
		out[n++] = (char)toupper((unsigned char)*s);
	}
	out[n] = '\0';
}

/* The engine's message surgery: never a read past the end, and well-framed output. */
static void fuzz_rewrites(const uint8_t *msg, uint32_t total)
{
	struct pktbuf out;
	pktbuf_init(&out);
	int rc = proto_bind_extend_formats(msg, total, &out);
	CHECK(rc >= -1 && rc <= 1);
	CHECK(rc != 1 || (out.data[0] == 'B' && out.len == (size_t)total + 2 &&
			  read_uint32_be(out.data + 1) == out.len - 1));
	pktbuf_reset(&out);
	if (proto_rowdesc_drop_last(msg, total, &out))
		CHECK(out.data[0] == 'T' && out.len < total && read_uint32_be(out.data + 1) == out.len - 1);
	pktbuf_reset(&out);
	if (proto_datarow_drop_last(msg, total, &out))
		CHECK(out.data[0] == 'D' && out.len < total && read_uint32_be(out.data + 1) == out.len - 1);
	/* A claim's DO UPDATE parameters: each value inside the message, written as text
	 * (any type OID, from the message's own bytes) without reading past it. */
	for (uint16_t i = 0; i < 4; i++) {
		struct bind_param bp;
		int found = proto_bind_param(msg, total, i, &bp);
		CHECK(found >= -1 && found <= 1);
		if (found != 1 || bp.len < 0)
			continue;
		CHECK(bp.value >= msg && bp.value + bp.len <= msg + total);
		static const uint32_t oids[] = {16,  17,  19,  20,   21,   23,   25,   26,   114, 700,
						701, 705, 1042, 1043, 1082, 1114, 1184, 1700, 2950, 3802};
		for (size_t k = 0; k < sizeof(oids) / sizeof(oids[0]); k++) {
			pktbuf_reset(&out);
			(void)binfmt_to_text(oids[k], bp.value, (size_t)bp.len, &out);
		}
		(void)proto_parse_param_type(msg + 5, total - 5, i);
	}
	pktbuf_free(&out);
}

static void fuzz_admin(const uint8_t *body, size_t len)
{
	char *stmt = malloc(len + 1);
	CHECK(stmt != NULL);
	if (len)
		memcpy(stmt, body, len);
	stmt[len] = '\0';
	const char *args = NULL;
	const struct admin_cmd *cmd = admin_lookup(stmt, &args);

	char *norm = malloc(strlen(stmt) + 1);
	CHECK(norm != NULL);
	normalize(stmt, norm);
	const struct admin_cmd *want = NULL;
	for (size_t i = 0; i < admin_command_count() && !want; i++) {
		const struct admin_cmd *c = admin_command_at(i);
		size_t wl = strlen(c->words);
		/* Exactly the words, or (for commands with arguments) the words and a blank. */
		if (strcmp(c->words, norm) == 0 ||
		    (c->takes_args && strncmp(c->words, norm, wl) == 0 && norm[wl] == ' '))
			want = c;
	}
	CHECK(cmd == want);
	if (cmd && !cmd->takes_args)
		CHECK(args == stmt + strlen(stmt));
	if (cmd)
		CHECK(args >= stmt && args <= stmt + strlen(stmt));
	free(norm);
	free(stmt);
}

/* ---- the response FIFO, and a model of it in a plain array ---- */

struct model {
	struct respq_entry *items;
	size_t head, tail; /* entries [head, tail) */
	bool ignore_till_sync;
	bool copy_in; /* the server ignores Sync in COPY FROM STDIN */
	bool copy_both; /* a replication stream is open */
};

static void model_push(struct model *m, enum req_kind kind, enum resp_action action, uint32_t tag)
{
	if (m->ignore_till_sync && kind != REQ_SYNC)
		return;
	if (m->copy_in && kind == REQ_SYNC)
		return;
	m->ignore_till_sync = false;
	m->items[m->tail++] = (struct respq_entry){.kind = (uint8_t)kind, .action = (uint8_t)action, .tag = tag};
}

/* From the protocol documentation: which message finishes which request. */
static bool model_finishes(enum req_kind kind, char type)
{
	switch (kind) {
	case REQ_QUERY:
	case REQ_FUNCTION:
	case REQ_SYNC:
		return type == 'Z'; /* ReadyForQuery */
	case REQ_PARSE:
		return type == '1'; /* ParseComplete */
	case REQ_BIND:
		return type == '2'; /* BindComplete */
	case REQ_CLOSE:
		return type == '3'; /* CloseComplete */
	case REQ_DESCRIBE:
		return type == 'T' || type == 'n'; /* RowDescription, NoData */
	case REQ_EXECUTE:
		return type == 'C' || type == 'I' || type == 's';
	}
	return false;
}

static struct respq_verdict model_message(struct model *m, char type)
{
	struct respq_verdict v = {.action = RESP_FORWARD};
	if (type == 'A' || type == 'S' || m->head == m->tail) {
		v.unsolicited = true;
		return v;
	}
	const struct respq_entry *e = &m->items[m->head];
	v.kind = e->kind;
	v.tag = e->tag;
	v.action = (enum resp_action)e->action;
	enum req_kind kind = (enum req_kind)e->kind;
	bool extended = kind != REQ_QUERY && kind != REQ_FUNCTION && kind != REQ_SYNC;
	if (type == 'G') { /* CopyInResponse: Syncs sent with the Execute will be ignored */
		m->copy_in = true;
		if (kind == REQ_EXECUTE) {
			size_t keep = m->head + 1, from = m->head + 1;
			while (from < m->tail && m->items[from].kind == REQ_SYNC)
				from++;
			while (from < m->tail)
				m->items[keep++] = m->items[from++];
			m->tail = keep;
		}
		return v;
	}
	if (type == 'W') { /* CopyBothResponse: the stream is the Query's until ReadyForQuery */
		m->copy_both = true;
		return v;
	}
	if (type == 'E' || type == 'Z')
		m->copy_in = m->copy_both = false;
	if (type == 'E' && extended) {
		m->head++;
		while (m->head < m->tail && m->items[m->head].kind != REQ_SYNC)
			m->head++;
		if (m->head == m->tail)
			m->ignore_till_sync = true;
		v.completes = true;
	} else if (model_finishes(kind, type)) {
		m->head++;
		v.completes = true;
	}
	return v;
}

static void fuzz_respq(struct respq *q, struct model *m, char type, uint32_t index,
                       const uint8_t *body, size_t len)
{
	enum req_kind kind;
	if (type == 'c' || type == 'f') { /* the client's CopyDone, CopyFail */
		respq_copy_end(q);
		m->copy_in = false;
	}
	if (respq_kind_for(type, &kind)) {
		CHECK(proto_frontend_type_valid(type));
		/* Some requests as if the proxy injected them. */
		enum resp_action action = (len > 0 && (body[0] & 1)) ? RESP_SKIP : RESP_FORWARD;
		CHECK(respq_push(q, kind, action, index));
		model_push(m, kind, action, index);
	}
	struct respq_verdict got = respq_on_message(q, type);
	struct respq_verdict want = model_message(m, type);
	CHECK(got.unsolicited == want.unsolicited);
	CHECK(got.completes == want.completes);
	CHECK(got.action == want.action);
	if (!got.unsolicited) {
		CHECK(got.kind == want.kind);
		CHECK(got.tag == want.tag);
	}
	CHECK(q->count == m->tail - m->head);
	CHECK(q->ignore_till_sync == m->ignore_till_sync);
	CHECK(q->copy_in == m->copy_in);
	CHECK(q->copy_both == m->copy_both);
	CHECK(q->count <= q->cap && (q->cap & (q->cap - 1)) == 0);
	CHECK(respq_empty(q) == (m->head == m->tail));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	size_t off = fuzz_startup(data, size);

	struct respq q;
	struct model m = {0};
	respq_init(&q);
	m.items = malloc(sizeof(*m.items) * (size / PROTO_HEADER_LEN + 1));
	CHECK(m.items != NULL);

	uint32_t index = 0;
	while (off < size) {
		char type = 0;
		uint32_t total = 0;
		enum frame_status fs =
		    proto_frame(data + off, size - off, FUZZ_MAX_MSG, &type, &total);
		if (fs == FRAME_INCOMPLETE) {
			CHECK(size - off < PROTO_HEADER_LEN);
			break;
		}
		uint32_t len = read_uint32_be(data + off + 1);
		CHECK(type == (char)data[off]);
		if (fs == FRAME_BAD_LENGTH) {
			CHECK(len < 4);
			break;
		}
		if (fs == FRAME_TOO_LARGE) {
			CHECK(len > FUZZ_MAX_MSG);
			break;
		}
		CHECK(fs == FRAME_OK && len >= 4 && len <= FUZZ_MAX_MSG && total == len + 1);
		if (total > size - off)
			break; /* the body is still arriving */

		uint8_t *msg = dup_exact(data + off, total);
		const uint8_t *body = msg + PROTO_HEADER_LEN;
		size_t blen = total - PROTO_HEADER_LEN;
		bool valid = proto_frontend_type_valid(type);
		CHECK(valid == (type != 0 && strchr("BCdcfDEHFPQSX", type) != NULL));
		fuzz_error_fields(body, blen);
		fuzz_sasl(body, blen);
		fuzz_respq(&q, &m, type, index++, body, blen);
		fuzz_admin(body, blen);
		fuzz_rewrites(msg, (uint32_t)total);
		free(msg);
		off += total;
	}
	respq_free(&q);
	free(m.items);
	return 0;
}
