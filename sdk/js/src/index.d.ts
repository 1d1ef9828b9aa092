// Types of @lodge/sdk: Lodge's host capabilities for JavaScript tenants.

/** The WIT error variants (lodge:platform/types.error and wasi:keyvalue's). */
export type ErrorKind =
  | 'not-found'
  | 'access-denied'
  | 'quota-exceeded'
  | 'limit'
  | 'invalid-input'
  | 'unavailable'
  | 'no-such-store'
  | 'other';

/** A host call failed: `kind` is the WIT variant, `message` its text. */
export class LodgeError extends Error {
  constructor(kind: ErrorKind | string, message?: string);
  readonly kind: ErrorKind | string;
  /** The HTTP status the kind maps to (see STATUS). */
  readonly status: number;
  toJSON(): { kind: string; message: string };
}

/** HTTP status per error kind: 400, 403, 404, 429, 503; 500 for "other". */
export const STATUS: Readonly<Record<ErrorKind, number>>;

/** Bytes of a string (UTF-8), Uint8Array, ArrayBuffer or typed array. */
export type BytesLike = string | Uint8Array | ArrayBuffer | ArrayBufferView;

export function toBytes(value: BytesLike): Uint8Array;
export function toText(bytes: Uint8Array): string;
export function toHex(bytes: Uint8Array): string;
export function fromHex(hex: string): Uint8Array;

/** A JSON response, `status` 200 by default. */
export function json(body: unknown, status?: number, headers?: Record<string, string>): Response;
/** `{ error: kind, message }` with the kind's status; 500 for anything else. */
export function errorResponse(err: unknown): Response;
/** The body as a JSON object (`{}` when empty); invalid-input otherwise. */
export function readJson<T = any>(request: Request): Promise<T>;
/** The request's path (Lodge already stripped `/tenants/SLUG`). */
export function pathOf(request: Request): string;
/**
 * Serves every request (wasi:http/incoming-handler, through StarlingMonkey's
 * fetch event). A returned object is sent as JSON; a thrown LodgeError becomes
 * `{ error: kind, message }` with the kind's status.
 */
export function serve(handler: (request: Request) => Response | unknown | Promise<Response | unknown>): void;

export namespace convergence {
  export type Preset = 'design' | 'review' | 'decide' | 'plan' | 'analyze' | 'generate';
  export const PRESETS: readonly string[];

  export interface Request {
    prompt: string;
    /** Default "Proposer". */
    agentARole?: string;
    /** Default "Critic". */
    agentBRole?: string;
    context?: string | null;
    /** 1-10, default 5. */
    maxRounds?: number | null;
    /** 0-100, default 80. */
    threshold?: number | null;
  }
  export interface Turn {
    round: number;
    agent: 'a' | 'b' | string;
    role: string;
    content: string;
  }
  export interface Outcome {
    answer: string;
    score: number;
    rounds: number;
    converged: boolean;
    /** "offline" or "openai-compatible". */
    provider: string;
    model: string;
    usage: { promptTokens: number; completionTokens: number };
    transcript: Turn[];
  }
  export type TaskState =
    | { status: 'pending' }
    | { status: 'running' }
    | { status: 'done'; outcome: Outcome }
    | { status: 'failed'; error: string };

  export function converge(request: Request): Outcome;
  export function preset(name: Preset | string, prompt: string, context?: string | null): Outcome;
  export function design(prompt: string, context?: string | null): Outcome;
  export function review(prompt: string, context?: string | null): Outcome;
  export function decide(prompt: string, context?: string | null): Outcome;
  export function plan(prompt: string, context?: string | null): Outcome;
  export function analyze(prompt: string, context?: string | null): Outcome;
  export function generate(prompt: string, context?: string | null): Outcome;
  /** Queues a convergence; returns its task id (`task_…`). */
  export function submit(request: Request): string;
  /** Another tenant's task is a `not-found` LodgeError. */
  export function poll(taskId: string): TaskState;
}

