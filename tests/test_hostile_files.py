"""Hostile .lnx files: each must end in one lilnetx.FormatError, in bounded time and memory.

Every file is made from a real small file (``test_fuzz.make_base_file``: LeNet-5 for 8x8 inputs,
or a small ResNet-20 with BatchNorm, or a quantized plain network) by editing its sections and
re-packing it with a correct checksum, so the reader gets past the checksum test. Each file is
loaded (``fileformat.load``, then ``report.inspect``, the reader behind ``lilnetx inspect``) in a
fresh subprocess under an address-space limit; the subprocess reports the outcome, the seconds
the reads took and its peak RSS after the imports. The tests assert a FormatError with a short
message, less than ``SECONDS`` and a peak RSS (``ru_maxrss``) of less than ``PEAK_GROWTH_MB``
over that of the imports of torch and lilnetx (about 500 MB by themselves). The CLI tests hold
``lilnetx inspect|evaluate|slim`` to the peak RSS of ``lilnetx inspect`` of a valid file plus
``PEAK_GROWTH_MB``. Before the reader had its bounds, these files took gigabytes (or read
``/dev/zero`` forever, or blocked on a pipe), or ended in a ValueError.

Linux carries a process's peak RSS over fork and exec into its child's ``ru_maxrss``, so a
child of this (large) test process would report at least this process's peak. Every process
measured is therefore started by a small launcher (:data:`_LAUNCHER`, a Python without torch),
which reports ``RUSAGE_CHILDREN`` for it: the peak of that process alone.
"""

from __future__ import annotations

import json
import os
import resource
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from test_fuzz import assemble, make_base_file, sections_of, unzjson, zjson

import lilnetx
from lilnetx import FormatError, LilNetXError, fileformat
from lilnetx.fileformat import archspec, limits

SECONDS = 20
PEAK_GROWTH_MB = 300
ADDRESS_SPACE_MARGIN = 4 << 30  # over the VmSize after imports: a runaway allocation fails
REPO = Path(lilnetx.__file__).resolve().parent.parent
KIND = {"arch": 1, "index": 2, "tables": 3, "decoders": 4, "floats": 5, "latents": 6}

# ----------------------------------------------------------------------------- base files


def make_files(folder: Path) -> dict[str, bytes]:
    """The bytes of three valid files of format version 1 (whose JSON index these cases edit;
    version 2 has its own hostile cases in tests/test_hostile_v2.py): ``lenet5`` (latent), ``resnet`` (latent, BatchNorm) and
    ``quant`` (a plain lenet5 with 8-bit quantized layers)."""
    from lilnetx.fileformat.lnx_v1 import encode_model_v1, encode_plain_v1
    from lilnetx.methods.quantize import apply_quantization, quantize_layers

    make_base_file(folder / "lenet5.lnx")
    torch.manual_seed(0)
    net = lilnetx.create_model("resnet20", in_channels=1, image_size=8, num_classes=10,
                               width=0.25)
    model = lilnetx.convert(net, width=0.25)
    model.arch = archspec.registry_arch("resnet20", in_channels=1, image_size=8,
                                        num_classes=10, width=0.25)
    fileformat.write(encode_model_v1(model), folder / "resnet.lnx")
    plain = lilnetx.create_model("lenet5", in_channels=1, image_size=8, num_classes=10)
    q = quantize_layers(plain, 8)
    apply_quantization(plain, q)
    fileformat.write(encode_plain_v1(plain, archspec.registry_arch(
        "lenet5", in_channels=1, image_size=8, num_classes=10), q), folder / "quant.lnx")
    return {name: (folder / f"{name}.lnx").read_bytes() for name in ("lenet5", "resnet", "quant")}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, bytes]:
    return make_files(tmp_path_factory.mktemp("hostile"))


def _replace(data: bytes, name: str, body: bytes) -> bytes:
    """``data`` with section ``name`` replaced by ``body``, checksum recomputed."""
    return assemble([(k, body if k == KIND[name] else b) for k, b in sections_of(data)])


def _section(data: bytes, name: str) -> bytes:
    return dict(sections_of(data))[KIND[name]]


def _edit_json(data: bytes, name: str, edit) -> bytes:
    doc = unzjson(_section(data, name))
    edit(doc)
    return _replace(data, name, zjson(doc))


def _edit_floats(data: bytes, name: str, index: int, value: float) -> bytes:
    values = np.frombuffer(_section(data, name), dtype="<f4").copy()
    values[index] = value
    return _replace(data, name, values.tobytes())


