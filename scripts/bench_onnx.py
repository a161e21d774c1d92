#!/usr/bin/env python3
"""ONNX Runtime and OpenVINO side of `gru bench`: same options, same JSON fields.

    python scripts/bench_onnx.py --runtime onnxruntime --input-size 128 --hidden-size 256 \
        --num-layers 2 --bidirectional --seq-len 100 --batch 32 --threads 2 --json

The graph is what a user exporting an `nn.GRU` runs: one ONNX `GRU` node per layer with
`linear_before_reset=1` (PyTorch's placement of the reset gate), the gates reordered from
PyTorch's r|z|n to ONNX's z|r|h, and `sequence_lens` for --varlen (lengths uniform in [T/2, T]).
Before timing, its output is checked against PyTorch's `nn.GRU` on the same weights and input
(packed for --varlen); a mismatch beyond 1e-4 exits with an error.

Needs: pip install onnx onnxruntime openvino (besides torch).
"""
import json
import resource
import statistics
import sys
import time

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from bench_torch import bench_parser, gru_flops


def reorder(w, h):
    """PyTorch's r|z|n gate blocks (rows) -> ONNX's z|r|h."""
    r, z, n = w[:h], w[h:2 * h], w[2 * h:]
    return np.concatenate([z, r, n], axis=0)


