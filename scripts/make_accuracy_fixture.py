#!/usr/bin/env python3
"""Writes models/accuracy/: a trained-like 500-unit GRU (PyTorch's init scaled up, as training
leaves recurrent weights) over 40 steps, with PyTorch's f32 reference and the exact answer
(`output_f64`, `h_n_f64`). Two correct f32 implementations drift apart on it past the default
f32 tolerance; `gru verify` passes it through the exact answer. `tests/exact.rs` checks that,
and that one wrong weight still fails. Also `trained_like_small`: a small trained-like 2-layer
GRU (16 -> 64, PyTorch's init times 2.5) over 100 steps, batch 4, with its exact answer, on which
`tests/exact.rs` checks that wide steps (f64 inside each step) land closer to the exact answer
than PyTorch's f32.

    python scripts/make_accuracy_fixture.py [--seed 28] [--out models/accuracy]
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from export_reference import export_case, save_weights  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "models", "accuracy")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=28)
    ap.add_argument("--out", default=OUT)
    ap.add_argument("--scale", type=float, default=6.5)
    ap.add_argument("--steps", type=int, default=40)
    a = ap.parse_args()
    torch.manual_seed(a.seed)
    gru = torch.nn.GRU(32, 500, batch_first=True)
    with torch.no_grad():
        for p in gru.parameters():
            p.mul_(a.scale)
    model = torch.nn.Sequential()
    model.add_module("rnn", gru)
    x = torch.randn(3, a.steps, 32)
    os.makedirs(a.out, exist_ok=True)
    save_weights(model, os.path.join(a.out, "trained_like_500.safetensors"))
    export_case(a.out, "trained_like_500", model, "rnn", x,
                weights_file="trained_like_500.safetensors")

    torch.manual_seed(a.seed + 1)
    small = torch.nn.GRU(16, 64, num_layers=2)
    with torch.no_grad():
        for p in small.parameters():
            p.mul_(2.5)
    model = torch.nn.Sequential()
    model.add_module("rnn", small)
    x = torch.randn(100, 4, 16)
    save_weights(model, os.path.join(a.out, "trained_like_small.safetensors"))
    export_case(a.out, "trained_like_small", model, "rnn", x,
                weights_file="trained_like_small.safetensors")


if __name__ == "__main__":
    main()
