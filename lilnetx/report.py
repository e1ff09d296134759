"""What is inside a ``.lnx`` file: the size breakdown and per-layer statistics.

Sizes are **bytes**, information contents **bits**.
"""

from __future__ import annotations

import os

import numpy as np

from . import codec
from .fileformat import Container, decode_latents, read

SECTION_LABELS = {
    "latents": "latent payload",
    "tables": "probability tables",
    "decoders": "decoders",
    "floats": "biases and BatchNorm",
    "arch": "architecture",
}


def breakdown(c: Container) -> dict[str, int]:
    """Bytes per part of the file; ``header`` holds magic, section headers, index and checksum."""
    parts = {label: len(c.sections[name]) for name, label in SECTION_LABELS.items()}
    parts["header"] = c.size_bytes - sum(parts.values())
    return parts


def inspect(path: str | os.PathLike) -> dict:
    """Size breakdown and per-layer bits and sparsity of a ``.lnx`` file.

    Keys: ``size_bytes``, ``breakdown`` (bytes by part), ``arch``, ``latent_information_bits``
    (information content of the latents under the stored tables), ``coding_efficiency``
    (latent payload bytes / information bytes), ``layers`` (per layer: ``name``, ``group``,
    ``shape``, ``params``, ``bits``, ``weight_sparsity``, ``slice_sparsity``,
    ``out_channels_kept``), and totals ``weight_sparsity`` and ``slice_sparsity``.
    """
    c = read(path)
    latents, tables = decode_latents(c)
    offsets = dict.fromkeys(latents, 0)
    layers, info_total = [], 0.0
    zeros = params = zero_slices = slices = 0
    for entry in c.index["layers"]:
        g, shape = entry["group"], tuple(entry["shape"])
        rows = latents[g].shape[1]
        n = int(np.prod(shape)) // rows
        lat = latents[g][offsets[g]:offsets[g] + n]
        offsets[g] += n
        bits = sum(codec.information_bits(lat[:, ch], t["lo"], t["freqs"])
                   for ch, t in enumerate(tables[g]))
        info_total += bits
        zero_rows = ~lat.any(axis=1)
        per_out = zero_rows.reshape(shape[0], -1).all(axis=1)
        layers.append({
            "name": entry["name"], "group": g, "shape": list(shape), "params": int(lat.size),
            "bits": bits, "weight_sparsity": float((lat == 0).mean()),
            "slice_sparsity": float(zero_rows.mean()),
            "out_channels_kept": int((~per_out).sum()),
        })
        zeros += int((lat == 0).sum())
        params += int(lat.size)
        if g != "dense":
            zero_slices += int(zero_rows.sum())
            slices += n
    parts = breakdown(c)
    info_bytes = info_total / 8
    return {
        "size_bytes": c.size_bytes,
        "breakdown": parts,
        "arch": c.arch,
        "latent_information_bits": info_total,
        "coding_efficiency": parts["latent payload"] / info_bytes if info_bytes else None,
        "weight_sparsity": zeros / max(params, 1),
        "slice_sparsity": zero_slices / slices if slices else None,
        "layers": layers,
    }


__all__ = ["breakdown", "inspect"]
