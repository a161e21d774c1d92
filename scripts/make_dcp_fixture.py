#!/usr/bin/env python3
"""Writes models/checkpoints/dcp_sharded/: a torch.distributed.checkpoint of a tagger
(Linear -> 2-layer bidirectional batch-first GRU 4->7 -> GRUCell 14->3) saved by two ranks, each
parameter a DTensor sharded across them (rows, or columns for the Linear's weight; 21 rows split
11 + 10, so the chunks differ in size), a reference case for its GRU and its GRUCell whose
`weights` is the folder, and dcp_sharded_reference.safetensors: the whole state dict as one file,
for a tensor-for-tensor comparison. Two CPU processes over gloo; nothing needs a GPU.

Also models/checkpoints/dcp_hostile/NAME.metadata: the folder's `.metadata` altered one way each
(a chunk past its tensor, chunks that overlap, a missing chunk, a shard path out of the folder, a
byte range past its shard, a chunk whose bytes hold another tensor, two chunks in the same
bytes, a size its chunks cannot hold); tests/hostile.rs puts each beside the real shards and expects a clear error.

And models/checkpoints/dcp_unflattened/: the same model's state dict saved by one process with
DefaultSavePlanner(flatten_state_dict=False), so that `model` is one pickled item (a torch.save of
the whole dict, no tensor entries in `.metadata`), beside a pickled step count and a list nested
300 deep (our reader refuses it: the item is skipped, and named); with a case for its GRU.

Regenerate: python scripts/make_dcp_fixture.py (seed 99).
"""
import os
import shutil
import sys
import tempfile

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.multiprocessing as mp
from torch import nn
from torch.distributed.tensor import Shard, distribute_tensor, init_device_mesh

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from export_reference import export_case  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "models", "checkpoints")
FOLDER = "dcp_sharded"
META = {"seed": "99", "generator": "scripts/make_dcp_fixture.py"}


class Tagger(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(6, 4)
        self.rnn = nn.GRU(4, 7, num_layers=2, bidirectional=True, batch_first=True)
        self.cell = nn.GRUCell(14, 3)


def model():
    torch.manual_seed(99)
    return Tagger().eval()


def distributed_state_dict(mesh):
    """The tagger's state dict as DTensors sharded across `mesh`: by rows, and proj.weight by
    columns (21 rows split 11 + 10 over two ranks, so the chunks differ in size)."""
    sd = {}
    for name, t in model().state_dict().items():
        placement = Shard(1) if name == "proj.weight" else Shard(0)
        sd[name] = distribute_tensor(t, mesh, [placement])
    return sd


def _rank_main(rank, world, init, save):
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    save(distributed_state_dict(init_device_mesh("cpu", (world,))))
    dist.destroy_process_group()


def run_ranks(save, world=2):
    """Calls save(state dict of DTensors) in `world` CPU processes joined over gloo."""
    init = "file://" + os.path.join(tempfile.mkdtemp(), "rendezvous")
    mp.spawn(_rank_main, args=(world, init, save), nprocs=world, join=True)


def save(sd):
    dcp.save({"model": sd}, checkpoint_id=os.path.join(OUT, FOLDER))


def save_unflattened():
    from torch.distributed.checkpoint import DefaultSavePlanner
    path = os.path.join(OUT, "dcp_unflattened")
    shutil.rmtree(path, ignore_errors=True)
    m = model()
    deep = []
    for _ in range(300):
        deep = [deep]
    planner = DefaultSavePlanner(flatten_state_dict=False)
    dcp.save({"model": m.state_dict(), "step": 3, "deep": deep},
             checkpoint_id=path, planner=planner, no_dist=True)
    torch.manual_seed(8)
    export_case(OUT, "dcp_unflattened_rnn", m, "rnn", torch.randn(2, 6, 4), h0=torch.randn(4, 2, 7),
                weights_file="dcp_unflattened", extra_meta={**META, "prefix": "model.rnn"})


def main():
    path = os.path.join(OUT, FOLDER)
    shutil.rmtree(path, ignore_errors=True)
    run_ranks(save)
    save_unflattened()
    m = model()
    from safetensors.torch import save_file
    save_file({f"model.{k}": v.contiguous() for k, v in m.state_dict().items()},
              os.path.join(OUT, f"{FOLDER}_reference.safetensors"))
    torch.manual_seed(7)
    export_case(OUT, "dcp_sharded_rnn", m, "rnn", torch.randn(3, 5, 4), lengths=[5, 2, 4],
                weights_file=FOLDER, extra_meta={**META, "prefix": "model.rnn"})
    export_case(OUT, "dcp_sharded_cell", m, "cell", torch.randn(2, 14), h0=torch.randn(2, 3),
                weights_file=FOLDER, extra_meta={**META, "prefix": "model.cell"})
    write_hostile(path)
    print("wrote", path, sorted(os.listdir(path)))


def write_hostile(folder):
    import copy
    import pickle

    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import ChunkStorageMetadata, MetadataIndex

    base = FileSystemReader(folder).read_metadata()
    key = "model.rnn.weight_ih_l0"  # 21 x 4, chunks of rows 0-10 and 11-20
    Size = torch.Size

    def chunk(offsets, sizes):
        return ChunkStorageMetadata(offsets=Size(offsets), sizes=Size(sizes))

    def info_at(m, offsets):
        return next(v for k, v in m.storage_data.items()
                    if k.fqn == key and k.offset == Size(offsets))

    def past(m):
        m.state_dict_metadata[key].chunks[1] = chunk([11, 0], [20, 4])

    def overlap(m):  # as many elements as the tensor, but row 10 twice and row 20 never
        m.state_dict_metadata[key].chunks[1] = chunk([10, 0], [10, 4])
        m.storage_data[MetadataIndex(key, Size([10, 0]), 0)] = info_at(m, [11, 0])

    def missing(m):
        m.state_dict_metadata[key].chunks.pop(1)

    def outside(m):
        for v in m.storage_data.values():
            v.relative_path = "../__0_0.distcp"

    def past_shard(m):
        info_at(m, [0, 0]).offset = 10 ** 9

    def other_tensor(m):  # the chunk's bytes hold a bias, and the bias's the chunk's
        bias_key = next(k for k in m.storage_data if k.fqn == "model.rnn.bias_ih_l0"
                        and k.offset == Size([0]))
        weight_key = MetadataIndex(key, Size([0, 0]), 0)
        weight_key = next(k for k in m.storage_data if k == weight_key)
        m.storage_data[bias_key], m.storage_data[weight_key] = (
            m.storage_data[weight_key], m.storage_data[bias_key])

    def shared_bytes(m):  # both chunks read the same bytes
        m.storage_data[MetadataIndex(key, Size([11, 0]), 0)] = info_at(m, [0, 0])

    def huge(m):  # 2^40 rows, one chunk, in the bytes of 11
        m.state_dict_metadata[key].size = Size([1 << 40, 4])
        m.state_dict_metadata[key].chunks = [chunk([0, 0], [1 << 40, 4])]

    out = os.path.join(OUT, "dcp_hostile")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    for alter in (past, overlap, missing, outside, past_shard, other_tensor, shared_bytes, huge):
        m = copy.deepcopy(base)
        alter(m)
        with open(os.path.join(out, f"{alter.__name__}.metadata"), "wb") as f:
            pickle.dump(m, f)


if __name__ == "__main__":
    main()
