#!/usr/bin/env python3
"""Reference cases for dynamically quantized GRUs (`torch.ao.quantization.quantize_dynamic`),
from PyTorch's own quantized forward on this CPU (x86: the fbgemm kernels), in every container a
user saves them in: a state dict (`torch.save(model.state_dict())`), a whole pickled model
(`torch.save(model)`) and a TorchScript archive (`torch.jit.script(model).save`).

    python scripts/export_quantized.py [--out models/quantized]

Each case's weights file holds a small model with its GRU at `rnn`; the case's tolerance is set
in the case (see `TOLERANCE`)."""
import argparse
import os
import sys
import warnings
from typing import Optional

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from export_reference import export_case  # noqa: E402

warnings.filterwarnings("ignore")

# The integer part (input quantization, int8 products, requantization with its fused bias add)
# is bit-exact; the gates are f32 (ours within ~2 ulp of ATen's vectorized/scalar sigmoid and
# tanh). A last-bit difference in a state can move one of its values across a rounding boundary
# of the next step's input quantization (probability ~1e-5 per value), which changes a gate
# pre-activation by scale_h * |W| (~1e-3): the cases are short enough that this is rare, and
# the tolerance covers the f32 gate differences with a margin.
TOLERANCE = 2e-5


class WrapCell(torch.nn.Module):
    def __init__(self, cell):
        super().__init__()
        self.cell = cell

    def forward(self, x, h: Optional[torch.Tensor] = None):
        return self.cell(x, h)


class Wrap(torch.nn.Module):
    def __init__(self, gru):
        super().__init__()
        self.rnn = gru

    def forward(self, x, h0: Optional[torch.Tensor] = None):
        return self.rnn(x, h0)


def quantize(gru, dtype, per_channel):
    model = Wrap(gru).eval()
    spec = {torch.nn.GRU}
    if per_channel:
        spec = {torch.nn.GRU: torch.ao.quantization.per_channel_dynamic_qconfig}
    return torch.ao.quantization.quantize_dynamic(model, spec, dtype=dtype)


def save(model, path, how):
    if how == "state_dict":
        torch.save(model.state_dict(), path)
    elif how == "whole":
        torch.save(model, path)
    else:
        torch.jit.script(model).save(path)


CASES = [
    # name, (I, H, L, bi, batch_first), dtype, per_channel, container, (T, B), h0, varlen
    ("int8_tensor_l1", (8, 16, 1, False, False), torch.qint8, False, "state_dict", (20, 3), False, False),
    ("int8_channel_l2_bi", (12, 24, 2, True, False), torch.qint8, True, "whole", (15, 4), False, False),
    ("int8_tensor_l3_h0_bf", (10, 20, 3, False, True), torch.qint8, False, "torchscript", (12, 2), True, False),
    ("int8_channel_varlen_bi", (6, 32, 2, True, False), torch.qint8, True, "state_dict", (14, 5), True, True),
    ("int8_tensor_wide", (40, 64, 1, False, False), torch.qint8, False, "state_dict", (30, 4), False, False),
    ("fp16_l2", (8, 16, 2, False, False), torch.float16, False, "state_dict", (20, 3), False, False),
    ("fp16_bi_varlen", (9, 20, 1, True, True), torch.float16, False, "whole", (10, 4), True, True),
    # 7 sequences of unsorted lengths: fbgemm's fp16 kernel for a row depends on its position
    # in the packed (longest-first) order, which a batch of 4 does not show.
    ("fp16_varlen_b7", (5, 24, 2, False, False), torch.float16, False, "state_dict", (12, 7), False, True),
    # Large enough (12 x 3 x 72^2 multiply-adds a step, 24 steps) that on two threads or more a
    # team splits each direction's units (gru-core's quantized/team.rs); 72 units split off a
    # block boundary.
    ("int8_team_varlen", (16, 72, 2, False, False), torch.qint8, True, "state_dict", (24, 12), True, True),
]


# name, (I, H, bias), dtype, per_channel, container, batch, hx
CELL_CASES = [
    ("cell_int8_tensor", (7, 12, True), torch.qint8, False, "state_dict", 5, True),
    ("cell_int8_channel_ts", (9, 16, True), torch.qint8, True, "torchscript", 3, True),
    ("cell_fp16_whole", (6, 10, True), torch.float16, False, "whole", 4, False),
]


def export_cells(out):
    for i, (name, (inp, hid, bias), dtype, pc, how, b, with_h) in enumerate(CELL_CASES):
        torch.manual_seed(200 + i)
        cell = torch.nn.GRUCell(inp, hid, bias=bias)
        with torch.no_grad():
            for p in cell.parameters():
                p.mul_(2.0)
        spec = {torch.nn.GRUCell: torch.ao.quantization.per_channel_dynamic_qconfig} if pc \
            else {torch.nn.GRUCell}
        model = torch.ao.quantization.quantize_dynamic(WrapCell(cell).eval(), spec, dtype=dtype)
        wfile = f"{name}.pt"
        save(model, os.path.join(out, wfile), how)
        x = torch.randn(b, inp)
        h = torch.randn(b, hid) * 0.5 if with_h else None
        export_case(out, name, model, "cell", x, h0=h, weights_file=wfile, atol=TOLERANCE,
                    rtol=0.0, exact=False,
                    extra_meta={"quantized": f"{dtype} {'per-channel' if pc else 'per-tensor'} ({how})"})
        print("wrote", name)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "models", "quantized"))
    args = ap.parse_args()
    torch.backends.quantized.engine = "x86"
    os.makedirs(args.out, exist_ok=True)
    for i, (name, (inp, hid, layers, bi, bf), dtype, pc, how, (t, b), with_h0, varlen) in enumerate(CASES):
        torch.manual_seed(100 + i)
        gru = torch.nn.GRU(inp, hid, layers, bidirectional=bi, batch_first=bf)
        with torch.no_grad():
            for p in gru.parameters():
                p.mul_(2.0)  # trained-like
        model = quantize(gru, dtype, pc)
        ext = "pt"
        wfile = f"{name}.{ext}"
        save(model, os.path.join(args.out, wfile), how)
        x = torch.randn((b, t, inp) if bf else (t, b, inp))
        d = 2 if bi else 1
        h0 = torch.randn(layers * d, b, hid) * 0.5 if with_h0 else None
        lengths = None
        if varlen:
            g = torch.Generator().manual_seed(i)
            lengths = [t] + [int(v) for v in torch.randint(1, t + 1, (b - 1,), generator=g)]
        export_case(args.out, name, model, "rnn", x, h0=h0, lengths=lengths, weights_file=wfile,
                    atol=TOLERANCE, rtol=0.0, exact=False,
                    extra_meta={"quantized": f"{dtype} {'per-channel' if pc else 'per-tensor'} ({how})"})
        print("wrote", name)
    export_cells(args.out)


if __name__ == "__main__":
    main()
