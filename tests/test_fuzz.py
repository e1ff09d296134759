"""Fuzzing of the .lnx reader: every damaged file must raise lilnetx.FormatError, nothing else.

One real small file (LeNet-5 for 8x8 digits, random latents with zero slices) is mutated in
several hundred seeded ways. The mutations run in a worker subprocess (this file run as a
script) under a memory limit, with a per-case alarm and a watchdog in the parent, so a hang or a
crash of one case is recorded against that case instead of taking the test session down.

Each case runs ``fileformat.load`` and ``report.inspect`` (the reader behind ``lilnetx inspect``)
and records ``format_error``, ``ok``, ``other`` (with the exception and where it was raised),
``timeout`` or ``crash``.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import random
import struct
import subprocess
import sys
import time
import traceback
import zipfile
import zlib
from pathlib import Path

import pytest

HERE = Path(__file__).resolve()
CASE_SECONDS = 5  # per-case alarm in the worker
WATCHDOG_SECONDS = 20  # the parent kills a worker whose current case runs longer than this


# ----------------------------------------------------------------------------- the base file


def make_base_file(path: Path) -> None:
    """A real lenet5 .lnx file for 8x8 grayscale inputs with random latents and zero slices."""
    import torch

    import lilnetx
    from lilnetx import fileformat
    from lilnetx.fileformat import archspec

    torch.manual_seed(0)
    net = lilnetx.create_model("lenet5", in_channels=1, image_size=8, num_classes=10)
    model = lilnetx.convert(net)
    model.arch = archspec.registry_arch("lenet5", in_channels=1, image_size=8, num_classes=10,
                                        data={"name": "digits", "mean": [0.3], "std": [0.4]})
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _, layer in model.latent_layers():
            lat = torch.distributions.Laplace(0.0, 1.5).sample(layer.latent.shape).round()
            keep = torch.rand(layer.latent.shape[0], 1, generator=g) > 0.3
            layer.latent.copy_(lat * keep)
            if layer.bias is not None:
                layer.bias.normal_(0, 0.1, generator=g)
    from lilnetx.fileformat.lnx_v1 import encode_model_v1

    fileformat.write(encode_model_v1(model), path)  # version 1: the layout this file cuts up


# ----------------------------------------------------------------------------- file surgery

_HEAD = struct.Struct("<4sHH")
_SEC = struct.Struct("<BI")


def split_file(data: bytes) -> tuple[int, list[tuple[int, int, int]]]:
    """(version, [(kind, start of the section header, start of data, length)]) of a valid file."""
    _, version, count = _HEAD.unpack_from(data, 0)
    pos, out = _HEAD.size, []
    for _ in range(count):
        kind, length = _SEC.unpack_from(data, pos)
        out.append((kind, pos, pos + _SEC.size, length))
        pos += _SEC.size + length
    return version, out


def sections_of(data: bytes) -> list[tuple[int, bytes]]:
    _, secs = split_file(data)
    return [(kind, data[start:start + n]) for kind, _, start, n in secs]


def assemble(sections: list[tuple[int, bytes]], *, version: int = 1, count: int | None = None,
             lengths: dict[int, int] | None = None, trailing: bytes = b"") -> bytes:
    """A file from sections, with a correct CRC (``lengths`` overrides section length fields)."""
    out = bytearray(_HEAD.pack(b"LNX\x00", version, len(sections) if count is None else count))
    for i, (kind, body) in enumerate(sections):
        n = (lengths or {}).get(i, len(body))
        out += struct.pack("<BI", kind, n & 0xFFFFFFFF) + body
    out += trailing
    out += struct.pack("<I", zlib.crc32(out))
    return bytes(out)


def fix_crc(data: bytes) -> bytes:
    return data[:-4] + struct.pack("<I", zlib.crc32(data[:-4]))


def zjson(obj) -> bytes:
    return zlib.compress(json.dumps(obj, separators=(",", ":"), sort_keys=True).encode(), 9)


def unzjson(b: bytes):
    return json.loads(zlib.decompress(b))


def _leaf_paths(obj, prefix=()):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _leaf_paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _leaf_paths(v, (*prefix, i))
    yield prefix


def _get(obj, path):
    for p in path:
        obj = obj[p]
    return obj


def _with(obj, path, value, delete=False):
    obj = json.loads(json.dumps(obj))
    parent = _get(obj, path[:-1])
    if delete:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return obj


def _png() -> bytes:
    raw = b"\x00\xff\x00\x00" * 4
    ihdr = struct.pack(">IIBBBBB", 1, 4, 8, 2, 0, 0, 0)

    def chunk(tag, body):
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw))
            + chunk(b"IEND", b""))


def _zip(payload: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:  # fixed timestamps: the same bytes every time
        z.writestr(zipfile.ZipInfo("model.lnx", (2023, 5, 1, 0, 0, 0)), payload)
        z.writestr(zipfile.ZipInfo("data.pkl", (2023, 5, 1, 0, 0, 0)), b"\x80\x04K\x01.")
    return buf.getvalue()


def _torch_checkpoint() -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save({"weight": torch.ones(3)}, buf)
    return buf.getvalue()


# Values that replace JSON leaves of the index and arch sections.
JSON_VALUES = [-1, 0, 1, 7, 2**31, 2**26, 2**62, -(2**40), 1.5, float("inf"), float("nan"),
               "x", "", None, True, [], {}, [1, 2], {"a": 1}]


def mutations(base: bytes) -> list[tuple[str, str, bytes]]:
    """Seeded mutations of ``base``: ``(category, description, bytes)``.

    Categories ending in ``_crcfix`` have a recomputed checksum, so the reader gets past the
    checksum test; they may stay valid files. Every other category must raise FormatError.
    """
    rng = random.Random(20230501)
    n = len(base)
    version, secs = split_file(base)
    out: list[tuple[str, str, bytes]] = []

    # --- empty, truncations
    out.append(("empty", "empty file", b""))
    cuts = set(range(0, 40)) | set(range(n - 8, n)) | set(range(0, n, max(1, n // 80)))
    for _, hdr, start, length in secs:
        cuts |= {hdr, hdr + 1, start - 1, start, start + 1, start + length - 1, start + length}
    for k in sorted(c for c in cuts if 0 <= c < n):
        out.append(("truncate", f"first {k} of {n} bytes", base[:k]))
    for k in (1, 4, 5, 100, n // 2):  # cut from the front
        out.append(("truncate", f"drop the first {k} bytes", base[k:]))

    # --- single bit flips, no checksum fix-up: header, section headers, every section, crc
    positions = set(range(0, _HEAD.size)) | set(range(n - 4, n))
    for _, hdr, start, length in secs:
        positions |= set(range(hdr, start))  # kind and length fields
        positions |= {start, start + 1, start + length // 2, start + length - 1}
        positions |= {rng.randrange(start, start + length) for _ in range(12) if length}
    positions |= {rng.randrange(n) for _ in range(40)}
    for pos in sorted(p for p in positions if 0 <= p < n):
        bit = rng.randrange(8)
        data = bytearray(base)
        data[pos] ^= 1 << bit
        out.append(("bitflip", f"flip bit {bit} of byte {pos}", bytes(data)))

    # --- multi-byte damage without fix-up
    for _ in range(30):
        pos = rng.randrange(n + 1)
        ins = bytes([rng.randrange(256)])
        out.append(("insert", f"insert {ins.hex()} at {pos}", base[:pos] + ins + base[pos:]))
    for _ in range(30):
        pos = rng.randrange(n)
        out.append(("delete", f"delete byte {pos}", base[:pos] + base[pos + 1:]))
    for _ in range(15):
        pos, k = rng.randrange(n), rng.randrange(2, 64)
        junk = bytes(rng.randrange(256) for _ in range(k))
        out.append(("overwrite", f"overwrite {k} bytes at {pos}",
                    base[:pos] + junk + base[pos + k:]))
    out.append(("append", "one zero byte appended", base + b"\x00"))
    out.append(("append", "the file twice", base + base))

    # --- garbage and foreign files
    for k in (1, 3, 8, 11, 12, 13, 64, 1000, n):
        out.append(("garbage", f"{k} random bytes", bytes(rng.randrange(256) for _ in range(k))))
    for k in (0, 1, 12, 500):
        junk = bytes(rng.randrange(256) for _ in range(k))
        out.append(("garbage", f"magic + version 1 + {k} random bytes",
                    _HEAD.pack(b"LNX\x00", 1, rng.randrange(8)) + junk))
    out.append(("foreign", "PNG image", _png()))
    out.append(("foreign", "zip archive holding the model", _zip(base)))
    out.append(("foreign", "gzip of the model", gzip.compress(base, mtime=0)))
    out.append(("foreign", "torch.save checkpoint (zip + pickle)", _torch_checkpoint()))
    out.append(("foreign", "raw pickle", b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00K\x01."))
    out.append(("foreign", "JSON text", b'{"magic": "LNX", "layers": []}\n' * 3))
    out.append(("foreign", "ELF header", b"\x7fELF\x02\x01\x01" + b"\x00" * 57))
    out.append(("foreign", "magic only", b"LNX\x00"))
    out.append(("foreign", "header only", base[:_HEAD.size]))
    out.append(("foreign", "all zero bytes", b"\x00" * n))
    out.append(("foreign", "all 0xff bytes", b"\xff" * n))

    # --- checksum fixed up: the reader goes past the checksum test
    sections = sections_of(base)
    names = {1: "arch", 2: "index", 3: "tables", 4: "decoders", 5: "floats", 6: "latents"}
    # bit flips inside sections and header fields, crc recomputed
    for kind, hdr, start, length in secs:
        for pos in {start, start + length - 1, *(rng.randrange(start, start + length)
                                                 for _ in range(14))}:
            data = bytearray(base)
            bit = rng.randrange(8)
            data[pos] ^= 1 << bit
            out.append(("bitflip_crcfix", f"{names[kind]}: flip bit {bit} of byte {pos}",
                        fix_crc(bytes(data))))
        for pos in range(hdr, start):
            data = bytearray(base)
            data[pos] ^= 1 << rng.randrange(8)
            out.append(("header_crcfix", f"{names[kind]} section header byte {pos} flipped",
                        fix_crc(bytes(data))))
    for pos in range(_HEAD.size):
        for bit in (0, 7):
            data = bytearray(base)
            data[pos] ^= 1 << bit
            out.append(("header_crcfix", f"file header: flip bit {bit} of byte {pos}",
                        fix_crc(bytes(data))))
    # section length fields
    for i, (kind, body) in enumerate(sections):
        for delta in (-5, -4, -1, 1, 4, 8):
            out.append(("length_crcfix", f"{names[kind]} length {len(body)}{delta:+d}",
                        assemble(sections, lengths={i: len(body) + delta})))
        for value in (0, 0xFFFFFFFF, 0x7FFFFFFF, n):
            out.append(("length_crcfix", f"{names[kind]} length {value}",
                        assemble(sections, lengths={i: value})))
    # section table: missing, duplicated, unknown kind, reordered, count, version, trailing data
    for i, (kind, _) in enumerate(sections):
        out.append(("sections_crcfix", f"{names[kind]} section missing",
                    assemble(sections[:i] + sections[i + 1:])))
        out.append(("sections_crcfix", f"{names[kind]} section twice",
                    assemble(sections + [sections[i]])))
        out.append(("sections_crcfix", f"{names[kind]} section emptied",
                    assemble(sections[:i] + [(kind, b"")] + sections[i + 1:])))
        out.append(("sections_crcfix", f"{names[kind]} section doubled in length",
                    assemble(sections[:i] + [(kind, sections[i][1] * 2)] + sections[i + 1:])))
    for kind in (0, 7, 255):
        out.append(("sections_crcfix", f"unknown section kind {kind}",
                    assemble(sections + [(kind, b"abc")])))
    shuffled = sections[:]
    rng.shuffle(shuffled)
    out.append(("sections_crcfix", "sections in another order (still valid)", assemble(shuffled)))
    for count in (0, 1, 5, 7, 255, 65535):
        out.append(("sections_crcfix", f"section count {count}", assemble(sections, count=count)))
    for v in (0, 2, 65535):
        out.append(("sections_crcfix", f"version {v}", assemble(sections, version=v)))
    out.append(("sections_crcfix", "trailing garbage", assemble(sections, trailing=b"\x00" * 9)))
    # swapped tables of two sections (right lengths, wrong contents)
    for a, b in ((2, 3), (3, 4), (4, 5), (0, 1)):
        sw = sections[:]
        sw[a], sw[b] = (sw[a][0], sections[b][1]), (sw[b][0], sections[a][1])
        out.append(("sections_crcfix", f"contents of {names[sw[a][0]]} and {names[sw[b][0]]} "
                                       "swapped", assemble(sw)))
    # latent words dropped, added or swapped (section lengths consistent)
    li = [k for k, _ in sections].index(6)
    words = [sections[li][1][j:j + 4] for j in range(0, len(sections[li][1]), 4)]
    for desc, w in (("first latent word dropped", words[1:]), ("last latent word dropped",
                    words[:-1]), ("zero word appended", [*words, b"\0" * 4]),
                    ("zero word prepended", [b"\0" * 4, *words]),
                    ("two latent words swapped", [words[1], words[0], *words[2:]]),
                    ("latent words reversed", words[::-1])):
        s2 = sections[:li] + [(6, b"".join(w))] + sections[li + 1:]
        out.append(("latents_crcfix", desc, assemble(s2)))
    # corrupted (still well-formed) JSON in index and arch
    for kind in (1, 2):
        i = [k for k, _ in sections].index(kind)
        doc = unzjson(sections[i][1])
        paths = [p for p in _leaf_paths(doc) if p]
        if kind == 1:  # every top-level key with every value, the normalization data sampled
            picks = [(p, v) for p in paths if len(p) == 1 for v in [*JSON_VALUES, "delete"]]
            picks += [(p, v) for p in paths if len(p) > 1
                      for v in rng.sample([*JSON_VALUES, "delete"], 3)]
        else:
            # Huge symbol counts are left to test_symbol_count_bomb_is_rejected_before_decoding:
            # the reader would decode up to 2**31 symbols (minutes, gigabytes) first.
            picks = [(p, v) for p in rng.sample(paths, 40)
                     for v in rng.sample([*JSON_VALUES, "delete"], 5)
                     if not (p[-1] == "slices" and isinstance(v, int) and v > 10**6)]
            for g, group in enumerate(doc["groups"]):  # targeted: counts that still decode
                for v in (0, 1, group["slices"] - 1, group["slices"] + 1, 2 * group["slices"]):
                    picks.append((("groups", g, "slices"), v))
                picks.append((("groups", g, "rows"), group["rows"] + 1))
            picks.append((("groups",), doc["groups"][::-1]))
            picks.append((("layers",), doc["layers"][::-1]))
            picks.append((("layers",), doc["layers"][:-1]))
            picks.append((("floats",), doc["floats"][:-1]))
        for path, value in picks:
            try:
                new = _with(doc, path, None, delete=True) if value == "delete" \
                    else _with(doc, path, value)
            except TypeError:
                continue
            s2 = sections[:i] + [(kind, zjson(new))] + sections[i + 1:]
            label = value if not isinstance(value, list) or len(value) < 3 else "[...]"
            out.append(("json_crcfix", f"{names[kind]}{list(path)} = {label!r}", assemble(s2)))
        for text in (b"", b"[]", b"null", b"42", b'"x"', b"{", b"\xff\xfe", b"{}" * 3,
                     b'{"a": NaN}'):
            s2 = sections[:i] + [(kind, zlib.compress(text))] + sections[i + 1:]
            out.append(("json_crcfix", f"{names[kind]} JSON text {text!r}", assemble(s2)))
        nested = zlib.compress(b"[" * 100_000 + b"]" * 100_000)
        s2 = sections[:i] + [(kind, nested)] + sections[i + 1:]
        out.append(("json_crcfix", f"{names[kind]} JSON nested 100000 deep", assemble(s2)))
        s2 = sections[:i] + [(kind, b"not zlib at all")] + sections[i + 1:]
        out.append(("json_crcfix", f"{names[kind]} not zlib", assemble(s2)))
        s2 = sections[:i] + [(kind, zlib.compress(b"{" + b" " * (80 << 20) + b"}"))] \
            + sections[i + 1:]
        out.append(("json_crcfix", f"{names[kind]} zip bomb (80 MB of JSON)", assemble(s2)))
    return [case for case in out if case[2] != base]  # e.g. a JSON leaf set to its own value


# ----------------------------------------------------------------------------- the worker


class _Timeout(KeyboardInterrupt):
    """Raised by the alarm; a KeyboardInterrupt so that no `except Exception` swallows it."""


def _where(exc: BaseException) -> str:
    tb = traceback.extract_tb(exc.__traceback__)
    frames = [f for f in tb if "site-packages" not in f.filename] or tb
    last = frames[-1] if frames else None
    deepest = tb[-1] if tb else None
    loc = f"{os.path.relpath(last.filename, HERE.parent.parent)}:{last.lineno} ({last.name})" \
        if last else "?"
    if deepest is not None and deepest is not last:
        loc += f" -> {Path(deepest.filename).name}:{deepest.lineno}"
    return loc


def _attempt(fn, path):
    import signal

    from lilnetx.errors import FormatError

    signal.alarm(CASE_SECONDS)
    try:
        fn(path)
        return {"result": "ok"}
    except FormatError as e:
        return {"result": "format_error", "message": str(e)[:200]}
    except _Timeout:
        return {"result": "timeout"}
    except BaseException as e:  # noqa: BLE001 - everything else is a finding
        return {"result": "other", "exception": f"{type(e).__name__}: {str(e)[:160]}",
                "where": _where(e)}
    finally:
        signal.alarm(0)


def worker(base_path: str, out_path: str, start: int) -> None:
    import resource
    import signal

    import torch

    from lilnetx import fileformat
    from lilnetx.fileformat import report

    torch.set_num_threads(1)
    # cap the address space so that a runaway allocation fails instead of exhausting the machine
    status = Path("/proc/self/status").read_text()
    vm = int(next(line for line in status.splitlines() if line.startswith("VmSize")).split()[1])
    limit = vm * 1024 + (3 << 30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    def on_alarm(*_):
        raise _Timeout()

    signal.signal(signal.SIGALRM, on_alarm)
    base = Path(base_path).read_bytes()
    reference = fileformat.load(base_path)
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref_out = reference(x)
    cases = mutations(base)
    tmp = Path(out_path).with_suffix(".case")
    with open(out_path, "a") as log:
        for i in range(start, len(cases)):
            category, desc, data = cases[i]
            tmp.write_bytes(data)
            log.write(json.dumps({"start": i}) + "\n")
            log.flush()
            state = {}

            def load(p, state=state):
                state["net"] = fileformat.load(p)

            rec = {"case": i, "category": category, "desc": desc, "size": len(data),
                   "load": _attempt(load, tmp), "inspect": _attempt(report.inspect, tmp)}
            if rec["load"]["result"] == "ok":
                try:
                    with torch.no_grad():
                        rec["same_outputs"] = bool(torch.equal(state["net"](x), ref_out))
                except Exception as e:  # noqa: BLE001
                    rec["same_outputs"] = f"forward failed: {type(e).__name__}: {e}"[:200]
            log.write(json.dumps(rec) + "\n")
            log.flush()
    tmp.unlink(missing_ok=True)


def run_fuzz(base_path: Path, out_path: Path) -> dict[int, dict]:
    """Run every mutation in worker subprocesses; a crash or hang is charged to its case."""
    records: dict[int, dict] = {}
    start = 0
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONFAULTHANDLER="1")
    for _restart in range(50):
        out_path.unlink(missing_ok=True)
        err = open(out_path.with_suffix(".stderr"), "w")  # noqa: SIM115
        proc = subprocess.Popen([sys.executable, str(HERE), "worker", str(base_path),
                                 str(out_path), str(start)], stderr=err, env=env)
        current, since, seen = None, time.monotonic(), 0
        while True:
            code = proc.poll()
            if out_path.exists():
                lines = out_path.read_text().split("\n")[:-1]  # complete lines only
                for line in lines[seen:]:
                    seen += 1
                    obj = json.loads(line)
                    if "start" in obj:
                        current, since = obj["start"], time.monotonic()
                    else:
                        records[obj["case"]] = obj
                        current = None
            if code is not None:
                break
            if current is not None and time.monotonic() - since > WATCHDOG_SECONDS:
                proc.kill()
                proc.wait()
                code = "watchdog"
                break
            time.sleep(0.05)
        err.close()
        if code == 0:
            return records
        if current is None:  # died outside a case (import, setup): that is a test failure
            raise RuntimeError(f"fuzz worker failed ({code}): "
                               f"{out_path.with_suffix('.stderr').read_text()[-3000:]}")
        tail = out_path.with_suffix(".stderr").read_text()[-600:]
        what = "hang" if code == "watchdog" else f"crash (exit {code})"
        records[current] = {"case": current, "category": "?", "desc": "?",
                            "load": {"result": "crash", "exception": what, "where": tail},
                            "inspect": {"result": "crash"}}
        start = current + 1
    raise RuntimeError("too many worker crashes")


# ----------------------------------------------------------------------------- the tests


@pytest.fixture(scope="module")
def base_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("fuzz") / "lenet5.lnx"
    make_base_file(path)
    return path


@pytest.fixture(scope="module")
def fuzz(base_file) -> dict:
    """All cases and their outcomes (the worker regenerates the same seeded mutations)."""
    cases = mutations(base_file.read_bytes())
    records = run_fuzz(base_file, base_file.with_name("fuzz.jsonl"))
    for i, (category, desc, _) in enumerate(cases):
        if i in records:
            records[i]["category"], records[i]["desc"] = category, desc
    assert len(records) == len(cases)
    return {"cases": cases, "records": records}


def _bad(records, ops=("load", "inspect"), allow_ok=False):
    bad = []
    for r in records.values():
        for op in ops:
            res = r[op]["result"]
            if res == "format_error" or (allow_ok and res == "ok"):
                continue
            bad.append(f"#{r['case']} [{r['category']}] {r['desc']}: {op} -> {res} "
                       f"{r[op].get('exception', '')} at {r[op].get('where', '')}")
    return bad


def test_base_file_is_valid_and_small(base_file):
    from lilnetx import fileformat

    data = base_file.read_bytes()
    assert 2_000 < len(data) < 40_000
    net = fileformat.load(base_file)
    assert sum(p.numel() for p in net.parameters()) > 20_000


@pytest.mark.slow
def test_at_least_500_mutations(fuzz, base_file):
    cases = fuzz["cases"]
    assert len(cases) >= 500
    base = base_file.read_bytes()
    assert all(data != base for _, _, data in cases), "a mutation left the file unchanged"
    # seeded: the same mutations every time
    assert [d for _, _, d in mutations(base)] == [d for _, _, d in cases]


@pytest.mark.slow
def test_no_mutation_hangs_or_crashes_the_reader(fuzz):
    bad = [f"#{r['case']} {r['desc']}: {r['load']}" for r in fuzz["records"].values()
           if r["load"]["result"] in ("timeout", "crash")
           or r["inspect"]["result"] in ("timeout", "crash")]
    assert not bad, "\n".join(bad)


@pytest.mark.slow
@pytest.mark.parametrize("category", ["empty", "truncate", "bitflip", "insert", "delete",
                                      "overwrite", "append", "garbage", "foreign"])
def test_damage_without_checksum_fixup_always_raises_format_error(fuzz, category):
    """Never a silently different network: the checksum catches every unrepaired change."""
    records = {k: r for k, r in fuzz["records"].items() if r["category"] == category}
    assert records
    bad = _bad(records)
    assert not bad, "\n".join(bad)


@pytest.mark.slow
@pytest.mark.parametrize("category", ["bitflip_crcfix", "header_crcfix", "length_crcfix",
                                      "sections_crcfix", "latents_crcfix"])
def test_checksum_fixed_damage_raises_format_error_or_loads(fuzz, category):
    records = {k: r for k, r in fuzz["records"].items() if r["category"] == category}
    assert records
    bad = _bad(records, ("load", "inspect"), allow_ok=True)
    assert not bad, "\n".join(bad)


@pytest.mark.slow
def test_checksum_fixed_structural_damage_is_detected(fuzz):
    """Length fields, section tables and versions are checked even when the CRC matches."""
    # (arch/index "doubled in length" is test_trailing_bytes_after_a_zlib_section_...; an
    # emptied latents section decodes as an empty ANS stream and may load)
    must = ("missing", "twice", "unknown section kind", "section count", "version",
            "trailing garbage", "tables section", "decoders section", "floats section",
            "latents section doubled")
    checked = 0
    for r in fuzz["records"].values():
        if r["category"] in ("length_crcfix", "header_crcfix") or (
                r["category"] == "sections_crcfix" and any(m in r["desc"] for m in must)):
            checked += 1
            assert r["load"]["result"] == "format_error", r
    assert checked >= 100
    valid = [r for r in fuzz["records"].values() if "still valid" in r["desc"]]
    assert valid and valid[0]["load"]["result"] == "ok" and valid[0]["same_outputs"] is True


@pytest.mark.slow
def test_checksum_fixed_bitflips_in_tables_and_json_are_detected(fuzz):
    """Flips in the zlib JSON sections fail zlib's own check; a flipped table no longer sums to
    its precision. (Flips in floats, decoders and latents can legitimately stay loadable.)"""
    for r in fuzz["records"].values():
        if r["category"] == "bitflip_crcfix" and r["desc"].split(":")[0] in (
                "arch", "index", "tables"):
            assert r["load"]["result"] == "format_error", r


@pytest.mark.slow
def test_corrupted_json_raises_format_error_or_loads(fuzz):
    """Well-formed but wrong JSON in the index and arch sections."""
    bad = _bad({k: r for k, r in fuzz["records"].items() if r["category"] == "json_crcfix"},
               allow_ok=True)
    assert not bad, f"{len(bad)} cases:\n" + "\n".join(bad)


@pytest.mark.slow
def test_corrupted_json_is_mostly_detected(fuzz):
    records = [r for r in fuzz["records"].values() if r["category"] == "json_crcfix"]
    assert len(records) >= 200
    detected = sum(r["load"]["result"] == "format_error" for r in records)
    assert detected >= len(records) // 2


@pytest.mark.slow
def test_every_mutation_raises_only_format_error(fuzz):
    bad = _bad(fuzz["records"], allow_ok=True)
    assert not bad, f"{len(bad)} cases:\n" + "\n".join(bad)


# ----------------------------------------------------------------------------- direct cases


def _with_json(base: bytes, kind: int, edit) -> bytes:
    """``base`` with the JSON of section ``kind`` (1 arch, 2 index) edited, CRC recomputed."""
    sections = sections_of(base)
    i = [k for k, _ in sections].index(kind)
    doc = unzjson(sections[i][1])
    edit(doc)
    return assemble(sections[:i] + [(kind, zjson(doc))] + sections[i + 1:])


def _set(key, value):
    def edit(doc):
        doc[key] = value
    return edit


@pytest.mark.parametrize("key,value", [("num_classes", 10), ("image_size", 8), ("width", 1.0)])
def test_crc_fixed_arch_with_sane_values_still_loads(base_file, tmp_path, key, value):
    from lilnetx import fileformat

    path = tmp_path / "ok.lnx"
    path.write_bytes(_with_json(base_file.read_bytes(), 1, _set(key, value)))
    fileformat.load(path)


@pytest.mark.parametrize("key,value", [("num_classes", -1), ("image_size", 0),
                                       ("in_channels", 2**31), ("width", float("inf"))])
def test_crc_fixed_arch_with_bad_numbers_raises_format_error(base_file, tmp_path, key, value):
    from lilnetx import FormatError, fileformat

    path = tmp_path / "bad.lnx"
    path.write_bytes(_with_json(base_file.read_bytes(), 1, _set(key, value)))
    with pytest.raises(FormatError):
        fileformat.load(path)


def test_deeply_nested_json_raises_format_error(base_file, tmp_path):
    from lilnetx import FormatError, fileformat

    sections = sections_of(base_file.read_bytes())
    sections[1] = (2, zlib.compress(b"[" * 100_000 + b"]" * 100_000))
    path = tmp_path / "nested.lnx"
    path.write_bytes(assemble(sections))
    with pytest.raises(FormatError):
        fileformat.load(path)


def test_infinite_number_in_the_index_raises_format_error(base_file, tmp_path):
    from lilnetx import FormatError, fileformat

    def edit(doc):
        doc["groups"][0]["channels"][3]["lo"] = float("inf")

    path = tmp_path / "inf.lnx"
    path.write_bytes(_with_json(base_file.read_bytes(), 2, edit))
    with pytest.raises(FormatError):
        fileformat.load(path)


@pytest.mark.parametrize("case", ["unknown group", "missing name", "huge shape"])
def test_inspect_of_a_bad_index_raises_format_error(base_file, tmp_path, case):
    from lilnetx import FormatError
    from lilnetx.fileformat import report

    def edit(doc):
        if case == "unknown group":
            doc["layers"][0]["group"] = "conv9x9"
        elif case == "missing name":
            del doc["layers"][1]["name"]
        else:
            doc["layers"][4]["shape"] = [2**62, 84]

    path = tmp_path / "bad.lnx"
    path.write_bytes(_with_json(base_file.read_bytes(), 2, edit))
    with pytest.raises(FormatError):
        report.inspect(path)


def test_symbol_count_bomb_is_rejected_before_decoding(base_file, tmp_path, monkeypatch):
    from lilnetx import FormatError, fileformat
    from lilnetx.fileformat import codec, report

    real_total = sum(g["rows"] * g["slices"] for g in unzjson(sections_of(
        base_file.read_bytes())[1][1])["groups"])
    requested = []

    def spy(words, segments):
        requested.append(sum(int(count) for count, _, _ in segments))
        raise RuntimeError("spy: not decoding")

    monkeypatch.setattr(codec, "decode", spy)

    def edit(doc):
        doc["groups"][0]["slices"] = 2**26

    path = tmp_path / "bomb.lnx"
    path.write_bytes(_with_json(base_file.read_bytes(), 2, edit))
    for fn in (fileformat.load, report.inspect):
        with pytest.raises(FormatError):
            fn(path)
    assert all(n <= 2 * real_total for n in requested), (requested, real_total)


def test_trailing_bytes_after_a_zlib_section_raise_format_error(base_file, tmp_path):
    from lilnetx import FormatError, fileformat

    sections = sections_of(base_file.read_bytes())
    sections[0] = (sections[0][0], sections[0][1] + b"garbage")
    path = tmp_path / "trailing.lnx"
    path.write_bytes(assemble(sections))
    with pytest.raises(FormatError):
        fileformat.load(path)


# ----------------------------------------------------------------------------- the CLI


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("lilnetx")
    cmd = [str(exe), *args] if exe.exists() else [sys.executable, "-m", "explorer.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=cwd,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))


def _assert_one_error_line(proc: subprocess.CompletedProcess, *words: str):
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    assert "Traceback" not in proc.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])


def _bad_files(base: bytes, folder: Path) -> dict[str, Path]:
    flipped = bytearray(base)
    flipped[len(base) // 2] ^= 0x10
    files = {"truncated": base[: len(base) - 100], "bitflip": bytes(flipped), "empty": b"",
             "png": _png(), "version": assemble(sections_of(base), version=9)}
    out = {}
    for name, data in files.items():
        out[name] = folder / f"{name}.lnx"
        out[name].write_bytes(data)
    return out


@pytest.mark.parametrize("command", ["inspect", "evaluate"])
@pytest.mark.parametrize("which", ["truncated", "bitflip", "empty", "png", "version", "missing"])
def test_cli_bad_file_in_process(base_file, tmp_path, capsys, command, which):
    """`lilnetx inspect|evaluate BADFILE`: exit 2 and one error line (main() in this process)."""
    from explorer.cli import main

    files = _bad_files(base_file.read_bytes(), tmp_path)
    path = files.get(which, tmp_path / "does-not-exist.lnx")
    args = [command, str(path)] + (["--dataset", "digits"] if command == "evaluate" else [])
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    if which == "missing":
        assert "does-not-exist.lnx" in lines[0]


def test_cli_inspect_of_a_crc_fixed_bad_index_exits_2(base_file, tmp_path, capsys):
    from explorer.cli import main

    def edit(doc):
        doc["layers"][0]["group"] = "conv9x9"

    path = tmp_path / "bad.lnx"
    path.write_bytes(_with_json(base_file.read_bytes(), 2, edit))
    code = main(["inspect", str(path)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error:")


@pytest.mark.slow
def test_cli_bad_and_missing_file_subprocess(base_file, tmp_path):
    """The installed console script: exit 2, one `error:` line, no traceback."""
    files = _bad_files(base_file.read_bytes(), tmp_path)
    _assert_one_error_line(_cli(["evaluate", str(files["bitflip"]), "--dataset", "digits"],
                                tmp_path), "checksum")
    _assert_one_error_line(_cli(["inspect", str(tmp_path / "nope.lnx")], tmp_path), "nope.lnx")


if __name__ == "__main__" and len(sys.argv) == 5 and sys.argv[1] == "worker":
    sys.path.insert(0, str(HERE.parent.parent))
    worker(sys.argv[2], sys.argv[3], int(sys.argv[4]))