def build_graph(gru, seq_len, batch, varlen, stream=False):
    """The GRU as ONNX nodes; `stream`: each layer also takes its state `h0_l` `(1, B, H)` and
    returns `hn_l` (outputs: the last layer's `y`, then every `hn_l`)."""
    h, d = gru.hidden_size, 2 if gru.bidirectional else 1
    nodes, inits = [], []
    x_name = "x"
    for layer in range(gru.num_layers):
        sfx = ["", "_reverse"][:d]
        p = lambda name, s: getattr(gru, f"{name}_l{layer}{s}").detach().numpy()
        w = np.stack([reorder(p("weight_ih", s), h) for s in sfx])
        r = np.stack([reorder(p("weight_hh", s), h) for s in sfx])
        b = np.stack([np.concatenate([reorder(p("bias_ih", s), h), reorder(p("bias_hh", s), h)])
                      for s in sfx])
        for name, arr in [(f"W{layer}", w), (f"R{layer}", r), (f"B{layer}", b)]:
            inits.append(numpy_helper.from_array(arr.astype(np.float32), name))
        inputs = [x_name, f"W{layer}", f"R{layer}", f"B{layer}"]
        if varlen:
            inputs.append("lengths")
        elif stream:
            inputs += ["", f"h0_{layer}"]
        y = f"y{layer}"
        outs = [y, f"hn_{layer}"] if stream else [y]
        nodes.append(helper.make_node(
            "GRU", inputs, outs, hidden_size=h, linear_before_reset=1,
            direction="bidirectional" if d == 2 else "forward"))
        # Y is (T, D, B, H); the next layer (and PyTorch's output) wants (T, B, D * H).
        nodes.append(helper.make_node("Transpose", [y], [f"{y}_t"], perm=[0, 2, 1, 3]))
        shape = f"shape{layer}"
        inits.append(numpy_helper.from_array(np.array([seq_len, batch, d * h], np.int64), shape))
        x_name = f"x{layer + 1}"
        nodes.append(helper.make_node("Reshape", [f"{y}_t", shape], [x_name]))
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [seq_len, batch, gru.input_size])]
    if varlen:
        inputs.append(helper.make_tensor_value_info("lengths", TensorProto.INT32, [batch]))
    outputs = [helper.make_tensor_value_info(x_name, TensorProto.FLOAT, [seq_len, batch, d * h])]
    if stream:
        for layer in range(gru.num_layers):
            shape = [1, batch, h]
            inputs.append(helper.make_tensor_value_info(f"h0_{layer}", TensorProto.FLOAT, shape))
            outputs.append(helper.make_tensor_value_info(f"hn_{layer}", TensorProto.FLOAT, shape))
    graph = helper.make_graph(nodes, "gru", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def make_runner(runtime, model, threads):
    data = model.SerializeToString()
    if runtime == "onnxruntime":
        import onnxruntime as ort
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        sess = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
        out_name = sess.get_outputs()[0].name
        return lambda feeds: sess.run([out_name], feeds)[0], ort.__version__
    import openvino as ov
    core = ov.Core()
    compiled = core.compile_model(core.read_model(data), "CPU",
                                  {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"})
    request = compiled.create_infer_request()

    def run(feeds):
        request.infer(feeds)
        return request.get_output_tensor(0).data
    return run, ov.__version__


def main():
    p = bench_parser(devices=["cpu"], dtypes=["f32"])
    p.add_argument("--runtime", choices=["onnxruntime", "openvino"], required=True)
    a = p.parse_args()
    a.threads = a.threads or 2
    torch.manual_seed(a.seed)
    torch.set_num_threads(a.threads)
    gru = torch.nn.GRU(a.input_size, a.hidden_size, a.num_layers,
                       bidirectional=a.bidirectional).eval()
    x = torch.randn(a.seq_len, a.batch, a.input_size)
    lengths = None
    feeds = {"x": x.numpy()}
    if a.varlen:
        lo = max(1, (a.seq_len + 1) // 2)
        lengths = torch.randint(lo, a.seq_len + 1, (a.batch,))
        feeds["lengths"] = lengths.numpy().astype(np.int32)
    if a.stream:
        stream_main(a, gru, x)
        return
    model = build_graph(gru, a.seq_len, a.batch, a.varlen)
    run, version = make_runner(a.runtime, model, a.threads)

    # The same numbers as PyTorch, or no timing at all.
    with torch.inference_mode():
        if lengths is None:
            ref = gru(x)[0]
        else:
            packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
            ref = pad_packed_sequence(gru(packed)[0], total_length=a.seq_len)[0]
    got = np.asarray(run(feeds))
    if a.varlen:
        # Past a sequence's length ONNX leaves what the runtime likes; PyTorch pads with 0.
        mask = (np.arange(a.seq_len)[:, None] < lengths.numpy()[None, :])[..., None]
        got = got * mask
    diff = float(np.abs(got - ref.numpy()).max())
    if not diff <= 1e-4:
        sys.exit(f"{a.runtime}: output differs from PyTorch's by {diff:.3e}")

    for _ in range(a.warmup):
        run(feeds)
    times = []
    for _ in range(a.iters):
        t0 = time.perf_counter()
        run(feeds)
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    median = statistics.median(times)
    flops = gru_flops(a)
    r = {
        "impl": a.runtime, "input_size": a.input_size, "hidden_size": a.hidden_size,
        "num_layers": a.num_layers, "bidirectional": a.bidirectional, "seq_len": a.seq_len,
        "batch": a.batch, "varlen": a.varlen, "device": "cpu", "dtype": "f32",
        "threads": a.threads, "iters": a.iters, "median_ms": median, "min_ms": times[0],
        "max_ms": times[-1], "gflops": flops / (median * 1e-3) / 1e9,
        "peak_mem_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "max_abs_diff_vs_torch": diff, "version": version,
    }
    if a.json:
        print(json.dumps(r))
    else:
        print(f"{a.runtime} {version} {a.input_size}/{a.hidden_size}/{a.num_layers}/"
              f"bi={a.bidirectional} T={a.seq_len} B={a.batch} varlen={a.varlen}: median "
              f"{median:.3f} ms (min {times[0]:.3f}, max {times[-1]:.3f}), "
              f"{r['gflops']:.1f} GFLOP/s, max |d| vs torch {diff:.1e}")


def stream_main(a, gru, x):
    """--stream: one frame per `run` call, each layer's state fed back (ONNX Runtime only)."""
    if a.runtime != "onnxruntime" or a.bidirectional or a.varlen:
        sys.exit("--stream: onnxruntime, unidirectional, fixed length only")
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = a.threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(build_graph(gru, 1, a.batch, False, stream=True).SerializeToString(),
                                opts, providers=["CPUExecutionProvider"])
    frames = [x[t:t + 1].numpy() for t in range(a.seq_len)]
    zeros = np.zeros((1, a.batch, a.hidden_size), np.float32)

    def forward():
        h = [zeros] * a.num_layers
        outs = []
        for frame in frames:
            feeds = {"x": frame, **{f"h0_{l}": h[l] for l in range(a.num_layers)}}
            y, *h = sess.run(None, feeds)
            outs.append(y)
        return np.concatenate(outs)

    with torch.inference_mode():
        ref = gru(x)[0].numpy()
    diff = float(np.abs(forward() - ref).max())
    if not diff <= 1e-4:
        sys.exit(f"onnxruntime --stream: output differs from PyTorch's by {diff:.3e}")
    for _ in range(a.warmup):
        forward()
    times = []
    for _ in range(a.iters):
        t0 = time.perf_counter()
        forward()
        times.append((time.perf_counter() - t0) * 1e3)
    median = statistics.median(times)
    r = {
        "impl": "onnxruntime", "input_size": a.input_size, "hidden_size": a.hidden_size,
        "num_layers": a.num_layers, "bidirectional": False, "seq_len": a.seq_len,
        "batch": a.batch, "varlen": False, "stream": True, "frame_us": median * 1e3 / a.seq_len,
        "device": "cpu", "dtype": "f32", "threads": a.threads, "iters": a.iters,
        "median_ms": median, "min_ms": min(times), "max_ms": max(times),
        "gflops": gru_flops(a) / (median * 1e-3) / 1e9,
        "max_abs_diff_vs_torch": diff, "version": ort.__version__,
    }
    print(json.dumps(r) if a.json else f"onnxruntime --stream: {r['frame_us']:.2f} us per frame")


if __name__ == "__main__":
    main()
