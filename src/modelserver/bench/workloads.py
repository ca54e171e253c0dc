"""Workloads: seeded, reproducible lists of sessions to send to a fleet.

A session is one user's conversation: a fixed opening (system prompt, few-shot examples) and
one or more user turns. Turn k+1 is sent when turn k has been answered, and carries the real
answer of turn k as the assistant message, as an agent loop does; so a session's prompts grow
and each extends the last one token for token (what a prefix cache can reuse). A single-turn
session is one independent request. Embedding sessions carry one input text each.

Named workloads (`WORKLOADS`):

- `agent`: multi-turn household-agent sessions sharing a long few-shot prefix
  (`prompts.AGENT_FEW_SHOT`, about 750 tokens) followed by a growing conversation.
- `shared-prefix`: SGLang's router benchmark, the `generated-shared-prefix` dataset of
  `python -m sglang.bench_serving` (sgl-project/sglang `python/sglang/bench_serving.py` at
  0033168f: `--gsp-num-groups 64 --gsp-prompts-per-group 16 --gsp-system-prompt-len 2048
  --gsp-question-len 128 --gsp-output-len 256`; each prompt is `f"{system_prompt}\\n\\n
  {question}"` of random tokens, and the prompts are shuffled). Scaled down by keeping the
  shape (prompts per group, lengths) and taking fewer groups: `requests // 16` groups.
- `short-chat`: independent one-question chats with short answers, no shared prefix.
- `embedding`: a batch of short texts to embed.
- `mixed`: a batch flood with interactive chats among it; each session says its `priority`
  (`bench/mixed_tenants.py` measures it through gateways with and without tenants).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from modelserver.bench import prompts
from modelserver.errors import BenchError
from modelserver.sim import tokenizer

Kind = Literal["chat", "embedding"]
Message = dict[str, str]


@dataclass(frozen=True)
class Session:
    """One conversation. `opening` is sent first in every turn; `turns` are the user's
    messages, one request each (the embedding input, for an embedding session)."""

    id: int
    kind: Kind
    opening: tuple[Message, ...]
    turns: tuple[str, ...]
    max_tokens: int
    group: int = 0
    """Sessions of the same group share their opening (the prefix a cache can reuse)."""
    priority: str = ""
    """`interactive` or `batch` in the `mixed` workload (the router's queue reads it)."""

    def messages(self, history: list[Message], turn: int) -> list[Message]:
        """The messages of request `turn`, after the answered turns in `history`."""
        return [*self.opening, *history, {"role": "user", "content": self.turns[turn]}]


@dataclass(frozen=True)
class Workload:
    name: str
    model: str
    kind: Kind
    sessions: tuple[Session, ...]
    description: str
    params: dict[str, int | float | str] = field(default_factory=dict)

    @property
    def requests(self) -> int:
        return sum(len(s.turns) for s in self.sessions)

    def first_prompt_tokens(self) -> list[int]:
        """Sim tokens of each session's first prompt (chat template included)."""
        if self.kind == "embedding":
            return [prompts.count_tokens(s.turns[0]) for s in self.sessions]
        return [len(tokenizer.apply_chat_template(s.messages([], 0))) for s in self.sessions]


@dataclass(frozen=True)
class SharedPrefixShape:
    """The `generated-shared-prefix` parameters, named as `bench_serving.py` names them."""

    gsp_num_groups: int = 64
    gsp_prompts_per_group: int = 16
    gsp_system_prompt_len: int = 2048
    gsp_question_len: int = 128
    gsp_output_len: int = 256


def shared_prefix(
    requests: int, seed: int, model: str, shape: SharedPrefixShape | None = None
) -> Workload:
    """SGLang's `generated-shared-prefix`, `requests // prompts_per_group` groups of it."""
    base = shape or SharedPrefixShape()
    groups = max(1, requests // base.gsp_prompts_per_group)
    per_group = base.gsp_prompts_per_group if requests >= base.gsp_prompts_per_group else requests
    rng = random.Random(seed)
    system_prompts = [prompts.words(base.gsp_system_prompt_len, rng) for _ in range(groups)]
    sessions = []
    for g, system_prompt in enumerate(system_prompts):
        for _ in range(per_group):
            question = prompts.words(base.gsp_question_len, rng)
            # One user message holding both parts, as bench_serving sends one prompt string.
            sessions.append((g, f"{system_prompt}\n\n{question}"))
    rng.shuffle(sessions)
    built = tuple(
        Session(id=i, kind="chat", opening=(), turns=(text,), max_tokens=base.gsp_output_len,
                group=g)
        for i, (g, text) in enumerate(sessions)
    )
    return Workload(
        name="shared-prefix",
        model=model,
        kind="chat",
        sessions=built,
        description=(
            f"SGLang generated-shared-prefix: {groups} groups x {per_group} prompts, "
            f"{base.gsp_system_prompt_len}-token system prompt, {base.gsp_question_len}-token "
            f"question, {base.gsp_output_len} output tokens"
        ),
        params={
            "gsp_num_groups": groups,
            "gsp_prompts_per_group": per_group,
            "gsp_system_prompt_len": base.gsp_system_prompt_len,
            "gsp_question_len": base.gsp_question_len,
            "gsp_output_len": base.gsp_output_len,
        },
    )


AGENT_TURNS = 4
AGENT_OUTPUT_TOKENS = 48


def agent_sessions(requests: int, seed: int, model: str, turns: int = AGENT_TURNS) -> Workload:
    """Household-agent sessions of `turns` turns each; all share the few-shot prefix."""
    rng = random.Random(seed)
    count = max(1, requests // turns)
    sessions = []
    for i in range(count):
        first = prompts.AGENT_FEW_SHOT + prompts.task_description(rng)
        later = [prompts.observation(rng) for _ in range(turns - 1)]
        sessions.append(
            Session(id=i, kind="chat", opening=(), turns=(first, *later),
                    max_tokens=AGENT_OUTPUT_TOKENS)
        )
    return Workload(
        name="agent",
        model=model,
        kind="chat",
        sessions=tuple(sessions),
        description=(
            f"{count} household-agent sessions x {turns} turns, shared "
            f"{prompts.count_tokens(prompts.AGENT_FEW_SHOT)}-token few-shot prefix, "
            f"{AGENT_OUTPUT_TOKENS} output tokens per turn"
        ),
        params={"sessions": count, "turns": turns, "output_len": AGENT_OUTPUT_TOKENS},
    )


SHORT_OUTPUT_TOKENS = 64


def short_chats(requests: int, seed: int, model: str) -> Workload:
    """Independent one-turn chats, no shared prefix beyond the chat template."""
    rng = random.Random(seed)
    sessions = tuple(
        Session(id=i, kind="chat", opening=(),
                turns=(f"[{rng.getrandbits(32):08x}] {prompts.short_question(rng)}",),
                max_tokens=SHORT_OUTPUT_TOKENS, group=i)
        for i in range(requests)
    )
    return Workload(
        name="short-chat", model=model, kind="chat", sessions=sessions,
        description=f"{requests} independent short chats, {SHORT_OUTPUT_TOKENS} output tokens",
        params={"output_len": SHORT_OUTPUT_TOKENS},
    )


EMBEDDING_INPUT_TOKENS = 96


def embedding_batch(requests: int, seed: int, model: str) -> Workload:
    """`requests` texts of about a paragraph each, one embedding request per text."""
    rng = random.Random(seed)
    sessions = tuple(
        Session(id=i, kind="embedding", opening=(),
                turns=(prompts.words(EMBEDDING_INPUT_TOKENS, rng),), max_tokens=0, group=i)
        for i in range(requests)
    )
    return Workload(
        name="embedding", model=model, kind="embedding", sessions=sessions,
        description=f"{requests} texts of {EMBEDDING_INPUT_TOKENS} tokens to embed",
        params={"input_len": EMBEDDING_INPUT_TOKENS},
    )


MIXED_INTERACTIVE_EVERY = 16
MIXED_BATCH_OUTPUT_TOKENS = 128
MIXED_INTERACTIVE_OUTPUT_TOKENS = 16


def mixed(requests: int, seed: int, model: str) -> Workload:
    """A lab's fleet: an evaluation job's batch flood, with one interactive chat in every
    `MIXED_INTERACTIVE_EVERY` requests (short question, short answer), no shared prefix."""
    rng = random.Random(seed)
    sessions = []
    for i in range(requests):
        interactive = i % MIXED_INTERACTIVE_EVERY == MIXED_INTERACTIVE_EVERY - 1
        question = f"[{rng.getrandbits(32):08x}] {prompts.short_question(rng)}"
        sessions.append(Session(
            id=i, kind="chat", opening=(), turns=(question,), group=i,
            max_tokens=MIXED_INTERACTIVE_OUTPUT_TOKENS if interactive
            else MIXED_BATCH_OUTPUT_TOKENS,
            priority="interactive" if interactive else "batch",
        ))
    return Workload(
        name="mixed", model=model, kind="chat", sessions=tuple(sessions),
        description=(
            f"batch flood ({MIXED_BATCH_OUTPUT_TOKENS} output tokens) with one interactive chat"
            f" ({MIXED_INTERACTIVE_OUTPUT_TOKENS} output tokens) in {MIXED_INTERACTIVE_EVERY}"
        ),
        params={"interactive_every": MIXED_INTERACTIVE_EVERY},
    )


WorkloadFactory = Callable[[int, int, str], Workload]

WORKLOADS: dict[str, WorkloadFactory] = {
    "shared-prefix": shared_prefix,
    "agent": agent_sessions,
    "short-chat": short_chats,
    "embedding": embedding_batch,
    "mixed": mixed,
}


def build_workload(name: str, requests: int, seed: int, model: str) -> Workload:
    """The named workload with about `requests` requests; an unknown name lists the valid ones."""
    factory = WORKLOADS.get(name)
    if factory is None:
        raise BenchError(
            f"unknown workload {name!r}; valid workloads: {', '.join(sorted(WORKLOADS))}"
        )
    if requests < 1:
        raise BenchError(f"--requests must be at least 1, got {requests}")
    return factory(requests, seed, model)
