"""Hostile and corrupt files of format version 2 (lilnetx.fileformat.compact): every one is
refused with a FormatError, quickly, and none makes the reader allocate what the architecture
does not need. (Version 1 has its own cases in test_hostile_files.py and test_fuzz.py.)"""

from __future__ import annotations

import random
import struct
import time
import zlib

import pytest
import torch

import lilnetx
from lilnetx import FormatError, fileformat
from lilnetx.fileformat import archspec, compact
from lilnetx.fileformat.binary import Writer

ARCH = archspec.registry_arch("lenet5", in_channels=1, image_size=8, num_classes=10)
RESNET = archspec.registry_arch("resnet20", in_channels=1, image_size=8, num_classes=10,
                                width=0.25)


def _trained_like(model):
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _, layer in model.latent_layers():
            lat = torch.distributions.Laplace(0.0, 1.0).sample(layer.latent.shape).round()
            layer.latent.copy_(lat * (torch.rand(layer.latent.shape[0], 1, generator=g) > 0.4))
            if layer.bias is not None:
                layer.bias.normal_(0, 0.1, generator=g)
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.2, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
                m.weight.data.uniform_(0.5, 1.5, generator=g)
    return model


@pytest.fixture(scope="module")
def files() -> dict[str, bytes]:
    from lilnetx.methods.quantize import apply_quantization, quantize_layers

    torch.manual_seed(0)
    out = {}
    for form in ("full", "diagonal"):
        m = _trained_like(lilnetx.convert(lilnetx.create_model(
            "lenet5", in_channels=1, image_size=8, num_classes=10), decoder=form))
        out[f"lenet5-{form}"] = fileformat.encode_model(m, ARCH)
    m = _trained_like(lilnetx.convert(lilnetx.create_model(
        "resnet20", in_channels=1, image_size=8, num_classes=10, width=0.25), width=0.25))
    out["resnet"] = fileformat.encode_model(m, RESNET)
    plain = lilnetx.create_model("lenet5", in_channels=1, image_size=8, num_classes=10)
    q = quantize_layers(plain, 4)
    apply_quantization(plain, q)
    out["quant"] = fileformat.encode_plain(plain, ARCH, q)
    out["dense"] = fileformat.encode_plain(plain, ARCH)
    for data in out.values():
        assert fileformat.parse(data).version == 2
    return out


def _decode(data: bytes):
    return fileformat.decode_file(fileformat.parse(data))


