#!/usr/bin/env python3
"""Writes models/checkpoints/quantized_dynamic.pt: the state dict of Embedding -> GRU -> Linear
after torch.ao.quantization.quantize_dynamic (int8 GRU and Linear, float Embedding), and
quantized_gru.pt: a quantized GRU alone (no float tensor at all). A quantized GRU is packed
parameters, not tensors: both load as quantized GRUs (`tests/checkpoints.rs`); their numbers are
checked by the cases of models/quantized (scripts/export_quantized.py).

Regenerate: python scripts/make_quantized_fixture.py (seed 7).
"""
import os

import torch
from torch import nn

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "models", "checkpoints")


class Tagger(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 5)
        self.rnn = nn.GRU(5, 7)
        self.head = nn.Linear(7, 2)


def main():
    torch.manual_seed(7)
    model = torch.ao.quantization.quantize_dynamic(Tagger(), {nn.GRU, nn.Linear}, dtype=torch.qint8)
    path = os.path.join(OUT, "quantized_dynamic.pt")
    torch.save(model.state_dict(), path)
    print(path, list(torch.load(path, weights_only=False).keys()))
    # quantize_dynamic swaps children only: the GRU must sit inside a module.
    alone = torch.ao.quantization.quantize_dynamic(nn.Sequential(nn.GRU(3, 4)), {nn.GRU},
                                                   dtype=torch.qint8)
    torch.save(alone.state_dict(), os.path.join(OUT, "quantized_gru.pt"))


if __name__ == "__main__":
    main()
