#include "proxy/proto.h"

#include <string.h>

#include "proxy/mbuf.h"

static enum startup_kind parse_v3_params(struct mbuf *m, struct startup_info *out)
{
	out->user = NULL;
	out->database = NULL;
	out->application_name = NULL;
	for (;;) {
		const char *name, *value;
		if (!mbuf_get_string(m, &name))
			return STARTUP_BAD_LAYOUT;
		if (name[0] == '\0')
			break;
		if (!mbuf_get_string(m, &value))
			return STARTUP_BAD_LAYOUT;
		if (strcmp(name, "user") == 0)
			out->user = value;
		else if (strcmp(name, "database") == 0)
			out->database = value;
		else if (strcmp(name, "application_name") == 0)
			out->application_name = value;
	}
	if (mbuf_avail(m) != 0)
		return STARTUP_BAD_LAYOUT;
	if (!out->user || out->user[0] == '\0')
		return STARTUP_NO_USER;
	if (!out->database || out->database[0] == '\0')
		out->database = out->user;
	return STARTUP_V3;
}

enum startup_kind proto_parse_startup(const uint8_t *buf, size_t len, struct startup_info *out)
{
	struct mbuf m;
	uint32_t plen, version;

	memset(out, 0, sizeof(*out));
	mbuf_init(&m, buf, len);
	if (!mbuf_get_uint32(&m, &plen))
		return STARTUP_INCOMPLETE;
	/* As the server does: the limit is on what follows the length word. */
	if (plen < 8 || plen - 4 > PROTO_MAX_STARTUP)
		return STARTUP_BAD_LENGTH;
	if (len < plen)
		return STARTUP_INCOMPLETE;
	out->len = plen;
	mbuf_init(&m, buf + 4, plen - 4);
	if (!mbuf_get_uint32(&m, &version))
		return STARTUP_BAD_LENGTH;
	out->version = version;
	switch (version) {
	case PROTO_SSL_REQUEST:
		return plen == 8 ? STARTUP_SSL : STARTUP_BAD_LENGTH;
	case PROTO_GSSENC_REQUEST:
		return plen == 8 ? STARTUP_GSSENC : STARTUP_BAD_LENGTH;
	case PROTO_CANCEL_REQUEST:
		if (plen != 16)
			return STARTUP_BAD_LENGTH;
		if (!mbuf_get_uint32(&m, &out->cancel_pid) || !mbuf_get_uint32(&m, &out->cancel_key))
			return STARTUP_BAD_LENGTH;
		return STARTUP_CANCEL;
	}
	if ((version >> 16) != 3)
		return STARTUP_BAD_VERSION;
	return parse_v3_params(&m, out);
}

enum frame_status proto_frame(const uint8_t *buf, size_t avail, size_t max_len, char *type,
			      uint32_t *total_len)
{
	if (avail < PROTO_HEADER_LEN)
		return FRAME_INCOMPLETE;
	uint32_t len = read_uint32_be(buf + 1);
	*type = (char)buf[0];
	if (len < 4)
		return FRAME_BAD_LENGTH;
	if (len > max_len || len == UINT32_MAX)
		return FRAME_TOO_LARGE;
	*total_len = len + 1;
	return FRAME_OK;
}

bool proto_frontend_type_valid(char type)
{
	switch (type) {
	case 'Q': /* Query */
	case 'P': /* Parse */
	case 'B': /* Bind */
	case 'D': /* Describe */
	case 'E': /* Execute */
	case 'C': /* Close */
	case 'S': /* Sync */
	case 'H': /* Flush */
	case 'F': /* FunctionCall */
	case 'd': /* CopyData */
	case 'c': /* CopyDone */
	case 'f': /* CopyFail */
	case 'X': /* Terminate */
		return true;
	default:
		return false;
	}
}

bool proto_error_fields(const uint8_t *body, size_t len, const char **severity,
			const char **sqlstate, const char **message)
{
	struct mbuf m;
	uint8_t code;

	*severity = *sqlstate = *message = NULL;
	mbuf_init(&m, body, len);
	while (mbuf_get_byte(&m, &code) && code != 0) {
		const char *value;
		if (!mbuf_get_string(&m, &value))
			return false;
		if (code == 'V' || (code == 'S' && !*severity))
			*severity = value;
		else if (code == 'C')
			*sqlstate = value;
		else if (code == 'M')
			*message = value;
	}
	return *severity != NULL && *sqlstate != NULL;
}

