#!/usr/bin/env python3
"""PyTorch side of `gru bench`: same options, same JSON fields.

    python scripts/bench_torch.py --input-size 128 --hidden-size 256 --num-layers 2 \
        --bidirectional --seq-len 100 --batch 32 --threads 2 --json

Runs `nn.GRU` in eval() under torch.inference_mode(), with torch.set_num_threads(--threads);
--varlen draws lengths uniformly in [T/2, T] and feeds a PackedSequence (enforce_sorted=False).
"""
import argparse
import json
import resource
import statistics
import time

import torch
from torch.nn.utils.rnn import pack_padded_sequence


def bench_parser(devices=None, dtypes=("f32", "f64", "f16", "bf16")):
    """`gru bench`'s options (shared with bench_onnx.py)."""
    p = argparse.ArgumentParser()
    p.add_argument("--input-size", type=int, required=True)
    p.add_argument("--hidden-size", type=int, required=True)
    p.add_argument("--num-layers", type=int, default=1)
    p.add_argument("--bidirectional", action="store_true")
    p.add_argument("--seq-len", type=int, required=True)
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--varlen", action="store_true")
    p.add_argument("--stream", action="store_true",
                   help="one frame per call, the state carried (a real-time service's loop)")
    p.add_argument("--device", default="cpu", choices=devices)
    p.add_argument("--dtype", default="f32", choices=list(dtypes))
    p.add_argument("--threads", type=int)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    return p


def gru_flops(a):
    """`2*T*B*3H*(in_k + H)` per layer and direction, as `gru bench` counts them."""
    d = 2 if a.bidirectional else 1
    return sum(d * 2 * a.seq_len * a.batch * 3 * a.hidden_size *
               ((a.input_size if l == 0 else d * a.hidden_size) + a.hidden_size)
               for l in range(a.num_layers))


def main():
    p = bench_parser()
    p.add_argument("--allow-tf32", action="store_true")
    p.add_argument("--quantize", choices=["int8", "fp16"],
                   help="time torch.ao.quantization.quantize_dynamic's GRU (CPU, f32 inputs)")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.backends.cuda.matmul.allow_tf32 = a.allow_tf32
    torch.backends.cudnn.allow_tf32 = a.allow_tf32
    torch.manual_seed(a.seed)
    dtype = {"f32": torch.float32, "f64": torch.float64, "f16": torch.float16, "bf16": torch.bfloat16}[a.dtype]
    dev = torch.device("cuda" if a.device.startswith("cuda") else a.device)
    gru = torch.nn.GRU(a.input_size, a.hidden_size, a.num_layers,
                       bidirectional=a.bidirectional).to(dev, dtype).eval()
    name = "pytorch"
    if a.quantize:
        import warnings

        warnings.filterwarnings("ignore")
        qdtype = torch.qint8 if a.quantize == "int8" else torch.float16
        wrap = torch.nn.Sequential(gru)
        gru = torch.ao.quantization.quantize_dynamic(wrap, {torch.nn.GRU}, dtype=qdtype)[0]
        name = f"pytorch-{a.quantize}"
    x = torch.randn(a.seq_len, a.batch, a.input_size, device=dev, dtype=dtype)
    lengths = None
    if a.varlen:
        lo = max(1, (a.seq_len + 1) // 2)
        lengths = torch.randint(lo, a.seq_len + 1, (a.batch,))

    if a.stream and (a.bidirectional or a.varlen):
        raise SystemExit("--stream: a bidirectional or variable-length GRU cannot stream")
    frames = [x[t:t + 1] for t in range(a.seq_len)]

    def forward():
        if a.stream:
            h = None
            for frame in frames:
                out, h = gru(frame, h)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            return out
        inp = x if lengths is None else pack_padded_sequence(x, lengths, enforce_sorted=False)
        out, _ = gru(inp)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return out

    times = []
    with torch.inference_mode():
        for _ in range(a.warmup):
            forward()
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        for _ in range(a.iters):
            t0 = time.perf_counter()
            forward()
            times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    median = statistics.median(times)
    flops = gru_flops(a)
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    r = {
        "impl": name, "input_size": a.input_size, "hidden_size": a.hidden_size,
        "num_layers": a.num_layers, "bidirectional": a.bidirectional, "seq_len": a.seq_len,
        "batch": a.batch, "varlen": a.varlen, "stream": a.stream,
        "frame_us": median * 1e3 / a.seq_len if a.stream else None,
        "device": a.device, "dtype": a.dtype, "threads": torch.get_num_threads(), "iters": a.iters, "median_ms": median,
        "min_ms": times[0], "max_ms": times[-1], "gflops": flops / (median * 1e-3) / 1e9,
        "peak_mem_mb": peak, "torch_version": torch.__version__,
    }
    if a.json:
        print(json.dumps(r))
    else:
        print(f"{name} {a.input_size}/{a.hidden_size}/{a.num_layers}/bi={a.bidirectional} "
              f"T={a.seq_len} B={a.batch} varlen={a.varlen}: median {median:.3f} ms "
              f"(min {times[0]:.3f}, max {times[-1]:.3f}), {r['gflops']:.1f} GFLOP/s")


if __name__ == "__main__":
    main()
