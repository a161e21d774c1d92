#!/usr/bin/env python3
"""Checks from the PyTorch side that a file written by candle-gru (`gru convert`, i.e.
gru_weights::save_gru) is a state_dict `nn.GRU.load_state_dict(strict=True)` accepts, holding
exactly the original tensors, and that the loaded module computes what the original did.

    gru convert --weights models/fixtures/training_checkpoint.pt --prefix encoder.rnn --out /tmp/enc.safetensors
    python scripts/check_saved_state_dict.py /tmp/enc.safetensors models/fixtures/nested_model.pt encoder.rnn
"""
import os
import sys

import torch
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from export_reference import load_state_dict  # noqa: E402


def main():
    saved, original, prefix = sys.argv[1], sys.argv[2], sys.argv[3]
    sd = load_file(saved)
    if original.endswith(".safetensors"):
        orig = load_file(original)
    else:
        # A bare state_dict, {"model": ...}, {"model_state_dict": ...}, Lightning, a whole model.
        orig = load_state_dict(original, strip_prefix="")
    if prefix:
        orig = {k[len(prefix) + 1:]: v for k, v in orig.items() if k.startswith(prefix + ".")}
    layers = 1 + max(int(k.split("_l")[1].split("_")[0]) for k in sd)
    bidirectional = any(k.endswith("_reverse") for k in sd)
    hidden = sd["weight_hh_l0"].shape[1]
    gru = torch.nn.GRU(sd["weight_ih_l0"].shape[1], hidden, layers,
                       bias="bias_ih_l0" in sd, bidirectional=bidirectional).to(sd["weight_ih_l0"].dtype)
    gru.load_state_dict(sd, strict=True)
    if set(sd) != set(orig):
        raise SystemExit(f"the saved file and {original}:{prefix} hold different tensors: "
                         f"{sorted(set(sd) ^ set(orig))}")
    for k, v in sd.items():
        if not torch.equal(v, orig[k]):
            raise SystemExit(f"{k} differs between {saved} and {original}:{prefix}")
    x = torch.randn(5, 2, gru.input_size, dtype=sd["weight_ih_l0"].dtype)
    ref = torch.nn.GRU(gru.input_size, hidden, layers, bias=gru.bias,
                       bidirectional=bidirectional).to(x.dtype)
    ref.load_state_dict(orig)
    with torch.inference_mode():
        assert torch.equal(gru(x)[0], ref(x)[0])
    print(f"ok: load_state_dict(strict=True) accepted {saved}: {len(sd)} tensors equal to "
          f"{original}:{prefix}")


if __name__ == "__main__":
    main()