bool proto_auth_code(const uint8_t *body, size_t len, uint32_t *code)
{
	struct mbuf m;
	mbuf_init(&m, body, len);
	return mbuf_get_uint32(&m, code);
}

bool proto_sasl_strip_plus(const uint8_t *body, size_t len, struct pktbuf *out)
{
	struct mbuf m;
	uint32_t code;
	const char *mech;
	bool any = false;

	mbuf_init(&m, body, len);
	if (!mbuf_get_uint32(&m, &code) || code != 10)
		return false;
	pktbuf_start(out, 'R');
	pktbuf_put_uint32(out, code);
	for (;;) {
		if (!mbuf_get_string(&m, &mech))
			return false;
		if (mech[0] == '\0')
			break;
		if (strcmp(mech, "SCRAM-SHA-256-PLUS") == 0)
			continue;
		pktbuf_put_string(out, mech);
		any = true;
	}
	pktbuf_put_byte(out, 0);
	pktbuf_finish(out);
	return any && mbuf_avail(&m) == 0 && pktbuf_ok(out);
}

/* RowDescription field: name, then table oid, column, type oid, size, typmod, format. */
static bool skip_field(struct mbuf *m)
{
	const char *name;
	const uint8_t *rest;
	return mbuf_get_string(m, &name) && mbuf_get_bytes(m, 18, &rest);
}

/* DataRow column: int32 length (-1 for NULL), then that many bytes. */
static bool skip_column(struct mbuf *m)
{
	uint32_t len;
	const uint8_t *value;
	return mbuf_get_uint32(m, &len) && (len == 0xffffffffu || mbuf_get_bytes(m, len, &value));
}

/* Walk the int16-counted items of a T or D message and copy all but the last. */
static bool drop_last_item(const uint8_t *msg, uint32_t total, char type,
			   bool (*skip)(struct mbuf *m), struct pktbuf *out)
{
	struct mbuf m;
	uint16_t n;
	size_t last = 0;

	if (total < PROTO_HEADER_LEN || msg[0] != type)
		return false;
	mbuf_init(&m, msg, total);
	m.pos = PROTO_HEADER_LEN;
	if (!mbuf_get_uint16(&m, &n) || n == 0)
		return false;
	for (uint16_t i = 0; i < n; i++) {
		last = m.pos;
		if (!skip(&m))
			return false;
	}
	if (mbuf_avail(&m) != 0)
		return false;
	pktbuf_start(out, type);
	pktbuf_put_uint16(out, (uint16_t)(n - 1));
	pktbuf_put_bytes(out, msg + PROTO_HEADER_LEN + 2, last - PROTO_HEADER_LEN - 2);
	pktbuf_finish(out);
	return pktbuf_ok(out);
}

bool proto_rowdesc_drop_last(const uint8_t *msg, uint32_t total, struct pktbuf *out)
{
	return drop_last_item(msg, total, 'T', skip_field, out);
}

bool proto_datarow_drop_last(const uint8_t *msg, uint32_t total, struct pktbuf *out)
{
	return drop_last_item(msg, total, 'D', skip_column, out);
}

int proto_bind_extend_formats(const uint8_t *msg, uint32_t total, struct pktbuf *out)
{
	struct mbuf m;
	const char *portal, *stmt;
	const uint8_t *skip;
	uint16_t nfmt, nparams, nres;

	if (total < PROTO_HEADER_LEN || msg[0] != 'B')
		return -1;
	mbuf_init(&m, msg, total);
	m.pos = PROTO_HEADER_LEN;
	if (!mbuf_get_string(&m, &portal) || !mbuf_get_string(&m, &stmt) ||
	    !mbuf_get_uint16(&m, &nfmt) || !mbuf_get_bytes(&m, (size_t)nfmt * 2, &skip) ||
	    !mbuf_get_uint16(&m, &nparams))
		return -1;
	for (uint16_t i = 0; i < nparams; i++)
		if (!skip_column(&m))
			return -1;
	size_t res_at = m.pos;
	if (!mbuf_get_uint16(&m, &nres) || !mbuf_get_bytes(&m, (size_t)nres * 2, &skip) ||
	    mbuf_avail(&m) != 0)
		return -1;
	if (nres <= 1)
		return 0;
	pktbuf_start(out, 'B');
	pktbuf_put_bytes(out, msg + PROTO_HEADER_LEN, res_at - PROTO_HEADER_LEN);
	pktbuf_put_uint16(out, (uint16_t)(nres + 1));
	pktbuf_put_bytes(out, msg + res_at + 2, (size_t)nres * 2);
	pktbuf_put_uint16(out, 0);
	pktbuf_finish(out);
	return pktbuf_ok(out) ? 1 : -1;
}

