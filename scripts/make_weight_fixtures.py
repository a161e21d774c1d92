#!/usr/bin/env python3
"""Writes models/fixtures/: checkpoints saved the ways users save them, for the loader's tests.

  nested_model.safetensors   save_file(model.state_dict()): encoder.rnn (GRU, 2 layers, bi),
                             decoder.gru (GRU), decoder.cell (GRUCell), aux.lstm (an LSTM, not a
                             GRU), an embedding and linear heads
  nested_model_save_model.safetensors   safetensors.torch.save_model(model, ...)
  nested_model.pt            torch.save(model.state_dict())
  training_checkpoint.pt     torch.save({"epoch", "model_state_dict", "optimizer_state_dict", ...})
  whole_module.pt            torch.save(model): a pickled nn.Module (read as its state_dict)
  dataparallel.safetensors   keys as nn.DataParallel saves them (module.gru.*)
  half_f16.safetensors, half_bf16.safetensors   a GRU stored in f16 / bf16
  nested_pt.case.safetensors a reference case whose weights are nested_model.pt
  cuda_saved.pt              a state_dict as saved from CUDA tensors (storages tagged cuda:0);
                             without a GPU it is written from CPU and retagged, which torch.load
                             then treats as CUDA (checked); cuda_saved_reference.safetensors holds
                             the same tensors

Regenerate: python scripts/make_weight_fixtures.py (seed 4321; torch version in README/case files).
`--cuda` writes cuda_saved.pt from real CUDA tensors when a GPU is present.
"""
import argparse
import os
import sys

import torch
from safetensors.torch import save_file, save_model
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from export_reference import export_case  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "models", "fixtures")


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(12, 5)
        self.rnn = nn.GRU(5, 6, num_layers=2, batch_first=True, bidirectional=True)


class Decoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(12, 4)
        self.cell = nn.GRUCell(4, 3)
        self.out = nn.Linear(3, 12)


class Aux(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(3, 4)


class Seq2Seq(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = Encoder()
        self.decoder = Decoder()
        self.aux = Aux()


class Wrapped(nn.Module):
    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(3, 4, num_layers=2)


def sd(model):
    return {k: v.detach().contiguous() for k, v in model.state_dict().items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cuda", action="store_true", help="also write cuda_saved.pt (needs a GPU)")
    args = ap.parse_args()
    torch.manual_seed(4321)
    os.makedirs(OUT, exist_ok=True)
    model = Seq2Seq().eval()
    save_file(sd(model), os.path.join(OUT, "nested_model.safetensors"))
    save_model(model, os.path.join(OUT, "nested_model_save_model.safetensors"))
    torch.save(model.state_dict(), os.path.join(OUT, "nested_model.pt"))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randint(0, 12, (2, 4))
    model.encoder.rnn(model.encoder.embed(x))[0].sum().backward()
    opt.step()
    model.zero_grad()
    torch.save({"epoch": 7, "model_state_dict": model.state_dict(),
                "optimizer_state_dict": opt.state_dict(), "loss": 0.25, "note": "checkpoint"},
               os.path.join(OUT, "training_checkpoint.pt"))
    torch.save(model, os.path.join(OUT, "whole_module.pt"))
    wrapped = Wrapped()
    save_file({f"module.{k}": v for k, v in sd(wrapped).items()},
              os.path.join(OUT, "dataparallel.safetensors"))
    g = nn.GRU(4, 5, num_layers=2, bidirectional=True)
    save_file(sd(g.half()), os.path.join(OUT, "half_f16.safetensors"))
    g = nn.GRU(4, 5, num_layers=2, bidirectional=True)
    save_file(sd(g.bfloat16()), os.path.join(OUT, "half_bf16.safetensors"))
    # A reference case whose weights are the .pt file (after the optimizer step above, so reload
    # the state_dict that nested_model.pt holds).
    model.load_state_dict(torch.load(os.path.join(OUT, "nested_model.pt")))
    export_case(OUT, "nested_pt", model, "encoder.rnn", torch.randn(2, 5, 5),
                h0=torch.randn(4, 2, 6), weights_file="nested_model.pt",
                extra_meta={"seed": "4321", "generator": "scripts/make_weight_fixtures.py"})
    # A state_dict as torch.save writes it from CUDA tensors. Without a GPU, write it from CPU and
    # retag each storage's location 'cpu' -> 'cuda:0' in data.pkl: that string is the only thing
    # CUDA changes in the file. torch itself then refuses it without map_location (checked below).
    w = Wrapped()
    if args.cuda and torch.cuda.is_available():
        torch.save(w.cuda().state_dict(), os.path.join(OUT, "cuda_saved.pt"))
    else:
        retag_as_cuda(w.state_dict(), os.path.join(OUT, "cuda_saved.pt"))
    save_file(sd(w.cpu()), os.path.join(OUT, "cuda_saved_reference.safetensors"))
    sd_back = torch.load(os.path.join(OUT, "cuda_saved.pt"), map_location="cpu")
    assert all(torch.equal(sd_back[k], v) for k, v in w.state_dict().items())
    if not torch.cuda.is_available():
        try:
            torch.load(os.path.join(OUT, "cuda_saved.pt"))
            raise SystemExit("cuda_saved.pt is not tagged as CUDA")
        except RuntimeError as e:
            assert "CUDA" in str(e), e


def retag_as_cuda(state_dict, path):
    import io
    import zipfile
    buf = io.BytesIO()
    torch.save(state_dict, buf)
    src = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename.endswith("data.pkl"):
                # BINUNICODE (protocol 2) "cpu" -> "cuda:0"
                assert b"X\x03\x00\x00\x00cpu" in data
                data = data.replace(b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0")
            dst.writestr(info, data)


if __name__ == "__main__":
    main()