def _float_offset(data: bytes, key: str) -> int:
    offset = 0
    for entry in unzjson(_section(data, "index"))["floats"]:
        if entry["key"] == key:
            return offset
        offset += int(np.prod(entry["shape"]))
    raise KeyError(key)


# ----------------------------------------------------------------------------- hostile files


def _arch(model: str, **kw) -> dict:
    return archspec.registry_arch(model, in_channels=kw.get("in_channels", 1),
                                  image_size=kw.get("image_size", 8),
                                  num_classes=kw.get("num_classes", 10),
                                  width=kw.get("width", 1.0))


def huge_arch(arch: dict):
    """The lenet5 file claiming another (huge) architecture."""
    return lambda f: _edit_json(f["lenet5"], "arch", lambda doc: (doc.clear(), doc.update(arch)))


def rows_bomb(f) -> bytes:
    """The dense group claims 8192 rows (kernel positions) instead of 1: 8191 extra one-symbol
    tables of 2 bytes each. Decoded, that is 8192 x 18600 int64 latents (twice: 2.4 GB)."""
    data = f["lenet5"]
    index = unzjson(_section(data, "index"))
    extra, offset = 8191, 0
    for g in index["groups"]:
        offset += sum(c["n"] for c in g["channels"])
        if g["key"] == "dense":
            g["rows"] += extra
            g["channels"] += [{"lo": 0, "n": 1}] * extra
            break
    tables = _section(data, "tables")
    tables = tables[:2 * offset] + struct.pack("<H", 0xFFFF) * extra + tables[2 * offset:]
    return assemble([(k, {2: zjson(index), 3: tables}.get(k, b)) for k, b in sections_of(data)])


def many_digits(section: str, key: str):
    """A JSON number of 5000 digits (Python's json refuses more than 4300 with a ValueError)."""
    def build(f):
        doc = unzjson(_section(f["lenet5"], section))
        target = doc["groups"][0] if section == "index" else doc
        target[key] = 7
        text = json.dumps(doc, sort_keys=True).replace(f'"{key}": 7', f'"{key}": 1{"0" * 4999}')
        return _replace(f["lenet5"], section, zlib.compress(text.encode()))
    return build


def json_flood(f) -> bytes:
    """60 MB of JSON (20 million empty objects in the index's floats list) in a 60 KB section."""
    doc = unzjson(_section(f["lenet5"], "index"))
    head, tail = json.dumps(doc, sort_keys=True).split('"floats": [', 1)
    text = head + '"floats": [' + "{}," * 20_000_000 + tail
    return _replace(f["lenet5"], "index", zlib.compress(text.encode()))


def deep_json(f) -> bytes:
    """The architecture's ``data`` nested 500 lists deep (under Python's recursion limit)."""
    return _edit_json(f["lenet5"], "arch", lambda doc: doc.update(data=_nest(500)))


def _nest(depth: int):
    out: list = []
    for _ in range(depth):
        out = [out]
    return out


def nan_in_arch(f) -> bytes:
    def edit(doc):
        doc["data"]["mean"] = [float("nan")]
    return _edit_json(f["lenet5"], "arch", edit)


def nan_float(model: str, key: str, value: float = float("nan")):
    return lambda f: _edit_floats(f[model], "floats", _float_offset(f[model], key), value)


def bad_decoder(model: str, value: float, index: int = 0):
    return lambda f: _edit_floats(f[model], "decoders", index, value)


def dense_decoder_overflow(f) -> bytes:
    """The dense decoder 3e38: latents of +-2 and more decode to +-inf in float32."""
    return bad_decoder("lenet5", 3e38, index=25 * 25)(f)


def big_file(path: Path, f) -> None:
    """A 3 GiB sparse file that starts like the lenet5 file."""
    with open(path, "wb") as out:
        out.write(f["lenet5"])
        out.truncate(3 << 30)


CASES = {
    "arch resnet20 width 40 (435M parameters)": huge_arch(_arch("resnet20", width=40.0)),
    "arch tv:vit_h_14 (632M parameters)": huge_arch(_arch("tv:vit_h_14", in_channels=3,
                                                          image_size=224, num_classes=1000)),
    "arch mlp image_size 1448 (629M parameters)": huge_arch(_arch("mlp", image_size=1448)),
    "group rows disagree with its layers": rows_bomb,
    "index integer of 5000 digits": many_digits("index", "slices"),
    "arch integer of 5000 digits": many_digits("arch", "num_classes"),
    "index of 60 MB of JSON": json_flood,
    "arch nested 500 deep": deep_json,
    "NaN in the arch's normalization": nan_in_arch,
    "NaN bias": nan_float("lenet5", "1.bias"),
    "Inf BatchNorm running_var": nan_float("resnet", "bn1.running_var", float("inf")),
    "NaN BatchNorm weight": nan_float("resnet", "layers.0.bn2.weight"),
    "NaN conv decoder": bad_decoder("lenet5", float("nan"), index=3),
    "Inf quantization scale": bad_decoder("quant", float("inf")),
    "decoder overflowing float32": dense_decoder_overflow,
    "/dev/zero": "/dev/zero",
    "a named pipe": "fifo",
    "a 3 GiB file": big_file,
}

