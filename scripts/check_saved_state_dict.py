#!/usr/bin/env python3
"""Checks from the PyTorch side that a file written by candle-gru (`gru convert`, i.e.
gru_weights::save_gru / save_gru_cell) is a state_dict `nn.GRU.load_state_dict(strict=True)` (or
`nn.GRUCell`'s, for `convert --cell`) accepts, holding exactly the original tensors, and that the
loaded module computes what the original did.

    gru convert --weights models/fixtures/training_checkpoint.pt --prefix encoder.rnn --out /tmp/enc.safetensors
    python scripts/check_saved_state_dict.py /tmp/enc.safetensors models/fixtures/training_checkpoint.pt encoder.rnn
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
    cell = "weight_ih" in sd
    if cell:
        w = sd["weight_ih"]
        make = lambda: torch.nn.GRUCell(w.shape[1], sd["weight_hh"].shape[1],  # noqa: E731
                                        bias="bias_ih" in sd).to(w.dtype)
    else:
        w = sd["weight_ih_l0"]
        layers = 1 + max(int(k.split("_l")[1].split("_")[0]) for k in sd)
        make = lambda: torch.nn.GRU(w.shape[1], sd["weight_hh_l0"].shape[1], layers,  # noqa: E731
                                    bias="bias_ih_l0" in sd,
                                    bidirectional=any(k.endswith("_reverse") for k in sd)).to(w.dtype)
    gru = make()
    gru.load_state_dict(sd, strict=True)
    if set(sd) != set(orig):
        raise SystemExit(f"the saved file and {original}:{prefix} hold different tensors: "
                         f"{sorted(set(sd) ^ set(orig))}")
    for k, v in sd.items():
        if not torch.equal(v, orig[k]):
            raise SystemExit(f"{k} differs between {saved} and {original}:{prefix}")
    x = torch.randn(*(() if cell else (5,)), 2, gru.input_size, dtype=w.dtype)
    ref = make()
    ref.load_state_dict(orig)
    with torch.inference_mode():
        out, want = gru(x), ref(x)
        assert torch.equal(out if cell else out[0], want if cell else want[0])
    print(f"ok: load_state_dict(strict=True) accepted {saved}: {len(sd)} tensors equal to "
          f"{original}:{prefix}")


if __name__ == "__main__":
    main()
