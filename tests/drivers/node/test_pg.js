'use strict';
// node-postgres (pg) through PGHOST/PGPORT: SCRAM login, typed parameters, error codes,
// transactions, statement_timeout, a CancelRequest (Client#cancel), LISTEN/NOTIFY, COPY
// both ways (pg-copy-streams, the COPY module for pg), named prepared statements, a large
// value, TLS verify-full.

const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const fs = require('node:fs');
const { Readable } = require('node:stream');
const { pipeline } = require('node:stream/promises');
const pg = require('pg');
const { from: copyFrom, to: copyTo } = require('pg-copy-streams');
const { conn, caFile, uniqueName, withTimeout, rejects, wrongCa, run } = require('./common');

const scram = { ...conn, user: 'shunt_scram', password: 'scram-secret', connectionTimeoutMillis: 10000 };
const table = uniqueName('t_pg');
const clients = [];

async function connect(cfg = scram) {
  const c = new pg.Client(cfg);
  clients.push(c);
  c.on('error', () => {}); // reported by the query that sees it
  await c.connect();
  return c;
}

let c; // the main client

const steps = [
  ['SCRAM login', async () => {
    c = await connect();
    const r = await c.query('SELECT current_user AS u, 1 + 1 AS two');
    assert.equal(r.rows[0].u, 'shunt_scram');
    assert.equal(r.rows[0].two, 2);
    assert.equal(r.command, 'SELECT');
    assert.equal(r.rowCount, 1);
  }],

  ['SCRAM login with a wrong password fails with 28P01', async () => {
    const bad = new pg.Client({ ...scram, password: 'wrong' });
    const e = await rejects(bad.connect(), 'login with a wrong password');
    assert.equal(e.code, '28P01', `got ${e.code}: ${e.message}`);
    assert.match(e.message, /password authentication failed for user "shunt_scram"/);
    await bad.end().catch(() => {});
  }],

  ['typed parameters (int, text, bytea, jsonb, timestamptz, numeric, array, null)', async () => {
    let r = await c.query(`CREATE TABLE ${table} (id int PRIMARY KEY, t text, b bytea, j jsonb,
                           ts timestamptz, n numeric, a int[], z text)`);
    assert.equal(r.command, 'CREATE');
    const ts = new Date('2024-02-29T12:34:56.789Z');
    const bytes = Buffer.from([0, 1, 2, 127, 128, 254, 255]);
    const json = { a: 1, b: [true, null, 'x'], c: { d: 'é' } };
    r = await c.query(`INSERT INTO ${table} (id, t, b, j, ts, n, a, z) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`,
      [42, 'héllo ☃ \'quoted\'', bytes, json, ts, '12345678901234567890.0123456789', [3, 1, 2], null]);
    assert.equal(r.command, 'INSERT');
    assert.equal(r.rowCount, 1);
    r = await c.query(`SELECT id, t, b, j, ts, n, a, z, pg_typeof(n)::text AS ntype FROM ${table} WHERE id = $1`, [42]);
    assert.equal(r.rowCount, 1);
    const row = r.rows[0];
    assert.equal(row.id, 42);
    assert.equal(row.t, 'héllo ☃ \'quoted\'');
    assert.ok(Buffer.isBuffer(row.b) && row.b.equals(bytes), `bytea ${row.b && row.b.toString('hex')}`);
    assert.deepEqual(row.j, json);
    assert.ok(row.ts instanceof Date);
    assert.equal(row.ts.getTime(), ts.getTime());
    assert.equal(row.n, '12345678901234567890.0123456789');
    assert.deepEqual(row.a, [3, 1, 2]);
    assert.equal(row.z, null);
    assert.equal(row.ntype, 'numeric');
    r = await c.query('SELECT $1::int + $2::int AS s, $3::bigint * 2 AS big', [2, 3, '4611686018427387903']);
    assert.equal(r.rows[0].s, 5);
    assert.equal(r.rows[0].big, '9223372036854775806');
  }],

  ['a 1 MB bytea round trip', async () => {
    const big = crypto.randomBytes(1024 * 1024);
    let r = await c.query(`INSERT INTO ${table} (id, b) VALUES (1000, $1)`, [big]);
    assert.equal(r.rowCount, 1);
    r = await c.query(`SELECT b, length(b) AS len, md5(b) AS md5 FROM ${table} WHERE id = 1000`);
    assert.equal(r.rows[0].len, big.length);
    assert.equal(r.rows[0].md5, crypto.createHash('md5').update(big).digest('hex'));
    assert.ok(r.rows[0].b.equals(big), 'bytea differs');
  }],

  ['unique violation 23505, then the connection still works', async () => {
    const e = await rejects(c.query(`INSERT INTO ${table} (id) VALUES ($1)`, [42]), 'duplicate key');
    assert.equal(e.code, '23505', `got ${e.code}: ${e.message}`);
    assert.equal(e.constraint, `${table}_pkey`);
    const r = await c.query('SELECT 7 AS seven');
    assert.equal(r.rows[0].seven, 7);
  }],

  ['undefined table 42P01 (simple and extended protocol)', async () => {
    let e = await rejects(c.query(`SELECT * FROM no_such_${table}`), 'missing table, simple');
    assert.equal(e.code, '42P01', `got ${e.code}: ${e.message}`);
    e = await rejects(c.query(`SELECT * FROM no_such_${table} WHERE 1 = $1`, [1]), 'missing table, extended');
    assert.equal(e.code, '42P01', `got ${e.code}: ${e.message}`);
    const r = await c.query('SELECT $1::text AS v', ['still alive']);
    assert.equal(r.rows[0].v, 'still alive');
  }],

  ['transaction rollback', async () => {
    await c.query('BEGIN');
    let r = await c.query(`INSERT INTO ${table} (id, t) VALUES (100, 'rolled back'), (101, 'rolled back')`);
    assert.equal(r.rowCount, 2);
    r = await c.query(`SELECT count(*)::int AS n FROM ${table} WHERE id IN (100, 101)`);
    assert.equal(r.rows[0].n, 2, 'rows not visible inside the transaction');
    const e = await rejects(c.query('SELECT 1 / 0'), 'division by zero');
    assert.equal(e.code, '22012');
    const e2 = await rejects(c.query('SELECT 1'), 'query in an aborted transaction');
    assert.equal(e2.code, '25P02', `got ${e2.code}: ${e2.message}`);
    r = await c.query('ROLLBACK');
    assert.equal(r.command, 'ROLLBACK');
    r = await c.query(`SELECT count(*)::int AS n FROM ${table} WHERE id IN (100, 101)`);
    assert.equal(r.rows[0].n, 0, 'rolled back rows are there');
    // and a commit does keep them
    await c.query('BEGIN');
    await c.query(`INSERT INTO ${table} (id, t) VALUES (102, 'committed')`);
    r = await c.query('COMMIT');
    assert.equal(r.command, 'COMMIT');
    r = await c.query(`SELECT t FROM ${table} WHERE id = 102`);
    assert.equal(r.rows[0].t, 'committed');
  }],

  ['statement_timeout cancels pg_sleep with 57014', async () => {
    await c.query("SET statement_timeout = '300ms'");
    const t0 = Date.now();
    const e = await rejects(c.query('SELECT pg_sleep(30)'), 'pg_sleep(30) under statement_timeout');
    assert.equal(e.code, '57014', `got ${e.code}: ${e.message}`);
    assert.ok(Date.now() - t0 < 10000, 'took too long');
    await c.query('RESET statement_timeout');
    const r = await c.query('SHOW statement_timeout');
    assert.equal(r.rows[0].statement_timeout, '0');
  }],

  ['a CancelRequest (Client#cancel) stops pg_sleep(30) with 57014', async () => {
    const query = new pg.Query('SELECT pg_sleep(30)');
    const done = new Promise((resolve) => {
      query.on('error', resolve);
      query.on('end', () => resolve(null));
    });
    c.query(query);
    const t0 = Date.now();
    // Client#cancel sends the CancelRequest with c's key on a connection of its own.
    setTimeout(() => new pg.Client(scram).cancel(c, query), 500);
    const e = await withTimeout(done, 15000, 'the cancelled query');
    assert.ok(e, 'pg_sleep(30) was not cancelled');
    assert.equal(e.code, '57014', `got ${e.code}: ${e.message}`);
    assert.ok(Date.now() - t0 < 10000, 'cancel took too long');
    const r = await c.query("SELECT 'after cancel' AS v");
    assert.equal(r.rows[0].v, 'after cancel');
  }],

  ['COPY FROM STDIN and TO STDOUT (pg-copy-streams)', async () => {
    const n = 5000;
    const ingest = c.query(copyFrom(`COPY ${table} (id, t) FROM STDIN`));
    await withTimeout(pipeline(Readable.from((function* rows() {
      for (let i = 0; i < n; i++) yield `${10000 + i}\tcopy row ${i} ☃\n`;
    })()), ingest), 20000, 'COPY FROM STDIN');
    assert.equal(ingest.rowCount, n);
    const chunks = [];
    const out = c.query(copyTo(`COPY (SELECT id, t FROM ${table} WHERE id >= 10000 ORDER BY id) TO STDOUT`));
    out.on('data', (chunk) => chunks.push(chunk));
    await withTimeout(new Promise((resolve, reject) => {
      out.on('end', resolve);
      out.on('error', reject);
    }), 20000, 'COPY TO STDOUT');
    const lines = Buffer.concat(chunks).toString('utf8').split('\n').filter((l) => l !== '');
    assert.equal(lines.length, n);
    assert.equal(lines[0], '10000\tcopy row 0 ☃');
    assert.equal(lines[n - 1], `${10000 + n - 1}\tcopy row ${n - 1} ☃`);
    // a bad row fails the COPY with 22P02, adds nothing, and the connection goes on
    const bad = c.query(copyFrom(`COPY ${table} (id, t) FROM STDIN`));
    const e = await rejects(pipeline(Readable.from(['20000\tfine\n', 'not a number\tbad\n']), bad),
      'COPY with a bad row');
    assert.equal(e.code, '22P02', `got ${e.code}: ${e.message}`);
    const r = await c.query(`SELECT count(*)::int AS n FROM ${table} WHERE id >= 10000`);
    assert.equal(r.rows[0].n, n);
  }],

  ['LISTEN/NOTIFY', async () => {
    const listener = await connect();
    const channel = uniqueName('ch_pg');
    const got = new Promise((resolve) => listener.on('notification', resolve));
    const r = await listener.query(`LISTEN ${channel}`);
    assert.equal(r.command, 'LISTEN');
    const pid = (await c.query('SELECT pg_backend_pid() AS pid')).rows[0].pid;
    await c.query('SELECT pg_notify($1, $2)', [channel, 'payload ☃']);
    const msg = await withTimeout(got, 5000, 'the notification');
    assert.equal(msg.channel, channel);
    assert.equal(msg.payload, 'payload ☃');
    assert.equal(msg.processId, pid);
    // NOTIFY in a transaction is delivered at commit only
    let n = 0;
    const second = new Promise((resolve) => listener.on('notification', (m) => { n++; resolve(m); }));
    await c.query('BEGIN');
    await c.query(`NOTIFY ${channel}, 'at commit'`);
    await new Promise((res) => setTimeout(res, 300));
    assert.equal(n, 0, 'notification delivered before COMMIT');
    await c.query('COMMIT');
    const m2 = await withTimeout(second, 5000, 'the notification at commit');
    assert.equal(m2.payload, 'at commit');
    await listener.end();
  }],

  ['named prepared statements executed many times', async () => {
    const name = uniqueName('q1');
    for (let i = 0; i < 200; i++) {
      const r = await c.query({ name, text: 'SELECT $1::int * 2 AS v, $2::text AS s', values: [i, `s${i}`] });
      assert.equal(r.rows[0].v, i * 2);
      assert.equal(r.rows[0].s, `s${i}`);
    }
    const ins = uniqueName('ins');
    for (let i = 0; i < 100; i++) {
      const r = await c.query({ name: ins, text: `INSERT INTO ${table} (id, t) VALUES ($1, $2)`, values: [2000 + i, `p${i}`] });
      assert.equal(r.rowCount, 1);
    }
    let r = await c.query(`SELECT count(*)::int AS n, sum(id)::int AS s FROM ${table} WHERE id >= 2000 AND id < 3000`);
    assert.equal(r.rows[0].n, 100);
    assert.equal(r.rows[0].s, 100 * 2000 + 4950);
    r = await c.query('SELECT name FROM pg_prepared_statements WHERE name IN ($1, $2) ORDER BY name', [name, ins]);
    assert.deepEqual(r.rows.map((x) => x.name), [name, ins].sort(), 'named statements not on the server');
    // an error in a named statement's execution leaves it usable
    const e = await rejects(c.query({ name: ins, text: `INSERT INTO ${table} (id, t) VALUES ($1, $2)`, values: [2000, 'dup'] }), 'dup');
    assert.equal(e.code, '23505');
    r = await c.query({ name, text: 'SELECT $1::int * 2 AS v, $2::text AS s', values: [21, 'x'] });
    assert.equal(r.rows[0].v, 42);
  }],

  ['many rows in one result', async () => {
    const r = await c.query('SELECT g, md5(g::text) AS h FROM generate_series(1, 50000) g');
    assert.equal(r.rowCount, 50000);
    assert.equal(r.rows[49999].g, 50000);
    assert.equal(r.rows[0].h, 'c4ca4238a0b923820dcc509a6f75849b');
  }],

  ['TLS verify-full against host localhost', async () => {
    const ca = fs.readFileSync(caFile);
    const t = await connect({ ...scram, host: 'localhost', ssl: { ca, servername: 'localhost', rejectUnauthorized: true } });
    const stream = t.connection.stream;
    assert.equal(stream.encrypted, true, 'not a TLS connection');
    assert.equal(stream.authorized, true, `TLS not authorized: ${stream.authorizationError}`);
    assert.equal(stream.getPeerCertificate().subject.CN, 'localhost');
    const r = await t.query('SELECT current_user AS u, $1::int AS v', [5]);
    assert.equal(r.rows[0].u, 'shunt_scram');
    assert.equal(r.rows[0].v, 5);
    await t.end();
  }],

  ['TLS with a wrong CA fails', async () => {
    const bad = new pg.Client({ ...scram, host: 'localhost', ssl: { ca: wrongCa(), servername: 'localhost' } });
    bad.on('error', () => {});
    const e = await rejects(bad.connect(), 'TLS with a wrong CA');
    assert.match(`${e.code} ${e.message}`, /UNABLE_TO_VERIFY|SELF_SIGNED|CERT|certificate/i, `${e.code}: ${e.message}`);
    await bad.end().catch(() => {});
  }],
];

async function cleanup() {
  await Promise.all(clients.map((x) => x.end().catch(() => {})));
  const d = new pg.Client(scram);
  d.on('error', () => {});
  try {
    await d.connect();
    await d.query(`DROP TABLE IF EXISTS ${table}`);
  } finally {
    await d.end().catch(() => {});
  }
}

run('test_pg', steps, cleanup);
