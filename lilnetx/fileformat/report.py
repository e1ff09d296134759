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


def breakdown(c: Container) -> dict[str, int]:
    """Bytes per part of the file; ``header`` holds magic, section headers, index and checksum."""
    parts = {label: len(c.sections[name]) for name, label in SECTION_LABELS.items()}
    parts["header"] = c.size_bytes - sum(parts.values())
    return parts


def inspect(path: str | os.PathLike) -> dict:
    """Size breakdown and per-layer bits and sparsity of a ``.lnx`` file.

    Keys: ``size_bytes``, ``breakdown`` (bytes by part), ``arch`` (for a graph architecture,
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
    return {
        "size_bytes": c.size_bytes,
        "breakdown": parts,
        "arch": arch_summary(c.arch),
        "latent_information_bits": info_total,
        "coding_efficiency": parts["latent payload"] / info_bytes if info_bytes else None,
        "weight_sparsity": zeros / max(params, 1),
        "slice_sparsity": zero_slices / slices if slices else None,
        "layers": layers,
    }
