"""`modelserver validate`: the table of workers never cuts a URL (its port is at the end)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from modelserver import cli

FLEET = """
[[hosts]]
name = "gpu-node-with-a-rather-long-name"
address = "192.0.2.2"
[[hosts]]
name = "v6"
address = "fd00:1234:5678:9abc:def0:1234:5678:9abc"
[[models]]
name = "meta-llama-3.1-8b-instruct-with-a-long-name"
kind = "embedding"
backend = "sim"
port = 30000
replicas = 2
"""


@pytest.mark.parametrize("width", [30, 80, 200])
def test_every_url_is_shown_whole_on_one_line_at_any_width(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, width: int
) -> None:
    path = tmp_path / "fleet.toml"
    path.write_text(FLEET)
    out = io.StringIO()
    monkeypatch.setattr(cli, "console", Console(file=out, width=width))
    cli.validate(path)
    shown = out.getvalue()
    urls = [f"http://192.0.2.2:{p}" for p in (30000, 30001)] + [
        f"http://[fd00:1234:5678:9abc:def0:1234:5678:9abc]:{p}" for p in (30000, 30001)
    ]
    lines = shown.splitlines()
    for url in urls:
        assert any(url in line for line in lines), f"{url} not whole on a line of\n{shown}"
    assert "…" not in shown, shown  # nothing else cut either: long names fold
