#!/usr/bin/env python3
"""Writes Hugging Face-style checkpoints of a tagger into models/checkpoints/, each with reference
cases whose `weights` is the folder or its index:

  hf_sharded/       huggingface_hub.save_torch_state_dict with a 1 KB shard size: an index
                    (model.safetensors.index.json) and safetensors shards, so the GRU's tensors,
                    and the weight-norm g and v of the GRUCell, lie in different shards; the GRU
                    is also reachable as `tied` (one module under two names), whose copies
                    safetensors drops and the index's metadata names
  hf_sharded_bin/   the same with safe_serialization=False: pytorch_model.bin.index.json and
                    torch.save shards, the tied copies kept beside the tensors they share
  hf_single/        safetensors.torch.save_model of the model: one model.safetensors, tied
                    copies named in its own metadata

The tagger: Linear 6->5 -> 2-layer bidirectional batch-first GRU 5->9 (under `body.rnn`, and
`tied`) -> GRUCell 18->12 with weight_norm on weight_hh (g moved off ||v||; also reachable as
`cell_tied`, whose dropped copies of g and v the weight is computed from).

Regenerate: python scripts/make_sharded_fixtures.py (seed 2024; needs huggingface_hub).
"""
import json
import os
import shutil
import sys

import torch
from huggingface_hub import save_torch_state_dict
from safetensors.torch import save_model
from torch import nn
from torch.nn.utils import parametrizations

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from export_reference import export_case  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "models", "checkpoints")
META = {"seed": "2024", "generator": "scripts/make_sharded_fixtures.py"}


class Tagger(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(6, 5)
        self.body = nn.ModuleDict({"rnn": nn.GRU(5, 9, num_layers=2, batch_first=True,
                                                 bidirectional=True)})
        self.tied = self.body["rnn"]
        self.cell = parametrizations.weight_norm(nn.GRUCell(18, 12), "weight_hh")
        with torch.no_grad():
            g = self.cell.parametrizations.weight_hh.original0
            g.mul_(1.5).add_(0.1)
        self.cell_tied = self.cell


def model():
    torch.manual_seed(2024)
    return Tagger().eval()


def fresh(name):
    path = os.path.join(OUT, name)
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    return path


def cases(m, stem, weights):
    torch.manual_seed(11)
    x = torch.randn(3, 4, 5)
    export_case(OUT, f"{stem}_rnn", m, "body.rnn", x, lengths=[4, 1, 3], weights_file=weights,
                extra_meta={**META, "prefix": "body.rnn"})
    export_case(OUT, f"{stem}_tied", m, "tied", x, h0=torch.randn(4, 3, 9), weights_file=weights,
                extra_meta={**META, "prefix": "tied"})
    export_case(OUT, f"{stem}_cell", m, "cell", torch.randn(2, 18), h0=torch.randn(2, 12),
                weights_file=weights, extra_meta={**META, "prefix": "cell"})
    export_case(OUT, f"{stem}_cell_tied", m, "cell_tied", torch.randn(18), weights_file=weights,
                extra_meta={**META, "prefix": "cell_tied"})


def main():
    m = model()
    sd = m.state_dict()

    path = fresh("hf_sharded")
    # save_torch_state_dict drops the tied copies from the dict it is given: a copy each time.
    save_torch_state_dict(dict(sd), path, max_shard_size=1000)
    index = json.load(open(os.path.join(path, "model.safetensors.index.json")))
    shards = sorted(set(index["weight_map"].values()))
    dropped = [k for k in index["metadata"] if k not in index["weight_map"] and k != "total_size"]
    assert len(shards) > 3 and dropped, (shards, index["metadata"])
    wm = index["weight_map"]
    assert wm["cell.parametrizations.weight_hh.original0"] != \
        wm["cell.parametrizations.weight_hh.original1"], "g and v share a shard"
    cases(m, "hf_sharded", "hf_sharded")

    path = fresh("hf_sharded_bin")
    save_torch_state_dict(dict(sd), path, max_shard_size=1000, safe_serialization=False)
    index = json.load(open(os.path.join(path, "pytorch_model.bin.index.json")))
    assert "tied.weight_hh_l1" in index["weight_map"], "torch.save shards keep tied copies"
    cases(m, "hf_sharded_bin", "hf_sharded_bin/pytorch_model.bin.index.json")

    path = fresh("hf_single")
    save_model(m, os.path.join(path, "model.safetensors"))
    cases(m, "hf_single", "hf_single")
    print("wrote", len(shards), "safetensors shards; dropped tied names:", len(dropped))


if __name__ == "__main__":
    main()
