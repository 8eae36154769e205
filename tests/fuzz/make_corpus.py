#!/usr/bin/python3
"""Write the seed corpus of tests/fuzz/fuzz_proto.c into tests/fuzz/corpus/.

Each file is what a client could send (a startup packet, then messages), or a stream
of messages alone (its first four bytes are then an invalid startup length, and the
fuzz target frames the whole input as messages).  Deterministic: running it again
writes the same files.

    /usr/bin/python3 tests/fuzz/make_corpus.py
"""
import os
import random
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "corpus")

PROTO_V3 = 0x00030000
SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
CANCEL_REQUEST = 80877102


def cstr(s):
    return s.encode() + b"\0"


def startup(params, version=PROTO_V3, terminator=True):
    body = struct.pack("!I", version)
    for k, v in params:
        body += cstr(k) + cstr(v)
    if terminator:
        body += b"\0"
    return struct.pack("!I", len(body) + 4) + body


def startup_raw(version, params):
    """A startup packet whose parameter bytes are given as they are."""
    return struct.pack("!II", len(params) + 8, version) + params


def msg(t, body=b""):
    return t.encode() + struct.pack("!I", len(body) + 4) + body


def query(sql):
    return msg("Q", cstr(sql))


def parse(name, sql, oids=()):
    return msg("P", cstr(name) + cstr(sql) + struct.pack("!H", len(oids))
               + b"".join(struct.pack("!I", o) for o in oids))


def bind(portal, stmt, values):
    body = cstr(portal) + cstr(stmt) + struct.pack("!H", 0) + struct.pack("!H", len(values))
    for v in values:
        if v is None:
            body += struct.pack("!i", -1)
        else:
            body += struct.pack("!I", len(v)) + v
    body += struct.pack("!H", 0)
    return msg("B", body)


def describe(kind, name):
    return msg("D", kind.encode() + cstr(name))


def execute(portal, rows=0):
    return msg("E", cstr(portal) + struct.pack("!I", rows))


def close(kind, name):
    return msg("C", kind.encode() + cstr(name))


def sync():
    return msg("S")


def flush():
    return msg("H")


def terminate():
    return msg("X")


def error(fields):
    return msg("E", b"".join(code.encode() + cstr(v) for code, v in fields) + b"\0")


def auth(code, rest=b""):
    return msg("R", struct.pack("!I", code) + rest)


def sasl(mechs):
    return auth(10, b"".join(cstr(m) for m in mechs) + b"\0")


USER = startup([("user", "alice"), ("database", "app"), ("application_name", "psql")])
ADMIN = startup([("user", "admin"), ("database", "pgshunt")])

rng = random.Random(20240601)

SEEDS = {
    "startup-v3": USER,
    "startup-user-only": startup([("user", "bob")]),
    "ssl-request": struct.pack("!II", 8, SSL_REQUEST),
    "gssenc-request": struct.pack("!II", 8, GSSENC_REQUEST),
    "cancel-request": struct.pack("!IIII", 16, CANCEL_REQUEST, 4242, 0xDEADBEEF),
    "ssl-request-then-startup": struct.pack("!II", 8, SSL_REQUEST) + USER,
    "startup-query": USER + query("SELECT 1") + terminate(),
    "startup-extended": USER + parse("s1", "SELECT $1::int", [23]) + bind("", "s1", [b"42"])
    + describe("P", "") + execute("", 0) + sync() + close("S", "s1") + sync() + terminate(),
    "startup-extended-flush": USER + parse("", "SELECT 1") + describe("S", "") + flush()
    + bind("", "", []) + execute("", 10) + execute("", 10) + sync(),
    "startup-copy": USER + query("COPY t FROM STDIN") + msg("d", b"1\tone\n")
    + msg("d", b"2\ttwo\n") + msg("c") + query("COPY t FROM STDIN") + msg("f", cstr("no")),
    "replication-stream": startup([("user", "cdc"), ("database", "app"),
                                   ("replication", "database")])
    + query("START_REPLICATION SLOT s LOGICAL 0/0") + msg("W", struct.pack("!bH", 0, 0))
    + msg("d", b"w" + bytes(24) + b"BEGIN 1") + msg("d", b"r" + bytes(33)) + msg("c")
    + msg("c") + msg("C", cstr("START_REPLICATION")) + msg("Z", b"I"),
    "startup-function-call": USER + msg("F", struct.pack("!IHHIIH", 1598, 0, 1, 4, 7, 0)),
    "admin-commands": ADMIN + query("SHOW CLIENTS") + query(" show\tstats \n")
    + query("SHOW HELP;") + parse("", "SHOW CONFIG") + bind("", "", []) + describe("P", "")
    + execute("") + sync() + query("START  TRANSACTION") + query("PAUSE") + query("RESUME"),
    "auth-sasl": sasl(["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]),
    "auth-sasl-plus-only": sasl(["SCRAM-SHA-256-PLUS"]),
    "auth-stream": auth(5, b"\x01\x02\x03\x04") + auth(3) + auth(11, b"r=abc,s=xyz,i=4096")
    + auth(12, b"v=sig") + auth(0),
    "error-response": error([("S", "ERROR"), ("V", "ERROR"), ("C", "42P01"),
                             ("M", 'relation "t" does not exist'), ("P", "15"),
                             ("F", "parse_relation.c"), ("L", "1392"),
                             ("R", "parserOpenTable")]),
    "server-responses": msg("1") + msg("2") + msg("t", struct.pack("!HI", 1, 23))
    + msg("T", struct.pack("!H", 1) + cstr("x") + struct.pack("!IHIhih", 0, 0, 23, 4, -1, 0))
    + msg("D", struct.pack("!HI", 1, 2) + b"42") + msg("C", cstr("SELECT 1"))
    + msg("N", b"SNOTICE\0VNOTICE\0C00000\0Mhi\0\0") + msg("A", struct.pack("!I", 7)
                                                          + cstr("chan") + cstr("payload"))
    + msg("S", cstr("TimeZone") + cstr("UTC")) + msg("Z", b"I") + msg("s") + msg("n")
    + msg("I") + msg("3"),
    "startup-then-error": USER + parse("", "SELEC") + bind("", "", []) + execute("") + sync()
    + error([("S", "ERROR"), ("C", "42601"), ("M", "syntax error")]) + msg("Z", b"I"),
    "startup-bad-version": startup([("user", "bob")], version=0x00020000),
    "startup-no-user": startup([("database", "app")]),
    "startup-no-terminator": startup([("user", "bob")], terminator=False),
    "startup-trailing-bytes": startup_raw(PROTO_V3, b"user\0bob\0\0junk"),
    "startup-odd-strings": startup_raw(PROTO_V3, b"user\0bob\0database\0\0"),
    "truncated-startup": USER[: len(USER) // 2],
    "truncated-message": USER + query("SELECT 1")[:7],
    "bad-message-length": USER + b"Q\0\0\0\x02" + query("SELECT 1"),
    "huge-message-length": USER + b"Q\x7f\xff\xff\xff" + b"SELECT 1\0",
    "garbage": bytes(rng.randrange(256) for _ in range(200)),
    "garbage-after-startup": USER + bytes(rng.randrange(256) for _ in range(120)),
}


def main():
    os.makedirs(OUT, exist_ok=True)
    for name, data in sorted(SEEDS.items()):
        with open(os.path.join(OUT, name + ".bin"), "wb") as f:
            f.write(data)
    print("wrote %d files to %s" % (len(SEEDS), OUT))


if __name__ == "__main__":
    main()
