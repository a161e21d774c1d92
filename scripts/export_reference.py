#!/usr/bin/env python3
"""Export a PyTorch GRU (possibly nested in a larger model) and reference cases for `gru verify`.

Reference case format (the contract `gru-verify` reads):
  * weights: `safetensors.torch.save_file(model.state_dict(), path)`.
  * `NAME.case.safetensors`: tensors `input`, `output`, `h_n`, optionally `h0` and `lengths`
    (int64, one per batch element); string metadata `weights` (path relative to the case file),
    `batch_first` ("true"/"false"), `prefix` (the GRU's module path in the weights file), optional
    `atol`, `rtol`, and `kind` = "cell" for GRUCell cases. For variable-length cases `output` is
    what `pad_packed_sequence(..., total_length=T)` returns.

As a library (`pip install ./scripts` makes `import export_reference` work from any folder):
    from export_reference import (capture_cases, export_case, load_state_dict, save_weights)
    model.load_state_dict(load_state_dict("checkpoint.pt"))   # any usual checkpoint shape
    save_weights(model, "out/model.safetensors")
    export_case("out", "case1", model, "encoder.rnn", x, h0=None, lengths=None)
    # Or: every nn.GRU / nn.GRUCell call of one real forward pass, one case each.
    capture_cases(model, (tokens, lengths), "out")

From the command line, for a fresh randomly initialised GRU:
    python scripts/export_reference.py --out DIR --input-size 8 --hidden-size 16 \
        --num-layers 2 --bidirectional --seq-len 10 --batch 3 [--lengths 10,4,7] [--h0]
"""
import argparse
import json
import os

import torch
from safetensors.torch import save_file
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence


STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "model_state", "net", "module",
                   "network")
WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.")


def load_state_dict(path, key=None, strip_prefix=None):
    """The model's state_dict from a checkpoint of any usual shape: a bare state_dict, a whole
    pickled model, `{"model": sd}`, `{"state_dict": ...}` (Lightning), `{"model_state_dict": ...}`
    next to optimizer state, or a whole model under one of those keys. `key` names the entry when
    the guess would be wrong. A prefix every key shares (`module.` from DataParallel,
    `_orig_mod.` from torch.compile, Lightning's `model.`) is removed; `strip_prefix` names the one
    to remove instead ("" removes none).
    """
    obj = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(obj, torch.nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, dict) and not _is_state_dict(obj):
        keys = [key] if key else [k for k in STATE_DICT_KEYS if k in obj]
        if not keys:
            raise KeyError(f"{path}: no state_dict found under {STATE_DICT_KEYS}; "
                           f"top-level keys: {sorted(map(str, obj))}; pass key=")
        obj = obj[keys[0]]
        if isinstance(obj, torch.nn.Module):
            obj = obj.state_dict()
    if not isinstance(obj, dict) or not _is_state_dict(obj):
        raise TypeError(f"{path}: {type(obj).__name__} is not a state_dict")
    prefixes = WRAPPER_PREFIXES if strip_prefix is None else [p for p in [strip_prefix] if p]
    for p in prefixes:
        if obj and all(k.startswith(p) for k in obj):
            obj = {k[len(p):]: v for k, v in obj.items()}
    return obj


def _is_state_dict(d):
    return bool(d) and all(isinstance(k, str) for k in d) and any(
        isinstance(v, torch.Tensor) for v in d.values())


def save_weights(model, path):
    """Writes `model.state_dict()` exactly as a user would."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    sd = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(sd, path)


def get_module(model, prefix):
    return model.get_submodule(prefix) if prefix else model


def _is_cell(module):
    """`nn.GRUCell`, or its dynamically quantized form (`torch.ao.nn.quantized.dynamic.GRUCell`)."""
    return isinstance(module, torch.nn.GRUCell) or type(module).__name__ == "GRUCell"


@torch.inference_mode()
def reference_outputs(gru, x, h0=None, lengths=None, compute_dtype=None):
    """What PyTorch gives for `gru(x, h0)` (packed when `lengths` is given).

    `compute_dtype` (e.g. torch.float32 for half weights) runs a copy of the module in that dtype
    on the same (rounded) weights and inputs."""
    if compute_dtype is not None:
        gru = _copy_as(gru, compute_dtype)
        x = x.to(compute_dtype)
        h0 = None if h0 is None else h0.to(compute_dtype)
    gru = gru.eval()
    if _is_cell(gru):
        out = gru(x, h0)
        return out, out.clone()
    if lengths is None:
        return gru(x, h0)
    t_len = x.shape[1] if gru.batch_first else x.shape[0]
    packed = pack_padded_sequence(x, lengths, batch_first=gru.batch_first, enforce_sorted=False)
    out, h_n = gru(packed, h0)
    out, _ = pad_packed_sequence(out, batch_first=gru.batch_first, total_length=t_len)
    return out, h_n


def _copy_as(module, dtype):
    import copy

    m = copy.deepcopy(module)
    return m.to(dtype)


def export_case(out_dir, name, model, prefix, x, h0=None, lengths=None, weights_file=None,
                compute_dtype=None, atol=None, rtol=None, extra_meta=None, exact=True):
    """Writes `out_dir/NAME.case.safetensors` for the GRU at `prefix` inside `model`.

    `weights_file`: path of the weights relative to `out_dir` (written by `save_weights`);
    `input`, `h0` are stored in their own dtype; `output` and `h_n` in the dtype PyTorch computed
    them in (float32 for half weights run with `compute_dtype=torch.float32`). `exact`: also the
    exact answer, `output_f64` and `h_n_f64`: the same module, weights and inputs run in float64,
    so that `gru verify` can pass a trained model whose f32 outputs drift apart over a long
    sequence when ours is at least as close to the exact answer as PyTorch's own f32."""
    gru = get_module(model, prefix)
    out, h_n = reference_outputs(gru, x, h0, lengths, compute_dtype)
    tensors = {"input": x, "output": out, "h_n": h_n}
    if exact and out.dtype != torch.float64:
        with torch.no_grad():
            out64, h_n64 = reference_outputs(gru, x, h0, lengths, torch.float64)
        tensors["output_f64"] = out64
        tensors["h_n_f64"] = h_n64
    if h0 is not None:
        tensors["h0"] = h0
    if lengths is not None:
        tensors["lengths"] = torch.as_tensor(lengths, dtype=torch.int64)
    meta = {
        "weights": weights_file or f"{name}.safetensors",
        "batch_first": "true" if getattr(gru, "batch_first", False) else "false",
        "prefix": prefix,
        "torch_version": torch.__version__,
    }
    if _is_cell(gru):
        meta["kind"] = "cell"
    if atol is not None:
        meta["atol"] = repr(float(atol))
    if rtol is not None:
        meta["rtol"] = repr(float(rtol))
    meta.update(extra_meta or {})
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{name}.case.safetensors")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, path, metadata=meta)
    return path


