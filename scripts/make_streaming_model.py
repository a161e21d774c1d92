#!/usr/bin/env python3
"""Writes models/streaming/: the README's streaming walkthrough model, as a user trains and saves it.

  model.pt              torch.save(model.state_dict()) of Linear(12, 32) -> GRU(32, 48,
                        num_layers=2, batch_first=True) -> GRUCell(48, 48) -> Linear(48, 4),
                        trained a little on a toy task (a running sign of the input's first
                        feature, smoothed), as a real-time model is: one frame in, one frame out
  expected.safetensors  `frames` (B=2, T=40, 12), and `logits` (2, 40, 4): PyTorch's output of the
                        whole sequence in one call (the GRU over all frames at once, the cell
                        stepped frame by frame)

A stream of any chunk sizes must give the same logits (examples/common/streaming.rs; the tests
feed it in chunks of 1, 4 and 7 frames). Regenerate: python scripts/make_streaming_model.py
(seed 11).
"""
import os

import torch
from safetensors.torch import save_file
from torch import nn

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "models", "streaming")


class Streamer(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(12, 32)
        self.rnn = nn.GRU(32, 48, num_layers=2, batch_first=True)
        self.cell = nn.GRUCell(48, 48)
        self.out = nn.Linear(48, 4)

    def forward(self, x):
        """x (B, T, 12) -> logits (B, T, 4), the whole sequence at once."""
        y, _ = self.rnn(torch.tanh(self.inp(x)))
        h = torch.zeros(x.shape[0], 48)
        outs = []
        for t in range(x.shape[1]):
            h = self.cell(y[:, t], h)
            outs.append(self.out(h))
        return torch.stack(outs, dim=1)


def batch(rng, n, t=40):
    x = torch.randn(n, t, 12, generator=rng)
    # Label: the sign of a running mean of feature 0, in 4 bands.
    running = torch.cumsum(x[..., 0], dim=1) / torch.arange(1, t + 1)
    labels = torch.bucketize(running, torch.tensor([-0.3, 0.0, 0.3]))
    return x, labels


def main():
    torch.manual_seed(11)
    rng = torch.Generator().manual_seed(11)
    model = Streamer()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(120):
        x, labels = batch(rng, 16)
        loss = nn.functional.cross_entropy(model(x).reshape(-1, 4), labels.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    os.makedirs(OUT, exist_ok=True)
    torch.save(model.state_dict(), os.path.join(OUT, "model.pt"))
    frames, _ = batch(rng, 2)
    with torch.no_grad():
        logits = model(frames)
    save_file({"frames": frames.contiguous(), "logits": logits.contiguous()},
              os.path.join(OUT, "expected.safetensors"),
              metadata={"torch_version": torch.__version__, "final_loss": f"{loss.item():.4f}"})
    print(f"final loss {loss.item():.4f}")


if __name__ == "__main__":
    main()
