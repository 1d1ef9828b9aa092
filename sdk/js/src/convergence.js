// lodge:platform/convergence: two agents with roles converge on one prompt.

import * as host from 'lodge:platform/convergence@0.1.0';
import { call, check, optionalU32 } from './errors.js';

/** The presets the host offers, in WIT order. */
export const PRESETS = Object.freeze(['design', 'review', 'decide', 'plan', 'analyze', 'generate']);

function optionalString(value, name) {
  if (value === undefined || value === null) return undefined;
  check(typeof value === 'string', `${name} must be a string`);
  return value;
}

/** The WIT request for a JSON-friendly one. */
function toRequest(request) {
  check(request !== null && typeof request === 'object', 'the request must be an object');
  const { prompt, agentARole = 'Proposer', agentBRole = 'Critic' } = request;
  check(typeof prompt === 'string', 'prompt must be a string');
  check(typeof agentARole === 'string', 'agentARole must be a string');
  check(typeof agentBRole === 'string', 'agentBRole must be a string');
  return {
    prompt,
    agentARole,
    agentBRole,
    context: optionalString(request.context, 'context'),
    maxRounds: optionalU32(request.maxRounds, 'maxRounds'),
    threshold: optionalU32(request.threshold, 'threshold'),
  };
}

/** A plain, JSON-ready copy of a WIT outcome. */
function toOutcome(o) {
  return {
    answer: o.answer,
    score: o.score,
    rounds: o.rounds,
    converged: o.converged,
    provider: o.provider,
    model: o.model,
    usage: { promptTokens: o.usage.promptTokens, completionTokens: o.usage.completionTokens },
    transcript: o.transcript.map((t) => ({ round: t.round, agent: t.agent, role: t.role, content: t.content })),
  };
}

/**
 * Runs a convergence and waits for it.
 * `{ prompt, agentARole = "Proposer", agentBRole = "Critic", context?, maxRounds?, threshold? }`
 */
export function converge(request) {
  const wit = toRequest(request);
  return toOutcome(call(() => host.converge(wit)));
}

/** Runs one of the PRESETS' roles on `prompt`. */
export function preset(name, prompt, context) {
  check(PRESETS.includes(name), `preset must be one of ${PRESETS.join(', ')}`);
  check(typeof prompt === 'string', 'prompt must be a string');
  const ctx = optionalString(context, 'context');
  return toOutcome(call(() => host.convergePreset(name, prompt, ctx)));
}

/** Architect vs. pragmatic engineer on a design. */
export const design = (prompt, context) => preset('design', prompt, context);
/** Reviewer vs. author on a piece of work. */
export const review = (prompt, context) => preset('review', prompt, context);
/** Advocate vs. skeptic on a decision. */
export const decide = (prompt, context) => preset('decide', prompt, context);
/** Planner vs. risk analyst on a plan. */
export const plan = (prompt, context) => preset('plan', prompt, context);
/** Analyst vs. domain expert on a question. */
export const analyze = (prompt, context) => preset('analyze', prompt, context);
/** Creator vs. editor on something to write. */
export const generate = (prompt, context) => preset('generate', prompt, context);

/** Queues a convergence (same request as `converge`); returns its task id. */
export function submit(request) {
  const wit = toRequest(request);
  return call(() => host.submit(wit));
}

/**
 * Where one of this tenant's tasks is:
 * `{ status: "pending" | "running" }`, `{ status: "done", outcome }` or
 * `{ status: "failed", error }`. Another tenant's task is a `not-found` error.
 */
export function poll(taskId) {
  check(typeof taskId === 'string', 'taskId must be a string');
  const state = call(() => host.poll(taskId));
  switch (state.tag) {
    case 'done':
      return { status: 'done', outcome: toOutcome(state.val) };
    case 'failed':
      return { status: 'failed', error: state.val };
    default:
      return { status: state.tag };
  }
}
