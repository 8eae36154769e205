'use strict';
// Named prepared statements kept across pgshunt's phase switches, with the node drivers.
// Run by tests/integration/test_switch_drivers.sh (not by run.sh beside it):
//
//   node switch_postgres.js pgjs|pg HOST PORT DBNAME USER SITE
//
// pgjs: postgres.js, one connection (max: 1), prepare: true (tagged templates become
//       named server-side statements, reused by signature);
// pg:   node-postgres, one Client, named query configs ({name, text, values}).
//
// The program runs the application's statements in stages; at the end of a stage it
// prints "SYNC <stage>" and waits for a line on stdin, while the shell switches the
// phase on pgshunt's console (and checks the tables):
//   passthrough -> dual_write -> read_next (FORCE) -> cutover -> (read_next) dual_write_again
//   -> passthrough_again
// Every statement's results are checked through the driver's API and on the wire: the
// socket is tapped, so the test sees what the driver really sent (after the first stage:
// a Bind of the same statement name, never a new Parse -- postgres.js would otherwise
// silently re-prepare on "prepared statement does not exist") and what came back (the
// exact command tag, the RowDescription's columns, each DataRow's width, no stray
// ParseComplete/CloseComplete from statements pgshunt prepared again behind its back).
// Exits non-zero at the first failed check.

const assert = require('node:assert/strict');
const net = require('node:net');
const readline = require('node:readline');
const { run } = require('./common');

const [driver, host, portText, database, user, site] = process.argv.slice(2);
if (!['pgjs', 'pg'].includes(driver) || !site) {
  console.error('usage: node switch_postgres.js pgjs|pg HOST PORT DBNAME USER SITE');
  process.exit(2);
}
const port = Number(portText);

// ---- the wire tap ----

function cstring(buf, at) {
  const end = buf.indexOf(0, at);
  return [buf.toString('utf8', at, end), end + 1];
}

function decodeBackend(type, body) {
  switch (type) {
    case 'T': {
      const cols = [];
      let at = 2;
      for (let i = 0; i < body.readInt16BE(0); i++) {
        const [name, next] = cstring(body, at);
        cols.push(name);
        at = next + 18;
      }
      return { t: 'T', cols };
    }
    case 'D': return { t: 'D', n: body.readInt16BE(0) };
    case 'C': return { t: 'C', tag: cstring(body, 0)[0] };
    case 'E': {
      const fields = {};
      for (let at = 0; at < body.length && body[at] !== 0;) {
        const code = String.fromCharCode(body[at]);
        const [value, next] = cstring(body, at + 1);
        fields[code] = value;
        at = next;
      }
      return { t: 'E', code: fields.C, message: fields.M };
    }
    default: return { t: type };
  }
}

function decodeFrontend(type, body) {
  switch (type) {
    case 'P': {
      const [name, at] = cstring(body, 0);
      return { t: 'P', name, text: cstring(body, at)[0] };
    }
    case 'B': { // portal, statement, parameter formats, parameters, result formats
      let [, at] = cstring(body, 0);
      let name;
      [name, at] = cstring(body, at);
      at += 2 + 2 * body.readInt16BE(at);
      const np = body.readInt16BE(at);
      at += 2;
      for (let i = 0; i < np; i++) at += 4 + Math.max(body.readInt32BE(at), 0);
      const formats = [];
      for (let i = 0; i < body.readInt16BE(at); i++) formats.push(body.readInt16BE(at + 2 + 2 * i));
      return { t: 'B', name, formats };
    }
    case 'C': case 'D': return { t: type, kind: String.fromCharCode(body[0]), name: cstring(body, 1)[0] };
    case 'Q': return { t: 'Q', text: cstring(body, 0)[0] };
    default: return { t: type };
  }
}

class Tap {
  constructor() {
    this.inBuf = Buffer.alloc(0);
    this.outBuf = Buffer.alloc(0);
    this.started = false; // the StartupMessage has no type byte
    this.reset();
  }

  reset() {
    this.sent = [];
    this.got = [];
  }

