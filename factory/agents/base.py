"""The agent seam: what the flow asks of an agent, and how a worker builds one.

An agent answers the flow's decisions for one environment: which of the seed's tables to
load and which columns its tasks may use (`choose_data`, `agents.data`), the level-0 task
(`base_task`) and candidate harder constraint sets (`moves`). The ladder, not the agent,
counts plans and judges each move; it tells the agent why a move was rejected
(`feedback`), so a model agent can do better on its next proposal. Agents are built in
each worker process from an `AgentSpec` (picklable: a name and plain settings), never
passed across processes themselves.

Kinds: `specialist` (deterministic rules plus solver feedback, `agents.specialist`) and
`openai` (any OpenAI-compatible chat server, `agents.model`).
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from typing import Iterator, Protocol

from envfactory.verifiers.constraints import Constraint
from envfactory.verifiers.count import CountResult
from envfactory.verifiers.problem import Plan, Problem

__all__ = ["Agent", "AgentError", "AgentSpec", "AGENT_KINDS", "make_agent", "agent_stats"]

AGENT_KINDS = ("specialist", "openai", "dsa")  # dsa: our own model, served locally (agents/local.py)


class AgentError(RuntimeError):
    pass


class Agent(Protocol):
    def choose_data(self, tables: list, rng: random.Random):
        """The tables to load and the columns tasks may use (`agents.data.DataChoice`), from the
        seed's catalog (`agents.data.CatalogTable`s); checked by `agents.data.check_choice`."""

    def base_task(self, p: Problem, rng: random.Random) -> tuple[list[Constraint], CountResult]:
        """Level 0: few constraints, solvable, with its plans counted."""

    def moves(self, p: Problem, current: list[Constraint], reference: Plan, rng: random.Random,
              level: int) -> Iterator[tuple[str, list[Constraint]]]:
        """Candidate harder constraint sets, best first, each with a short description."""

    def feedback(self, move: str, accepted: bool, reason: str) -> None:
        """The ladder's verdict on a move the agent proposed."""


@dataclass(frozen=True)
class AgentSpec:
    """How to build an agent in a worker: plain values only (it crosses process boundaries)."""
    kind: str = "specialist"
    model: str | None = None
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"   # the key is read from this variable in the worker
    fallback: str | None = None           # "specialist": a decision the model cannot make usably falls back to it
    options: tuple[tuple[str, object], ...] = field(default_factory=tuple)  # chat settings (timeouts, ...)

    def __post_init__(self):
        if self.kind not in AGENT_KINDS:
            raise ValueError(f"unknown agent {self.kind!r} (agents: {', '.join(AGENT_KINDS)})")
        if self.fallback not in (None, "specialist"):
            raise ValueError(f"unknown fallback {self.fallback!r} (none or specialist)")
        if self.kind == "openai" and not self.base_url:
            raise ValueError("--agent openai needs --base-url (an OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1)")

    @property
    def api_key(self) -> str | None:
        return os.environ.get(self.api_key_env)


def make_agent(spec: AgentSpec, seed):
    """The agent a spec names, for one seed, built here (in the worker)."""
    if spec.kind == "specialist":
        record = dict(spec.options).get("record")
        if record:  # the specialist, writing its decisions down for distillation
            from envfactory.factory.agents.distill import DistillingAgent

            return DistillingAgent(seed, record)
        from envfactory.factory.agents.specialist import SpecialistAgent

        return SpecialistAgent(seed)
    from envfactory.factory.agents.model import ModelAgent

    return ModelAgent(seed, spec)


def agent_stats(agent) -> dict:
    """What an agent reports of its proposals: how many it made, how many were rejected and
    why (the first few reasons), and what its model calls cost."""
    stats = getattr(agent, "stats", None)
    if callable(stats):
        return stats()
    rejected = list(getattr(agent, "rejected", []))
    return {"rejected": len(rejected), "reasons": rejected[:5]}
