#!/usr/bin/env python3
"""PyTorch autograd references for candle-gru's gradients: models/gradients/*.safetensors.

    python scripts/make_gradient_reference.py [--out models/gradients]

Two cases, each one safetensors file holding the module's parameters under PyTorch's names, the
inputs, fixed loss weights and PyTorch's gradients (`grad.NAME`) of

    loss = sum(output * loss_output) + sum(h_n * loss_h_n)

with respect to every parameter, the input and h0:
  * gru_bi_l2_varlen: nn.GRU(3, 5, num_layers=2, bidirectional=True), input (T=6, B=4, 3),
    h0 given, unsorted lengths [4, 6, 1, 3] (pack_padded_sequence, enforce_sorted=False, then
    pad_packed_sequence(total_length=T));
  * cell: nn.GRUCell(4, 6) on (B=3, 4) with hx (loss_h_n unused).
"""
import argparse
import os

import torch
from safetensors.torch import save_file
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence


def gru_case():
    torch.manual_seed(2024)
    gru = torch.nn.GRU(3, 5, num_layers=2, bidirectional=True).double()
    t_len, batch = 6, 4
    x = torch.randn(t_len, batch, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(4, batch, 5, dtype=torch.float64, requires_grad=True)
    lengths = [4, 6, 1, 3]
    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
    out, h_n = gru(packed, h0)
    out, _ = pad_packed_sequence(out, total_length=t_len)
    w_out = torch.randn_like(out)
    w_hn = torch.randn_like(h_n)
    loss = (out * w_out).sum() + (h_n * w_hn).sum()
    loss.backward()
    t = {name: p.detach() for name, p in gru.named_parameters()}
    t.update({f"grad.{name}": p.grad for name, p in gru.named_parameters()})
    t.update({"input": x.detach(), "h0": h0.detach(), "grad.input": x.grad, "grad.h0": h0.grad,
              "lengths": torch.tensor(lengths, dtype=torch.int64), "loss_output": w_out,
              "loss_h_n": w_hn, "output": out.detach(), "h_n": h_n.detach()})
    return t


def cell_case():
    torch.manual_seed(7)
    cell = torch.nn.GRUCell(4, 6).double()
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    hx = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    out = cell(x, hx)
    w_out = torch.randn_like(out)
    (out * w_out).sum().backward()
    t = {name: p.detach() for name, p in cell.named_parameters()}
    t.update({f"grad.{name}": p.grad for name, p in cell.named_parameters()})
    t.update({"input": x.detach(), "h0": hx.detach(), "grad.input": x.grad, "grad.h0": hx.grad,
              "loss_output": w_out, "output": out.detach()})
    return t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "models", "gradients"))
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    meta = {"torch_version": torch.__version__,
            "loss": "sum(output * loss_output) + sum(h_n * loss_h_n)"}
    # f64: the references are exact to ~1e-15; the Rust test checks f64 and f32 runs against them.
    for name, t in [("gru_bi_l2_varlen", gru_case()), ("cell", cell_case())]:
        save_file({k: v.contiguous() for k, v in t.items()}, os.path.join(a.out, f"{name}.safetensors"),
                  metadata=meta)


if __name__ == "__main__":
    main()
