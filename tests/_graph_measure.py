"""Architecture bytes of registry and graph descriptions, and the graph (FX JSON) against an
ONNX graph without initializers: size and exactness. Run::

    .venv/bin/python tests/_graph_measure.py

Prints one JSON line per model; ``arch_registry``/``arch_graph`` are the bytes of the file's
``arch`` section (zlib JSON) as ``lilnetx inspect`` reports them, ``onnx_raw``/``onnx_zlib`` the
ONNX ModelProto of the same network exported with ``export_params=False`` (no weights),
``onnx_max_diff`` the largest difference between onnxruntime on that graph (fed the decoded
weights) and the decoded torch network, ``graph_equal`` whether ``lilnetx.load`` of the graph
file computes exactly the decoded network's outputs.
"""

from __future__ import annotations

import io
import json
import os
import sys
import tempfile
import warnings
import zlib

import torch
import torchvision

import lilnetx
from lilnetx import fileformat
from lilnetx.fileformat.archspec import registry_arch


def _onnx(net: torch.nn.Module, x: torch.Tensor) -> dict:
    import onnx
    import onnxruntime

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (x,), buf, dynamo=False, opset_version=17, export_params=False,
                          input_names=["input"], output_names=["logits"],
                          keep_initializers_as_inputs=True, do_constant_folding=False,
                          training=torch.onnx.TrainingMode.PRESERVE)  # eval: BN is not folded
    raw = buf.getvalue()
    model = onnx.load_from_string(raw)
    state = {k: v.detach().numpy() for k, v in net.state_dict().items()}
    names = [i.name for i in model.graph.input]
    feeds = {"input": x.numpy(), **{n: state[n] for n in names if n in state}}
    sess = onnxruntime.InferenceSession(raw, providers=["CPUExecutionProvider"])
    out = sess.run(None, {n: feeds[n] for n in names})[0]
    with torch.no_grad():
        ref = net(x).numpy()
    return {"onnx_raw": len(raw), "onnx_zlib": len(zlib.compress(raw, 9)),
            "onnx_max_diff": float(abs(out - ref).max()),
            "onnx_inputs_named_like_state_dict": all(n in state for n in names[1:])}


def measure(label: str, net: torch.nn.Module, x: torch.Tensor, registry: dict | None) -> dict:
    torch.manual_seed(0)
    model = lilnetx.convert(net)
    out = {"model": label}
    with tempfile.TemporaryDirectory() as tmp:
        if registry is not None:
            model.arch = registry
            path = os.path.join(tmp, "r.lnx")
            fileformat.save(model, path)
            out["arch_registry"] = len(fileformat.read(path).sections["arch"])
            model.arch = None
        path = os.path.join(tmp, "g.lnx")
        out["size_bytes_graph_file"] = fileformat.save(model, path, example_input=x)
        c = fileformat.read(path)
        out["arch_graph"] = len(c.sections["arch"])
        out["arch_graph_json"] = len(json.dumps(c.arch, separators=(",", ":")))
        out["graph_nodes"] = len(c.arch["nodes"])
        plain = lilnetx.decode(model).eval()
        with torch.no_grad():
            out["graph_equal"] = torch.equal(plain(x), fileformat.load(path)(x))
    out.update(_onnx(plain, x))
    return out


def main() -> None:
    torch.set_num_threads(1)
    cases = [
        ("lenet5", lilnetx.create_model("lenet5", in_channels=1, image_size=28, num_classes=10),
         torch.randn(2, 1, 28, 28), registry_arch("lenet5", in_channels=1, image_size=28,
                                                   num_classes=10)),
        ("resnet20", lilnetx.create_model("resnet20", in_channels=3, image_size=32,
                                          num_classes=10),
         torch.randn(2, 3, 32, 32), registry_arch("resnet20", in_channels=3, image_size=32,
                                                   num_classes=10)),
        ("tv:resnet18", torchvision.models.resnet18(num_classes=10), torch.randn(2, 3, 64, 64),
         registry_arch("tv:resnet18", in_channels=3, image_size=64, num_classes=10)),
        ("tv:mobilenet_v3_small", torchvision.models.mobilenet_v3_small(num_classes=10),
         torch.randn(2, 3, 64, 64), registry_arch("tv:mobilenet_v3_small", in_channels=3,
                                                   image_size=64, num_classes=10)),
    ]
    names = sys.argv[1:]
    for label, net, x, reg in cases:
        if not names or label in names:
            print(json.dumps(measure(label, net.eval(), x, reg)), flush=True)


if __name__ == "__main__":
    main()
