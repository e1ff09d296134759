"""Any network in a .lnx file, decoded without its code: the ``"kind": "graph"`` architecture.

A user package written to a temporary folder, torchvision's ResNet-18 and MobileNet-V3-Small are
converted, saved with an example input, and read back in a fresh process that has neither the
package (deleted, not on ``sys.path``) nor torchvision imported: the logits must equal the
decoded model's bit for bit. Graphs naming operators outside the allowlist, referring to unknown
nodes, too large or not matching their weights are refused with a short ``FormatError``.
"""

from __future__ import annotations

import importlib
import json
import os
import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torchvision
from _graph_nets import (
    USER_PACKAGE,
    USER_SOURCE,
    Constant,
    Exp,
    Recurrent,
    Shared,
    SlimNet,
    randomize_batchnorm,
    relu_chain,
)

import lilnetx
from lilnetx import FormatError, fileformat
from lilnetx.deploy.export import example_input, slim_metrics, write_and_measure
from lilnetx.fileformat import container, graph, limits, report
from lilnetx.fileformat.archspec import registry_arch

REPO = Path(__file__).resolve().parents[1]

_CHILD = r"""
import importlib.util, json, sys, torch
torch.set_num_threads(int(sys.argv[3]))  # the test process's, though no result depends on it
assert importlib.util.find_spec(sys.argv[2]) is None, "the user package is still importable"
import lilnetx
out = {}
for name, lnx, io in json.loads(sys.argv[1]):
    net = lilnetx.load(lnx)
    data = torch.load(io, weights_only=True)
    with torch.no_grad():
        got = net(data["x"])
    out[name] = {"equal": bool(torch.equal(got, data["y"])), "type": type(net).__name__}
out["modules"] = sorted(m for m in sys.modules if m.split(".")[0] in (sys.argv[2], "torchvision"))
print(json.dumps(out))
"""


def _user_net(folder: Path) -> torch.nn.Module:
    """``UserNet`` from a package written to ``folder``, which is then deleted."""
    pkg = folder / "pkgs" / USER_PACKAGE
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("from .nets import UserNet\n")
    (pkg / "nets.py").write_text(USER_SOURCE)
    sys.path.insert(0, str(pkg.parent))
    try:
        net = importlib.import_module(USER_PACKAGE).UserNet()
    finally:
        sys.path.remove(str(pkg.parent))
    return net


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """name -> (file, input/expected logits file) for three converted networks."""
    folder = tmp_path_factory.mktemp("graphs")
    torch.manual_seed(0)
    cases = {"user": (_user_net(folder), 32), "tv:resnet18": (
        torchvision.models.resnet18(num_classes=10), 64), "tv:mobilenet_v3_small": (
        torchvision.models.mobilenet_v3_small(num_classes=10), 64)}
    out = {}
    for name, (net, size) in cases.items():
        randomize_batchnorm(net)
        model = lilnetx.convert(net)
        x = torch.randn(3, 3, size, size)
        lnx, io = folder / f"{name.replace(':', '_')}.lnx", folder / f"{name}.pt"
        fileformat.save(model, lnx, example_input=x[:1])
        with torch.no_grad():
            torch.save({"x": x, "y": lilnetx.decode(model).eval()(x)}, io)
        out[name] = (str(lnx), str(io))
    shutil.rmtree(folder / "pkgs")
    for mod in [m for m in sys.modules if m.split(".")[0] == USER_PACKAGE]:
        del sys.modules[mod]
    return out


