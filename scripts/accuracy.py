#!/usr/bin/env python3
"""Accuracy against the exact answer: how far our f32 GRU is from the same GRU run in f64,
measured against how far PyTorch's own f32 is.

For each model (random "trained-like" GRUs: PyTorch's init scaled 1-3x, as training leaves
recurrent weights; I up to 257, H up to 512, 1-2 layers, uni/bi, T 30-300, B 1-8; and the GRUs of
the shipped trained models) the truth is the forward pass in f64 (PyTorch, double weights and
input). Per kernel (`--kernel auto`, `step`, `ops` of `gru run`) the ratio

    max |ours - truth| / max |PyTorch f32 - truth|       (over output and h_n)

is reported, with its median and worst; below 1 we are closer to exact than PyTorch is.

    python scripts/accuracy.py --gru target/release/gru [--count 16] [--seed 3] [--json OUT]

`--cases-out DIR` also writes each model as a reference case with its exact answer, for the CUDA
kernels' host-C++ harness: `GRU_KERNEL_CASES=DIR cargo test --test cuda_kernel_source --
--nocapture` prints each launch mode's median and worst ratio.
"""
import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from export_reference import export_case, save_weights  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
KERNELS = ["auto", "step", "ops"]


def trained_like(rng):
    """A random GRU whose weights are PyTorch's init scaled 1-3x, and an input for it."""
    inp = rng.choice([8, 16, 64, 128, 257])
    hid = rng.choice([32, 64, 128, 256, 512])
    layers = rng.choice([1, 2])
    bi = rng.random() < 0.4
    gru = torch.nn.GRU(inp, hid, layers, bidirectional=bi)
    scale = rng.uniform(1.0, 3.0)
    with torch.no_grad():
        for p in gru.parameters():
            p.mul_(scale)
    t, b = rng.choice([30, 60, 120, 300]), rng.choice([1, 3, 8])
    x = torch.randn(t, b, inp)
    name = f"I{inp} H{hid} L{layers}{' bi' if bi else ''} x{scale:.1f} T{t} B{b}"
    return name, gru, x


def shipped(rng):
    """The GRUs of the shipped trained models, on inputs of their scale."""
    out = []
    for folder, fname, key, prefix in [
        ("charlm", "charlm.safetensors", None, "rnn"),
        ("classifier", "classifier.safetensors", None, "gru"),
        ("walkthrough", "model.pt", "model", "rnn"),
        ("streaming", "model.pt", None, "rnn"),
    ]:
        path = os.path.join(ROOT, "models", folder, fname)
        if not os.path.exists(path):
            continue
        sd = load_file(path) if fname.endswith("safetensors") else torch.load(path)
        if key:
            sd = sd[key]
        sd = {k[len(prefix) + 1:]: v for k, v in sd.items() if k.startswith(prefix + ".")}
        hid = sd["weight_hh_l0"].shape[1]
        layers = 1 + max(int(k.split("_l")[1].split("_")[0]) for k in sd)
        gru = torch.nn.GRU(sd["weight_ih_l0"].shape[1], hid, layers,
                           bias="bias_ih_l0" in sd,
                           bidirectional="weight_hh_l0_reverse" in sd)
        gru.load_state_dict(sd)
        x = torch.randn(100, 4, gru.input_size)
        out.append((f"models/{folder} ({gru.input_size}, {hid}, L{layers}) T100 B4", gru, x))
    return out


def forward(gru, x):
    with torch.no_grad():
        y, h = gru(x)
    return y, h


def error(a, b, truth_y, truth_h):
    return max((a - truth_y).abs().max().item(), (b - truth_h).abs().max().item())


def ours(gru_bin, weights, x_path, out, kernel):
    r = subprocess.run([gru_bin, "run", "--weights", weights, "--input", x_path, "--out", out,
                        "--kernel", kernel], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"gru run --kernel {kernel}: {r.stderr.strip()}")
    t = load_file(out)
    return t["output"].double(), t["h_n"].double()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gru", default=os.path.join(ROOT, "target/release/gru"))
    ap.add_argument("--count", type=int, default=16)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--kernels", default=",".join(KERNELS))
    ap.add_argument("--json", help="write every row to this file")
    ap.add_argument("--cases-out", help="also write each model as a case with its exact answer")
    a = ap.parse_args()
    rng = random.Random(a.seed)
    torch.manual_seed(a.seed)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    kernels = a.kernels.split(",")
    models = [trained_like(rng) for _ in range(a.count)] + shipped(rng)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, gru, x in models:
            weights = os.path.join(tmp, "w.safetensors")
            save_file({k: v.contiguous() for k, v in gru.state_dict().items()}, weights)
            x_path = os.path.join(tmp, "x.safetensors")
            save_file({"input": x.contiguous()}, x_path)
            y32, h32 = forward(gru, x)
            ty, th = forward(gru.double(), x.double())
            gru.float()
            torch_err = error(y32.double(), h32.double(), ty, th)
            row = {"model": name, "torch_err": torch_err}
            for k in kernels:
                oy, oh = ours(a.gru, weights, x_path, os.path.join(tmp, "y.safetensors"), k)
                row[k] = error(oy, oh, ty, th) / torch_err
            rows.append(row)
            if a.cases_out:
                model = torch.nn.Sequential()
                model.add_module("rnn", gru)
                case = f"m{len(rows):02d}"
                save_weights(model, os.path.join(a.cases_out, f"{case}.safetensors"))
                export_case(a.cases_out, case, model, "rnn", x, weights_file=f"{case}.safetensors")
            print(f"{name:45s} torch {torch_err:.2e}  "
                  + "  ".join(f"{k} {row[k]:.2f}" for k in kernels), flush=True)
    print("ratio max|ours - f64| / max|PyTorch f32 - f64| (below 1: closer to exact than PyTorch)")
    for k in kernels:
        r = [row[k] for row in rows]
        print(f"  {k:5s} median {statistics.median(r):.2f}  worst {max(r):.2f}  "
              f"({sum(x <= 1.0 for x in r)}/{len(r)} at or below 1)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)
    worst = max(max(row[k] for row in rows) for k in kernels)
    med = max(statistics.median([row[k] for row in rows]) for k in kernels)
    sys.exit(0 if med <= 1.0 and worst <= 1.5 else 1)


if __name__ == "__main__":
    main()