  feedIn(chunk) {
    this.inBuf = Buffer.concat([this.inBuf, chunk]);
    while (this.inBuf.length >= 5) {
      const len = this.inBuf.readInt32BE(1);
      if (this.inBuf.length < 1 + len) break;
      this.got.push(decodeBackend(String.fromCharCode(this.inBuf[0]), this.inBuf.subarray(5, 1 + len)));
      this.inBuf = this.inBuf.subarray(1 + len);
    }
  }

  feedOut(chunk) {
    this.outBuf = Buffer.concat([this.outBuf, Buffer.from(chunk)]);
    for (;;) {
      if (!this.started) {
        if (this.outBuf.length < 4) return;
        const len = this.outBuf.readInt32BE(0);
        if (this.outBuf.length < len) return;
        this.outBuf = this.outBuf.subarray(len);
        this.started = true;
        continue;
      }
      if (this.outBuf.length < 5) return;
      const len = this.outBuf.readInt32BE(1);
      if (this.outBuf.length < 1 + len) return;
      this.sent.push(decodeFrontend(String.fromCharCode(this.outBuf[0]), this.outBuf.subarray(5, 1 + len)));
      this.outBuf = this.outBuf.subarray(1 + len);
    }
  }

  // Attach to a socket before the driver does, so our listeners run first.  node resets
  // socket.write when the socket connects: it is wrapped on 'connect'.
  attach(socket) {
    socket.on('data', (chunk) => this.feedIn(chunk));
    socket.once('connect', () => {
      const write = socket.write;
      socket.write = (chunk, ...rest) => {
        this.feedOut(chunk);
        return write.call(socket, chunk, ...rest);
      };
    });
    return socket;
  }
}

const tap = new Tap();

// ---- the application's statements, per driver ----

const CLAIM = 'INSERT INTO ingest_idempotency (site_id, idempotency_key, request_hash) VALUES ($1, $2, $3) '
  + 'ON CONFLICT (site_id, idempotency_key) DO NOTHING RETURNING created_at';
const READ = 'SELECT status FROM ingest_idempotency WHERE site_id = $1 AND idempotency_key = $2';
const FINISH = 'UPDATE ingest_idempotency SET status = $3, response_code = $4 '
  + 'WHERE site_id = $1 AND idempotency_key = $2 RETURNING status, response_code';
const TOUCH = 'UPDATE ingest_idempotency SET response_body = $3::jsonb WHERE site_id = $1 AND idempotency_key = $2';
const FORGET = 'DELETE FROM ingest_idempotency WHERE site_id = $1 AND idempotency_key = $2';

let ops;
let closeDriver;

