"""Workloads are seeded, shaped like their sources, and measured in the sim's tokens."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from modelserver.bench import prompts
from modelserver.bench.workloads import (
    SharedPrefixShape,
    agent_sessions,
    build_workload,
    shared_prefix,
)
from modelserver.errors import BenchError
from modelserver.sim import tokenizer


@pytest.mark.parametrize("n", [1, 2, 17, 2048])
def test_words_gives_exactly_n_sim_tokens(n: int) -> None:
    assert prompts.count_tokens(prompts.words(n, random.Random(n))) == n


def test_shared_prefix_keeps_sglangs_shape_with_fewer_groups() -> None:
    workload = shared_prefix(requests=64, seed=1, model="m")
    assert workload.params["gsp_num_groups"] == 4
    assert workload.params["gsp_prompts_per_group"] == 16
    assert Counter(s.group for s in workload.sessions) == {0: 16, 1: 16, 2: 16, 3: 16}
    shape = SharedPrefixShape()
    for session in workload.sessions:
        system, question = session.turns[0].split("\n\n")
        assert prompts.count_tokens(system) == shape.gsp_system_prompt_len
        assert prompts.count_tokens(question) == shape.gsp_question_len
        assert session.max_tokens == shape.gsp_output_len


def test_shared_prefix_prompts_of_a_group_share_their_system_prompt_only() -> None:
    workload = shared_prefix(requests=32, seed=3, model="m")
    by_group: dict[int, set[str]] = {}
    for s in workload.sessions:
        by_group.setdefault(s.group, set()).add(s.turns[0].split("\n\n")[0])
    assert all(len(systems) == 1 for systems in by_group.values())
    assert len({next(iter(v)) for v in by_group.values()}) == len(by_group)


def test_shared_prefix_is_shuffled_like_bench_serving() -> None:
    groups = [s.group for s in shared_prefix(requests=64, seed=5, model="m").sessions]
    assert groups != sorted(groups)


def test_same_seed_same_workload_other_seed_other_workload() -> None:
    a = build_workload("shared-prefix", 32, seed=7, model="m")
    b = build_workload("shared-prefix", 32, seed=7, model="m")
    c = build_workload("shared-prefix", 32, seed=8, model="m")
    assert a.sessions == b.sessions
    assert a.sessions != c.sessions


def test_agent_sessions_share_the_few_shot_prefix_and_grow() -> None:
    workload = agent_sessions(requests=12, seed=0, model="m")
    assert len(workload.sessions) == 3 and workload.requests == 12
    first = workload.sessions[0]
    for s in workload.sessions:
        assert s.turns[0].startswith(prompts.AGENT_FEW_SHOT)
    # Turn 2's prompt extends turn 1's prompt plus its answer, token for token.
    answer = "go to desk 1"
    turn1 = tokenizer.apply_chat_template(first.messages([], 0))
    history = [{"role": "user", "content": first.turns[0]},
               {"role": "assistant", "content": answer}]
    turn2 = tokenizer.apply_chat_template(first.messages(history, 1))
    assert turn2[: len(turn1)] == turn1
    assert len(turn2) > len(turn1)


def test_short_chats_and_embeddings_are_independent() -> None:
    chats = build_workload("short-chat", 10, seed=0, model="m")
    assert len({s.turns[0] for s in chats.sessions}) == 10
    batch = build_workload("embedding", 5, seed=0, model="e")
    assert batch.kind == "embedding" and all(s.kind == "embedding" for s in batch.sessions)


def test_unknown_workload_names_the_valid_ones() -> None:
    with pytest.raises(BenchError, match="valid workloads: agent, embedding, mixed, shared-prefix"):
        build_workload("sharegpt", 10, 0, "m")


def test_zero_requests_is_refused() -> None:
    with pytest.raises(BenchError, match="at least 1"):
        build_workload("agent", 0, 0, "m")


def test_mixed_is_a_batch_flood_with_one_interactive_chat_in_sixteen() -> None:
    workload = build_workload("mixed", 64, 0, "m")
    classes = Counter(s.priority for s in workload.sessions)
    assert classes == {"batch": 60, "interactive": 4}
    for session in workload.sessions:
        short = session.priority == "interactive"
        assert session.max_tokens == (16 if short else 128)
    assert build_workload("mixed", 64, 0, "m") == workload