int proto_bind_param(const uint8_t *msg, uint32_t total, uint16_t index, struct bind_param *out)
{
	struct mbuf m;
	const char *portal, *stmt;
	const uint8_t *fmts, *skip;
	uint16_t nfmt, nparams, nres;
	uint32_t len = 0;
	int found = 0;

	if (total < PROTO_HEADER_LEN || msg[0] != 'B')
		return -1;
	mbuf_init(&m, msg, total);
	m.pos = PROTO_HEADER_LEN;
	if (!mbuf_get_string(&m, &portal) || !mbuf_get_string(&m, &stmt) ||
	    !mbuf_get_uint16(&m, &nfmt) || !mbuf_get_bytes(&m, (size_t)nfmt * 2, &fmts) ||
	    !mbuf_get_uint16(&m, &nparams))
		return -1;
	if (nfmt > 1 && nfmt != nparams)
		return -1;
	for (uint16_t i = 0; i < nfmt; i++)
		if (read_uint16_be(fmts + 2 * i) > 1)
			return -1;
	for (uint16_t i = 0; i < nparams; i++) {
		const uint8_t *value = NULL;
		if (!mbuf_get_uint32(&m, &len) ||
		    (len != 0xffffffffu && !mbuf_get_bytes(&m, len, &value)))
			return -1;
		if (i == index) {
			uint16_t fmt = nfmt == 0 ? 0 : read_uint16_be(fmts + 2 * (nfmt == 1 ? 0 : i));
			out->binary = fmt == 1;
			out->len = len == 0xffffffffu ? -1 : (int32_t)len;
			out->value = value;
			found = 1;
		}
	}
	if (!mbuf_get_uint16(&m, &nres) || !mbuf_get_bytes(&m, (size_t)nres * 2, &skip) ||
	    mbuf_avail(&m) != 0)
		return -1;
	return found;
}

int64_t proto_parse_param_type(const uint8_t *tail, size_t len, uint16_t index)
{
	struct mbuf m;
	const uint8_t *oids;
	uint16_t n;

	mbuf_init(&m, tail, len);
	if (!mbuf_get_uint16(&m, &n) || !mbuf_get_bytes(&m, (size_t)n * 4, &oids) ||
	    mbuf_avail(&m) != 0)
		return -1;
	return index < n ? (int64_t)read_uint32_be(oids + 4 * index) : 0;
}

static uint16_t map_attnum(const int16_t (*attmap)[2], size_t nmap, uint16_t attnum)
{
	for (size_t i = 0; i < nmap; i++)
		if ((uint16_t)attmap[i][0] == attnum)
			return (uint16_t)attmap[i][1];
	return attnum;
}

bool proto_rowdesc_map_table(const uint8_t *msg, uint32_t total, uint32_t from_oid,
			     uint32_t to_oid, const int16_t (*attmap)[2], size_t nmap,
			     struct pktbuf *out)
{
	struct mbuf m;
	uint16_t n;

	if (total < PROTO_HEADER_LEN || msg[0] != 'T')
		return false;
	mbuf_init(&m, msg, total);
	m.pos = PROTO_HEADER_LEN;
	if (!mbuf_get_uint16(&m, &n))
		return false;
	pktbuf_start(out, 'T');
	pktbuf_put_uint16(out, n);
	for (uint16_t i = 0; i < n; i++) {
		const char *name;
		const uint8_t *rest;
		uint32_t table;
		uint16_t attnum;
		if (!mbuf_get_string(&m, &name) || !mbuf_get_uint32(&m, &table) ||
		    !mbuf_get_uint16(&m, &attnum) || !mbuf_get_bytes(&m, 12, &rest))
			return false;
		bool ours = table == from_oid && from_oid != 0;
		pktbuf_put_string(out, name);
		pktbuf_put_uint32(out, ours ? to_oid : table);
		pktbuf_put_uint16(out, ours ? map_attnum(attmap, nmap, attnum) : attnum);
		pktbuf_put_bytes(out, rest, 12);
	}
	pktbuf_finish(out);
	return mbuf_avail(&m) == 0 && pktbuf_ok(out);
}
