/*
 * PostgreSQL protocol 3.0 framing: pure functions over bytes, no I/O, so the fuzzer
 * and the unit tests drive exactly what the sessions run.
 */
#ifndef PGSHUNT_PROTO_H
#define PGSHUNT_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proxy/pktbuf.h"

#define PROTO_V3             0x00030000u
#define PROTO_CANCEL_REQUEST 80877102u
#define PROTO_SSL_REQUEST    80877103u
#define PROTO_GSSENC_REQUEST 80877104u
#define PROTO_MAX_STARTUP    10000u /* PostgreSQL's MAX_STARTUP_PACKET_LENGTH, after the length word */
#define PROTO_HEADER_LEN     5u     /* type byte + int32 length */

enum startup_kind {
	STARTUP_INCOMPLETE, /* need more bytes */
	STARTUP_V3,         /* a protocol 3.x StartupMessage */
	STARTUP_SSL,        /* SSLRequest */
	STARTUP_GSSENC,     /* GSSENCRequest */
	STARTUP_CANCEL,     /* CancelRequest */
	STARTUP_BAD_LENGTH, /* length below 8 or above PROTO_MAX_STARTUP + 4: 08P01 */
	STARTUP_BAD_VERSION,/* not 3.x: 0A000 */
	STARTUP_BAD_LAYOUT, /* parameters not name/value pairs ending in a NUL: 08P01 */
	STARTUP_NO_USER,    /* no "user" parameter: 28000 */
};

/* What a startup packet says; strings point into the packet. */
struct startup_info {
	uint32_t len;            /* total length of the packet */
	uint32_t version;        /* protocol version or request code */
	uint32_t cancel_pid;     /* CancelRequest only */
	uint32_t cancel_key;     /* CancelRequest only */
	const char *user;        /* V3 only */
	const char *database;    /* V3 only; defaults to user, as the server does */
	const char *application_name; /* V3 only; NULL when absent */
};

enum startup_kind proto_parse_startup(const uint8_t *buf, size_t len, struct startup_info *out);

/* A message as framed: type byte, then a length that counts itself. */
enum frame_status {
	FRAME_INCOMPLETE, /* not even a whole header yet */
	FRAME_OK,         /* header valid; the body may still be arriving */
	FRAME_BAD_LENGTH, /* length < 4: a lie */
	FRAME_TOO_LARGE,  /* length > max_len */
};

enum frame_status proto_frame(const uint8_t *buf, size_t avail, size_t max_len, char *type,
			      uint32_t *total_len);

/* True for the message types a client may send once the session is up. */
bool proto_frontend_type_valid(char type);

/* Severity and SQLSTATE of an ErrorResponse/NoticeResponse body (after the header). */
bool proto_error_fields(const uint8_t *body, size_t len, const char **severity,
			const char **sqlstate, const char **message);

/*
 * AuthenticationSASL (R, code 10): write into out the same message without
 * SCRAM-SHA-256-PLUS, since channel binding cannot cross a proxy that terminates TLS.
 * Returns false on a malformed body.
 */
bool proto_sasl_strip_plus(const uint8_t *body, size_t len, struct pktbuf *out);

/*
 * The statement engine appends one column (its mirror call) to RETURNING lists; the
 * client must not see it.  These write into out the same RowDescription ('T') or
 * DataRow ('D') without its last column; msg is the whole message, header included.
 * False on a malformed message or one with no column to drop.
 */
bool proto_rowdesc_drop_last(const uint8_t *msg, uint32_t total, struct pktbuf *out);
bool proto_datarow_drop_last(const uint8_t *msg, uint32_t total, struct pktbuf *out);

/*
 * RowDescription ('T') of a read the engine pointed at next_table: fields whose table
 * OID is from_oid get to_oid and the column number attmap maps theirs to (pairs of
 * from, to; an unmapped column keeps its number), so the client sees the table it
 * named.  Returns false for a malformed message.
 */
bool proto_rowdesc_map_table(const uint8_t *msg, uint32_t total, uint32_t from_oid,
			     uint32_t to_oid, const int16_t (*attmap)[2], size_t nmap,
			     struct pktbuf *out);

/*
 * A Bind ('B') whose statement got one more result column from the engine: when the
 * client listed a format per column (more than one code), the added column needs its
 * own (text).  Returns 1 with the rewritten message in out, 0 when nothing needs to
 * change (zero or one format code), -1 for a malformed message.
 */
int proto_bind_extend_formats(const uint8_t *msg, uint32_t total, struct pktbuf *out);

/* One parameter of a Bind ('B'), as the client sent it. */
struct bind_param {
	bool binary;          /* format code 1 */
	int32_t len;          /* -1: NULL */
	const uint8_t *value; /* len bytes inside the message */
};

/*
 * Parameter `index` (0-based) of a Bind: 1 with *out filled, 0 when the message has
 * fewer parameters, -1 when it is malformed (truncated, trailing bytes, a format count
 * that is neither 0, 1 nor the parameter count, a format code other than 0 and 1).
 */
int proto_bind_param(const uint8_t *msg, uint32_t total, uint16_t index, struct bind_param *out);

/*
 * The type OID a Parse declared for parameter `index` (0-based), from the bytes after
 * the query (int16 count, int32 OIDs): 0 when not declared (or declared 0), -1 when
 * the bytes are malformed.
 */
int64_t proto_parse_param_type(const uint8_t *tail, size_t len, uint16_t index);

/* The int32 code of an Authentication message body, or false when too short. */
bool proto_auth_code(const uint8_t *body, size_t len, uint32_t *code);

#endif