def capture_cases(model, inputs, out_dir, weights_file="model.safetensors", kwargs=None):
    """Runs `model(*inputs, **kwargs)` once with forward hooks on every `nn.GRU` and `nn.GRUCell`
    inside it, and writes one reference case per call, on the activations the model really fed
    it: `out_dir/PREFIX_K.case.safetensors` (PREFIX the module path, dots as `_`, K the call's
    index), with `h0` when one was given and `lengths` when the input was a `PackedSequence`;
    plus the weights (`weights_file`). `gru verify out_dir` then checks every GRU of the model.
    Returns the case paths."""
    from torch.nn.utils.rnn import PackedSequence

    names = {m: n for n, m in model.named_modules()}
    calls = []

    def hook(module, args, kwargs_, _output):
        x = args[0] if args else kwargs_.get("input")
        h0 = args[1] if len(args) > 1 else kwargs_.get("hx")
        lengths = None
        if isinstance(x, PackedSequence):
            x, lengths = pad_packed_sequence(x, batch_first=module.batch_first)
            lengths = [int(v) for v in lengths]
        h0 = None if h0 is None else h0.detach().clone()
        calls.append((names[module], x.detach().clone(), h0, lengths))

    handles = [m.register_forward_hook(hook, with_kwargs=True) for m in model.modules()
               if isinstance(m, (torch.nn.GRU, torch.nn.GRUCell))]
    try:
        with torch.inference_mode():
            model(*inputs, **(kwargs or {}))
    finally:
        for h in handles:
            h.remove()
    save_weights(model, os.path.join(out_dir, weights_file))
    paths, seen = [], {}
    for prefix, x, h0, lengths in calls:
        k = seen[prefix] = seen.get(prefix, -1) + 1
        name = f"{prefix.replace('.', '_') or 'gru'}_{k}"
        paths.append(export_case(out_dir, name, model, prefix, x, h0, lengths,
                                 weights_file=weights_file))
    return paths


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--name", default="gru")
    p.add_argument("--input-size", type=int, required=True)
    p.add_argument("--hidden-size", type=int, required=True)
    p.add_argument("--num-layers", type=int, default=1)
    p.add_argument("--no-bias", action="store_true")
    p.add_argument("--batch-first", action="store_true")
    p.add_argument("--bidirectional", action="store_true")
    p.add_argument("--seq-len", type=int, default=10)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--lengths", help="comma-separated, one per batch element")
    p.add_argument("--h0", action="store_true", help="pass a random h0")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64", "float16", "bfloat16"])
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    torch.manual_seed(a.seed)
    dtype = getattr(torch, a.dtype)
    gru = torch.nn.GRU(a.input_size, a.hidden_size, a.num_layers, bias=not a.no_bias,
                       batch_first=a.batch_first, bidirectional=a.bidirectional).to(dtype)
    shape = (a.batch, a.seq_len, a.input_size) if a.batch_first else (a.seq_len, a.batch, a.input_size)
    x = torch.randn(shape).to(dtype)
    d = 2 if a.bidirectional else 1
    h0 = torch.randn(a.num_layers * d, a.batch, a.hidden_size).to(dtype) if a.h0 else None
    lengths = [int(v) for v in a.lengths.split(",")] if a.lengths else None
    half = dtype in (torch.float16, torch.bfloat16)
    save_weights(gru, os.path.join(a.out, f"{a.name}.safetensors"))
    path = export_case(a.out, a.name, gru, "", x, h0, lengths,
                       compute_dtype=torch.float32 if half else None,
                       extra_meta={"seed": str(a.seed)})
    print(json.dumps({"case": path}))


if __name__ == "__main__":
    main()