if (driver === 'pgjs') {
  const postgres = require('postgres');
  const sql = postgres({
    host, port, database, username: user,
    max: 1,
    prepare: true,
    connect_timeout: 10,
    idle_timeout: 0,
    onnotice: () => {},
    // A socket of our own, tapped, already connected (postgres.js wants it so).
    socket: () => new Promise((resolve, reject) => {
      const s = tap.attach(new net.Socket());
      s.once('error', reject);
      s.connect(port, host, () => { s.removeListener('error', reject); resolve(s); });
    }),
  });
  const norm = (r) => ({
    rows: [...r], count: r.count, command: r.command,
    columns: (r.columns || []).map((c) => c.name),
  });
  // One template per statement: postgres.js keeps one named statement per signature.
  ops = {
    claim: async (k, h) => norm(await sql`INSERT INTO ingest_idempotency (site_id, idempotency_key, request_hash) VALUES (${site}, ${k}, ${h}) ON CONFLICT (site_id, idempotency_key) DO NOTHING RETURNING created_at`),
    read: async (k) => norm(await sql`SELECT status FROM ingest_idempotency WHERE site_id = ${site} AND idempotency_key = ${k}`),
    finish: async (k, st, code) => norm(await sql`UPDATE ingest_idempotency SET status = ${st}, response_code = ${code} WHERE site_id = ${site} AND idempotency_key = ${k} RETURNING status, response_code`),
    touch: async (k, body) => norm(await sql`UPDATE ingest_idempotency SET response_body = ${body}::jsonb WHERE site_id = ${site} AND idempotency_key = ${k}`),
    forget: async (k) => norm(await sql`DELETE FROM ingest_idempotency WHERE site_id = ${site} AND idempotency_key = ${k}`),
    backendPid: async () => (await sql`SELECT pg_backend_pid() AS p`.simple())[0].p,
  };
  closeDriver = () => sql.end({ timeout: 5 });
} else {
  const { Client } = require('pg');
  const client = new Client({
    host, port, database, user,
    connectionTimeoutMillis: 10000,
    stream: () => tap.attach(new net.Socket()),
  });
  const norm = (r) => ({
    rows: r.rows, count: r.rowCount, command: r.command,
    columns: (r.fields || []).map((f) => f.name),
  });
  const named = (name, text) => async (...values) => norm(await client.query({ name, text, values }));
  ops = {
    connect: () => client.connect(),
    claim: (k, h) => named('switch_claim', CLAIM)(site, k, h),
    read: (k) => named('switch_read', READ)(site, k),
    finish: (k, st, code) => named('switch_finish', FINISH)(site, k, st, code),
    touch: (k, body) => named('switch_touch', TOUCH)(site, k, body),
    forget: (k) => named('switch_forget', FORGET)(site, k),
    backendPid: async () => (await client.query('SELECT pg_backend_pid() AS p')).rows[0].p,
  };
  closeDriver = () => client.end();
}

// ---- one statement, checked through the API and on the wire ----

const boundName = {}; // statement label -> the server-side name the driver bound in passthrough
let switched = false; // after the first stage: no Parse from the driver any more

async function stmt(label, call, want) {
  tap.reset();
  let r;
  let thrown;
  try {
    r = await call();
  } catch (e) {
    thrown = e;
  }
  const fmt = (m) => m.t + (m.name !== undefined ? `(${m.name})` : '') + (m.formats ? `formats[${m.formats}]` : '') + (m.tag ? `[${m.tag}]` : '')
    + (m.code ? `{${m.code} ${m.message}}` : '') + (m.n !== undefined ? `#${m.n}` : '') + (m.cols ? JSON.stringify(m.cols) : '');
  const what = `${label} ${JSON.stringify(want.args || '')} (sent ${tap.sent.map(fmt).join(' ')}; got ${tap.got.map(fmt).join(' ')})`;
  if (thrown) throw new Error(`${what}: ${thrown.code || ''} ${thrown.message}`);
  // What the driver sent: one Bind of a named statement; after the switch the same name
  // as before, and no Parse.
  const binds = tap.sent.filter((m) => m.t === 'B');
  const parses = tap.sent.filter((m) => m.t === 'P');
  assert.equal(binds.length, 1, `${what}: ${binds.length} Binds sent`);
  const name = binds[0].name;
  assert.notEqual(name, '', `${what}: the driver bound the unnamed statement`);
  if (!switched) {
    boundName[label] = name;
  } else {
    assert.equal(name, boundName[label], `${what}: the driver bound another statement than in passthrough`);
    assert.deepEqual(parses, [], `${what}: the driver parsed again after the switch`);
  }
  for (const p of parses) assert.equal(p.name, name, `${what}: Parse of another name`);
  // What came back.
  const errors = tap.got.filter((m) => m.t === 'E');
  assert.deepEqual(errors, [], `${what}: error on the wire`);
  const tags = tap.got.filter((m) => m.t === 'C').map((m) => m.tag);
  assert.deepEqual(tags, [want.tag], `${what}: command tags on the wire`);
  for (const t of tap.got.filter((m) => m.t === 'T')) {
    assert.deepEqual(t.cols, want.cols, `${what}: RowDescription on the wire`);
  }
  const dataRows = tap.got.filter((m) => m.t === 'D');
  assert.equal(dataRows.length, want.rows.length, `${what}: DataRows on the wire`);
  for (const d of dataRows) assert.equal(d.n, want.cols.length, `${what}: DataRow width on the wire`);
  if (want.cols.length === 0) {
    assert.equal(tap.got.filter((m) => m.t === 'T').length, 0, `${what}: a RowDescription for a statement without RETURNING`);
  }
  const count = (t) => tap.got.filter((m) => m.t === t).length;
  assert.equal(count('1'), parses.length, `${what}: ParseComplete messages the driver did not ask for`);
  assert.equal(count('3'), tap.sent.filter((m) => m.t === 'C').length, `${what}: CloseComplete messages the driver did not ask for`);
  assert.equal(count('Z'), 1, `${what}: ReadyForQuery messages`);
  // What the driver's API says.
  assert.equal(r.command, want.tag.split(' ')[0], `${what}: command`);
  assert.equal(r.count, Number(want.tag.split(' ').pop()), `${what}: row count`);
  if (want.cols.length > 0) assert.deepEqual(r.columns, want.cols, `${what}: columns`);
  assert.equal(r.rows.length, want.rows.length, `${what}: rows: ${JSON.stringify(r.rows)}`);
  r.rows.forEach((row, i) => {
    assert.deepEqual(Object.keys(row), want.cols, `${what}: keys of row ${i}`);
    for (const [k, v] of Object.entries(want.rows[i])) {
      if (v === Date) {
        assert.ok(row[k] instanceof Date && !Number.isNaN(row[k].getTime()), `${what}: ${k} is not a timestamp: ${row[k]}`);
      } else {
        assert.deepEqual(row[k], v, `${what}: ${k} of row ${i}`);
      }
    }
  });
  return r;
}

