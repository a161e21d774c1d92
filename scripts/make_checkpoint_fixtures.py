#!/usr/bin/env python3
"""Writes models/checkpoints/: every kind of PyTorch checkpoint users have, each with a reference
case whose `weights` metadata points straight at it, for the loader's tests and `gru verify`.

  legacy_state_dict.pth     torch.save(sd, _use_new_zipfile_serialization=False): a GRU (2 layers,
                            bidirectional, batch_first, input != hidden), a GRUCell, a BatchNorm
                            (int64 num_batches_tracked); storages retagged 'cuda:0'
  legacy_flat.ch            legacy, protocol 4, GRU weights as views with offsets into one flat
                            storage (what cuDNN's flatten_parameters() leaves), retagged 'mps'
  zip_flat.pt               the same flat-storage GRU in the zip format
  zip_flat_input.pt         its input as one bare tensor, torch.save(x) of a non-contiguous view
  legacy_checkpoint.pkl     legacy {'model': sd, 'unique_notes': [...], 'model_repr': str,
                            'global_step': int}
  whole_module_legacy.pkl   torch.save(model) in the legacy format (module classes pickled with
                            their source)
  whole_module_zip          torch.save(model), zip, no extension
  whole_dataparallel.pt     torch.save(nn.DataParallel(model))  -> names `module.`
  whole_ddp.pt              torch.save(DistributedDataParallel(model)) (single-process gloo group)
                            -> names `module.`
  whole_compiled.pt         torch.save(torch.compile(model))    -> names `_orig_mod.` (if torch
                            can pickle it)
  whole_in_dict.tar         torch.save({'model': model, 'epoch': 3}), zip renamed, inner folder
                            `archive/`
  scripted.pt               torch.jit.save(torch.jit.script(model))
  traced.bin                torch.jit.save(torch.jit.trace(model, x))
  lightning.ckpt            {'state_dict': {'model.' + k: v}, 'optimizer_states': [...],
                            'epoch', 'global_step', 'hyper_parameters'}
  gan.pt                    {'generator': sd, 'discriminator': sd}: a GRU at `rnn` in both
  nested_list.pth           {'models': [sd_a, sd_b]}
  legacy_sparse.pth         legacy {'rnn': GRU state_dict, 'adjacency': a sparse COO tensor}: storages
                            of a tensor kind the loader does not report must not break the file
  legacy_dtypes.pth         legacy, GRUs stored in f64, f16 and bf16 (Double/Half/BFloat16
                            storages), with legacy_dtypes_reference.safetensors holding the same

Regenerate: python scripts/make_checkpoint_fixtures.py (seed 1234).
"""
import contextlib
import io
import os
import sys
import zipfile

import torch
from safetensors.torch import save_file
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from export_reference import export_case  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "models", "checkpoints")
META = {"seed": "1234", "generator": "scripts/make_checkpoint_fixtures.py"}


class Tagger(nn.Module):
    """A model as users write them: the GRU sits among other layers."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(11, 6)
        self.norm = nn.BatchNorm1d(6)
        self.encoder = nn.Module()
        self.encoder.rnn = nn.GRU(6, 5, num_layers=2, batch_first=True, bidirectional=True)
        self.cell = nn.GRUCell(10, 4)
        self.head = nn.Linear(4, 3)

    def forward(self, tokens):
        x = self.embed(tokens)
        x = self.norm(x.transpose(1, 2)).transpose(1, 2)
        y, _ = self.encoder.rnn(x)
        return self.head(self.cell(y[:, -1]))


def retag(data, protocol):
    """Storage locations 'cpu' -> 'cuda:0' (protocol 2, BINUNICODE) or 'mps' (protocol 4, whose
    frames fix the length), as a save from a GPU writes them."""
    if protocol == 2:
        old, new = b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0"
    else:
        old, new = b"\x8c\x03cpu", b"\x8c\x03mps"
    assert old in data
    return data.replace(old, new)


def save_legacy(obj, path, gpu=False, pickle_protocol=2):
    buf = io.BytesIO()
    torch.save(obj, buf, _use_new_zipfile_serialization=False, pickle_protocol=pickle_protocol)
    data = buf.getvalue()
    if gpu:
        data = retag(data, pickle_protocol)
    with open(path, "wb") as f:
        f.write(data)


@contextlib.contextmanager
def gloo_group():
    """A one-process gloo group: DistributedDataParallel needs one to be built or unpickled."""
    import torch.distributed as dist
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29533")
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def flat_gru():
    """A GRU whose parameters are views into one flat storage, like cuDNN's flat weights."""
    g = nn.GRU(3, 4, num_layers=1, bidirectional=True)
    params = list(g.parameters())
    flat = torch.empty(sum(p.numel() for p in params) + 7)
    off = 7  # the first view starts past the storage's start
    with torch.no_grad():
        for p in params:
            view = flat[off:off + p.numel()].view_as(p)
            view.copy_(p)
            p.set_(view)
            off += p.numel()
    return g


