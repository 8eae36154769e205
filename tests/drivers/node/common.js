'use strict';
// Shared bits of the node driver tests: connection settings from the environment that
// tests/integration/run.sh sets, a step runner that stops at the first failure, and a
// watchdog so a hung test fails instead of waiting for the runner's timeout.

const { execFileSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

function env(name) {
  const v = process.env[name];
  if (!v) {
    console.error(`FAIL: ${name} is not set (run through tests/integration/run.sh)`);
    process.exit(2);
  }
  return v;
}

const conn = {
  host: env('PGHOST'),
  port: Number(env('PGPORT')),
  database: env('PGDATABASE'),
};

const caFile = env('SHUNT_CA_FILE');

// A unique name for a table of this run.
function uniqueName(prefix) {
  return `${prefix}_${process.pid}_${Math.floor(Math.random() * 1e9)}`;
}

function withTimeout(promise, ms, what) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

// Expect promise (or async fn) to reject; returns the error.
async function rejects(p, what) {
  try {
    await (typeof p === 'function' ? p() : p);
  } catch (e) {
    return e;
  }
  throw new Error(`expected an error: ${what}`);
}

// A self-signed CA that did not sign the server's certificate.
function wrongCa() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'shunt-wrong-ca-'));
  try {
    execFileSync('openssl', ['req', '-x509', '-new', '-newkey', 'rsa:2048', '-nodes', '-days', '1',
      '-subj', '/CN=wrong CA', '-keyout', path.join(dir, 'ca.key'), '-out', path.join(dir, 'ca.crt')],
    { stdio: 'ignore' });
    return fs.readFileSync(path.join(dir, 'ca.crt'));
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

// Run the steps in order; exit non-zero at the first failure.  cleanup runs either way.
async function run(name, steps, cleanup, limitMs = 60000) {
  const watchdog = setTimeout(() => {
    console.error(`FAIL: ${name} did not finish within ${limitMs} ms`);
    process.exit(1);
  }, limitMs);
  watchdog.unref();
  let failed = false;
  for (const [title, fn] of steps) {
    const t0 = Date.now();
    try {
      await fn();
      console.log(`ok - ${title} (${Date.now() - t0} ms)`);
    } catch (e) {
      failed = true;
      console.error(`FAIL: ${name}: ${title}: ${e && e.stack ? e.stack : e}`);
      if (e && e.code) console.error(`  (error code ${e.code})`);
      break;
    }
  }
  try {
    await withTimeout(Promise.resolve().then(cleanup), 10000, 'cleanup');
  } catch (e) {
    console.error(`warning: cleanup failed: ${e}`);
  }
  if (failed) process.exit(1);
  console.log(`${name}: all ok`);
  process.exit(0);
}

module.exports = { conn, caFile, uniqueName, withTimeout, rejects, wrongCa, run };