_CHILD = r"""
import json, os, resource, sys, time
import torch
torch.set_num_threads(1)
from lilnetx import fileformat
from lilnetx.fileformat import report
from lilnetx.errors import FormatError

def status(field):  # kB
    lines = open("/proc/self/status").read().splitlines()
    return int(next(l for l in lines if l.startswith(field + ":")).split()[1])

resource.setrlimit(resource.RLIMIT_AS, (status("VmSize") * 1024 + int(sys.argv[2]),) * 2)
before = status("VmHWM")
out = {}
start = time.perf_counter()
for op in (fileformat.load, report.inspect):
    try:
        op(sys.argv[1])
        res = {"result": "ok"}
    except FormatError as e:
        res = {"result": "format_error", "message": str(e)}
    except BaseException as e:
        res = {"result": "other", "message": f"{type(e).__name__}: {str(e)[:300]}"}
    out[op.__name__] = res
out["seconds"] = time.perf_counter() - start
out["import_peak_mb"] = before / 1024
print(json.dumps(out), flush=True)
os._exit(0)  # skip the interpreter's teardown of torch, which alone adds ~120 MB to the peak
"""

_LAUNCHER = r"""
import json, resource, subprocess, sys
code = subprocess.run(sys.argv[1:]).returncode
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"returncode": code, "ru_maxrss_mb": usage.ru_maxrss / 1024}))
"""


def _env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}


def launch(cmd: list[str], timeout: float, **kw) -> tuple[int | None, str, str, float | None]:
    """Run ``cmd`` under :data:`_LAUNCHER`: (exit code or None on timeout, stdout, stderr,
    peak RSS of ``cmd`` in MB). A command still running after ``timeout`` is killed."""
    proc = subprocess.Popen([sys.executable, "-c", _LAUNCHER, *cmd], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env=_env(), **kw)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        out, err = proc.communicate()
        return None, out, err, None
    lines = out.splitlines()
    usage = json.loads(lines[-1]) if lines else {"returncode": None, "ru_maxrss_mb": None}
    return usage["returncode"], "\n".join(lines[:-1]), err, usage["ru_maxrss_mb"]


def measure(path: str) -> dict:
    """Load and inspect ``path`` in a fresh process: outcomes, seconds and peak RSS (MB)."""
    code, out, err, peak = launch([sys.executable, "-c", _CHILD, path,
                                   str(ADDRESS_SPACE_MARGIN)], 60 + SECONDS, cwd=REPO)
    lines = out.strip().splitlines()
    if code is None:
        return {"result": "timeout"}
    if code or not lines:
        return {"result": f"crash {code}", "stderr": err[-2000:]}
    return {**json.loads(lines[-1]), "peak_mb": peak}


def _hostile_path(case, files, tmp_path: Path) -> str:
    if case == "/dev/zero":
        return case
    path = tmp_path / "hostile.lnx"
    if case == "fifo":
        os.mkfifo(path)
    elif case is big_file:
        big_file(path, files)
    else:
        path.write_bytes(case(files))
    return str(path)


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_file_raises_format_error_quickly_in_bounded_memory(name, files, tmp_path):
    path = _hostile_path(CASES[name], files, tmp_path)
    if path != "/dev/zero" and CASES[name] not in ("fifo", big_file):
        assert os.path.getsize(path) < 200_000  # small files, each one a bomb
    out = measure(path)
    assert "load" in out, out
    for op in ("load", "inspect"):
        assert out[op]["result"] == "format_error", (op, out)
        assert len(out[op]["message"]) < 400, out[op]["message"]  # no huge value echoed
    assert out["seconds"] < SECONDS, out
    assert out["peak_mb"] - out["import_peak_mb"] < PEAK_GROWTH_MB, out


def test_the_hostile_files_are_valid_but_for_one_change(files, tmp_path):
    """The base files load (so each hostile file is refused for its one edit)."""
    for data in files.values():
        path = tmp_path / "ok.lnx"
        path.write_bytes(data)
        fileformat.load(path)