def case(name, model, prefix, x, weights, h0=None, lengths=None):
    export_case(OUT, name, model, prefix, x, h0=h0, lengths=lengths, weights_file=weights,
                extra_meta=META)


def main():
    torch.manual_seed(1234)
    os.makedirs(OUT, exist_ok=True)
    model = Tagger()
    model.norm.running_mean.uniform_(-0.2, 0.2)
    model.norm.num_batches_tracked += 5
    model.eval()
    sd = model.state_dict()
    x_enc = torch.randn(2, 5, 6)
    x_cell = torch.randn(3, 10)

    save_legacy(sd, os.path.join(OUT, "legacy_state_dict.pth"), gpu=True)
    case("legacy_state_dict", model, "encoder.rnn", x_enc, "legacy_state_dict.pth",
         h0=torch.randn(4, 2, 5))
    case("legacy_state_dict_cell", model, "cell", x_cell, "legacy_state_dict.pth")

    g = flat_gru().eval()
    assert g.weight_hh_l0.storage_offset() > 0
    x_flat = torch.randn(6, 2, 3)
    save_legacy(g.state_dict(), os.path.join(OUT, "legacy_flat.ch"), gpu=True, pickle_protocol=4)
    case("legacy_flat", g, "", x_flat, "legacy_flat.ch", lengths=[6, 3])
    torch.save(g.state_dict(), os.path.join(OUT, "zip_flat.pt"))
    case("zip_flat", g, "", x_flat, "zip_flat.pt")
    # Its input as one bare tensor (`torch.save(x, path)`), stored as a non-contiguous view
    # (strides (1, T) over a (B, T, I) storage): what `gru run --input` reads.
    torch.save(x_flat.transpose(0, 1).contiguous().transpose(0, 1),
               os.path.join(OUT, "zip_flat_input.pt"))

    save_legacy({"model": sd, "unique_notes": ["a", "b"], "model_repr": repr(model),
                 "global_step": 1200}, os.path.join(OUT, "legacy_checkpoint.pkl"))
    case("legacy_checkpoint", model, "encoder.rnn", x_enc, "legacy_checkpoint.pkl")

    save_legacy(model, os.path.join(OUT, "whole_module_legacy.pkl"))
    case("whole_module_legacy", model, "encoder.rnn", x_enc, "whole_module_legacy.pkl")
    torch.save(model, os.path.join(OUT, "whole_module_zip"))
    case("whole_module_zip", model, "cell", x_cell, "whole_module_zip")
    torch.save(nn.DataParallel(model), os.path.join(OUT, "whole_dataparallel.pt"))
    case("whole_dataparallel", model, "encoder.rnn", x_enc, "whole_dataparallel.pt")
    with gloo_group():
        torch.save(nn.parallel.DistributedDataParallel(model), os.path.join(OUT, "whole_ddp.pt"))
    case("whole_ddp", model, "encoder.rnn", x_enc, "whole_ddp.pt")
    try:
        torch.save(torch.compile(model), os.path.join(OUT, "whole_compiled.pt"))
        case("whole_compiled", model, "encoder.rnn", x_enc, "whole_compiled.pt")
    except Exception as e:  # noqa: BLE001 - older torch cannot pickle OptimizedModule
        print(f"skipped whole_compiled.pt: {e}")
    buf = io.BytesIO()
    torch.save({"model": model, "epoch": 3}, buf)
    with open(os.path.join(OUT, "whole_in_dict.tar"), "wb") as f:
        f.write(buf.getvalue())
    assert zipfile.ZipFile(io.BytesIO(buf.getvalue())).namelist()[0].startswith("archive/")
    case("whole_in_dict", model, "encoder.rnn", x_enc, "whole_in_dict.tar")

    torch.jit.save(torch.jit.script(model), os.path.join(OUT, "scripted.pt"))
    case("scripted", model, "encoder.rnn", x_enc, "scripted.pt")
    tokens = torch.randint(0, 11, (2, 5))
    torch.jit.save(torch.jit.trace(model, tokens), os.path.join(OUT, "traced.bin"))
    case("traced", model, "cell", x_cell, "traced.bin")

    opt = torch.optim.Adam(model.parameters())
    model.train()
    model(tokens).sum().backward()
    opt.step()
    model.eval()
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "optimizer_states": [opt.state_dict()], "epoch": 2, "global_step": 40,
                "hyper_parameters": {"lr": 1e-3}}, os.path.join(OUT, "lightning.ckpt"))
    wrapper = nn.Module()
    wrapper.model = model
    case("lightning", wrapper, "model.encoder.rnn", x_enc, "lightning.ckpt")

    gen, disc = nn.Module(), nn.Module()
    gen.rnn, disc.rnn = nn.GRU(4, 3), nn.GRU(4, 2)
    torch.save({"generator": gen.state_dict(), "discriminator": disc.state_dict()},
               os.path.join(OUT, "gan.pt"))
    x_gan = torch.randn(3, 1, 4)
    export_case(OUT, "gan_generator", gen, "rnn", x_gan, weights_file="gan.pt",
                extra_meta={**META, "prefix": "generator.rnn"})
    export_case(OUT, "gan_discriminator", disc, "rnn", x_gan, weights_file="gan.pt",
                extra_meta={**META, "prefix": "discriminator.rnn"})

    a, b = nn.Module(), nn.Module()
    a.gru, b.gru = nn.GRU(2, 3), nn.GRU(2, 5, num_layers=2)
    torch.save({"models": [a.state_dict(), b.state_dict()]}, os.path.join(OUT, "nested_list.pth"))
    export_case(OUT, "nested_list", b, "gru", torch.randn(4, 2, 2), weights_file="nested_list.pth",
                extra_meta={**META, "prefix": "models.1.gru"})

    sparse_model = nn.Module()
    sparse_model.rnn = nn.GRU(3, 2)
    adjacency = torch.sparse_coo_tensor([[0, 1], [1, 0]], [1.0, 2.0], (2, 2))
    save_legacy({**sparse_model.state_dict(), "adjacency": adjacency},
                os.path.join(OUT, "legacy_sparse.pth"))
    case("legacy_sparse", sparse_model, "rnn", torch.randn(4, 1, 3), "legacy_sparse.pth")

    dtypes = nn.Module()
    dtypes.f64, dtypes.f16, dtypes.bf16 = nn.GRU(3, 2), nn.GRU(3, 2), nn.GRU(3, 2)
    dtypes.f64.double()
    dtypes.f16.half()
    dtypes.bf16.bfloat16()
    save_legacy(dtypes.state_dict(), os.path.join(OUT, "legacy_dtypes.pth"))
    save_file({k: v.contiguous() for k, v in dtypes.state_dict().items()},
              os.path.join(OUT, "legacy_dtypes_reference.safetensors"))

    # Every file loads back in torch as written (the retagged ones onto the CPU).
    for name in sorted(os.listdir(OUT)):
        if not name.endswith(".case.safetensors"):
            path = os.path.join(OUT, name)
            try:
                torch.jit.load(path)
            except Exception:  # noqa: BLE001 - not TorchScript
                with gloo_group() if name == "whole_ddp.pt" else contextlib.nullcontext():
                    torch.load(path, map_location="cpu", weights_only=False)


if __name__ == "__main__":
    main()
