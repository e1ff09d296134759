"""LilNetX from a pretrained dense network (``init_from``) against LilNetX from scratch.

On Fashion-MNIST LeNet-5: trains a dense network (12 epochs, Adam at ``--dense-lr``, the
project's warmup-cosine schedule) and saves its state dict; tabulates the LilNetX init of
:func:`lilnetx.core.init_from.latents_from_weights` for several ``init_levels`` (test accuracy
before any training, largest absolute weight error, empirical entropy of the latents), next to
two alternatives: the same latents with a plain ``s * I`` decoder (no least-squares refit), and
an MSE-optimal clipping search; then fine-tunes 2 LilNetX epochs from the start at the demo's
mid-range rates (``lambda_rate`` 1, ``lambda_sparsity`` 1e-4, prior lr 1e-2, batch 128) against
2 and 14 epochs from scratch at the same rates, each written to a ``.lnx`` file
(``latency=False``). Prints the results as a markdown section on stdout; progress on stderr.
Runs are spread over ``--workers`` processes of one torch thread each.

    python benchmarks/init_from.py                       # about 8 minutes on 2 cores
    python benchmarks/init_from.py --checkpoint d.pt     # reuse a dense state dict
    python benchmarks/init_from.py --quick               # smoke run (small data, short runs)
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import command_line, machine_line  # noqa: E402

LEVELS = (3, 5, 7, 11, 15, 31, 63)
RATES = {"lambda_rate": 1.0, "lambda_sparsity": 1e-4, "lambda_l2": 1e-6, "prior_lr": 1e-2,
         "batch_size": 128}


def train_row(row: dict, common: dict) -> dict:
    """One run in a worker process: train, write the .lnx, return the summary."""
    torch.set_num_threads(1)
    from lilnetx.experiment import RunSpec, finalize, run
    from lilnetx.train import TrainConfig

    rates = RATES if row["method"] == "lilnetx" else {"batch_size": RATES["batch_size"]}
    cfg = TrainConfig(epochs=row["epochs"], lr=row["lr"], seed=0, device="cpu", **rates)
    spec = RunSpec(model="lenet5", dataset="fashion_mnist", method=row["method"],
                   data_root=common["data_root"], limit=common["limit"], train=cfg,
                   init_from=row.get("init_from"), options=row.get("options", {}))
    start = time.perf_counter()
    out = run(spec)
    if row.get("save_state"):
        torch.save(out.plain.state_dict(), row["save_state"])
    path = os.path.join(common["workdir"], f"{row['name']}.lnx")
    finalize(out, path, latency=False)
    s = out.summary
    print(f"  {row['name']}: accuracy {s['accuracy']:.4f}, {s['size_bytes']} bytes, "
          f"{time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    return {**row, **{k: s.get(k) for k in ("accuracy", "size_bytes", "init_accuracy",
                                            "init_max_weight_error", "slice_sparsity",
                                            "weight_sparsity")},
            "seconds": time.perf_counter() - start}


def entropy_kib(model) -> float:
    """Empirical entropy of the integer latents per group and kernel position, in KiB."""
    bits = 0.0
    for layers in model.groups().values():
        lat = torch.cat([layer.latent_int() for _, layer in layers])
        for c in range(lat.shape[1]):
            _, counts = torch.unique(lat[:, c], return_counts=True)
            p = counts.double() / counts.sum()
            bits += float(-(counts * torch.log2(p)).sum())
    return bits / 8 / 1024


@torch.no_grad()
def clipped_search(model, state: dict, levels: int) -> None:
    """The rejected alternative: per group, latents clip(round(W / s), -L, L) with s = t / L and
    the clip threshold t searched over [max|W| / 2, max|W|] for the least relative MSE; s * I."""
    for group, layers in model.groups().items():
        rows = [state[f"{n}.weight"].double().reshape(layer.latent.shape) for n, layer in layers]
        w = torch.cat(rows)
        weight = torch.cat([torch.full((r.shape[0], 1), 1.0 / float(r.square().sum()),
                                       dtype=w.dtype) for r in rows])
        best = None
        for frac in torch.linspace(1.0, 0.5, 33).tolist():
            s = float(w.abs().max()) * frac / levels
            q = torch.round(w / s).clamp_(-levels, levels)
            err = float(((q * s - w).square() * weight).sum())
            if best is None or err < best[0]:
                best = (err, s, q)
        _, s, q = best
        dec = model.decoders[group].weight
        dec.copy_(torch.eye(dec.shape[0]) * s if dec.numel() > 1 else torch.full((1, 1), s))
        for (_, layer), part in zip(layers, q.split([r.shape[0] for r in rows]), strict=True):
            layer.latent.copy_(part.float())


def init_table(state: dict, splits) -> list[dict]:
    import lilnetx
    from lilnetx.core.init_from import latents_from_weights

    net = lilnetx.create_model("lenet5", in_channels=1, image_size=28, num_classes=10)
    model = lilnetx.convert(net)

    def measure() -> tuple[float, float, float]:
        plain = lilnetx.decode(model)
        got = plain.state_dict()
        err = max(float((got[k] - v).abs().max()) for k, v in state.items())
        return lilnetx.evaluate_accuracy(plain, splits.test), err, entropy_kib(model)

    rows = []
    for levels in LEVELS:
        report = latents_from_weights(model, state, levels=levels)
        ls = measure()
        assert abs(ls[1] - report.max_weight_error) < 1e-9
        with torch.no_grad():
            for group, info in report.groups.items():
                dec = model.decoders[group].weight
                dec.copy_(torch.eye(dec.shape[0]) * info["scale"])
        identity = measure()
        clipped_search(model, state, levels)
        clipped = measure()
        rows.append({"levels": levels, "ls": ls, "identity": identity, "clipped": clipped})
        print(f"  L={levels}: {ls[0]:.4f} / {identity[0]:.4f} / {clipped[0]:.4f}",
              file=sys.stderr, flush=True)
    return rows


def report(args, dense: dict, table: list[dict], rows: list[dict], seconds: float) -> str:
    out = ["## Pretrained starts: LilNetX from a dense network (`init_from`)", ""]
    data = "full training set" if args.limit is None else f"{args.limit} training images"
    out.append(f"Fashion-MNIST LeNet-5, {data} (10% held out for validation), test set of "
               f"10,000. Dense start: {args.dense_epochs} epochs, Adam lr {args.dense_lr:g}, "
               f"batch 128: test accuracy **{dense['accuracy']:.4f}**, "
               f"{dense['size_bytes']:,} bytes as an fp32 `.lnx`.")
    out += ["", "The LilNetX init before any training, by `init_levels` L (test accuracy, largest "
            "absolute weight error, empirical entropy of the integer latents per group and "
            "kernel position). *Rule*: step max\\|W\\|/L per group, no clipping, least-squares "
            "decoder; *s·I*: the same latents with the scalar-times-identity decoder; "
            "*clipped*: latents clipped to [-L, L] with the clip threshold searched for the "
            "least relative MSE, s·I decoder.", "",
            "| L | rule: accuracy | max \\|ΔW\\| | latents KiB | s·I: accuracy | max \\|ΔW\\| "
            "| clipped: accuracy | max \\|ΔW\\| | latents KiB |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in table:
        (a, e, k), (ai, ei, _), (ac, ec, kc) = r["ls"], r["identity"], r["clipped"]
        out.append(f"| {r['levels']} | {a:.4f} | {e:.4f} | {k:.1f} | {ai:.4f} | {ei:.4f} | "
                   f"{ac:.4f} | {ec:.4f} | {kc:.1f} |")
    out += ["", f"Two LilNetX epochs from the dense start against LilNetX from scratch, at "
            f"lambda_rate {RATES['lambda_rate']:g}, lambda_sparsity {RATES['lambda_sparsity']:g}, "
            f"lambda_l2 {RATES['lambda_l2']:g}, prior lr {RATES['prior_lr']:g}, batch 128, the "
            "default warmup (min(5, epochs/10) epochs) and cosine schedule; size is the `.lnx` "
            "file on disk.", "",
            "| run | epochs | lr | init accuracy | init max \\|ΔW\\| | test accuracy | "
            "file bytes | slice sparsity | seconds |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        ia = "" if r["init_accuracy"] is None else f"{r['init_accuracy']:.4f}"
        ie = "" if r["init_max_weight_error"] is None else f"{r['init_max_weight_error']:.4f}"
        out.append(f"| {r['label']} | {r['epochs']} | {r['lr']:g} | {ia} | {ie} | "
                   f"{r['accuracy']:.4f} | {r['size_bytes']:,} | {r['slice_sparsity']:.3f} | "
                   f"{r['seconds']:.0f} |")
    out += ["", f"{machine_line()} Wall time {seconds / 60:.1f} min with {args.workers} "
            f"worker processes of 1 torch thread.", "",
            f"Command: `{command_line('benchmarks/init_from.py')}`"]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", default=None)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--dense-epochs", type=int, default=12)
    p.add_argument("--dense-lr", type=float, default=3e-3)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--checkpoint", default=None, help="a dense LeNet-5 state dict to start from")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="3000 images, 2 dense epochs, 1 epoch")
    args = p.parse_args(argv)
    if args.quick:
        args.limit, args.dense_epochs, args.epochs = 3000, 2, 1
    began = time.perf_counter()
    import lilnetx

    workdir = tempfile.mkdtemp(prefix="lilnetx-init-from-")
    common = {"data_root": args.data_root, "limit": args.limit, "workdir": workdir}
    ckpt = args.checkpoint or os.path.join(workdir, "dense.pt")
    dense_row = {"name": "dense", "label": "dense", "method": "dense",
                 "epochs": args.dense_epochs, "lr": args.dense_lr}
    if args.checkpoint:
        dense_row.update(init_from=ckpt, epochs=1)  # dense with a start: the start, measured
    else:
        dense_row["save_state"] = ckpt
    e = args.epochs
    scratch = [{"name": f"scratch{n}", "label": "LilNetX from scratch", "method": "lilnetx",
                "epochs": n, "lr": args.lr} for n in (e, e + args.dense_epochs)]
    starts = [{"name": f"init{lv}_{lr:g}", "label": f"LilNetX from dense, L={lv}",
               "method": "lilnetx", "epochs": e, "lr": lr, "init_from": ckpt,
               "options": {"init_levels": lv}}
              for lv, lr in ((7, args.lr), (15, args.lr), (31, args.lr), (15, args.lr / 3),
                             (15, args.lr / 10))]
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(args.workers, mp_context=ctx) as pool:
        print("training the dense start and the long scratch run", file=sys.stderr, flush=True)
        dense_job = pool.submit(train_row, dense_row, common)
        long_job = pool.submit(train_row, scratch[1], common)
        short_job = pool.submit(train_row, scratch[0], common)
        dense = dense_job.result()
        start_jobs = [pool.submit(train_row, row, common) for row in starts]
        print("the init table", file=sys.stderr, flush=True)
        torch.set_num_threads(1)
        splits = lilnetx.create_dataset("fashion_mnist", args.data_root, limit=args.limit)
        from lilnetx.core.init_from import read_state_dict

        table = init_table(read_state_dict(ckpt), splits)
        rows = [short_job.result(), long_job.result()] + [j.result() for j in start_jobs]
    print(report(args, dense, table, rows, time.perf_counter() - began))
    return 0


if __name__ == "__main__":
    sys.exit(main())
