'use strict';
// postgres.js through PGHOST/PGPORT: SCRAM login, tagged-template queries, prepared
// statements reused, sql.begin, error codes, COPY FROM/TO streams, query.cancel(),
// LISTEN/NOTIFY, pipelining 50 queries on one connection, and TLS verify-full.

const assert = require('node:assert/strict');
const { Readable, Writable } = require('node:stream');
const { pipeline } = require('node:stream/promises');
const fs = require('node:fs');
const postgres = require('postgres');
const { conn, caFile, uniqueName, withTimeout, rejects, wrongCa, run } = require('./common');

const options = {
  host: conn.host,
  port: conn.port,
  database: conn.database,
  username: 'shunt_scram',
  password: 'scram-secret',
  max: 1,
  connect_timeout: 10,
  idle_timeout: 0,
  onnotice: () => {},
};
const table = uniqueName('t_pgjs');
const sqls = [];

function connect(extra = {}) {
  const s = postgres({ ...options, ...extra });
  sqls.push(s);
  return s;
}

const sql = connect();
const T = sql(table); // the table's identifier

const steps = [
  ['SCRAM login', async () => {
    const [row] = await sql`SELECT current_user AS u, ${1}::int + ${2}::int AS s`;
    assert.equal(row.u, 'shunt_scram');
    assert.equal(row.s, 3);
  }],

  ['SCRAM login with a wrong password fails with 28P01', async () => {
    const bad = connect({ password: 'wrong' });
    const e = await rejects(bad`SELECT 1`, 'login with a wrong password');
    assert.equal(e.code, '28P01', `got ${e.code}: ${e.message}`);
    await bad.end({ timeout: 1 });
  }],

  ['tagged-template queries with types', async () => {
    let r = await sql`CREATE TABLE ${T} (id int PRIMARY KEY, v text, b bytea, j jsonb, ts timestamptz, n numeric)`;
    assert.equal(r.command, 'CREATE TABLE');
    const ts = new Date('2023-12-31T23:59:59.123Z');
    const bytes = Buffer.from([0, 255, 10, 13, 92]);
    r = await sql`INSERT INTO ${T} (id, v, b, j, ts, n)
                  VALUES (${1}, ${'ünïcode ☃'}, ${bytes}, ${sql.json({ k: [1, 'two', null] })}, ${ts}, ${'3.14159265358979'})`;
    assert.equal(r.command, 'INSERT');
    assert.equal(r.count, 1);
    const rows = await sql`SELECT * FROM ${T} WHERE id = ${1}`;
    assert.equal(rows.count, 1);
    const row = rows[0];
    assert.equal(row.id, 1);
    assert.equal(row.v, 'ünïcode ☃');
    assert.ok(Buffer.isBuffer(row.b) && row.b.equals(bytes), `bytea ${row.b}`);
    assert.deepEqual(row.j, { k: [1, 'two', null] });
    assert.equal(row.ts.getTime(), ts.getTime());
    assert.equal(row.n, '3.14159265358979');
    // multi-row insert from objects
    r = await sql`INSERT INTO ${T} ${sql([{ id: 2, v: 'two' }, { id: 3, v: 'three' }], 'id', 'v')}`;
    assert.equal(r.count, 2);
    r = await sql`UPDATE ${T} SET v = v || '!' WHERE id >= ${2}`;
    assert.equal(r.command, 'UPDATE');
    assert.equal(r.count, 2);
    const vs = await sql`SELECT v FROM ${T} WHERE id >= 2 ORDER BY id`;
    assert.deepEqual(vs.map((x) => x.v), ['two!', 'three!']);
  }],

  ['prepared statements executed repeatedly', async () => {
    const marker = uniqueName('prep');
    for (let i = 0; i < 100; i++) {
      const [row] = await sql`SELECT ${i}::int * 3 AS v, ${marker}::text AS m`;
      assert.equal(row.v, i * 3);
      assert.equal(row.m, marker);
    }
    for (let i = 0; i < 100; i++) {
      const r = await sql`INSERT INTO ${T} (id, v) VALUES (${1000 + i}, ${'p' + i})`;
      assert.equal(r.count, 1);
    }
    const [c] = await sql`SELECT count(*)::int AS n FROM ${T} WHERE id >= 1000 AND id < 2000`;
    assert.equal(c.n, 100);
    const prepared = await sql`SELECT name, statement FROM pg_prepared_statements
                               WHERE statement LIKE ${'%::int * 3 AS v%'}`;
    assert.equal(prepared.count, 1, `prepared statements on the server: ${JSON.stringify(prepared)}`);
  }],

  ['sql.begin commits, and rolls back on an error', async () => {
    const res = await sql.begin(async (tx) => {
      await tx`INSERT INTO ${T} (id, v) VALUES (${200}, ${'tx'})`;
      const [r] = await tx`SELECT count(*)::int AS n FROM ${T} WHERE id = 200`;
      return r.n;
    });
    assert.equal(res, 1);
    const e = await rejects(sql.begin(async (tx) => {
      await tx`INSERT INTO ${T} (id, v) VALUES (${201}, ${'tx'})`;
      await tx`INSERT INTO ${T} (id, v) VALUES (${200}, ${'duplicate'})`;
    }), 'a transaction with a duplicate key');
    assert.equal(e.code, '23505', `got ${e.code}: ${e.message}`);
    const rows = await sql`SELECT id FROM ${T} WHERE id IN (200, 201) ORDER BY id`;
    assert.deepEqual(rows.map((x) => x.id), [200], 'the failed transaction was not rolled back');
    // a thrown JS error rolls back too
    await rejects(sql.begin(async (tx) => {
      await tx`INSERT INTO ${T} (id, v) VALUES (${202}, ${'tx'})`;
      throw new Error('client-side abort');
    }), 'client-side abort');
    const [c] = await sql`SELECT count(*)::int AS n FROM ${T} WHERE id = 202`;
    assert.equal(c.n, 0);
  }],

  ['errors: 23505 and 42P01', async () => {
    let e = await rejects(sql`INSERT INTO ${T} (id) VALUES (${1})`, 'duplicate key');
    assert.equal(e.code, '23505', `got ${e.code}: ${e.message}`);
    assert.equal(e.constraint_name, `${table}_pkey`);
    e = await rejects(sql`SELECT * FROM ${sql('no_such_' + table)}`, 'missing table');
    assert.equal(e.code, '42P01', `got ${e.code}: ${e.message}`);
    const [row] = await sql`SELECT ${'alive'}::text AS v`;
    assert.equal(row.v, 'alive');
  }],

  ['COPY FROM STDIN and TO STDOUT', async () => {
    const n = 5000;
    const w = await sql`COPY ${T} (id, v) FROM STDIN`.writable();
    function* lines() {
      for (let i = 0; i < n; i++) yield `${10000 + i}\tcopy row ${i}\n`;
    }
    await pipeline(Readable.from(lines()), w);
    const [c] = await sql`SELECT count(*)::int AS n FROM ${T} WHERE id >= 10000`;
    assert.equal(c.n, n);
    const r = await sql`COPY (SELECT id, v FROM ${T} WHERE id >= 10000 ORDER BY id) TO STDOUT`.readable();
    const chunks = [];
    await pipeline(r, new Writable({
      write(chunk, _enc, cb) { chunks.push(chunk); cb(); },
    }));
    const text = Buffer.concat(chunks).toString();
    const out = text.split('\n').filter((x) => x !== '');
    assert.equal(out.length, n);
    assert.equal(out[0], '10000\tcopy row 0');
    assert.equal(out[n - 1], `${10000 + n - 1}\tcopy row ${n - 1}`);
    // the connection is usable after COPY
    const [row] = await sql`SELECT ${5}::int AS v`;
    assert.equal(row.v, 5);
  }],

  ['query.cancel() of pg_sleep(30) gives 57014', async () => {
    const q = sql`SELECT pg_sleep(30)`;
    const t0 = Date.now();
    const p = q.then(() => null, (e) => e);
    setTimeout(() => q.cancel(), 500);
    const e = await withTimeout(p, 15000, 'the cancelled query');
    assert.ok(e, 'pg_sleep(30) was not cancelled');
    assert.equal(e.code, '57014', `got ${e.code}: ${e.message}`);
    assert.ok(Date.now() - t0 < 10000, 'cancel took too long');
    const [row] = await sql`SELECT ${'after cancel'}::text AS v`;
    assert.equal(row.v, 'after cancel');
  }],

  ['LISTEN/NOTIFY with sql.listen', async () => {
    const channel = uniqueName('ch_pgjs');
    const received = [];
    let wake;
    const got = new Promise((resolve) => { wake = resolve; });
    const { unlisten } = await sql.listen(channel, (payload) => {
      received.push(payload);
      if (received.length === 2) wake();
    });
    await sql.notify(channel, 'first ☃');
    await sql`SELECT pg_notify(${channel}, ${'second'})`;
    await withTimeout(got, 5000, 'the notifications');
    assert.deepEqual(received, ['first ☃', 'second']);
    await unlisten();
  }],

  ['pipelining: 50 queries at once on one connection', async () => {
    const results = await withTimeout(Promise.all(Array.from({ length: 50 },
      (_, i) => sql`SELECT ${i}::int AS v, pg_backend_pid() AS pid, repeat('x', ${i * 100}) AS pad`)),
    20000, '50 pipelined queries');
    const pids = new Set();
    results.forEach((rows, i) => {
      assert.equal(rows.count, 1);
      assert.equal(rows[0].v, i);
      assert.equal(rows[0].pad.length, i * 100);
      pids.add(rows[0].pid);
    });
    assert.equal(pids.size, 1, 'the queries used more than one connection');
    // an error in the middle fails that query only
    const settled = await withTimeout(Promise.allSettled(Array.from({ length: 30 },
      (_, i) => (i === 15 ? sql`SELECT 1 / ${0}::int AS v` : sql`SELECT ${i}::int AS v`))),
    20000, 'pipelined queries with an error');
    settled.forEach((s, i) => {
      if (i === 15) {
        assert.equal(s.status, 'rejected');
        assert.equal(s.reason.code, '22012');
      } else {
        assert.equal(s.status, 'fulfilled', `query ${i}: ${s.reason}`);
        assert.equal(s.value[0].v, i);
      }
    });
  }],

  ['TLS verify-full against host localhost', async () => {
    // With ssl an object, postgres.js goes on to the TLS handshake whatever the answer
    // to its SSLRequest: a query that succeeds ran over TLS, the certificate checked.
    const t = connect({ host: 'localhost', ssl: { ca: fs.readFileSync(caFile), servername: 'localhost', rejectUnauthorized: true } });
    const [row] = await t`SELECT current_user AS u, ${5}::int AS v`;
    assert.equal(row.u, 'shunt_scram');
    assert.equal(row.v, 5);
  }],

  ['TLS with a wrong CA fails', async () => {
    const bad = connect({ host: 'localhost', ssl: { ca: wrongCa(), servername: 'localhost', rejectUnauthorized: true } });
    const e = await rejects(bad`SELECT 1`, 'TLS with a wrong CA');
    assert.match(`${e.code} ${e.message}`, /UNABLE_TO_VERIFY|SELF_SIGNED|CERT|certificate/i, `${e.code}: ${e.message}`);
  }],
];

async function cleanup() {
  const d = connect();
  await d`DROP TABLE IF EXISTS ${d(table)}`.catch(() => {});
  await Promise.all(sqls.map((s) => s.end({ timeout: 2 }).catch(() => {})));
}

run('test_postgres', steps, cleanup);