@pytest.mark.parametrize("name,words", [
    ("arch tv:vit_h_14 (632M parameters)", ["tv:vit_h_14", "MAX_PARAMS"]),
    ("group rows disagree with its layers", ["dense", "rows"]),
    ("index integer of 5000 digits", ["index", "5000 digits"]),
    ("index of 60 MB of JSON", ["index", "more than"]),
    ("arch nested 500 deep", ["arch", "deeper"]),
    ("NaN in the arch's normalization", ["arch", "not finite"]),
    ("NaN bias", ["floats", "'1.bias'", "NaN"]),
    ("Inf BatchNorm running_var", ["'bn1.running_var'"]),
    ("NaN conv decoder", ["decoders", "conv5x5"]),
    ("Inf quantization scale", ["decoders", "q:"]),
    ("decoder overflowing float32", ["overflow"]),
    ("/dev/zero", ["/dev/zero", "not a regular file"]),
    ("a 3 GiB file", [str(3 << 30), "bytes"]),
])
def test_hostile_file_messages_say_what_is_wrong(name, words, files, tmp_path):
    path = _hostile_path(CASES[name], files, tmp_path)
    with pytest.raises(FormatError) as e:
        fileformat.load(path)
    for w in words:
        assert w in str(e.value), (w, str(e.value))


# ----------------------------------------------------------------------------- the budget


@pytest.mark.parametrize("arch", [
    _arch("resnet20", width=64.0),
    _arch("tv:vit_h_14", in_channels=3, image_size=224, num_classes=1000),
    _arch("tv:vit_l_16", in_channels=3, image_size=224, num_classes=1000),
    _arch("mlp", image_size=1448),
    _arch("mlp", in_channels=4096, image_size=4096, num_classes=1_000_000, width=64.0),
    _arch("lenet5", in_channels=4096, image_size=4096, num_classes=1_000_000, width=64.0),
    _arch("vgg16", in_channels=3, image_size=4096, width=64.0),
])
def test_check_architecture_refuses_networks_above_the_budget_without_allocating(arch):
    start = time.monotonic()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(FormatError, match="MAX_PARAMS"):
        fileformat.check_architecture(arch)
    assert time.monotonic() - start < SECONDS
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss < PEAK_GROWTH_MB * 1024


@pytest.mark.parametrize("name,kw", [
    ("lenet5", {}), ("resnet20", {"in_channels": 3, "image_size": 32}),
    ("tv:regnet_y_400mf", {"in_channels": 3, "image_size": 32}),  # a builder using .tolist()
    ("tv:mobilenet_v3_small", {"in_channels": 1, "image_size": 32}),
])
def test_check_architecture_counts_the_parameters_of_the_real_network(name, kw):
    arch = _arch(name, **kw)
    real = archspec.build_from_arch(arch)
    assert fileformat.check_architecture(arch) == sum(p.numel() for p in real.parameters())
    assert all(p.device.type == "cpu" for p in real.parameters())  # the meta build left no trace


@pytest.mark.parametrize("name,params", [("tv:resnet50", 25_557_032), ("tv:vit_b_16", 86_567_656),
                                         ("tv:vgg19", 143_667_240)])
def test_check_architecture_accepts_the_large_models_people_train(name, params):
    arch = _arch(name, in_channels=3, image_size=224, num_classes=1000)
    assert fileformat.check_architecture(arch) == params <= limits.MAX_PARAMS


@pytest.mark.parametrize("arch", [
    _arch("no_such_model"), _arch("tv:no_such_model"), {**_arch("lenet5"), "image_size": 0},
    {**_arch("lenet5"), "width": "wide"}, {**_arch("lenet5"), "kind": "pickle"},
    {**_arch("lenet5"), "model": "x" * 100_000}, _arch("lenet5", image_size=1), None,
])
def test_check_architecture_refuses_bad_descriptions(arch):
    with pytest.raises(FormatError) as e:
        fileformat.check_architecture(arch)
    assert len(str(e.value)) < 400


# ----------------------------------------------------------------------------- save


def _lenet(num_classes: int = 10) -> lilnetx.LilNetXModel:
    torch.manual_seed(0)
    model = lilnetx.convert(lilnetx.create_model("lenet5", in_channels=1, image_size=8,
                                                 num_classes=num_classes))
    model.arch = _arch("lenet5", num_classes=num_classes)
    return model


@pytest.mark.parametrize("arch", [
    _arch("tv:vit_h_14", in_channels=3, image_size=224, num_classes=1000),
    _arch("lenet5", num_classes=11),  # not the model's architecture
    _arch("mlp"),
])
def test_save_refuses_what_load_would_refuse(arch, tmp_path):
    path = tmp_path / "m.lnx"
    with pytest.raises(FormatError, match="refusing to write"):
        fileformat.save(_lenet(), path, arch=arch)
    assert not list(tmp_path.iterdir())