const hash = (i) => Buffer.from([i, 0xff, 0x00, 0x5c]);
const claim = (k, i) => stmt('claim', () => ops.claim(k, hash(i)),
  { args: [k], tag: 'INSERT 0 1', cols: ['created_at'], rows: [{ created_at: Date }] });
const claimAgain = (k, i) => stmt('claim', () => ops.claim(k, hash(i)),
  { args: [k, 'retry'], tag: 'INSERT 0 0', cols: ['created_at'], rows: [] });
const read = (k, status) => stmt('read', () => ops.read(k),
  { args: [k], tag: `SELECT ${status ? 1 : 0}`, cols: ['status'], rows: status ? [{ status }] : [] });
const finish = (k, status, code, found = true) => stmt('finish', () => ops.finish(k, status, code),
  { args: [k, status, code], tag: `UPDATE ${found ? 1 : 0}`, cols: ['status', 'response_code'],
    rows: found ? [{ status, response_code: code }] : [] });
const touch = (k, found = true) => stmt('touch', () => ops.touch(k, JSON.stringify({ driver, key: k })),
  { args: [k], tag: `UPDATE ${found ? 1 : 0}`, cols: [], rows: [] });
const forget = (k, found = true) => stmt('forget', () => ops.forget(k),
  { args: [k], tag: `DELETE ${found ? 1 : 0}`, cols: [], rows: [] });

// ---- talking with the shell ----

const lines = [];
const waiters = [];
let stdinClosed = false;
readline.createInterface({ input: process.stdin }).on('line', (l) => {
  const w = waiters.shift();
  if (w) w.resolve(l); else lines.push(l);
}).on('close', () => {
  stdinClosed = true;
  for (const w of waiters.splice(0)) w.reject(new Error('stdin closed: the shell is gone'));
});

function sync(stage) {
  console.log(`SYNC ${stage}`);
  if (lines.length) return Promise.resolve(lines.shift());
  if (stdinClosed) return Promise.reject(new Error('stdin closed: the shell is gone'));
  return new Promise((resolve, reject) => waiters.push({ resolve, reject }));
}

let pid;
const samePid = async () => assert.equal(await ops.backendPid(), pid, 'the connection to the server changed');