export namespace wallet {
  export interface Entry {
    id: string;
    /** "funding", "sent" or "received". */
    kind: string;
    counterparty: string;
    /** Positive: in; negative: out. */
    amount: number | bigint;
    memo: string;
    /** RFC 3339. */
    createdAt: string;
  }
  export interface HistoryPage {
    entries: Entry[];
    /** Pass back for the next (older) page; null at the end. */
    cursor: string | null;
  }
  export function address(): string;
  /** A Number (a BigInt past 2^53). */
  export function balance(): number | bigint;
  /** Returns the transfer id (`tx_…`); idempotent per `idempotencyKey` (random if omitted). */
  export function transfer(
    to: string,
    amount: number | bigint,
    options?: { memo?: string; idempotencyKey?: string },
  ): string;
  /** Ed25519, 64 bytes; the key stays on the host. */
  export function sign(message: BytesLike): Uint8Array;
  /** `signature` as bytes or hex. */
  export function verify(address: string, message: BytesLike, signature: BytesLike): boolean;
  /** Newest first; `limit` 1-100 (default 20). */
  export function history(options?: { cursor?: string | null; limit?: number }): HistoryPage;
}

export namespace kv {
  /** A bucket of the tenant's storage (wasi:keyvalue@0.2.0-draft2). */
  export class Store {
    /** 1-64 of `A-Z a-z 0-9 - _ .`; "default" if omitted. */
    constructor(name?: string);
    readonly name: string;
    get(key: string): Uint8Array | null;
    getText(key: string): string | null;
    getJson<T = any>(key: string): T | null;
    set(key: string, value: BytesLike): void;
    setJson(key: string, value: unknown): void;
    delete(key: string): void;
    exists(key: string): boolean;
    /** One page of keys, sorted. */
    listKeys(cursor?: string | null): { keys: string[]; cursor: string | null };
    /** Every key (optionally with `prefix`), sorted. */
    keys(prefix?: string): string[];
    /** Atomic; a missing key counts as 0; returns the new value. */
    increment(key: string, delta?: number | bigint): number | bigint;
    /** Compare-and-swap loop; return undefined to leave the value unchanged. */
    update(key: string, change: (current: Uint8Array | null) => BytesLike | undefined): Uint8Array | null;
    updateJson<T = any>(key: string, change: (current: T | null) => T | undefined): T | null;
    /** Values in the order asked; null for unset keys. */
    getMany(keys: string[]): (Uint8Array | null)[];
    getManyJson<T = any>(keys: string[]): (T | null)[];
    /** All or nothing, in one transaction. */
    setMany(entries: [string, BytesLike][] | Record<string, BytesLike>): void;
    deleteMany(keys: string[]): void;
  }
  export function open(name?: string): Store;
  /** The "default" bucket. */
  export function store(): Store;
  // Shortcuts on the default bucket.
  export function get(key: string): Uint8Array | null;
  export function getText(key: string): string | null;
  export function getJson<T = any>(key: string): T | null;
  export function set(key: string, value: BytesLike): void;
  export function setJson(key: string, value: unknown): void;
  export function del(key: string): void;
  export { del as delete };
  export function exists(key: string): boolean;
  export function listKeys(cursor?: string | null): { keys: string[]; cursor: string | null };
  export function keys(prefix?: string): string[];
  export function increment(key: string, delta?: number | bigint): number | bigint;
  export function update(key: string, change: (current: Uint8Array | null) => BytesLike | undefined): Uint8Array | null;
  export function updateJson<T = any>(key: string, change: (current: T | null) => T | undefined): T | null;
  export function getMany(keys: string[]): (Uint8Array | null)[];
  export function getManyJson<T = any>(keys: string[]): (T | null)[];
  export function setMany(entries: [string, BytesLike][] | Record<string, BytesLike>): void;
  export function deleteMany(keys: string[]): void;
}