def test_save_refuses_nan_state_and_an_overflowing_decoder(tmp_path):
    model = _lenet()
    with torch.no_grad():
        model.net[1].bias[3] = float("nan")
    with pytest.raises(FormatError, match="NaN or Inf"):
        fileformat.save(model, tmp_path / "nan.lnx")
    model = _lenet()
    with torch.no_grad():
        model.decoders["dense"].weight.fill_(3e38)
        for _, layer in model.latent_layers():
            layer.latent.fill_(2.0)
    with pytest.raises(FormatError, match="NaN or Inf"):
        fileformat.save(model, tmp_path / "inf.lnx")
    plain = lilnetx.decode(_lenet())
    with torch.no_grad():
        plain[0][0].weight[0, 0, 0, 0] = float("inf")
    with pytest.raises(FormatError, match="NaN or Inf"):
        fileformat.save(plain, tmp_path / "plain.lnx", arch=_arch("lenet5"))
    assert not list(tmp_path.iterdir())


def test_save_still_writes_a_valid_file(tmp_path):
    size = fileformat.save(_lenet(), tmp_path / "ok.lnx")
    assert size == os.path.getsize(tmp_path / "ok.lnx")
    fileformat.load(tmp_path / "ok.lnx")


# ----------------------------------------------------------------------------- the CLI


def _address_space_limit():
    resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))


def _cli(args: list[str], cwd: Path) -> tuple[int | None, str, float | None]:
    """``lilnetx ARGS`` in a fresh process (8 GiB of address space): exit code, stderr, peak
    RSS in MB."""
    exe = Path(sys.executable).with_name("lilnetx")
    cmd = [str(exe), *args] if exe.exists() else [sys.executable, "-m", "explorer.cli", *args]
    code, _, err, peak = launch(cmd, 120, cwd=cwd, preexec_fn=_address_space_limit)
    return code, err, peak


@pytest.fixture(scope="module")
def cli_baseline_mb(files, tmp_path_factory) -> float:
    """Peak RSS of ``lilnetx inspect`` of the valid lenet5 file."""
    path = tmp_path_factory.mktemp("cli") / "ok.lnx"
    path.write_bytes(files["lenet5"])
    code, err, peak = _cli(["inspect", str(path)], path.parent)
    assert code == 0, err[-2000:]
    return peak


@pytest.mark.parametrize("command,case", [
    ("inspect", "/dev/zero"),
    ("inspect", "arch tv:vit_h_14 (632M parameters)"),
    ("evaluate", "group rows disagree with its layers"),
    ("slim", "index integer of 5000 digits"),
    ("inspect", "NaN bias"),
])
def test_cli_exits_2_with_one_error_line(command, case, files, tmp_path, cli_baseline_mb):
    path = _hostile_path(CASES[case], files, tmp_path)
    args = [command, path] + (["--dataset", "digits"] if command == "evaluate" else [])
    start = time.monotonic()
    code, err, peak = _cli(args, tmp_path)
    assert code == 2, (code, err[-2000:])
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), err[-2000:]
    assert "Traceback" not in err and len(lines[0]) < 400
    assert time.monotonic() - start < 60  # including the imports of a fresh process
    assert peak < cli_baseline_mb + PEAK_GROWTH_MB, (peak, cli_baseline_mb)


# ----------------------------------------------------------------------------- MLflow pyfunc


def test_pyfunc_predict_names_the_expected_input_shape(files, tmp_path):
    from explorer.lnx_pyfunc import LnxModel

    path = tmp_path / "m.lnx"
    path.write_bytes(files["lenet5"])
    model = LnxModel()
    model.load_context(SimpleNamespace(artifacts={"model": str(path)}))
    for bad, got in ((np.zeros((3, 5)), "(3, 5)"), (np.zeros((2, 3, 8, 8)), "(2, 3, 8, 8)"),
                     (np.zeros((2, 1, 28, 28)), "(2, 1, 28, 28)"), (np.zeros(4), "(4,)")):
        with pytest.raises(LilNetXError) as e:
            model.predict(None, bad)
        assert str(e.value) == f"expected input of shape (N, 1, 8, 8) float32, but got {got}"
    with pytest.raises(LilNetXError, match=r"expected input of shape \(N, 1, 8, 8\)"):
        model.predict(None, [["a", "b"]])
    x = np.random.default_rng(0).standard_normal((3, 1, 8, 8)).astype(np.float32)
    with torch.no_grad():
        ref = fileformat.load(path)(torch.from_numpy(x)).numpy()
    np.testing.assert_array_equal(model.predict(None, x), ref)