def _crc(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


def test_valid_files_decode(files):
    for data in files.values():
        assert isinstance(_decode(data).net, torch.nn.Module)


@pytest.mark.parametrize("name", ["lenet5-full", "lenet5-diagonal", "resnet", "quant", "dense"])
def test_random_byte_changes_are_refused_or_decode(name, files):
    """Mutations with a recomputed checksum (so they get past it): each either decodes to a
    network (a change the format cannot detect, e.g. a latent's value) or raises FormatError;
    nothing else escapes, and no case is slow."""
    data = files[name]
    rng = random.Random(name)
    body = bytearray(data[:-4])
    refused = 0
    for _ in range(150):
        b = bytearray(body)
        for _ in range(rng.choice((1, 1, 2, 5))):
            end = len(b) if rng.random() < 0.5 else min(len(b), 200)  # header and index
            pos = rng.randrange(6, end)
            b[pos] = rng.randrange(256) if rng.random() < 0.7 else b[pos] ^ (1 << rng.randrange(8))
        t = time.perf_counter()
        try:
            _decode(_crc(bytes(b)))
        except FormatError:
            refused += 1
        assert time.perf_counter() - t < 5
    assert refused > 0


@pytest.mark.parametrize("name", ["lenet5-full", "resnet", "quant"])
def test_every_truncation_is_refused(name, files):
    data = files[name]
    for cut in sorted({*range(6, min(len(data), 300)), *range(len(data) - 40, len(data))}):
        with pytest.raises(FormatError):
            _decode(_crc(data[:cut - 4]) if cut > 10 else data[:cut])


def _sections(data: bytes) -> dict[str, bytes]:
    c = fileformat.parse(data)
    return {k: bytes(v) for k, v in c.sections.items()}


def _repack(sections: dict[str, bytes]) -> bytes:
    return compact.pack2([(k, sections.get(k, b"")) for k in compact.SECTIONS2.values()])


def _lenet_index(*, form=2, lo=-1, n=3, kind=0, extra=b"") -> bytes:
    """A hand-made index for lenet5 (groups conv5x5 then dense, no BatchNorm)."""
    w = Writer().byte(compact.LATENT)
    w.byte(form)
    for _ in range(25):
        w.sint(lo).uint(n - 1)
        if n > 1:
            w.byte(kind)
            if kind == 0:
                w.uint(0).byte(128)
    w.uint(1 + 2 * 3)  # decoder step 2**3 ...
    w.sint(0).uint(0)  # ... all zero
    w.byte(compact.FORMS["empty"])
    w.buf += extra
    for _ in range(5):  # the five biases: step 2**0, all zero
        w.uint(1).sint(0).uint(0)
    return w.bytes()


@pytest.mark.parametrize("case,words", [
    ("table of 32,768 symbols, geometric", "geometric table"),
    ("table wider than 16-bit precision", "at most"),
    ("unknown table kind", "unknown table kind"),
    ("unknown codec", "unknown codec"),
    ("bad group form", "bad form"),
    ("diagonal form for the dense group", "bad form"),
    ("varint of 11 bytes", "longer than"),
    ("step exponent out of range", "out of range"),
    ("index shorter than the architecture needs", "ends inside"),
    ("index longer than the architecture needs", "left over"),
    ("raw section of the wrong length", "raw section"),
    ("duplicate section", "bad section"),
    ("unknown section kind", "bad section"),
    ("section length past the end", "past the end"),
    ("no architecture section", "architecture"),
    ("architecture that is not deflate", "arch section"),
    ("counts above the number of symbols", "count is"),
    ("empty latent stream under informative tables", "empty"),
    ("garbage latent stream", "corrupt|stream"),
])
def test_crafted_index_is_refused(case, words, files):
    base = _sections(files["lenet5-diagonal"])
    s = dict(base)
    if case.startswith("table of 32,768"):
        s["index"] = _lenet_index(n=32768)
    elif case.startswith("table wider"):
        s["index"] = _lenet_index(n=1 << 20)
    elif case == "unknown table kind":
        s["index"] = _lenet_index(kind=7)
    elif case == "unknown codec":
        s["index"] = b"\x09" + base["index"][1:]
    elif case == "bad group form":
        s["index"] = _lenet_index(form=9)
    elif case.startswith("diagonal form for the dense"):
        idx = bytearray(_lenet_index())
        idx[-16] = compact.FORMS["diagonal"]  # the dense group's byte, before 5 biases
        s["index"] = bytes(idx)
    elif case.startswith("varint"):
        s["index"] = b"\x00\x02" + b"\xff" * 11
    elif case.startswith("step exponent"):
        idx = _lenet_index()
        head = idx[:-19]  # ... | step | lo | n-1 | empty | 5 biases
        s["index"] = head + Writer().uint(1 + 2 * 400).bytes() + idx[-18:]
    elif case.startswith("index shorter"):
        s["index"] = base["index"][:len(base["index"]) // 2]
    elif case.startswith("index longer"):
        s["index"] = base["index"] + b"\x00"
    elif case.startswith("raw section"):
        s["raw"] = b"\x00" * 8
    elif case in ("duplicate section", "unknown section kind", "section length past the end",
                  "no architecture section"):
        body = bytearray(b"LNX\x00" + struct.pack("<H", 2))
        arch = base["arch"]
        if case == "duplicate section":
            body += bytes([1, len(arch)]) + arch + bytes([1, len(arch)]) + arch
        elif case == "unknown section kind":
            body += bytes([1, len(arch)]) + arch + bytes([9, 1, 0])
        elif case == "section length past the end":
            body += bytes([1]) + Writer().uint(1 << 30).bytes() + arch
        else:
            body += bytes([2, 1, 0])
        with pytest.raises(FormatError, match=words):
            _decode(_crc(bytes(body)))
        return
    elif case.startswith("architecture that"):
        s["arch"] = b"\xff" * 20
    elif case.startswith("counts above"):
        w = Writer().byte(compact.LATENT).byte(2)
        w.sint(-1).uint(2).byte(1).uint(10 ** 6)  # a count above the group's 16 * 6 + 6 slices
        s["index"] = w.bytes()
    elif case.startswith("empty latent"):
        s["index"] = _lenet_index()
        s["latents"] = b""
        s["side"] = b""
    elif case.startswith("garbage latent"):
        s["index"] = _lenet_index()
        s["latents"] = b"\x00\x00\x00\x00\x01"
    t = time.perf_counter()
    with pytest.raises(FormatError, match=words):
        _decode(_repack(s))
    assert time.perf_counter() - t < 5


def test_an_overflowing_side_tensor_is_refused(files):
    s = _sections(files["lenet5-diagonal"])
    w = Writer().byte(compact.LATENT).byte(2)
    for _ in range(25):
        w.sint(0).uint(0)
    w.uint(1 + 2 * 120).sint(1 << 20).uint(0)  # a decoder of 2**20 * 2**120: not float32
    w.byte(compact.FORMS["empty"])
    for _ in range(5):
        w.uint(1).sint(0).uint(0)
    s["index"], s["side"], s["latents"] = w.bytes(), b"", b""
    with pytest.raises(FormatError, match="overflows float32"):
        _decode(_repack(s))


def test_the_zdict_is_part_of_the_format():
    """Changing the preset dictionary would change how every version-2 file inflates."""
    assert zlib.crc32(compact.ZDICT) == ZDICT_CRC


ZDICT_CRC = 0x56fd0aff
