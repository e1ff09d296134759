"""What is inside a ``.lnx`` file: the size breakdown and per-layer statistics.

Sizes are **bytes**, information contents **bits**.
"""

from __future__ import annotations

import os

from lilnetx.fileformat import Container, codec, decode_file, read

SECTION_LABELS = {
    "latents": "latent payload",
    "tables": "probability tables",
    "decoders": "decoders",
    "floats": "biases and BatchNorm",
    "arch": "architecture",
}
"""Parts of a version-1 file."""
SECTION_LABELS_V2 = {
    "latents": "latent payload",
    "index": "index and tables",
    "side": "decoders, biases and BatchNorm",
    "raw": "float32 tensors",
    "arch": "architecture",
}
"""Parts of a version-2 file (:mod:`lilnetx.fileformat.compact`); its index holds the tables."""


def arch_summary(arch: dict) -> dict:
    """``arch`` as ``inspect`` shows it: a graph architecture's modules and nodes are replaced by
    their counts and the operators by how often each is used (``call_module:Conv2d``...)."""
    if arch.get("kind") != "graph":
        return arch
    layers = {m["name"]: m["type"] for m in arch["modules"] if "type" in m}
    ops: dict[str, int] = {}
    for n in arch["nodes"]:
        target = layers.get(n.get("target")) if n["op"] == "call_module" else n.get("target")
        key = f"{n['op']}:{target}" if target is not None else n["op"]
        ops[key] = ops.get(key, 0) + 1
    out = {k: v for k, v in arch.items() if k not in ("modules", "nodes")}
    return {**out, "modules": len(arch["modules"]), "nodes": len(arch["nodes"]),
            "operators": dict(sorted(ops.items()))}


def side_entry(t) -> dict:
    """One stored side tensor as ``inspect`` lists it: key, shape, ``step`` (``2**exp``, None for
    float32) and ``bits`` (information content of its integers under its table, or 32 per value
    for float32)."""
    n = 1
    for d in t.shape:
        n *= d
    if t.exp is None:
        return {"key": t.key, "shape": list(t.shape), "step": None, "bits": 32.0 * n}
    bits = codec.information_bits(t.ints, t.spec.lo, t.spec.freqs())
    return {"key": t.key, "shape": list(t.shape), "step": 2.0 ** t.exp, "bits": bits}


def breakdown(c: Container) -> dict[str, int]:
    """Bytes per part of the file; ``header`` holds magic, version, section headers and
    checksum (and in version 1 the JSON index)."""
    labels = SECTION_LABELS_V2 if c.version == 2 else SECTION_LABELS
    parts = {label: len(c.sections[name]) for name, label in labels.items()}
    parts["header"] = c.size_bytes - sum(parts.values())
    return parts


def inspect(path: str | os.PathLike) -> dict:
    """Size breakdown and per-layer bits and sparsity of a ``.lnx`` file.

    Keys: ``size_bytes``, ``version`` (of the format), ``breakdown`` (bytes by part),
    ``decoder_forms`` (per group, version 2), ``side_tensors`` (version 2: every stored float
    tensor, :func:`side_entry`), ``arch`` (for a graph architecture,
    :func:`arch_summary`), ``latent_information_bits``
    (information content of the latents under the stored tables), ``coding_efficiency``
    (latent payload bytes / information bytes), ``layers`` (per layer: ``name``, ``group``,
    ``shape``, ``params``, ``bits``, ``weight_sparsity`` (zero decoded weights),
    ``latent_sparsity`` (zero latents), ``slice_sparsity``, ``out_channels_kept``), and totals
    ``weight_sparsity`` and ``slice_sparsity``.

    Raises :class:`lilnetx.FormatError` for a file ``load`` refuses, with the same bounds on time
    and memory (:mod:`lilnetx.fileformat.limits`).
    """
    c = read(path)
    dec = decode_file(c)
    weights = dict(dec.net.named_modules())
    layers, info_total = [], 0.0
    zeros = params = zero_slices = slices = 0
    for name, g, shape in dec.layers:  # the index's layers, checked against the architecture
        lat = dec.latents[name]
        w = weights[name].weight.detach()
        bits = sum(codec.information_bits(lat[:, ch], t["lo"], t["freqs"])
                   for ch, t in enumerate(dec.tables[g]))
        info_total += bits
        zero_rows = ~w.reshape(shape[0] * shape[1], -1).ne(0).any(dim=1).numpy()
        per_out = zero_rows.reshape(shape[0], -1).all(axis=1)
        layers.append({
            "name": name, "group": g, "shape": list(shape), "params": int(w.numel()),
            "bits": bits, "weight_sparsity": float((w == 0).float().mean()),
            "latent_sparsity": float((lat == 0).mean()),
            "slice_sparsity": float(zero_rows.mean()),
            "out_channels_kept": int((~per_out).sum()),
        })
        zeros += int((w == 0).sum())
        params += int(w.numel())
        if len(shape) == 4:
            zero_slices += int(zero_rows.sum())
            slices += zero_rows.size
    parts = breakdown(c)
    info_bytes = info_total / 8
    side = [side_entry(t) for t in dec.side]
    return {
        "version": c.version,
        "decoder_forms": dict(dec.forms),
        "side_tensors": side,
        "size_bytes": c.size_bytes,
        "breakdown": parts,
        "arch": arch_summary(c.arch),
        "latent_information_bits": info_total,
        "coding_efficiency": parts["latent payload"] / info_bytes if info_bytes else None,
        "weight_sparsity": zeros / max(params, 1),
        "slice_sparsity": zero_slices / slices if slices else None,
        "layers": layers,
    }
