// The starter template in JavaScript: a Lodge tenant that asks the host's
// convergence engine, keeps notes and counters in key-value storage, and uses
// its wallet. Built with componentize-js by scripts/build-js-guests.sh.
//
// Convergence (the same shapes as tenant-examples/convergence-app):
//   POST /api/design | review | decide | plan | analyze | generate  {prompt, context?}
//   POST /api/converge  {prompt, agentARole?, agentBRole?, context?, maxRounds?, threshold?, async?}
//        -> the outcome, or 202 {taskId} when async
//   GET  /api/converge/{taskId}  -> {status, outcome?, error?}
//   GET  /health
// Key-value:
//   GET /api/notes · GET|PUT|DELETE /api/notes/{key} {text} · GET|POST /api/counter/{name} {by?}
// Wallet:
//   GET /api/wallet · GET /api/wallet/history?limit=&cursor= · POST /api/wallet/send
//   {to, amount, memo?, idempotencyKey?} · POST /api/wallet/sign {message} ·
//   POST /api/wallet/verify {address, message, signature}
//
// Errors: {"error": kind, "message"} with 400/403/404/429/503 by kind.

import { LodgeError, convergence, json, kv, pathOf, readJson, serve, toHex, wallet } from '@lodge/sdk';

const NOTES_INDEX = 'notes:index';
const noteKey = (name) => `note:${name}`;

function notFound() {
  return json({ error: 'not-found', message: 'no such route' }, 404);
}

// --- convergence --------------------------------------------------------------

async function ask(request, preset) {
  const body = await readJson(request);
  if (typeof body.prompt !== 'string') throw new LodgeError('invalid-input', 'prompt (a string) is required');
  if (preset) return convergence.preset(preset, body.prompt, body.context);
  const converge = {
    prompt: body.prompt,
    agentARole: body.agentARole ?? 'Proposer',
    agentBRole: body.agentBRole ?? 'Critic',
    context: body.context,
    maxRounds: body.maxRounds,
    threshold: body.threshold,
  };
  if (body.async === true) return json({ taskId: convergence.submit(converge) }, 202);
  return convergence.converge(converge);
}

// --- key-value ----------------------------------------------------------------

function listNotes() {
  const names = kv.getJson(NOTES_INDEX) ?? [];
  const notes = kv.getManyJson(names.map(noteKey)); // one batch read
  return {
    notes: names.map((key, i) => ({ key, ...(notes[i] ?? {}) })),
    count: kv.keys('note:').length,
    lastWritten: kv.getText('notes:last'),
  };
}

function getNote(name) {
  const note = kv.getJson(noteKey(name));
  if (note === null) throw new LodgeError('not-found', `no note ${name}`);
  return { key: name, ...note };
}

async function putNote(name, request) {
  const body = await readJson(request);
  if (typeof body.text !== 'string') throw new LodgeError('invalid-input', 'text (a string) is required');
  const writes = kv.increment('notes:writes');
  const note = { text: body.text, revision: writes };
  // The note and the "last written" marker in one transaction.
  kv.setMany({ [noteKey(name)]: JSON.stringify(note), 'notes:last': name });
  // The index, by compare-and-swap: concurrent writers never lose a name.
  kv.updateJson(NOTES_INDEX, (names) => {
    const list = names ?? [];
    return list.includes(name) ? undefined : [...list, name].sort();
  });
  return { key: name, ...note };
}

function deleteNote(name) {
  const existed = kv.exists(noteKey(name));
  kv.deleteMany([noteKey(name)]);
  kv.updateJson(NOTES_INDEX, (names) =>
    names && names.includes(name) ? names.filter((n) => n !== name) : undefined,
  );
  return { key: name, deleted: existed };
}

async function counter(name, request) {
  if (request.method === 'GET') {
    return { name, value: Number(kv.getText(`counter:${name}`) ?? 0) };
  }
  const body = await readJson(request);
  const by = body.by ?? 1;
  if (!Number.isSafeInteger(by)) throw new LodgeError('invalid-input', 'by must be an integer');
  return { name, value: kv.increment(`counter:${name}`, by) };
}

// --- wallet -------------------------------------------------------------------

async function send(request) {
  const body = await readJson(request);
  const { to, amount, memo = '', idempotencyKey } = body;
  if (typeof to !== 'string') throw new LodgeError('invalid-input', 'to (an address) is required');
  if (!Number.isSafeInteger(amount) || amount <= 0) {
    throw new LodgeError('invalid-input', 'amount must be a positive integer');
  }
  const txId = wallet.transfer(to, amount, { memo, idempotencyKey });
  return { txId, balance: wallet.balance() };
}

async function sign(request) {
  const { message } = await readJson(request);
  if (typeof message !== 'string') throw new LodgeError('invalid-input', 'message (a string) is required');
  const address = wallet.address();
  const signature = wallet.sign(message);
  return { address, message, signature: toHex(signature), verified: wallet.verify(address, message, signature) };
}

async function verify(request) {
  const { address, message, signature } = await readJson(request);
  if (typeof address !== 'string' || typeof message !== 'string' || typeof signature !== 'string') {
    throw new LodgeError('invalid-input', 'address, message and signature (hex) are required');
  }
  return { valid: wallet.verify(address, message, signature) };
}

function history(url) {
  const limit = Number(url.searchParams.get('limit') ?? 20);
  if (!Number.isInteger(limit) || limit < 1 || limit > 100) {
    throw new LodgeError('invalid-input', 'limit must be 1-100');
  }
  return wallet.history({ cursor: url.searchParams.get('cursor'), limit });
}

// --- routing ------------------------------------------------------------------

serve(async (request) => {
  const url = new URL(request.url);
  const path = pathOf(request);
  const method = request.method;

  if (method === 'GET' && path === '/health') return { status: 'ok' };

  if (path.startsWith('/api/converge/') && method === 'GET') {
    return convergence.poll(decodeURIComponent(path.slice('/api/converge/'.length)));
  }
  if (method === 'POST' && path === '/api/converge') return ask(request, null);
  if (method === 'POST' && path.startsWith('/api/')) {
    const preset = path.slice('/api/'.length);
    if (convergence.PRESETS.includes(preset)) return ask(request, preset);
  }

  if (path === '/api/notes' && method === 'GET') return listNotes();
  if (path.startsWith('/api/notes/')) {
    const name = decodeURIComponent(path.slice('/api/notes/'.length));
    if (name === '' || name.includes('/')) throw new LodgeError('invalid-input', 'a note name is one path segment');
    if (method === 'GET') return getNote(name);
    if (method === 'PUT') return putNote(name, request);
    if (method === 'DELETE') return deleteNote(name);
  }
  if (path.startsWith('/api/counter/') && (method === 'GET' || method === 'POST')) {
    const name = decodeURIComponent(path.slice('/api/counter/'.length));
    if (name === '') throw new LodgeError('invalid-input', 'a counter needs a name');
    return counter(name, request);
  }

  if (path === '/api/wallet' && method === 'GET') {
    return { address: wallet.address(), balance: wallet.balance() };
  }
  if (path === '/api/wallet/history' && method === 'GET') return history(url);
  if (path === '/api/wallet/send' && method === 'POST') return send(request);
  if (path === '/api/wallet/sign' && method === 'POST') return sign(request);
  if (path === '/api/wallet/verify' && method === 'POST') return verify(request);

  return notFound();
});
