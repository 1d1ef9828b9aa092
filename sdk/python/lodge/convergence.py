"""Dual-agent convergence, run by the host (``lodge:platform/convergence``).

::

    from lodge import convergence

    outcome = convergence.design("a rate limiter for our API")
    print(outcome.answer, outcome.score, outcome.rounds)

    outcome = convergence.converge("Pick a database", "DBA", "Developer", max_rounds=3)
    task_id = convergence.submit("Plan the launch", "Planner", "Risk Analyst")
    state = convergence.poll(task_id)          # state.status: pending|running|done|failed

Tokens are metered to the tenant; a spent daily budget raises
:class:`lodge.QuotaExceededError`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from . import _check, _wit
from .errors import InvalidInputError, from_lodge

__all__ = [
    "Turn",
    "Usage",
    "Outcome",
    "TaskState",
    "PRESETS",
    "converge",
    "preset",
    "design",
    "review",
    "decide",
    "plan",
    "analyze",
    "generate",
    "submit",
    "poll",
]

PRESETS = ("design", "review", "decide", "plan", "analyze", "generate")
"""The preset names, as in the WIT ``preset`` enum."""


@dataclass
class Turn:
    """One message of the dialogue."""

    round: int
    agent: str
    """``"a"`` or ``"b"``."""
    role: str
    content: str

    def to_json(self) -> Dict[str, Any]:
        return {"round": self.round, "agent": self.agent, "role": self.role, "content": self.content}


@dataclass
class Usage:
    """Tokens used (metered to the tenant)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0

    def to_json(self) -> Dict[str, Any]:
        return {"promptTokens": self.prompt_tokens, "completionTokens": self.completion_tokens}


@dataclass
class Outcome:
    """The result of a convergence."""

    answer: str
    """The final, agreed position."""
    score: int
    """Agreement of the last two positions, 0-100."""
    rounds: int
    converged: bool
    """Whether ``score`` reached the threshold."""
    transcript: List[Turn] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    provider: str = ""
    """``"offline"`` (built in, deterministic) or ``"openai-compatible"``."""
    model: str = ""

    def to_json(self) -> Dict[str, Any]:
        """camelCase dict, the shape of Lodge's ``/api/v1/converge`` outcome."""
        return {
            "answer": self.answer,
            "score": self.score,
            "rounds": self.rounds,
            "converged": self.converged,
            "transcript": [t.to_json() for t in self.transcript],
            "usage": self.usage.to_json(),
            "provider": self.provider,
            "model": self.model,
        }


@dataclass
class TaskState:
    """Where an asynchronous task is."""

    status: str
    """``"pending"``, ``"running"``, ``"done"`` or ``"failed"``."""
    outcome: Optional[Outcome] = None
    """Set when ``status == "done"``."""
    error: Optional[str] = None
    """Why, when ``status == "failed"``."""

    @property
    def finished(self) -> bool:
        return self.status in ("done", "failed")

    def to_json(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"status": self.status}
        if self.outcome is not None:
            out["outcome"] = self.outcome.to_json()
        if self.error is not None:
            out["error"] = self.error
        return out


def _call(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except _wit.Err as e:
        raise from_lodge(e.value) from None


def _outcome(o: Any) -> Outcome:
    return Outcome(
        answer=o.answer,
        score=o.score,
        rounds=o.rounds,
        converged=o.converged,
        transcript=[Turn(t.round, t.agent, t.role, t.content) for t in o.transcript],
        usage=Usage(o.usage.prompt_tokens, o.usage.completion_tokens),
        provider=o.provider,
        model=o.model,
    )


def _request(
    prompt: str,
    agent_a_role: str,
    agent_b_role: str,
    context: Optional[str],
    max_rounds: Optional[int],
    threshold: Optional[int],
) -> Any:
    return _wit.convergence.Request(
        prompt=_check.text("prompt", prompt),
        agent_a_role=_check.text("agent_a_role", agent_a_role),
        agent_b_role=_check.text("agent_b_role", agent_b_role),
        context=_check.opt_text("context", context),
        max_rounds=_check.opt_integer("max_rounds", max_rounds, 0, _check.U32),
        threshold=_check.opt_integer("threshold", threshold, 0, _check.U32),
    )


def converge(
    prompt: str,
    agent_a_role: str,
    agent_b_role: str,
    *,
    context: Optional[str] = None,
    max_rounds: Optional[int] = None,
    threshold: Optional[int] = None,
) -> Outcome:
    """Runs a convergence between two roles and waits for it.

    ``max_rounds`` 1-10 (default 5), ``threshold`` 0-100 (default 80).
    """
    request = _request(prompt, agent_a_role, agent_b_role, context, max_rounds, threshold)
    return _outcome(_call(_wit.convergence.converge, request))


def preset(name: str, prompt: str, context: Optional[str] = None) -> Outcome:
    """Runs preset ``name`` (one of :data:`PRESETS`) on ``prompt``."""
    if name not in PRESETS:
        raise InvalidInputError(f"unknown preset {name!r}; one of {', '.join(PRESETS)}")
    which = getattr(_wit.convergence.Preset, name.upper())
    return _outcome(
        _call(
            _wit.convergence.converge_preset,
            which,
            _check.text("prompt", prompt),
            _check.opt_text("context", context),
        )
    )


def design(prompt: str, context: Optional[str] = None) -> Outcome:
    """Software Architect vs. Pragmatic Engineer."""
    return preset("design", prompt, context)


def review(prompt: str, context: Optional[str] = None) -> Outcome:
    """Code Reviewer vs. Author."""
    return preset("review", prompt, context)


def decide(prompt: str, context: Optional[str] = None) -> Outcome:
    """Advocate vs. Skeptic."""
    return preset("decide", prompt, context)


def plan(prompt: str, context: Optional[str] = None) -> Outcome:
    """Planner vs. Risk Analyst."""
    return preset("plan", prompt, context)


def analyze(prompt: str, context: Optional[str] = None) -> Outcome:
    """Analyst vs. Domain Expert."""
    return preset("analyze", prompt, context)


def generate(prompt: str, context: Optional[str] = None) -> Outcome:
    """Creator vs. Editor."""
    return preset("generate", prompt, context)


def submit(
    prompt: str,
    agent_a_role: str,
    agent_b_role: str,
    *,
    context: Optional[str] = None,
    max_rounds: Optional[int] = None,
    threshold: Optional[int] = None,
) -> str:
    """Queues a convergence; returns its task id (``task_…``) for :func:`poll`.

    Tasks are stored by the host and survive a restart.
    """
    request = _request(prompt, agent_a_role, agent_b_role, context, max_rounds, threshold)
    return _call(_wit.convergence.submit, request)


def poll(task_id: str) -> TaskState:
    """The state of one of this tenant's tasks (another tenant's is ``NotFoundError``)."""
    state = _call(_wit.convergence.poll, _check.text("task_id", task_id))
    name = type(state).__name__
    if name.endswith("_Done"):
        return TaskState("done", outcome=_outcome(state.value))
    if name.endswith("_Failed"):
        return TaskState("failed", error=state.value)
    if name.endswith("_Running"):
        return TaskState("running")
    return TaskState("pending")
