/*
 * PostgreSQL's binary format (a type's send function) of common types, written in their
 * text form (what the type's output function would write).  pgshunt needs it where a
 * value a client bound in binary must travel as text: the parameters of a claim's
 * ON CONFLICT DO UPDATE clause (proxy/engine.c, bind_args()).
 */
#ifndef PGSHUNT_BINFMT_H
#define PGSHUNT_BINFMT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proxy/pktbuf.h"

/*
 * Append the text form of a binary value of type `oid` to out.  Types: bool, bytea,
 * int2, int4, int8, oid, float4, float8, numeric, text, varchar, bpchar, name, json,
 * jsonb, uuid, date, timestamp, timestamptz (as UTC, +00).  False for another type or
 * a value that is not that type's binary form (wrong length, bad digits); out may then
 * hold part of it.
 */
bool binfmt_to_text(uint32_t oid, const uint8_t *value, size_t len, struct pktbuf *out);

#endif
