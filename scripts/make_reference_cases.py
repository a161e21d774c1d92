#!/usr/bin/env python3
"""Writes models/reference/: small PyTorch GRUs and reference cases covering nn.GRU's semantics.

Every expected value here is computed by PyTorch; the Rust tests and `gru verify models` read
these files. Regenerate with:  python scripts/make_reference_cases.py  (seed 1234; the torch version
is recorded in each case's metadata as `torch_version`).
"""
import os
import sys

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from export_reference import export_case, save_weights  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "models", "reference")


def case(name, module, x, h0=None, lengths=None, prefix="", compute_dtype=None, **kw):
    save_weights(module, os.path.join(OUT, f"{name}.safetensors"))
    export_case(OUT, name, module, prefix, x, h0, lengths, compute_dtype=compute_dtype,
                extra_meta={"seed": "1234", "generator": "scripts/make_reference_cases.py"}, **kw)


def pad_with_garbage(x, lengths, batch_first):
    """Fills padded positions with 1e3 and NaN: PyTorch never reads them, neither may we."""
    x = x.clone()
    for b, n in enumerate(lengths):
        if batch_first:
            x[b, n:] = 1e3
            x[b, n + 1:] = float("nan")
        else:
            x[n:, b] = 1e3
            x[n + 1:, b] = float("nan")
    return x


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(20, 6)
        self.rnn = nn.GRU(6, 9, num_layers=2, batch_first=True, bidirectional=True)


class Nested(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = Encoder()
        self.head = nn.Linear(18, 3)
        self.norm = nn.LayerNorm(3)


def main():
    torch.manual_seed(1234)
    os.makedirs(OUT, exist_ok=True)
    r = torch.randn

    g = nn.GRU(5, 7)
    case("uni_l1_h0", g, r(6, 3, 5), h0=r(1, 3, 7))

    g = nn.GRU(3, 8, num_layers=2)
    case("uni_l2_long_h0", g, r(40, 2, 3), h0=r(2, 2, 8))

    g = nn.GRU(4, 6, num_layers=3, bidirectional=True)
    case("bi_l3", g, r(5, 2, 4))

    g = nn.GRU(5, 4, num_layers=2, bias=False)
    case("nobias_l2_h0", g, r(6, 3, 5), h0=r(2, 3, 4))

    g = nn.GRU(5, 4, num_layers=2, bias=False, bidirectional=True, batch_first=True)
    case("nobias_bi_bf", g, r(3, 6, 5))

    g = nn.GRU(3, 5, num_layers=2, batch_first=True, bidirectional=True)
    case("bf_bi_l2_h0", g, r(4, 6, 3), h0=r(4, 4, 5))

    g = nn.GRU(4, 6, num_layers=2, bidirectional=True)
    case("unbatched_bi_l2_h0", g, r(7, 4), h0=r(4, 6))

    g = nn.GRU(4, 3)
    case("unbatched_uni", g, r(5, 4))

    g = nn.GRU(2, 3, batch_first=True)
    case("unbatched_bf", g, r(5, 2))

    g = nn.GRU(4, 5, num_layers=2, bidirectional=True)
    lengths = [3, 7, 1, 7, 5]
    x = pad_with_garbage(r(7, 5, 4), lengths, batch_first=False)
    case("varlen_bi_l2_h0", g, x, h0=r(4, 5, 5), lengths=lengths)

    g = nn.GRU(3, 6, num_layers=2, batch_first=True)
    lengths = [2, 6, 4]
    x = pad_with_garbage(r(3, 6, 3), lengths, batch_first=True)
    case("varlen_bf_uni_l2", g, x, lengths=lengths)

    g = nn.GRU(3, 4, bidirectional=True, batch_first=True)
    lengths = [1, 5, 5, 2]
    x = pad_with_garbage(r(4, 5, 3), lengths, batch_first=True)
    case("varlen_bf_bi_l1_h0", g, x, h0=r(2, 4, 4), lengths=lengths)

    g = nn.GRU(4, 5, num_layers=2, bidirectional=True).double()
    case("f64_bi_l2_h0", g, r(6, 3, 4, dtype=torch.float64), h0=r(4, 3, 5, dtype=torch.float64))

    g = nn.GRU(3, 4, num_layers=2).double()
    lengths = [4, 2]
    x = pad_with_garbage(r(4, 2, 3, dtype=torch.float64), lengths, batch_first=False)
    case("f64_varlen_l2", g, x, lengths=lengths)

    g = nn.GRU(6, 8, num_layers=2).half()
    case("f16_l2_h0", g, r(5, 3, 6).half(), h0=r(2, 3, 8).half(), compute_dtype=torch.float32)

    g = nn.GRU(6, 8, num_layers=2, bidirectional=True).bfloat16()
    case("bf16_bi_l2", g, r(5, 3, 6).bfloat16(), compute_dtype=torch.float32)

    c = nn.GRUCell(6, 5)
    case("cell_batched_hx", c, r(4, 6), h0=r(4, 5))
    case("cell_unbatched", c, r(6))
    c = nn.GRUCell(3, 4, bias=False)
    case("cell_nobias_hx", c, r(2, 3), h0=r(2, 4))

    m = Nested()
    x = r(3, 7, 6)
    case("nested_encoder_rnn", m, x, h0=r(4, 3, 9), prefix="encoder.rnn")

    g = nn.GRU(4, 6, num_layers=2)
    case("saturating_inputs", g, 25.0 * r(8, 2, 4), h0=3.0 * r(2, 2, 6))

    # Long enough that the CPU kernel projects the input in several blocks of steps.
    g = nn.GRU(3, 5, num_layers=2, bidirectional=True)
    lengths = [600, 350]
    x = pad_with_garbage(r(600, 2, 3), lengths, batch_first=False)
    case("long_varlen_bi", g, x, h0=r(4, 2, 5), lengths=lengths)

    # Wide and long enough (B * H * 3H >= 2^17, T >= 16) that the CPU kernel splits each step
    # across threads.
    g = nn.GRU(4, 64)
    lengths = [1 + (7 * b) % 20 for b in range(12)]
    x = pad_with_garbage(r(20, 12, 4), lengths, batch_first=False)
    case("wide_batch_varlen", g, x, h0=r(1, 12, 64), lengths=lengths)

    # Bidirectional and wide enough to split each direction's steps when >= 4 threads run.
    g = nn.GRU(3, 64, bidirectional=True, batch_first=True)
    lengths = [1 + (5 * b) % 18 for b in range(12)]
    x = pad_with_garbage(r(12, 18, 3), lengths, batch_first=True)
    case("wide_bi_varlen_bf", g, x, h0=r(2, 12, 64), lengths=lengths)

    # Deeper than the CPU kernel's blocks of k (256) in both products, hidden not a multiple of
    # its 16-unit groups, a team split per step at 2 threads.
    g = nn.GRU(260, 264)
    lengths = [17, 9, 13]
    x = pad_with_garbage(r(17, 3, 260), lengths, batch_first=False)
    case("deep_k_varlen", g, x, h0=r(1, 3, 264), lengths=lengths)

    # Too few steps for a team: one thread runs the steps, and the projection (30 rows of 250
    # against 192 columns, over 2^20 multiply-adds) is split across threads by panels.
    g = nn.GRU(250, 64)
    case("short_threaded_projection", g, r(10, 3, 250))


if __name__ == "__main__":
    main()
