"""Hostile search-space files (issue 11): each is refused quickly, in bounded memory, with one
short ``ConfigError`` line that names the problem (and the field path), never echoing a large
value; ``lilnetx sweep`` turns it into exit code 2 and one ``error:`` line.

The two costly cases (a billion-laughs bomb, a 50 MB file) run in a fresh interpreter, whose
peak RSS is compared with that of a fresh interpreter loading a valid space.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import lilnetx
from explorer.safe_yaml import MAX_BYTES, MAX_DEPTH, MAX_NODES, MAX_NUMBER_CHARS
from explorer.space import load_space

HEAD = ("model: lenet5\ndataset: mnist\nobjectives: {accuracy: max, size_bytes: min}\n")
VALID = HEAD + "params: {lr: {choice: [0.01, 0.02]}}\n"
SHORT = 300
"""Longest acceptable error message (a hostile value is cut to ~100 characters)."""
RSS_MARGIN_MB = 200
"""Allowed peak RSS above a fresh interpreter that loads a valid space (~515 MB with torch)."""


def bomb(depth: int) -> str:
    """A billion-laughs file: ``params.lr`` stands for 10**(depth + 1) strings."""
    lines = ["  - &a0 [" + ", ".join(["lol"] * 10) + "]"]
    lines += [f"  - &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, depth + 1)]
    return HEAD + "x:\n" + "\n".join(lines) + f"\nparams: {{lr: *a{depth}}}\n"


def write(tmp_path: Path, content: str | bytes, name: str = "space.yaml") -> Path:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def write_big(tmp_path: Path, size: int = 50 << 20) -> Path:
    """A valid space with a ``description`` block that makes the file ``size`` bytes."""
    path = tmp_path / "big.yaml"
    head = VALID + "description: |\n"
    line = "  " + "x" * 77 + "\n"
    with path.open("w", encoding="utf-8") as f:
        f.write(head + line * ((size - len(head)) // len(line)))
    return path


def refused(path: Path, *fragments: str, seconds: float = 10.0) -> str:
    """The message of the ConfigError ``load_space(path)`` raises (checked short, one line)."""
    start = time.monotonic()
    with pytest.raises(lilnetx.ConfigError) as exc:
        load_space(path)
    elapsed = time.monotonic() - start
    message = str(exc.value)
    assert len(message) < SHORT, f"{len(message)} characters: {message[:400]!r}..."
    assert "\n" not in message and "Traceback" not in message, message
    for fragment in fragments:
        assert fragment in message, f"{message!r} does not contain {fragment!r}"
    assert elapsed < seconds, f"took {elapsed:.1f}s"
    return message


# --------------------------------------------------------------------------- in this process


def test_billion_laughs_is_refused(tmp_path: Path):
    message = refused(write(tmp_path, bomb(9)), "aliases expand to more than", str(MAX_NODES),
                      "line ")
    assert message.startswith(f"{tmp_path / 'space.yaml'}: x.")  # the file, then the field path


def test_alias_multiplied_long_string_is_refused(tmp_path: Path):
    """Few nodes, but four aliases of a 700,000-character string: 2.8 MB to echo or traverse."""
    text = HEAD + 'x: &s "' + "s" * 700_000 + '"\nparams: {lr: [*s, *s, *s, *s]}\n'
    refused(write(tmp_path, text), "params.lr.", "aliases expand to more than", "characters")


def test_recursive_alias_is_refused(tmp_path: Path):
    refused(write(tmp_path, HEAD + "params: &p {lr: [1, *p]}\n"), "params.lr.1", "recursive")


def test_a_few_aliases_still_work(tmp_path: Path):
    text = HEAD + "train: {epochs: &e 2}\nparams: {lr: &lr {choice: [0.01]}, lambda_rate: *e}\n"
    space = load_space(write(tmp_path, text))
    assert space.params["lambda_rate"] == 2 and space.params["lr"] == {"choice": [0.01]}


def test_50_mb_file_is_refused_before_parsing(tmp_path: Path):
    refused(write_big(tmp_path), "52428", "bytes", "at most 1 MiB", seconds=2.0)


def test_file_at_the_size_limit_loads_and_one_byte_more_does_not(tmp_path: Path):
    text = VALID + "#" * (MAX_BYTES - len(VALID) - 1) + "\n"
    assert len(text.encode()) == MAX_BYTES
    assert load_space(write(tmp_path, text)).model == "lenet5"
    refused(write(tmp_path, text + "\n"), "at most 1 MiB")


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="no /dev/zero")
def test_device_is_refused_without_reading(tmp_path: Path):
    link = tmp_path / "zero.yaml"
    link.symlink_to("/dev/zero")
    for path in (Path("/dev/zero"), link):
        refused(path, "cannot read search space", "not a regular file", "character device",
                seconds=2.0)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs")
def test_pipe_is_read_but_at_most_the_limit(tmp_path: Path):
    """``lilnetx sweep <(generate-space)`` still works; an endless pipe is cut at the limit."""
    fifo = tmp_path / "pipe.yaml"
    for content, ok in ((VALID.encode(), True), (b"#" * (3 * MAX_BYTES), False)):
        os.mkfifo(fifo)

        def feed(content: bytes = content) -> None:
            try:
                with open(fifo, "wb") as f:
                    f.write(content)
            except BrokenPipeError:  # the reader stopped at the limit
                pass

        writer = threading.Thread(target=feed, daemon=True)
        writer.start()
        if ok:
            assert load_space(fifo).source == VALID
        else:
            refused(fifo, "more than 1 MiB")
        writer.join(10)
        fifo.unlink()


def test_non_utf8_bytes_are_refused_with_the_offset(tmp_path: Path):
    path = write(tmp_path, HEAD.encode() + b"description: caf\xe9\nparams: {lr: 0.01}\n")
    refused(path, f"{path}: not UTF-8 at byte {len(HEAD) + 16}", "line 4, column 17", "0xe9")


def test_utf16_file_is_refused(tmp_path: Path):
    refused(write(tmp_path, VALID.encode("utf-16")), "not UTF-8 at byte 0")


def test_control_character_gives_one_line(tmp_path: Path):
    refused(write(tmp_path, "model: lenet5\x00\n"), "line 1, column 14", "#x0000")


@pytest.mark.parametrize("opening, closing", [("[", "]"), ("{a: ", "}")], ids=["lists", "maps"])
def test_deep_nesting_is_refused(tmp_path: Path, opening: str, closing: str):
    text = HEAD + "params: {lr: " + opening * 10_000 + "1" + closing * 10_000 + "}\n"
    message = refused(write(tmp_path, text), f"nesting deeper than {MAX_DEPTH} levels")
    assert ": params.lr." in message


def test_many_nodes_are_refused(tmp_path: Path):
    text = HEAD + "params: {lr: {choice: [" + ", ".join(["0.01"] * 100_000) + "]}}\n"
    refused(write(tmp_path, text), "params.lr.choice.", f"more than {MAX_NODES} YAML nodes")


@pytest.mark.parametrize("key", ["[a, b]", "{a: 1}"], ids=["sequence", "mapping"])
def test_non_scalar_key_is_refused_with_path(tmp_path: Path, key: str):
    kind = "sequence" if key.startswith("[") else "mapping"
    refused(write(tmp_path, HEAD + f"params:\n  lr: 0.01\n  ? {key}\n  : 1\n"),
            ": params (line 6, column 5): a key must be a scalar", f"got a {kind}")


@pytest.mark.parametrize("digits", [4_000, 5_000])
def test_huge_integer_is_refused_with_path(tmp_path: Path, digits: int):
    """5,000 digits is over Python's int-conversion limit (ValueError); 4,000 converts, but no
    float can hold it (OverflowError in the range checks)."""
    text = HEAD + "params: {lr: 0.01, seed: " + "9" * digits + "}\n"
    refused(write(tmp_path, text), "params.seed", f"a number of {digits} characters",
            f"at most {MAX_NUMBER_CHARS}")


def test_long_float_is_refused(tmp_path: Path):
    refused(write(tmp_path, HEAD + "params: {lr: 0." + "1" * 5000 + "}\n"), "params.lr",
            "a number of 5002 characters")


@pytest.mark.parametrize("text, fragments", [
    pytest.param(VALID.replace("lenet5", "m" * 100_000), ("model: unknown model 'mmm", "..."),
                 id="model"),
    pytest.param(HEAD + "params: {lr: {choice: ['" + "c" * 500_000 + "']}}\n",
                 ("params.lr: choice values must be finite numbers", "'ccc"), id="choice"),
    pytest.param(VALID + "description: [" + ", ".join(["word"] * 9_000) + "]\n",
                 ("description: ['word', 'word'", "..."), id="schema-type"),
    pytest.param(HEAD + "params: {lr: [" + ", ".join(["word"] * 9_000) + "]}\n",
                 ("params.lr: ['word'", "is neither a number nor a distribution"), id="anyof"),
    pytest.param(VALID + "? " + "k" * 500_000 + "\n: 1\n",
                 ("(top level): Additional properties are not allowed ('kkk", "allowed keys"),
                 id="top-level-key"),
    pytest.param(VALID + "".join(f"key{i}: 1\n" for i in range(3_000)),
                 ("and 2997 more were unexpected", "allowed keys"), id="many-keys"),
    pytest.param(HEAD + "params:\n  ? " + "p" * 200_000 + "\n  : [1]\n",
                 ("params.ppp", "is neither a number nor a distribution"), id="param-name"),
    pytest.param(HEAD + "params: {lr: !<" + "t" * 500_000 + "> 1}\n",
                 ("invalid YAML at line 4", "tag 'ttt"), id="tag"),
    pytest.param(VALID + ("? " + "d" * 100_000 + "\n: 1\n") * 2,
                 ("duplicate key 'ddd", "given twice"), id="duplicate-key"),
])
def test_large_values_are_not_echoed(tmp_path: Path, text: str, fragments: tuple):
    refused(write(tmp_path, text), *fragments)


# --------------------------------------------------------------------------- fresh processes

_PROBE = """
import json, resource, sys, time
from lilnetx.errors import ConfigError
from explorer.space import load_space
start = time.monotonic()
try:
    load_space(sys.argv[1])
    message = None
