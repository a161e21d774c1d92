#!/usr/bin/env python3
"""Writes models/walkthrough/: the README's walkthrough model, as a user trains and saves it.

  model.pt              torch.save({"model": model.state_dict(), "epoch": 1}) of
                        Embedding(30, 8, padding_idx=0) -> GRU(8, 16, num_layers=2,
                        batch_first=True, bidirectional=True) -> Linear(32, 3), trained a little on
                        a toy task (which of tokens 1, 2, 3 occurs most often)
  expected.safetensors  for SEQUENCES below: `ids` as pad_sequence(batch_first=True) pads them,
                        `lengths`, and `logits`, PyTorch's output of forward() on them

Regenerate: python scripts/make_walkthrough_model.py (seed 7). examples/common/walkthrough.rs
holds the same SEQUENCES.
"""
import os

import torch
from safetensors.torch import save_file
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_sequence

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "models", "walkthrough")

SEQUENCES = [
    [4, 1, 1, 7, 2, 9],
    [3, 3, 12],
    [2, 5, 2, 2, 8, 1, 2, 6, 11],
    [1],
]


class Classifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(30, 8, padding_idx=0)
        self.rnn = nn.GRU(8, 16, num_layers=2, batch_first=True, bidirectional=True)
        self.head = nn.Linear(32, 3)

    def forward(self, ids, lengths):
        packed = pack_padded_sequence(self.embed(ids), lengths, batch_first=True,
                                      enforce_sorted=False)
        _, h_n = self.rnn(packed)
        return self.head(torch.cat([h_n[-2], h_n[-1]], dim=1))


def batch(rng, n):
    seqs = [torch.randint(1, 30, (int(torch.randint(1, 12, (1,), generator=rng)),), generator=rng)
            for _ in range(n)]
    labels = torch.stack([torch.stack([(s == k).sum() for k in (1, 2, 3)]).argmax() for s in seqs])
    return pad_sequence(seqs, batch_first=True), torch.tensor([len(s) for s in seqs]), labels


def main():
    torch.manual_seed(7)
    rng = torch.Generator().manual_seed(7)
    model = Classifier()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        ids, lengths, labels = batch(rng, 32)
        loss = nn.functional.cross_entropy(model(ids, lengths), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    os.makedirs(OUT, exist_ok=True)
    torch.save({"model": model.state_dict(), "epoch": 1}, os.path.join(OUT, "model.pt"))
    seqs = [torch.tensor(s) for s in SEQUENCES]
    ids = pad_sequence(seqs, batch_first=True)
    lengths = torch.tensor([len(s) for s in SEQUENCES])
    with torch.no_grad():
        logits = model(ids, lengths)
    save_file({"ids": ids, "lengths": lengths, "logits": logits.contiguous()},
              os.path.join(OUT, "expected.safetensors"),
              metadata={"torch_version": torch.__version__, "final_loss": f"{loss.item():.4f}"})
    print(f"final loss {loss.item():.4f}; logits\n{logits}")


if __name__ == "__main__":
    main()
