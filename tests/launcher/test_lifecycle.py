from __future__ import annotations

import ast
import itertools
from pathlib import Path

import pytest

import modelserver.launcher.lifecycle as lifecycle
from modelserver.launcher.lifecycle import IllegalTransition, WorkerStatus, legal_edges, transition

S = WorkerStatus


@pytest.mark.parametrize("edge", sorted(legal_edges(), key=str))
def test_every_documented_edge_is_allowed(edge: tuple[WorkerStatus, WorkerStatus]) -> None:
    assert transition(*edge) is edge[1]


@pytest.mark.parametrize(
    ("current", "target"),
    [
        (S.STOPPED, S.BACKOFF),  # nothing ran, nothing to back off from
        (S.FAILED, S.READY),  # a failed worker is only cleared by a stop
        (S.FAILED, S.STARTING),
        (S.STOPPED, S.STOPPING),
        (S.READY, S.STARTING),  # a restart always goes through backoff
        (S.STOPPING, S.READY),
        (S.READY, S.READY),
    ],
)
def test_illegal_edges_raise_and_name_the_allowed_ones(
    current: WorkerStatus, target: WorkerStatus
) -> None:
    with pytest.raises(IllegalTransition, match=f"{current} -> {target}"):
        transition(current, target)


def test_the_happy_path_and_the_failure_path_exist() -> None:
    path = [S.STOPPED, S.STARTING, S.READY, S.BACKOFF, S.STARTING, S.FAILED, S.STOPPED]
    for current, target in itertools.pairwise(path):
        transition(current, target)


def test_lifecycle_module_imports_only_the_standard_library() -> None:
    tree = ast.parse(Path(lifecycle.__file__).read_text())
    imported = {
        (node.module or "") if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    assert imported <= {"__future__", "enum"}
