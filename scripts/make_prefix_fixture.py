#!/usr/bin/env python3
"""Writes models/checkpoints/two_rnn_paths.pt: a top-level GRU at `rnn` and a nested state dict
`model` with another GRU at `rnn` (`model.rnn`), as a checkpoint holding a model's weights twice
(before and after fine-tuning, say) has. `--prefix rnn` must be refused as ambiguous; `.rnn`
names the top-level one, `model.rnn` the nested one (tests/checkpoints.rs).

Regenerate: python scripts/make_prefix_fixture.py (seed 5).
"""
import os

import torch

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "models", "checkpoints")


def main():
    torch.manual_seed(5)
    top, nested = torch.nn.GRU(3, 4), torch.nn.GRU(3, 4)
    ckpt = {f"rnn.{k}": v for k, v in top.state_dict().items()}
    ckpt["model"] = {f"rnn.{k}": v for k, v in nested.state_dict().items()}
    torch.save(ckpt, os.path.join(OUT, "two_rnn_paths.pt"))


if __name__ == "__main__":
    main()
