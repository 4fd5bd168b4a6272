// The official `openai` Node.js SDK through a running `retrybudget proxy` in front of `retrybudget fake-upstream`
// (both started here, on free 127.0.0.1 ports, stopped by pid). The SDK's own retries are off (maxRetries: 0)
// so every retry seen is the proxy's. Run by tests/run.sh: `npm install` here, then `node --test`.
// Needs RETRYBUDGET_BIN (the built `retrybudget` binary).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, openSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import OpenAI from 'openai';

const bin = process.env.RETRYBUDGET_BIN;
const procs = [];
let dir, upstream, client, evidence;

function freePort() {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => { const { port } = s.address(); s.close(() => resolve(port)); });
  });
}

function start(name, args) {
  const out = openSync(join(dir, `${name}.log`), 'w');
  const p = spawn(bin, args, { stdio: ['ignore', out, out] });
  procs.push(p);
  return p;
}

async function waitOk(url, p, timeoutMs = 30000) {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    assert.equal(p.exitCode, null, `${url}: process exited with ${p.exitCode}`);
    try { if ((await fetch(url)).ok) return; } catch { /* not up yet */ }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${url} did not answer within ${timeoutMs} ms`);
}

async function control(method, path, body) {
  const r = await fetch(`${upstream}/_control/${path}`, {
    method, headers: { 'content-type': 'application/json' }, body: body && JSON.stringify(body),
  });
  assert.equal(r.status, 200, `${method} /_control/${path}`);
  return r.json();
}

const attempts = async () => (await control('GET', 'count')).count;

async function evidenceLines(until) {
  // The proxy writes evidence off the request path (every 100 ms): poll until `until(lines)` holds. A read can
  // land while the writer's write(2) is still copying a batch in, so only lines that end in a newline count.
  const deadline = Date.now() + 10_000;
  for (;;) {
    const text = readFileSync(evidence, 'utf8');
    const lines = text.slice(0, text.lastIndexOf('\n') + 1).split('\n').filter(Boolean).map((l) => JSON.parse(l));
    if (until(lines)) return lines;
    assert.ok(Date.now() < deadline, `evidence not there after 10 s (${lines.length} lines)`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

before(async () => {
  assert.ok(bin, 'set RETRYBUDGET_BIN to the built retrybudget binary (make test does)');
  dir = mkdtempSync(join(tmpdir(), 'retrybudget-node-'));
  evidence = join(dir, 'evidence.jsonl');
  const [upPort, proxyPort] = [await freePort(), await freePort()];
  upstream = `http://127.0.0.1:${upPort}`;
  const up = start('upstream', ['fake-upstream', '--listen', `127.0.0.1:${upPort}`]);
  await waitOk(`${upstream}/_control/health`, up);
  const proxy = start('proxy', ['proxy', '--listen', `127.0.0.1:${proxyPort}`, '--upstream', upstream,
    '--provider-name', 'fake', '--route-name', 'fake_chat_completions', '--evidence-file', evidence]);
  await waitOk(`http://127.0.0.1:${proxyPort}/healthz`, proxy);
  client = new OpenAI({ baseURL: `http://127.0.0.1:${proxyPort}/v1`, apiKey: 'sk-test-not-a-real-key', maxRetries: 0 });
});

after(async () => {
  for (const p of procs.reverse()) {
    if (p.exitCode === null) {
      const exited = new Promise((r) => p.once('exit', r));
      process.kill(p.pid, 'SIGTERM');
      await exited;
    }
  }
  if (dir) rmSync(dir, { recursive: true, force: true });
});

test('non-streaming completion', async () => {
  const before = await attempts();
  const r = await client.chat.completions.create({ model: 'fake-model', messages: [{ role: 'user', content: 'hi' }] });
  assert.equal(r.object, 'chat.completion');
  assert.ok(r.choices[0].message.content.length > 0);
  assert.equal(r.choices[0].finish_reason, 'stop');
  assert.equal(await attempts(), before + 1);
});

test('streaming completion', async () => {
  const stream = await client.chat.completions.create({
    model: 'fake-model', messages: [{ role: 'user', content: 'hi' }], stream: true,
    stream_options: { include_usage: true },
  });
  let text = '';
  let finish = null;
  let usage = null;
  for await (const chunk of stream) {
    assert.equal(chunk.object, 'chat.completion.chunk');
    for (const c of chunk.choices) { text += c.delta?.content ?? ''; finish = c.finish_reason ?? finish; }
    usage = chunk.usage ?? usage;
  }
  assert.ok(text.length > 0, 'streamed content');
  assert.equal(finish, 'stop');
  assert.ok(usage && usage.total_tokens > 0, 'usage chunk');
});

test('503, 503, 200: the proxy retries, the SDK sees one success', async () => {
  const before = await attempts();
  await control('POST', 'script', [{ status: 503 }, { status: 503 }, { status: 200 }]);
  const { data, response } = await client.chat.completions
    .create({ model: 'retry-model', messages: [{ role: 'user', content: 'hi' }] })
    .withResponse();
  assert.equal(response.status, 200);
  assert.ok(data.choices[0].message.content.length > 0);
  assert.equal(await attempts(), before + 3);
  // Its three attempt records, the last one terminal (a fourth, or a second terminal one, fails below).
  const terminal = (ls) => ls.filter((l) => l.terminal_outcome === 'success_after_retry');
  const all = await evidenceLines((ls) => terminal(ls).length > 0
    && ls.filter((l) => l.trace_id === terminal(ls)[0].trace_id).length >= 3);
  const lines = terminal(all);
  assert.equal(lines.length, 1, 'one terminal record with success_after_retry');
  const trace = all.filter((l) => l.trace_id === lines[0].trace_id);
  assert.deepEqual(trace.map((l) => l.http_status_code), [503, 503, 200]);
  assert.deepEqual(trace.map((l) => l.retry_attempt), [0, 1, 2]);
});

test('400 is returned to the SDK at once, not retried', async () => {
  const before = await attempts();
  await control('POST', 'script', [{ status: 400 }]);
  await assert.rejects(
    client.chat.completions.create({ model: 'fake-model', messages: [{ role: 'user', content: 'hi' }] }),
    (e) => e instanceof OpenAI.BadRequestError && e.status === 400,
  );
  assert.equal(await attempts(), before + 1);
});
