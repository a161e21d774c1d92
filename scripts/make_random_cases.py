#!/usr/bin/env python3
"""Writes models/random/: GRUs and GRUCells of random configuration, nested at random depth in a
larger model, saved in a random checkpoint format, each with one PyTorch reference case.

The hand-picked cases of models/reference/ cover each nn.GRU option on its own; these cover their
combinations (batch_first x bidirectional x no bias x dtype x unbatched x h0 x unsorted lengths x
nesting x file format), which is where a loader or a kernel that works for each option alone can
still go wrong. `gru verify models` checks them with the rest. Regenerate with:
    python scripts/make_random_cases.py [--seed 7] [--count 48] [--out models/random]
A different seed is a quick differential fuzz against PyTorch:
    python scripts/make_random_cases.py --seed 99 --count 300 --out /tmp/fuzz && gru verify /tmp/fuzz
`--more-formats` adds torch.export archives, weights under weight norm or spectral norm, and
Hugging Face sharded checkpoints (safetensors or torch.save shards of a random size; needs
huggingface_hub) to the formats drawn (off by default, so that seed 7 still writes the shipped
models/random).
"""
import argparse
import os
import random
import shutil
import sys
import warnings

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from export_reference import export_case, save_weights  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "models", "random")
FORMATS = ["safetensors", "zip", "legacy", "whole_module", "torchscript", "training_dict",
           "dataparallel"]
MORE_FORMATS = ["export", "weight_norm", "spectral_norm", "hf_sharded", "hf_sharded_bin"]


class Wrapper(nn.Module):
    """The GRU at `block.1.block.1...rnn` (depth levels), among other modules and maybe a second
    GRU (then the prefix is required to pick it)."""

    def __init__(self, rnn, depth, second_gru):
        super().__init__()
        self.embed = nn.Embedding(10, 3)
        # An int64 0-d buffer (num_batches_tracked) and a bool buffer beside the float tensors.
        self.norm = nn.BatchNorm1d(3)
        self.register_buffer("mask", torch.tensor([True, False, True]))
        if depth == 0:
            self.rnn = rnn
        else:
            self.block = nn.ModuleList([nn.Identity(), Wrapper(rnn, depth - 1, False)])
        if second_gru:
            self.other = nn.GRU(3, 5)
        self.head = nn.Linear(4, 2)
        self.depth = depth

    @torch.jit.unused
    def forward(self, x, h0=None):
        """Runs the GRU (for torch.export; not scripted, as before there was a forward)."""
        rnn = self.rnn if self.depth == 0 else self.block[1]
        return rnn(x, h0)


def prefix_of(depth):
    return ".".join(["block.1"] * depth + ["rnn"])


def reparametrize(rng, rnn, fmt):
    """Puts weight norm (random dim, g moved off ||v||) or spectral norm on one weight of `rnn`."""
    from torch.nn.utils import parametrizations
    name = "weight_hh" if isinstance(rnn, nn.GRUCell) else "weight_hh_l0"
    if fmt == "weight_norm":
        parametrizations.weight_norm(rnn, name, dim=rng.choice([0, 1, None]))
        g = getattr(rnn.parametrizations, name).original0
        with torch.no_grad():
            g.mul_(torch.empty_like(g).uniform_(0.5, 1.5))
    else:
        parametrizations.spectral_norm(rnn, name)


