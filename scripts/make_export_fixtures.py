#!/usr/bin/env python3
"""Writes models/checkpoints/ torch.export archives (the PT2 archive format), each loadable one
with a reference case whose `weights` is the archive itself:

  exported.pt2        torch.export.save of a tagger (Embedding -> 2-layer bidirectional
                      batch-first GRU 6->5 -> GRUCell 10->4), exported in eval mode; the case
                      inputs are the GRU's and the cell's own
  exported_multi.pt2  package_pt2 of two programs, "encoder" (a GRU 3->4 with no bias) and
                      "decoder" (a GRU 4->2): state dicts under the program names
  exported_v1.zip     the tagger as torch 2.1-2.5's torch.export.save wrote it: a zip of
                      serialized_exported_program.json, serialized_state_dict.pt (a torch.save
                      file, stored inside), constants, example inputs and version (torch.export.load
                      still reads it, which the script checks)
  exported_v2.pt2     the tagger as torch 2.6-2.7 wrote it: a PT2 archive whose weights are one
                      torch.save file, data/weights/model.pt
  exported_wn.pt2     a GRUCell 3->4 whose weight_hh is under weight_norm (g moved off ||v||):
                      computed from the archive, with a reference case
  exported_chained.pt2  the same with a second parametrization without tensors (x 2) chained on
                      weight_hh: only the program's graph shows it, and loading must refuse it

Regenerate: python scripts/make_export_fixtures.py (seed 2468).
"""
import os
import sys

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from export_reference import export_case  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "models", "checkpoints")
META = {"seed": "2468", "generator": "scripts/make_export_fixtures.py"}


class Tagger(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(11, 6)
        self.encoder = nn.Module()
        self.encoder.rnn = nn.GRU(6, 5, num_layers=2, bidirectional=True, batch_first=True)
        self.cell = nn.GRUCell(10, 4)

    def forward(self, tokens):
        out, _ = self.encoder.rnn(self.embed(tokens))
        return self.cell(out[:, -1])


class Wrap(nn.Module):
    def __init__(self, gru):
        super().__init__()
        self.gru = gru

    def forward(self, x):
        return self.gru(x)


def main():
    torch.manual_seed(2468)
    tagger = Tagger().eval()
    tokens = torch.randint(0, 11, (2, 7))
    ep = torch.export.export(tagger, (tokens,))
    path = os.path.join(OUT, "exported.pt2")
    torch.export.save(ep, path)
    # The archive runs in PyTorch as the model does.
    assert torch.equal(torch.export.load(path).module()(tokens), tagger(tokens))
    export_case(OUT, "exported_rnn", tagger, "encoder.rnn", torch.randn(3, 7, 6),
                weights_file="exported.pt2", extra_meta=META)
    export_case(OUT, "exported_cell", tagger, "cell", torch.randn(2, 10), h0=torch.randn(2, 4),
                weights_file="exported.pt2", extra_meta=META)

    from torch.export.pt2_archive._package import package_pt2
    enc, dec = Wrap(nn.GRU(3, 4, bias=False)).eval(), Wrap(nn.GRU(4, 2)).eval()
    x = torch.randn(5, 2, 3)
    programs = {
        "encoder": torch.export.export(enc, (x,)),
        "decoder": torch.export.export(dec, (torch.randn(5, 2, 4),)),
    }
    package_pt2(os.path.join(OUT, "exported_multi.pt2"), exported_programs=programs)
    export_case(OUT, "exported_multi_encoder", enc, "gru", x, weights_file="exported_multi.pt2",
                extra_meta={**META, "prefix": "encoder.gru"})
    export_case(OUT, "exported_multi_decoder", dec, "gru", torch.randn(3, 1, 4),
                weights_file="exported_multi.pt2", extra_meta={**META, "prefix": "decoder.gru"})
    # The two older layouts, written from the same program with torch's own serializers.
    import json
    import zipfile

    from torch._export.serde.schema import SCHEMA_VERSION
    from torch._export.serde.serialize import serialize, serialize_torch_artifact

    artifact = serialize(ep)
    v1 = os.path.join(OUT, "exported_v1.zip")
    with zipfile.ZipFile(v1, "w") as z:
        z.writestr("serialized_exported_program.json", artifact.exported_program)
        z.writestr("serialized_state_dict.pt", serialize_torch_artifact(ep.state_dict))
        z.writestr("serialized_constants.pt", artifact.constants)
        z.writestr("serialized_example_inputs.pt", artifact.example_inputs)
        z.writestr("version", ".".join(map(str, SCHEMA_VERSION)))
    assert torch.equal(torch.export.load(v1).module()(tokens), tagger(tokens))
    v2 = os.path.join(OUT, "exported_v2.pt2")
    with zipfile.ZipFile(v2, "w") as z:
        z.writestr("exported_v2/archive_format", "pt2")
        z.writestr("exported_v2/archive_version", "0")
        z.writestr("exported_v2/byteorder", "little")
        z.writestr("exported_v2/.data/version", "1\n")
        z.writestr("exported_v2/models/model.json", artifact.exported_program)
        z.writestr("exported_v2/data/weights/model.pt", serialize_torch_artifact(ep.state_dict))
        z.writestr("exported_v2/data/constants/model.pt", artifact.constants)
        z.writestr("exported_v2/data/sample_inputs/model.pt", artifact.example_inputs)
    assert list(torch.export.load(v2).state_dict) == list(ep.state_dict)
    for name in ("exported_rnn", "exported_cell"):
        for version, weights in (("v1", "exported_v1.zip"), ("v2", "exported_v2.pt2")):
            # The same references, pointing at the older archives.
            src = os.path.join(OUT, f"{name}.case.safetensors")
            from safetensors import safe_open
            from safetensors.torch import save_file
            with safe_open(src, "pt") as f:
                tensors = {k: f.get_tensor(k) for k in f.keys()}
                meta = {**f.metadata(), "weights": weights}
            save_file(tensors, os.path.join(OUT, f"{name}_{version}.case.safetensors"), metadata=meta)
    from torch.nn.utils import parametrizations, parametrize

    class Double(nn.Module):
        def forward(self, w):
            return 2 * w

    for name, chained in (("exported_wn", False), ("exported_chained", True)):
        cell = Wrap(nn.GRUCell(3, 4))
        parametrizations.weight_norm(cell.gru, "weight_hh")
        with torch.no_grad():
            g = cell.gru.parametrizations.weight_hh.original0
            g.mul_(torch.empty_like(g).uniform_(0.5, 1.5))
        if chained:
            parametrize.register_parametrization(cell.gru, "weight_hh", Double())
        cell.eval()
        x = torch.randn(2, 3)
        torch.export.save(torch.export.export(cell, (x,)), os.path.join(OUT, f"{name}.pt2"))
        if not chained:
            export_case(OUT, name, cell, "gru", x, h0=torch.randn(2, 4),
                        weights_file=f"{name}.pt2", extra_meta=META)
    print("wrote", path, "exported_multi.pt2, exported_v1.zip, exported_v2.pt2, exported_wn.pt2,",
          "exported_chained.pt2", json.dumps(META))


if __name__ == "__main__":
    main()
