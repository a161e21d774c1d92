#!/usr/bin/env python3
"""The capture example of the README: models/capture/, written by `capture_cases`.

    python scripts/make_capture_example.py [--out models/capture]

A small seq2seq-like model with two recurrent modules: `encoder` (an nn.GRU, batch-first,
bidirectional, fed a PackedSequence of unsorted lengths) and `decoder.cell` (an nn.GRUCell called
once per output step, its first `hx` the encoder's final states). One forward pass on real inputs
gives one case for the encoder and one per decoder step; `gru verify models/capture` checks them.
"""
import argparse
import os
import sys

import torch
from torch.nn.utils.rnn import pack_padded_sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from export_reference import capture_cases  # noqa: E402


class Decoder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.cell = torch.nn.GRUCell(8, 16)
        self.out = torch.nn.Linear(16, 8)


class Seq2Seq(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(20, 6)
        self.encoder = torch.nn.GRU(6, 8, batch_first=True, bidirectional=True)
        self.decoder = Decoder()

    def forward(self, tokens, lengths, steps=3):
        x = pack_padded_sequence(self.embed(tokens), lengths, batch_first=True, enforce_sorted=False)
        _, h_n = self.encoder(x)
        h = torch.cat([h_n[0], h_n[1]], dim=1)  # (B, 16)
        y = torch.zeros(tokens.shape[0], 8)
        outs = []
        for _ in range(steps):
            h = self.decoder.cell(y, h)
            y = torch.tanh(self.decoder.out(h))
            outs.append(y)
        return torch.stack(outs, 1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "models", "capture"))
    a = ap.parse_args()
    torch.manual_seed(99)
    model = Seq2Seq().eval()
    tokens = torch.randint(0, 20, (4, 7))
    lengths = torch.tensor([5, 7, 2, 6])
    for p in capture_cases(model, (tokens, lengths), a.out, weights_file="seq2seq.safetensors"):
        print(p)


if __name__ == "__main__":
    main()