const steps = [
  ['connect', async () => {
    if (ops.connect) await ops.connect();
    pid = await ops.backendPid();
  }],
  ['passthrough: claim, retry, read, UPDATE ... RETURNING, UPDATE, DELETE (statements made named)', async () => {
    await claim('pre-1', 1);
    await claimAgain('pre-1', 1);
    await claim('pre-2', 2);
    await read('pre-1', 'processing');
    await finish('pre-1', 'completed', 201);
    await finish('nobody', 'completed', 201, false);
    await touch('pre-1');
    await read('pre-1', 'completed');
    await claim('pre-3', 3);
    await forget('pre-3');
    await forget('pre-3', false);
    for (const label of ['claim', 'read', 'finish', 'touch', 'forget']) {
      assert.ok(boundName[label], `no named statement for ${label}`);
    }
    console.log(`  statements: ${JSON.stringify(boundName)}`);
    switched = true;
  }],
  ['(the shell: MIGRATE PREPARE, SET PHASE dual_write)', () => sync('passthrough')],
  ['dual_write: the same statements, new keys', async () => {
    await samePid();
    await claim('dw-1', 11);
    await claimAgain('dw-1', 11);
    await claim('dw-2', 12);
    await claim('dw-3', 13);
    await read('dw-1', 'processing');
    await finish('dw-1', 'completed', 201);
    await finish('pre-2', 'failed', 502); // a row from before the switch: mirrored now
    await finish('nobody', 'completed', 201, false);
    await touch('dw-2');
    await touch('nobody', false);
    await forget('dw-3');
    await forget('dw-3', false);
    await read('dw-1', 'completed');
    await read('pre-1', 'completed'); // in the table only: read from the table
  }],
  ['(the shell: tables checked, SET PHASE read_next FORCE, a row put in each table directly)', () => sync('dual_write')],
  ['read_next: the read comes from next_table; writes still mirrored', async () => {
    await samePid();
    await read('direct-only', null); // only in the table
    await read('next-only', 'failed'); // only in next_table
    await read('pre-1', null); // never mirrored: not in next_table
    await read('dw-1', 'completed');
    await read('pre-2', 'failed');
    await claim('rn-1', 21);
    await claimAgain('rn-1', 21);
    await read('rn-1', 'processing');
    await finish('rn-1', 'completed', 200);
    await touch('rn-1');
    await read('rn-1', 'completed');
  }],
  ['(the shell: SET PHASE cutover)', () => sync('read_next')],
  ['cutover: writes go to next_table first (claims through the view), mirrored into the table', async () => {
    await samePid();
    await read('direct-only', null); // only in the table: reads come from next_table
    await read('pre-1', null);
    await read('rn-1', 'completed');
    await claim('co-1', 51);
    await claimAgain('co-1', 51);
    await claimAgain('rn-1', 21); // from read_next: claimed already
    await claim('co-2', 52);
    await read('co-1', 'processing');
    await finish('co-1', 'completed', 201);
    await finish('nobody', 'completed', 201, false);
    await touch('co-1');
    await forget('co-2');
    await forget('co-2', false);
    await read('co-1', 'completed');
  }],
  ['(the shell: SET PHASE read_next, SET PHASE dual_write)', () => sync('cutover')],
  ['dual_write again: reads from the table again', async () => {
    await samePid();
    await read('direct-only', 'processing');
    await read('pre-1', 'completed');
    await read('next-only', null);
    await claim('dw-4', 31);
    await finish('dw-4', 'completed', 201);
  }],
  ['(the shell: SET PHASE passthrough)', () => sync('dual_write_again')],
  ['passthrough again: nothing mirrored, the same statements', async () => {
    await samePid();
    await claim('pt-1', 41);
    await claimAgain('pt-1', 41);
    await read('pt-1', 'processing');
    await finish('pt-1', 'completed', 201);
    await touch('pt-1');
    await claim('pt-2', 42);
    await forget('pt-2');
    await read('direct-only', 'processing');
  }],
];

run(`switch_postgres ${driver}`, steps, () => closeDriver(), 50000);
