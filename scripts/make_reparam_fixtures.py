#!/usr/bin/env python3
"""Writes models/reparam/: GRUs trained with weight norm or spectral norm, whose state dicts hold
the reparametrized values, not the weights, each loadable one with a reference case:

  weight_norm.pt            a tagger (Linear -> 2-layer bidirectional batch-first GRU 5->8 -> a
                            GRUCell) under torch.nn.utils.parametrizations.weight_norm: dim 0 on
                            rnn.weight_hh_l0, dim 1 on rnn.weight_ih_l1, dim None on
                            rnn.weight_hh_l1_reverse, dim 0 on cell.weight_ih
  weight_norm_legacy.safetensors
                            a GRU 4->6 under torch.nn.utils.weight_norm (`_g`, `_v`), dim 0 on
                            weight_ih_l0 and dim None on weight_hh_l0, as safetensors
  spectral_norm.pt          a GRU 3->5 (2 layers): parametrizations.spectral_norm on weight_hh_l0,
                            torch.nn.utils.spectral_norm on weight_ih_l1, after a few training
                            steps (so that u and v are not their initial values)
  spectral_square.pt        two GRUs 12->4, whose weight_ih_l0 is square (12 x 12): one under
                            parametrizations.spectral_norm with dim=1, one under
                            torch.nn.utils.spectral_norm with the default dim 0; u and v fit both
                            axes, and the loader must tell them apart by the stored u
  chained.pt                a GRU 3->4 whose weight_hh_l0 is under weight_norm and then a
                            parametrization without tensors (x 2): only the state dict's
                            `_metadata` shows the second one, and loading it must refuse it
  orthogonal.pt             a GRU 3->4 with parametrizations.orthogonal on weight_hh_l0: a state
                            dict cannot say how to compute it, and loading it must say so

g is set away from ||v|| (weight norm) and the weights are trained a few steps after the power
iterations (spectral norm), so a loader that ignored g, u or v fails the cases.

Regenerate: python scripts/make_reparam_fixtures.py (seed 4321).
"""
import os
import sys

import torch
from safetensors.torch import save_file
from torch import nn
from torch.nn.utils import parametrizations, parametrize, spectral_norm, weight_norm

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from export_reference import export_case  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "models", "reparam")
META = {"seed": "4321", "generator": "scripts/make_reparam_fixtures.py"}


class Tagger(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(7, 5)
        self.rnn = nn.GRU(5, 8, num_layers=2, bidirectional=True, batch_first=True)
        self.cell = nn.GRUCell(16, 4)


def scale_g(module):
    """Moves every weight norm's g away from ||v||, so that ignoring g gives other numbers."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("original0") or name.endswith("_g"):
                p.mul_(torch.empty_like(p).uniform_(0.5, 1.5))


def train(model, x, steps=3):
    """A few SGD steps in training mode: the power iterations move u and v, the step moves W."""
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        out, _ = model(x)
        out.square().mean().backward()
        opt.step()
    model.eval()


def main():
    torch.manual_seed(4321)
    os.makedirs(OUT, exist_ok=True)

    tagger = Tagger()
    parametrizations.weight_norm(tagger.rnn, "weight_hh_l0", dim=0)
    parametrizations.weight_norm(tagger.rnn, "weight_ih_l1", dim=1)
    parametrizations.weight_norm(tagger.rnn, "weight_hh_l1_reverse", dim=None)
    parametrizations.weight_norm(tagger.cell, "weight_ih", dim=0)
    scale_g(tagger)
    tagger.eval()
    torch.save(tagger.state_dict(), os.path.join(OUT, "weight_norm.pt"))
    export_case(OUT, "weight_norm_rnn", tagger, "rnn", torch.randn(3, 6, 5),
                lengths=[6, 2, 4], weights_file="weight_norm.pt", extra_meta=META)
    export_case(OUT, "weight_norm_cell", tagger, "cell", torch.randn(3, 16),
                h0=torch.randn(3, 4), weights_file="weight_norm.pt", extra_meta=META)

    legacy = nn.Module()
    legacy.gru = nn.GRU(4, 6)
    weight_norm(legacy.gru, "weight_ih_l0", dim=0)
    weight_norm(legacy.gru, "weight_hh_l0", dim=None)
    scale_g(legacy)
    save_file({k: v.contiguous() for k, v in legacy.state_dict().items()},
              os.path.join(OUT, "weight_norm_legacy.safetensors"))
    export_case(OUT, "weight_norm_legacy", legacy, "gru", torch.randn(5, 2, 4),
                h0=torch.randn(1, 2, 6), weights_file="weight_norm_legacy.safetensors",
                extra_meta=META)

    sn = nn.Module()
    sn.gru = nn.GRU(3, 5, num_layers=2)
    parametrizations.spectral_norm(sn.gru, "weight_hh_l0")
    spectral_norm(sn.gru, "weight_ih_l1")
    x = torch.randn(4, 2, 3)
    train(sn.gru, x)
    torch.save(sn.state_dict(), os.path.join(OUT, "spectral_norm.pt"))
    export_case(OUT, "spectral_norm", sn, "gru", x, weights_file="spectral_norm.pt",
                extra_meta=META)

    square = nn.Module()
    square.dim1, square.dim0 = nn.GRU(12, 4), nn.GRU(12, 4)
    parametrizations.spectral_norm(square.dim1, "weight_ih_l0", dim=1)
    spectral_norm(square.dim0, "weight_ih_l0")
    x = torch.randn(4, 2, 12)
    train(square.dim1, x)
    train(square.dim0, x)
    torch.save(square.state_dict(), os.path.join(OUT, "spectral_square.pt"))
    for name in ("dim1", "dim0"):
        export_case(OUT, f"spectral_square_{name}", square, name, x,
                    weights_file="spectral_square.pt", extra_meta=META)

    class Double(nn.Module):
        def forward(self, w):
            return 2 * w

    chained = nn.Module()
    chained.gru = nn.GRU(3, 4)
    parametrizations.weight_norm(chained.gru, "weight_hh_l0")
    parametrize.register_parametrization(chained.gru, "weight_hh_l0", Double())
    torch.save(chained.state_dict(), os.path.join(OUT, "chained.pt"))

    ortho = nn.Module()
    ortho.gru = nn.GRU(3, 4)
    parametrizations.orthogonal(ortho.gru, "weight_hh_l0")
    torch.save(ortho.state_dict(), os.path.join(OUT, "orthogonal.pt"))

    for name in sorted(os.listdir(OUT)):
        print(name)


if __name__ == "__main__":
    main()
