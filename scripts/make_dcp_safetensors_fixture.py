#!/usr/bin/env python3
"""Writes models/checkpoints/dcp_safetensors/: the tagger of scripts/make_dcp_fixture.py saved by
two ranks with torch.distributed.checkpoint's HuggingFaceStorageWriter(save_distributed=True),
each parameter a DTensor sharded across them (rows, or columns for the Linear's weight): one
safetensors file per rank, holding that rank's chunks, whose DCP_SHARDING_INFO metadata gives
each chunk's offsets, and no index (as PyTorch's HuggingFaceStorageReader reads such a folder).
Also a reference case for its GRU and its GRUCell whose `weights` is the folder; the whole
state dict is dcp_sharded_reference.safetensors (under `model.`).

And models/checkpoints/dcp_safetensors_whole/: the same state dict saved by one process with
HuggingFaceStorageWriter(fqn_to_index_mapping=...): whole tensors in two files (the GRU's, the
rest), each with DCP_SHARDING_INFO at offset 0, and an index; each file reads on its own.

Regenerate: python scripts/make_dcp_safetensors_fixture.py (seed 99, as make_dcp_fixture.py).
"""
import os
import shutil
import sys

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import HuggingFaceStorageWriter

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from export_reference import export_case  # noqa: E402
from make_dcp_fixture import OUT, model, run_ranks  # noqa: E402

FOLDER = "dcp_safetensors"
META = {"seed": "99", "generator": "scripts/make_dcp_safetensors_fixture.py"}


def save(sd):
    writer = HuggingFaceStorageWriter(os.path.join(OUT, FOLDER), save_distributed=True)
    dcp.save(sd, storage_writer=writer)


def save_whole():
    path = os.path.join(OUT, f"{FOLDER}_whole")
    shutil.rmtree(path, ignore_errors=True)
    sd = model().state_dict()
    mapping = {k: 1 if k.startswith("rnn.") else 2 for k in sd}
    writer = HuggingFaceStorageWriter(path, fqn_to_index_mapping=mapping)
    dcp.save(sd, storage_writer=writer, no_dist=True)
    files = sorted(os.listdir(path))
    assert files == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                     "model.safetensors.index.json"], files


def main():
    path = os.path.join(OUT, FOLDER)
    shutil.rmtree(path, ignore_errors=True)
    run_ranks(save)
    save_whole()
    files = sorted(os.listdir(path))
    assert len(files) == 2 and all(f.endswith(".safetensors") for f in files), files
    m = model()
    torch.manual_seed(7)
    export_case(OUT, "dcp_safetensors_rnn", m, "rnn", torch.randn(3, 5, 4), lengths=[5, 2, 4],
                weights_file=FOLDER, extra_meta=META)
    export_case(OUT, "dcp_safetensors_cell", m, "cell", torch.randn(2, 14), h0=torch.randn(2, 3),
                weights_file=FOLDER, extra_meta=META)
    print("wrote", path, files)


if __name__ == "__main__":
    main()