except ConfigError as e:
    message = str(e)
print(json.dumps({"seconds": time.monotonic() - start, "message": message,
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def probe(path: Path, env: dict[str, str]) -> dict:
    """``load_space(path)`` in a fresh interpreter: seconds, message, peak RSS (MB)."""
    proc = subprocess.run([sys.executable, "-c", _PROBE, str(path)], cwd=path.parent, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def baseline_mb(tmp_path_factory, subprocess_env) -> float:
    """Peak RSS of a fresh interpreter that loads a valid space (imports torch)."""
    result = probe(write(tmp_path_factory.mktemp("valid"), VALID), subprocess_env)
    assert result["message"] is None
    return result["rss_mb"]


@pytest.mark.parametrize("make", [lambda d: write(d, bomb(9)), write_big],
                         ids=["billion-laughs-9", "50-MB"])
def test_bounded_memory_in_a_fresh_process(tmp_path: Path, make, baseline_mb: float,
                                           subprocess_env):
    result = probe(make(tmp_path), subprocess_env)
    assert result["message"] is not None, "loaded a hostile file"
    assert len(result["message"]) < SHORT, result["message"][:400]
    assert result["seconds"] < 5, result
    assert result["rss_mb"] < baseline_mb + RSS_MARGIN_MB, (result["rss_mb"], baseline_mb)


def _lilnetx() -> list[str]:
    exe = Path(sys.executable).with_name("lilnetx")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "explorer.cli"]


@pytest.mark.parametrize("content", [
    bomb(9),
    HEAD + "params: {lr: 0.01, seed: " + "9" * 5_000 + "}\n",
    HEAD + "params:\n  ? [a, b]\n  : 1\n",
    HEAD + "params: {lr: " + "[" * 10_000 + "]" * 10_000 + "}\n",
], ids=["billion-laughs", "huge-int", "list-key", "deep"])
def test_cli_sweep_hostile_space_exit_2_one_short_line(tmp_path: Path, content: str,
                                                       subprocess_env):
    path = write(tmp_path, content)
    proc = subprocess.run([*_lilnetx(), "sweep", str(path)], cwd=tmp_path, env=subprocess_env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr[-2000:]
    assert lines[0].startswith(f"error: {path}: ") and len(lines[0]) < SHORT, lines[0][:400]
