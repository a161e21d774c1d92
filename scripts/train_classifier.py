#!/usr/bin/env python3
"""Trains the bidirectional GRU sequence classifier shipped in models/classifier/.

Task (synthetic, variable length): each sequence has 5 to 24 steps of 4 features; its class is
which of features 0, 1, 2 has the largest sum over the valid steps. Model: GRU(4, 24,
num_layers=2, bidirectional, batch_first) on packed sequences -> [h_n forward; h_n reverse] of the
last layer -> Linear(48, 3). Padding is filled with garbage: packed sequences never read it.

Writes, in models/classifier/:
  classifier.safetensors     the model's state_dict (prefix `gru` and `head`)
  heldout.safetensors        `input` (B, T, 4) padded, `lengths` (int64), PyTorch's `logits` and
                             `predictions` (int64 argmax) on 256 held-out sequences
  heldout.case.safetensors   a reference case for the GRU on the first 64 held-out sequences

Run: python scripts/train_classifier.py   (seed 0; under a minute on 2 cores)
"""
import os
import sys

import torch
from safetensors.torch import save_file
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from export_reference import export_case  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "models", "classifier")
T_MAX = 24


def make_batch(n, gen):
    lengths = torch.randint(5, T_MAX + 1, (n,), generator=gen)
    x = torch.randn(n, T_MAX, 4, generator=gen)
    mask = torch.arange(T_MAX)[None, :] < lengths[:, None]
    sums = (x[:, :, :3] * mask[:, :, None]).sum(1)
    y = sums.argmax(1)
    x = torch.where(mask[:, :, None], x, torch.full_like(x, 1e4))  # garbage in the padding
    return x, lengths, y


class Classifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(4, 24, num_layers=2, bidirectional=True, batch_first=True)
        self.head = nn.Linear(48, 3)

    def forward(self, x, lengths):
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        _, h_n = self.gru(packed)
        return self.head(torch.cat([h_n[-2], h_n[-1]], dim=1))


def main():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    model = Classifier()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(500):
        x, lengths, y = make_batch(64, gen)
        loss = nn.functional.cross_entropy(model(x, lengths), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0:
            print(f"step {step} loss {loss.item():.3f}")
    model.eval()
    x, lengths, y = make_batch(256, torch.Generator().manual_seed(12345))
    with torch.inference_mode():
        logits = model(x, lengths)
    pred = logits.argmax(1)
    top2 = torch.topk(logits, 2, dim=1).values
    print(f"held-out accuracy {(pred == y).float().mean():.3f}; "
          f"smallest top-1/top-2 logit gap {(top2[:, 0] - top2[:, 1]).min():.4f}")
    os.makedirs(OUT, exist_ok=True)
    meta = {"torch_version": torch.__version__, "seed": "0",
            "generator": "scripts/train_classifier.py"}
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              os.path.join(OUT, "classifier.safetensors"), metadata=meta)
    save_file({"input": x, "lengths": lengths, "logits": logits, "predictions": pred,
               "labels": y}, os.path.join(OUT, "heldout.safetensors"), metadata=meta)
    export_case(OUT, "heldout", model, "gru", x[:64], lengths=lengths[:64].tolist(),
                weights_file="classifier.safetensors",
                extra_meta={"seed": "0", "generator": "scripts/train_classifier.py"})


if __name__ == "__main__":
    main()