@pytest.fixture(scope="module")
def fresh_process(saved, tmp_path_factory):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    threads = str(torch.get_num_threads())
    env["OMP_NUM_THREADS"] = threads
    args = json.dumps([[name, lnx, io] for name, (lnx, io) in saved.items()])
    proc = subprocess.run([sys.executable, "-c", _CHILD, args, USER_PACKAGE, threads], env=env,
                          cwd=tmp_path_factory.mktemp("elsewhere"), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", ["user", "tv:resnet18", "tv:mobilenet_v3_small"])
def test_a_fresh_process_without_the_code_computes_the_same_logits(name, saved, fresh_process):
    assert fresh_process[name] == {"equal": True, "type": "GraphNetwork"}
    assert fresh_process["modules"] == []  # neither the user's package nor torchvision
    arch = fileformat.read(saved[name][0]).arch
    assert arch["kind"] == "graph"
    assert (arch["in_channels"], arch["num_classes"]) == (3, 10)


def test_the_user_graph_holds_every_kind_of_layer(saved):
    arch = fileformat.read(saved["user"][0]).arch
    summary = report.arch_summary(arch)["operators"]
    for op in ("call_function:operator.add", "call_function:torch.cat", "call_method:mean",
               "call_function:operator.getitem", "call_module:MaxPool2d", "get_attr:left.scale",
               "call_function:torch.nn.functional.avg_pool2d", "call_method:view"):
        assert op in summary, op
    convs = {m["name"]: m.get("args", {}) for m in arch["modules"] if m.get("type") == "Conv2d"}
    assert convs["left.dw"]["groups"] == 8 and convs["left.dil"]["dilation"] == [2, 2]
    assert {"name": "left", "params": {"scale": [8, 1, 1]}, "buffers": {}} in arch["modules"]


def test_inspect_counts_the_architecture_bytes(saved):
    r = report.inspect(saved["tv:resnet18"][0])
    c = fileformat.read(saved["tv:resnet18"][0])
    assert r["breakdown"]["architecture"] == len(c.sections["arch"]) < 2000
    assert sum(r["breakdown"].values()) == r["size_bytes"] == os.path.getsize(
        saved["tv:resnet18"][0])
    assert r["arch"]["nodes"] == len(c.arch["nodes"]) and r["arch"]["kind"] == "graph"
    assert r["arch"]["operators"]["call_module:Conv2d"] == 20


def test_a_plain_network_round_trips(tmp_path):
    net = SlimNet().eval()
    randomize_batchnorm(net)
    x = torch.randn(4, 3, 12, 20)  # not square
    fileformat.save(net, tmp_path / "p.lnx", example_input=x[:1])
    loaded = fileformat.load(tmp_path / "p.lnx")
    with torch.no_grad():
        assert torch.equal(loaded(x), net(x))
    arch = fileformat.read(tmp_path / "p.lnx").arch
    assert example_input(arch, 2).shape == (2, 3, 12, 20)
    assert fileformat.check_architecture(arch) == sum(p.numel() for p in net.parameters())
    # a loaded graph network is saved again without an example (its arch) or retraced with one
    fileformat.save(loaded, tmp_path / "again.lnx")
    fileformat.save(loaded, tmp_path / "traced.lnx", example_input=x[:1])
    for name in ("again.lnx", "traced.lnx"):
        assert fileformat.read(tmp_path / name).arch == arch
    copied = pickle.loads(pickle.dumps(loaded))  # plain Python objects: torch.save works too
    with torch.no_grad():
        assert torch.equal(copied(x), net(x))


def test_a_registry_arch_is_kept_and_no_arch_needs_an_example(tmp_path):
    model = lilnetx.convert(lilnetx.create_model("lenet5", in_channels=1, image_size=8,
                                                 num_classes=10))
    model.arch = registry_arch("lenet5", in_channels=1, image_size=8, num_classes=10)
    fileformat.save(model, tmp_path / "r.lnx", example_input=torch.randn(1, 1, 8, 8))
    assert fileformat.read(tmp_path / "r.lnx").arch == model.arch
    model.arch = None
    for m in (model, SlimNet()):
        with pytest.raises(FormatError, match="example_input"):
            fileformat.save(m, tmp_path / "none.lnx")
    assert not (tmp_path / "none.lnx").exists()


def test_write_and_measure_stores_the_graph_of_a_network_without_arch(tmp_path):
    net = SlimNet().eval()
    out, _ = write_and_measure(net, net, tmp_path / "w.lnx", dense_bytes=10_000,
                            latency=False, example_input=torch.randn(1, 3, 8, 8))
    assert fileformat.read(tmp_path / "w.lnx").arch["kind"] == "graph"
    assert out["size_bytes"] == os.path.getsize(tmp_path / "w.lnx")
    assert out["flops"] == out["dense_flops"] > 0


@pytest.mark.parametrize("net,words", [
    (Exp(), ["exp", "allowlist"]), (Constant(), ["_tensor_constant0", "buffer"]),
    (Recurrent(), ["GRU", "allowlist"]), (Shared(), ["'b'", "'a'", "once"]),
])
def test_save_names_what_a_graph_cannot_hold(net, words, tmp_path):
    with pytest.raises(FormatError) as e:
        fileformat.save(net, tmp_path / "x.lnx", example_input=torch.randn(1, 3, 8, 8))
    for w in words:
        assert w in str(e.value), (w, str(e.value))


def test_save_refuses_a_network_that_its_graph_does_not_reproduce(tmp_path):
    net = SlimNet().eval()
    net.c2.register_forward_hook(lambda _m, _i, out: out * 2)
    with pytest.raises(FormatError, match="other outputs"):
        fileformat.save(net, tmp_path / "h.lnx", example_input=torch.randn(1, 3, 8, 8))
    with pytest.raises(FormatError, match=r"\(N, C, H, W\)"):
        fileformat.save(SlimNet(), tmp_path / "h.lnx", example_input=torch.randn(3, 8, 8))


def test_slim_and_onnx_work_on_a_graph_file(tmp_path):
    import onnxruntime as ort

    torch.manual_seed(1)
    net = SlimNet()
    randomize_batchnorm(net)
    model = lilnetx.convert(net)
    with torch.no_grad():  # c2 never reads input channels 0-3: c1 and b1 lose 4 channels
        model.net.c2.latent.view(8, 8, 9)[:, :4] = 0
    lnx = tmp_path / "s.lnx"
    fileformat.save(model, lnx, example_input=torch.randn(1, 3, 16, 16))
    c = fileformat.read(lnx)
    loaded = fileformat.build_network(c)
    slim_net, metrics = slim_metrics(loaded, c.arch, latency=False, onnx_path=str(
        tmp_path / "s.onnx"))
    assert loaded.c1.out_channels == 8 and slim_net.c1.out_channels == 4
    assert metrics["flops"] < metrics["dense_flops"] and metrics["channel_sparsity"] > 0
    x = torch.randn(5, 3, 16, 16)
    sess = ort.InferenceSession(str(tmp_path / "s.onnx"), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        want = loaded(x)
        torch.testing.assert_close(slim_net(x), want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.from_numpy(sess.run(None, {"input": x.numpy()})[0]),
                               want, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- hostile graphs


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> bytes:
    """A small valid graph file (SlimNet, float32)."""
    path = tmp_path_factory.mktemp("base") / "b.lnx"
    torch.manual_seed(0)
    fileformat.save(SlimNet(), path, example_input=torch.randn(1, 3, 8, 8))
    return path.read_bytes()


def _edited(data: bytes, edit) -> bytes:
    c = container.parse(data)
    arch = json.loads(json.dumps(c.arch))
    arch = edit(arch) or arch
    from lilnetx.fileformat import compact

    body = [(name, bytes(c.sections[name])) for name in compact.SECTIONS2.values()]
    body[0] = ("arch", compact.arch_bytes(arch))
    return compact.pack2(body)


def _node(arch: dict, op: str) -> dict:
    return next(n for n in arch["nodes"] if n["op"] == op)


def _set(path: list, value):
    def edit(arch):
        obj = arch
        for key in path[:-1]:
            obj = obj[key]
        obj[path[-1]] = value
    return edit


def _fn(target: str, args=None):
    def edit(arch):
        n = _node(arch, "call_function")
        n["target"] = target
        n.pop("kwargs", None)
        if args is not None:
            n["args"] = args
    return edit


def _conv_out(arch):
    next(m for m in arch["modules"] if m["name"] == "c1")["args"]["out_channels"] = 9


def _rename(arch):  # version 2 stores no names: a renamed layer is the same network
    for entry in arch["modules"] + arch["nodes"]:
        for key in ("name", "target"):
            if entry.get(key) == "c2":
                entry[key] = "c3"


def _swap(arch):
    nodes = arch["nodes"]
    nodes[1]["target"], nodes[4]["target"] = nodes[4]["target"], nodes[1]["target"]


def _squarings(arch):
    """x.size(0) squared 80 times, added to the logits: 2**(2**80) at batch 2."""
    nodes = arch["nodes"]
    out = nodes.pop()
    k = len(nodes)
    nodes.append({"op": "call_method", "target": "size", "args": [{"node": 0}, 0]})
    for i in range(80):
        nodes.append({"op": "call_function", "target": "operator.mul",
                      "args": [{"node": k + i}, {"node": k + i}]})
    nodes.append({"op": "call_function", "target": "operator.add",
                  "args": [out["args"][0], {"node": k + 80}]})
    nodes.append({"op": "output", "args": [{"node": k + 81}]})


def _split_bomb(arch):
    """The 3x64x64 input flattened and split in ones: 12,288 tensors (the check's own bomb)."""
    arch["image_size"], arch["input_shape"] = 64, [3, 64, 64]
    k = len(arch["nodes"]) - 1
    arch["nodes"][k:k] = [
        {"op": "call_method", "target": "flatten", "args": [{"node": 0}, 1]},
        {"op": "call_method", "target": "split", "args": [{"node": k}, 1], "kwargs": {"dim": 1}}]


def _cat_bomb(arch):
    nodes = arch["nodes"]
    nodes[1:] = [{"op": "call_function", "target": "torch.cat",
                  "args": [[{"node": i}, {"node": i}], 1]} for i in range(40)]
    nodes.append({"op": "output", "args": [{"node": 40}]})


HOSTILE = {
    "os.system": (_fn("os.system", ["echo hacked"]), ["os.system", "allowlist"]),
    "builtins.eval": (_fn("builtins.eval", ["1+1"]), ["builtins.eval", "allowlist"]),
    "call_method __reduce__": (lambda a: a["nodes"].insert(1, {
        "op": "call_method", "target": "__reduce__", "args": [{"node": 0}]}), ["__reduce__"]),
    "getattr __class__": (_fn("builtins.getattr", [{"node": 0}, "__class__"]), ["__class__"]),
    "unknown op": (_set(["nodes", 1, "op"], "call_python"), ["call_python"]),
    "unknown input node": (_set(["nodes", 1, "args"], [{"node": 999}]), ["999", "earlier"]),
    "negative node": (_set(["nodes", 1, "args"], [{"node": -1}]), ["earlier"]),
    "self reference": (_set(["nodes", 1, "args"], [{"node": 1}]), ["earlier"]),
    "huge node count": (lambda a: relu_chain(limits.MAX_GRAPH_NODES), ["nodes", "2048"]),
    "huge module count": (lambda a: {**a, "modules": [{"name": f"r{i}", "type": "ReLU"} for i in
                                                      range(limits.MAX_GRAPH_MODULES + 1)]},
                          ["modules"]),
    "layer type not allowed": (_set(["modules", 1, "type"], "Pickle"), ["Pickle", "allowlist"]),
    "unknown layer argument": (_set(["modules", 0, "args", "code"], "x"), ["code"]),
    "bad module name": (_set(["modules", 0, "name"], "c1/../x"), ["bad name"]),
    "module named forward": (_set(["modules", 0, "name"], "forward"), ["forward"]),
    "call of a missing layer": (_set(["nodes", 1, "target"], "nowhere"), ["nowhere"]),
    "get_attr of a missing tensor": (lambda a: a["nodes"].insert(1, {
        "op": "get_attr", "target": "c1.secret"}), ["c1.secret"]),
    "layer shape not matching weights": (_conv_out, ["does not run", "b1", "9 channels"]),
    "layers in the wrong order": (_swap, ["does not run"]),
    "num_classes not the output": (_set(["num_classes"], 11), ["num_classes"]),
    "output shape not the graph's": (lambda a: {**a, "num_classes": 11, "output_shape": [11]},
                                     ["output", "[11]"]),
    "out= keyword": (_set(["nodes", 2, "kwargs"], {"out": {"node": 1}}), ["keyword"]),
    "long string": (_fn("torch.flatten", [{"node": 0}, "x" * 1000]), ["string"]),
    "tuple times a billion": (_fn("operator.mul", [{"tuple": [1]}, 10 ** 9]), ["mul"]),
    "activation bomb": (_cat_bomb, ["elements", "more than"]),
    "split bomb": (_split_bomb, ["split into 12288 tensors"]),
    "budget": (_set(["modules", 0, "args"], {"in_channels": 3, "out_channels": 1 << 20,
                                            "kernel_size": [9, 9]}), ["MAX_PARAMS"]),
    "version 2": (_set(["version"], 2), ["version"]),
    "no output": (lambda a: a["nodes"].pop() and None, ["output"]),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_a_hostile_graph_is_refused_quickly(name, base, tmp_path):
    edit, words = HOSTILE[name]
    path = tmp_path / "h.lnx"
    path.write_bytes(_edited(base, edit))
    start = time.monotonic()
    with pytest.raises(FormatError) as e:
        fileformat.load(path)
    assert time.monotonic() - start < 3.0
    msg = str(e.value)
    assert len(msg) < 400, msg
    for w in words:
        assert w in msg, (w, msg)


def test_a_graph_at_the_limits_is_checked_in_about_a_second():
    n = limits.MAX_GRAPH_NODES - 2
    arch = relu_chain(n)
    arch["modules"] = [{"name": f"c{i}", "type": "Conv2d", "args": {
        "in_channels": 3, "out_channels": 3, "kernel_size": [3, 3], "padding": [1, 1]}}
        for i in range(limits.MAX_GRAPH_MODULES)]
    for i, node in enumerate(arch["nodes"][1:-1]):
        node.update(op="call_module", target=f"c{i}")
    start = time.monotonic()
    assert fileformat.check_architecture(arch) == limits.MAX_GRAPH_MODULES * (81 + 3)
    assert time.monotonic() - start < 3.0


def test_an_integer_bomb_stops_at_run_time(base, tmp_path):
    """Batch 1 passes the load-time check (1 squared stays 1); batch 2 would square forever."""
    path = tmp_path / "bomb.lnx"
    path.write_bytes(_edited(base, _squarings))
    net = fileformat.load(path)
    net(torch.randn(1, 3, 8, 8))
    start = time.monotonic()
    with pytest.raises(OverflowError):
        net(torch.randn(2, 3, 8, 8))
    assert time.monotonic() - start < 1.0


_POOL = [0, -1, 1, 2, 7, 10 ** 9, 2 ** 70, 0.5, -3.0, "", "x", "relu", "os.system",
         "torch.cat", "call_module", "c1", "__class__", None, True, [], {}, [1, 2], {"node": 0},
         {"node": 3}, {"node": 10 ** 6}, {"tuple": [1]}, {"slice": [None, 2, None]},
         {"ellipsis": True}, {"params": {}}]


def _paths(obj, prefix=()):
    items = obj.items() if isinstance(obj, dict) else enumerate(obj)
    for k, v in items:
        yield (*prefix, k)
        if isinstance(v, dict | list):
            yield from _paths(v, (*prefix, k))


def test_mutated_graph_descriptions_raise_format_error_or_load(base, tmp_path):
    """Random values at random places of the graph JSON: the reader either refuses the file
    with a FormatError or loads a network whose forward runs on the recorded input shape."""
    arch0 = container.parse(base).arch
    paths = list(_paths(arch0))
    rng = torch.Generator().manual_seed(0)
    outcomes = {"format_error": 0, "ok": 0}
    for _ in range(300):
        arch = json.loads(json.dumps(arch0))
        for _ in range(int(torch.randint(1, 3, (1,), generator=rng))):
            path = paths[int(torch.randint(0, len(paths), (1,), generator=rng))]
            value = _POOL[int(torch.randint(0, len(_POOL), (1,), generator=rng))]
            try:
                _set(list(path), json.loads(json.dumps(value)))(arch)
            except (KeyError, IndexError, TypeError):
                continue  # an earlier mutation removed the place
        path = tmp_path / "m.lnx"
        path.write_bytes(_edited(base, lambda _a, arch=arch: arch))
        try:
            net = fileformat.load(path)
        except FormatError as e:
            assert len(str(e)) < 400
            outcomes["format_error"] += 1
            continue
        with torch.no_grad():
            net(example_input(net.arch, 2))
        outcomes["ok"] += 1
    assert outcomes["format_error"] > 200, outcomes


def test_graph_module_names_the_allowlist():
    assert "os.system" not in graph.ops.FUNCTIONS and "builtins.eval" not in graph.ops.FUNCTIONS
    assert {"Conv2d", "Linear", "BatchNorm2d", "MaxPool2d", "AdaptiveAvgPool2d"} <= set(
        graph.ops.MODULES)


def test_a_renamed_layer_is_the_same_network(base, tmp_path):
    """Version 2 stores no layer names (the architecture's are the names): renaming a layer in
    the architecture decodes to the same outputs."""
    path = tmp_path / "r.lnx"
    path.write_bytes(_edited(base, _rename))
    renamed = fileformat.load(path)
    (tmp_path / "b.lnx").write_bytes(base)
    x = torch.randn(2, 3, 8, 8)
    assert "c3" in dict(renamed.named_modules())
    assert torch.equal(renamed(x), fileformat.load(tmp_path / "b.lnx")(x))
