#!/usr/bin/env python3
"""A checkpoint saved by PyTorch from a real CUDA model, with reference cases computed on the GPU.

    python scripts/gpu_cuda_checkpoint.py OUT_DIR

The model (a GRU nested in a larger net: batch-first, bidirectional, 2 layers, input != hidden) is
moved to CUDA, so cuDNN flattens its weights into one storage (`flatten_parameters()`), and
`torch.save(model.state_dict())` writes tensors located on cuda:0 that are views with offsets into
that storage. The references are cuDNN's outputs with TF32 off. `gru verify OUT_DIR` must pass on
any device. Needs a GPU (run by scripts/gpu-check.sh).
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from export_reference import export_case  # noqa: E402


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(12, 10)
        self.encoder = torch.nn.Module()
        self.encoder.rnn = torch.nn.GRU(10, 24, num_layers=2, batch_first=True, bidirectional=True)
        self.head = torch.nn.Linear(48, 3)


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(7)
    model = Net().cuda().eval()
    sd = model.state_dict()
    w = sd["encoder.rnn.weight_ih_l0"]
    print(f"saved from {w.device}; weights share one storage: "
          f"{w.untyped_storage().data_ptr() == sd['encoder.rnn.weight_hh_l1_reverse'].untyped_storage().data_ptr()}")
    torch.save(sd, os.path.join(out, "cuda_model.pt"))
    x = torch.randn(5, 9, 10, device="cuda")
    h0 = torch.randn(4, 5, 24, device="cuda")
    export_case(out, "cuda_ckpt", model, "encoder.rnn", x, h0=h0, weights_file="cuda_model.pt")
    export_case(out, "cuda_ckpt_varlen", model, "encoder.rnn", x, lengths=[9, 3, 1, 7, 9],
                weights_file="cuda_model.pt")


if __name__ == "__main__":
    main()
