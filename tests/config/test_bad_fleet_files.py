"""Every mistake in a fleet file: one clear message naming the file, the key, what is allowed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from modelserver import AsyncModelServer, FleetFileError, load_fleet

HOST = '[[hosts]]\nname = "h"\n'
SIM = '[[models]]\nname = "m"\nbackend = "sim"\nport = 31000\n'
GPUS = HOST + "gpus = "
CLUSTER = '[cluster]\nengine = "ray"\n'
CSIM = '[[models]]\nname = "m"\nbackend = "sim"\n'
SGLANG = '[[models]]\nname = "m"\nbackend = "sglang"\npath = "/w"\nport = 30000\n'

# (case id, file text, key the message must name, words the message must contain)
CASES: list[tuple[str, str, str, list[str]]] = [
    ("bad toml syntax", "[fleet\nname = 1", "invalid TOML", ["line 1"]),
    ("unknown top-level key", HOST + SIM + "[modls]\nx = 1\n", "modls", ["unknown key", "models"]),
    (
        "unknown key in fleet",
        HOST + SIM + "[fleet]\nnmae = 'x'\n",
        "fleet.nmae",
        ["allowed keys", "name"],
    ),
    ("unknown key in hosts", HOST + "adress = 'x'\n" + SIM, "hosts[0].adress", ["address"]),
    ("unknown key in models", HOST + SIM + "replica = 2\n", "models[0].replica", ["replicas"]),
    ("unknown key in router", HOST + SIM + "[router]\npolcy = 'x'\n", "router.polcy", ["policy"]),
    ("unknown key in gateway", HOST + SIM + "[gateway]\nprt = 1\n", "gateway.prt", ["port"]),
    (
        "unknown key in launcher",
        HOST + SIM + "[launcher]\nretries = 1\n", "launcher.retries", ["max_restarts"]),
    ("replicas not a number", HOST + SIM + 'replicas = "two"\n', "models[0].replicas", ["integer"]),
    ("negative replicas", HOST + SIM + "replicas = -1\n", "models[0].replicas", ["greater than"]),
    ("zero replicas", HOST + SIM + "replicas = 0\n", "models[0].replicas", ["greater than"]),
    ("port zero", HOST + SIM.replace("31000", "0"), "models[0].port", ["greater than"]),
    ("port too large", HOST + SIM.replace("31000", "70000"), "models[0].port", ["less than"]),
    (
        "ports run past 65535",
        HOST + SIM.replace("31000", "65535") + "replicas = 2\n",
        "models[0]",
        ["65535"],
    ),
    ("unknown backend", HOST + SIM.replace('"sim"', '"sglan"'), "models[0].backend", ["sglang"]),
    ("unknown kind", HOST + SIM + 'kind = "completion"\n', "models[0].kind", ["embedding"]),
    (
        "unknown policy",
        HOST + SIM + '[router]\npolicy = "fast"\n',
        "router.policy",
        ["cache_aware"],
    ),
    (
        "duplicate model names",
        HOST + SIM + SIM.replace("31000", "32000"),
        "models[1].name",
        ["duplicate"],
    ),
    ("duplicate host names", HOST + HOST + SIM, "hosts[1].name", ["duplicate"]),
    ("model on unknown host", HOST + SIM + 'hosts = ["gpu-z"]\n', "models[0].hosts", ["'h'"]),
    (
        "port clash between models",
        HOST + SIM + "replicas = 2\n" + SIM.replace('"m"', '"n"').replace("31000", "31001"),
        "models[1].port",
        ["31001", "m-1@h"],
    ),
    (
        "port clash with gateway",
        HOST + SIM + "[gateway]\nport = 31000\n",
        "gateway.port",
        ["31000"],
    ),
    (
        "gpu not on host",
        '[[hosts]]\nname = "h"\ngpus = [0, 1]\n'
        '[[models]]\nname = "m"\nbackend = "sglang"\npath = "/w"\nport = 30000\ngpus = [5]\n',
        "models[0].gpus",
        ["5", "[0, 1]"],
    ),
    (
        "replicas times gpus more than the host has",
        '[[hosts]]\nname = "h"\ngpus = [0, 1]\n'
        '[[models]]\nname = "m"\nbackend = "sglang"\npath = "/w"\nport = 30000\n'
        "replicas = 2\ngpus_per_replica = 2\n",
        "models[0].replicas",
        ["2 × 2 = 4", "offers 2"],
    ),
    (
        "gpu backend on a host without gpus",
        '[[hosts]]\nname = "h"\ngpus = "none"\n'
        '[[models]]\nname = "m"\nbackend = "vllm"\npath = "/w"\nport = 30000\n',
        "models[0].gpus_per_replica",
        ['gpus = "none"'],
    ),
    ("host gpus word", '[[hosts]]\nname = "h"\ngpus = "some"\n' + SIM, "hosts[0].gpus", ['"all"']),
    ("host gpu twice", '[[hosts]]\nname = "h"\ngpus = [1, 1]\n' + SIM, "hosts[0].gpus", ["twice"]),
    ("negative gpu index", GPUS + "[-1]\n" + SIM, "hosts[0].gpus", ["negative"]),
    ("path missing for sglang", HOST + SIM.replace('"sim"', '"sglang"'), "models[0]", ["path"]),
    (
        "gpus list of the wrong length",
        '[[hosts]]\nname = "h"\n[[models]]\nname = "m"\nbackend = "sglang"\npath = "/w"\n'
        "port = 30000\nreplicas = 2\ngpus = [0]\n",
        "models[0]",
        ["2 × 1 = 2"],
    ),
    ("models but no hosts", SIM, "hosts", ["no [[hosts]]"]),
    (
        "model name with a space",
        HOST + SIM.replace('"m"', '"my model"'),
        "models[0].name",
        ["pattern"],
    ),
    ("empty host name", '[[hosts]]\nname = ""\n' + SIM, "hosts[0].name", ["at least 1"]),
    (
        "gateway port not a number",
        HOST + SIM + '[gateway]\nport = "eighty"\n', "gateway.port", ["integer"]),
    (
        "negative gpus per replica",
        HOST + SIM + "gpus_per_replica = -1\n",
        "models[0].gpus_per_replica",
        ["greater than"],
    ),
    ("args not strings", HOST + SIM + 'args = ["--x", 2]\n', "models[0].args[1]", ["string"]),
    (
        "negative timeout",
        HOST + SIM + "[launcher]\nready_timeout_s = -5\n",
        "launcher.ready_timeout_s",
        ["greater"],
    ),
    ("hosts not a list", 'hosts = "h"\n' + SIM, "hosts", ["list"]),
    (
        "missing port",
        HOST + '[[models]]\nname = "m"\nbackend = "sim"\n',
        "models[0].port",
        ["required"],
    ),
    (
        "missing backend",
        HOST + '[[models]]\nname = "m"\nport = 1\n',
        "models[0].backend",
        ["required"],
    ),
    # Types are strict: TOML says what a value is, nothing is converted behind the user's back.
    ("port a boolean", HOST + SIM.replace("31000", "true"), "models[0].port", ["integer", "True"]),
    ("replicas a boolean", HOST + SIM + "replicas = true\n", "models[0].replicas", ["integer"]),
    ("replicas a fraction", HOST + SIM + "replicas = 1.5\n", "models[0].replicas", ["integer"]),
    (
        "port a string of digits",
        HOST + SIM.replace("31000", '"31000"'),
        "models[0].port",
        ["integer", "'31000'"],
    ),
    (
        "timeout a string of digits",
        HOST + SIM + '[launcher]\nready_timeout_s = "5"\n',
        "launcher.ready_timeout_s",
        ["number", "'5'"],
    ),
    (
        "host gpu a boolean",
        '[[hosts]]\nname = "h"\ngpus = [true]\n' + SIM,
        "hosts[0].gpus[0]",
        ["index", "True"],
    ),
    (
        "host gpu index written as a string",
        '[[hosts]]\nname = "h"\ngpus = [0, "0"]\n' + SIM,
        "hosts[0].gpus[1]",
        ["as a number (0)"],
    ),
    ("host gpus a boolean", GPUS + "true\n" + SIM, "hosts[0].gpus", ['"all"']),
    ("model name a date", HOST + SIM.replace('"m"', "1979-05-27"), "models[0].name", ["string"]),
    ("options not a table", HOST + SIM + "options = 5\n", "models[0].options", ["dictionary"]),
    # Options: the backend names them and checks their values, at load time.
    (
        "unknown sim option",
        HOST + SIM + "options = { speeed = 0.5 }\n",
        "models[0].options.speeed",
        ["unknown option", "'sim'", "speed"],
    ),
    (
        "negative sim speed",
        HOST + SIM + "options = { speed = -1 }\n",
        "models[0].options.speed",
        ["> 0", "-1"],
    ),
    (
        "sim speed a boolean",
        HOST + SIM + "options = { speed = true }\n",
        "models[0].options.speed",
        ["number", "True"],
    ),
    (
        "sim fault not in the grammar",
        HOST + SIM + 'options = { fault = "crash:xx" }\n',
        "models[0].options.fault",
        ["crash:xx", "crash-after=N"],
    ),
    (
        "sim cache too small",
        HOST + SIM + "options = { cache_tokens = 4 }\n",
        "models[0].options.cache_tokens",
        ["at least 16"],
    ),
    (
        "sglang memory fraction a word",
        HOST + SGLANG + 'options = { mem_fraction = "lots" }\n',
        "models[0].options.mem_fraction",
        ["number", "'lots'"],
    ),
    (
        "vllm memory fraction over one",
        HOST + SGLANG.replace("sglang", "vllm") + "options = { mem_fraction = 1.5 }\n",
        "models[0].options.mem_fraction",
        ["less than or equal to 1", "1.5"],
    ),
    (
        "sglang option of another backend",
        HOST + SGLANG + "options = { speed = 0.5 }\n",
        "models[0].options.speed",
        ["'sglang'", "mem_fraction, python"],
    ),
    (
        "llamacpp threads zero",
        HOST + SGLANG.replace("sglang", "llamacpp") + "options = { threads = 0 }\n",
        "models[0].options.threads",
        ["greater than or equal to 1"],
    ),
    # An unknown key in a nested table lists the keys of that table.
    (
        "unknown key in router.breaker",
        HOST + SIM + "[router.breaker]\nfailur_threshold = 3\n",
        "router.breaker.failur_threshold",
        ["unknown key", "failure_threshold", "cooldown_s"],
    ),
    (
        "unknown key in a host's inventory",
        '[[hosts]]\nname = "h"\ninventory = [{ index = 0, total_gib = 8, foo = 1 }]\n' + SIM,
        "hosts[0].inventory[0].foo",
        ["unknown key", "total_gib"],
    ),
    # A file that describes nothing says what a fleet file needs.
    ("empty file", "", "models", ["[[models]]", "[[hosts]]"]),
    ("hosts but no models", HOST, "models", ["at least one [[models]]"]),
    # Listeners that would share a socket on one machine.
    (
        "gateway on every address takes a worker's port",
        HOST + SIM + '[gateway]\nhost = "0.0.0.0"\nport = 31000\n',
        "gateway.port",
        ["0.0.0.0:31000", "m-0@h", "127.0.0.1:31000"],
    ),
    (
        "localhost and 127.0.0.1 hosts share a port",
        HOST + 'address = "127.0.0.1"\n[[hosts]]\nname = "g"\naddress = "localhost"\n' + SIM,
        "models[0].port",
        ["m-0@g", "localhost:31000", "m-0@h", "one address"],
    ),
    (
        "two hosts of one machine may give the same GPUs",
        HOST + '[[hosts]]\nname = "g"\naddress = "localhost"\n'
        + SGLANG + 'hosts = ["h"]\n' + SGLANG.replace('"m"', '"n"').replace("30000", "30100")
        + 'hosts = ["g"]\n',
        "hosts[1].gpus",
        ["same machine", "every GPU"],
    ),
    (
        "host address that no one can reach",
        '[[hosts]]\nname = "h"\naddress = "0.0.0.0"\n' + SIM,
        "hosts[0].address",
        ["'0.0.0.0'", '"auto"'],
    ),
    ("model without port outside cluster mode", HOST + SIM.replace("port = 31000\n", ""),
     "models[0].port", ["required", "[cluster]"]),
    ("cluster engine not ray", CLUSTER.replace('"ray"', '"k8s"') + CSIM, "cluster.engine",
     ["'ray'", "k8s"]),
    ("cluster address of no known form", CLUSTER + 'address = "10.0.0.1"\n' + CSIM,
     "cluster.address", ['"HOST:PORT" or "ray://HOST:PORT"', "10.0.0.1"]),
    ("cluster address with a port that is no number",
     CLUSTER + 'address = "ray://head:x"\n' + CSIM, "cluster.address", ["ray://head:x"]),
    ("unknown key in cluster", CLUSTER + 'adress = "auto"\n' + CSIM, "cluster.adress",
     ["allowed keys", "address"]),
    ("hosts in a cluster fleet", CLUSTER + HOST + CSIM, "hosts", ["node_labels"]),
    ("model pinned to hosts in a cluster fleet", CLUSTER + CSIM + 'hosts = ["h"]\n',
     "models[0].hosts", ["node_labels", "resources"]),
    ("explicit gpus in a cluster fleet",
     CLUSTER + SGLANG.replace("port = 30000\n", "") + "gpus = [0]\n", "models[0].gpus",
     ["Ray assigns", "gpus_per_replica"]),
    ("node labels without a cluster", HOST + SIM + 'node_labels = {zone = "a"}\n',
     "models[0].node_labels", ["[cluster]"]),
    ("resources without a cluster", HOST + SIM + "resources = {a100 = 1}\n",
     "models[0].resources", ["[cluster]"]),
    ("cluster resource named GPU", CLUSTER + CSIM + "resources = {GPU = 1}\n",
     "models[0].resources.GPU", ["custom resource"]),
    ("cluster node label not text", CLUSTER + CSIM + "node_labels = {zone = 1}\n",
     "models[0].node_labels.zone", ["string"]),
    ("fixed ports of cluster replicas clash",
     CLUSTER + CSIM + "port = 31000\nreplicas = 2\n"
     + CSIM.replace('"m"', '"n"') + "port = 31001\n",
     "models[1].port", ["31001", "m-1@cluster", "one node"]),
]


@pytest.mark.parametrize(
    ("text", "key", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_mistake_gives_one_message_naming_file_and_key_to_loader_and_client(
    tmp_path: Path, text: str, key: str, words: list[str]
) -> None:
    path = tmp_path / "fleet.toml"
    path.write_text(text)
    with pytest.raises(FleetFileError) as caught:
        load_fleet(path)
    message = str(caught.value)
    assert message.startswith(str(path)), message
    assert len(caught.value.problems) == 1, message  # one mistake, one message
    assert key in message, message
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"
    assert "Traceback" not in message
    with pytest.raises(FleetFileError) as by_client:  # the client reads the file the same way
        AsyncModelServer(path)
    assert str(by_client.value) == message


def test_there_are_at_least_thirty_distinct_mistakes() -> None:
    assert len({c[0] for c in CASES}) == len(CASES) >= 30


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(FleetFileError, match=r"nope\.toml: no such file"):
        load_fleet(tmp_path / "nope.toml")


def test_folder_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(FleetFileError, match="is a folder"):
        load_fleet(tmp_path)


def test_unreadable_path(tmp_path: Path) -> None:
    # A path through a regular file cannot be opened, even by root (chmod is no barrier to root).
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(FleetFileError, match="cannot be read"):
        load_fleet(blocker / "fleet.toml")


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "fleet.toml"
    path.write_bytes(b'[fleet]\nname = "\xff\xfe"\n')
    with pytest.raises(FleetFileError, match="not UTF-8"):
        load_fleet(path)


def test_several_mistakes_are_all_listed(tmp_path: Path) -> None:
    path = tmp_path / "fleet.toml"
    path.write_text(HOST + SIM + 'replicas = 0\nkind = "x"\n')
    with pytest.raises(FleetFileError) as caught:
        load_fleet(path)
    assert "2 problems" in str(caught.value)
    assert "models[0].replicas" in str(caught.value)
    assert "models[0].kind" in str(caught.value)


def test_cli_prints_the_message_and_exits_non_zero_without_traceback(tmp_path: Path) -> None:
    path = tmp_path / "fleet.toml"
    path.write_text(HOST + SIM.replace('"sim"', '"sglan"'))
    done = subprocess.run(
        [sys.executable, "-m", "modelserver", "validate", str(path)],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
        timeout=60,
    )
    assert done.returncode == 2
    assert "models[0].backend" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