def save(model, path, fmt, x=None, h0=None, rng=None):
    sd = model.state_dict()
    if fmt == "safetensors":
        save_weights(model, path)
    elif fmt == "zip":
        torch.save(sd, path)
    elif fmt == "legacy":
        torch.save(sd, path, _use_new_zipfile_serialization=False)
    elif fmt == "whole_module":
        torch.save(model, path)
    elif fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.jit.save(torch.jit.script(model), path)
    elif fmt == "training_dict":
        torch.save({"model_state_dict": sd, "optimizer": {"lr": 0.1}, "epoch": 3}, path)
    elif fmt == "dataparallel":
        torch.save({"module." + k: v for k, v in sd.items()}, path)
    elif fmt == "export":
        args = (x,) if h0 is None else (x, h0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.export.save(torch.export.export(model, args), path)
    elif fmt in ("weight_norm", "spectral_norm"):
        torch.save(sd, path)
    elif fmt in ("hf_sharded", "hf_sharded_bin"):
        from huggingface_hub import save_torch_state_dict
        os.makedirs(path)
        save_torch_state_dict(sd, path, max_shard_size=rng.choice([64, 500, 4000, 10 ** 9]),
                              safe_serialization=fmt == "hf_sharded")


def one_case(rng, out, i, formats):
    input_size = rng.choice([1, 2, 3, 7, 16, 33])
    hidden = rng.choice([1, 2, 5, 8, 17, 32, 64])
    layers = rng.choice([1, 1, 2, 3])
    bias = rng.random() < 0.8
    batch_first = rng.random() < 0.5
    bidirectional = rng.random() < 0.5
    dtype = rng.choice([torch.float32] * 4 + [torch.float64, torch.float16, torch.bfloat16])
    cell = rng.random() < 0.15
    if cell:
        rnn = nn.GRUCell(input_size, hidden, bias=bias)
    else:
        rnn = nn.GRU(input_size, hidden, layers, bias=bias, batch_first=batch_first,
                     bidirectional=bidirectional, dropout=0.3 if layers > 1 else 0.0)
    depth = rng.choice([0, 1, 2])
    model = Wrapper(rnn, depth, rng.random() < 0.3).eval().to(dtype)  # .to keeps int/bool buffers
    seq_len, batch = rng.choice([1, 2, 5, 13]), rng.choice([1, 2, 3, 6])
    unbatched = rng.random() < 0.2
    dirs = 2 if bidirectional and not cell else 1
    lengths = h0 = None
    if cell:
        x = torch.randn(input_size) if unbatched else torch.randn(batch, input_size)
        if rng.random() < 0.6:
            h0 = torch.randn(hidden) if unbatched else torch.randn(batch, hidden)
    else:
        if unbatched:
            x = torch.randn(seq_len, input_size)
        else:
            shape = (batch, seq_len) if batch_first else (seq_len, batch)
            x = torch.randn(*shape, input_size)
            if rng.random() < 0.4:
                lengths = [rng.randint(1, seq_len) for _ in range(batch)]
        if rng.random() < 0.5:
            hs = (layers * dirs, hidden) if unbatched else (layers * dirs, batch, hidden)
            h0 = torch.randn(*hs)
    x = (x * rng.choice([0.5, 1.0, 3.0])).to(dtype)
    h0 = None if h0 is None else h0.to(dtype)
    fmt = rng.choice(formats)
    if fmt in ("weight_norm", "spectral_norm"):
        reparametrize(rng, rnn, fmt)
        model.eval()
    name = f"r{i:03d}"
    if fmt == "safetensors":
        weights = f"{name}.safetensors"
    elif fmt.startswith("hf_"):
        weights = f"{name}_{fmt}"  # the folder
    else:
        weights = f"{name}_{fmt}.pt"
    save(model, os.path.join(out, weights), fmt, x, h0, rng)
    desc = (f"{'GRUCell' if cell else 'GRU'}({input_size}, {hidden}, layers={layers}, bias={bias}, "
            f"batch_first={batch_first}, bidirectional={bidirectional}) {str(dtype)[6:]} at "
            f"'{prefix_of(depth)}', {fmt}, input {tuple(x.shape)}, h0={h0 is not None}, "
            f"lengths={lengths}")
    export_case(out, name, model, prefix_of(depth), x, h0, lengths, weights_file=weights,
                extra_meta={"description": desc, "generator": "scripts/make_random_cases.py"})


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--count", type=int, default=48)
    ap.add_argument("--out", default=OUT)
    ap.add_argument("--more-formats", action="store_true",
                    help="also torch.export archives, weight / spectral norm and sharded checkpoints")
    a = ap.parse_args()
    rng = random.Random(a.seed)
    torch.manual_seed(a.seed)
    shutil.rmtree(a.out, ignore_errors=True)
    os.makedirs(a.out)
    for i in range(a.count):
        one_case(rng, a.out, i, FORMATS + (MORE_FORMATS if a.more_formats else []))
    print(f"{a.count} cases in {a.out}")


if __name__ == "__main__":
    main()
