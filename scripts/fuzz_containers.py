#!/usr/bin/env python3
"""Differential fuzz of the checkpoint readers against `torch.load`, by the container's structure.

Each mutant is a `torch.save` file (zip or legacy) written by hand from a random nn.GRU's state
dict, with one or two structural changes drawn from the list below: entries reordered, duplicated,
dropped, renamed, compressed, moved to another folder; storages shared, viewed, transposed,
expanded, cast, mis-sized; storage keys reordered, missing or referenced as two types; and so on.
Then, for every mutant:
  - `torch.load(weights_only=True)` gives the numbers (or refuses the file);
  - `gru convert` extracts the GRU (or refuses the file);
and the two must agree: the same values bit for bit (after the cast `gru` states), or both refuse.
A file `torch.load` refuses but `gru` reads, or a file both read into different numbers, fails
the run (exit 1). A file only `gru` refuses is counted, not failed: refusing is allowed.

    python scripts/fuzz_containers.py --gru target/release/gru [--seed 1] [--count 400]
"""
import argparse
import collections
import io
import os
import pickle
import random
import struct
import subprocess
import sys
import tempfile
import zipfile

import numpy as np
import torch
from safetensors.numpy import load_file

DTYPES = {  # storage class name, numpy dtype, torch dtype
    "float32": ("FloatStorage", np.float32, torch.float32),
    "float64": ("DoubleStorage", np.float64, torch.float64),
    "float16": ("HalfStorage", np.float16, torch.float16),
}
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


class Stor:
    """A storage as the pickle names it: key, storage class, declared element count (and, for
    legacy files, an optional view: (view_key, offset, size))."""

    def __init__(self, key, dtype, numel, view=None):
        self.key, self.dtype, self.numel, self.view = key, dtype, numel, view


class T:
    """A tensor as `torch._utils._rebuild_tensor_v2` rebuilds it."""

    def __init__(self, stor, offset, size, stride):
        self.stor, self.offset, self.size, self.stride = stor, offset, size, stride

    def __reduce__(self):
        return (torch._utils._rebuild_tensor_v2,
                (self.stor, self.offset, tuple(self.size), tuple(self.stride), False,
                 collections.OrderedDict()))


class ZipPickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, Stor):
            return ("storage", getattr(torch, DTYPES[obj.dtype][0]), obj.key, "cpu", obj.numel)
        return None


class LegacyPickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, Stor):
            return ("storage", getattr(torch, DTYPES[obj.dtype][0]), obj.key, "cpu", obj.numel,
                    obj.view)
        return None


class Spec:
    """A checkpoint before it is written: named tensors over storages (key -> dtype, bytes)."""

    def __init__(self, tensors, storages):
        self.tensors = tensors  # list of (name, T)
        self.storages = storages  # key -> [dtype, bytes]
        self.wrap = None  # None, or the key of a training-checkpoint dict holding the state dict

    def obj(self):
        sd = collections.OrderedDict(self.tensors)
        if self.wrap is None:
            return sd
        return {"epoch": 3, self.wrap: sd, "lr": 0.1}


def base_spec(rng, gru):
    tensors, storages = [], {}
    for i, (name, p) in enumerate(gru.state_dict().items()):
        key = str(i)
        a = p.detach().numpy().astype(np.float32)
        storages[key] = ["float32", a.tobytes()]
        stride = [int(s) for s in torch.empty(a.shape).stride()]
        tensors.append((name, T(Stor(key, "float32", a.size), 0, list(a.shape), stride)))
    return Spec(tensors, storages)


def write_zip(entries, path, zip64=False):
    with zipfile.ZipFile(path, "w") as z:
        for name, data, method in entries:
            info = zipfile.ZipInfo(name, date_time=(2026, 1, 1, 0, 0, 0))
            info.compress_type = method
            with z.open(info, "w", force_zip64=zip64) as f:
                f.write(data)


def zip_entries(spec, folder="archive"):
    buf = io.BytesIO()
    ZipPickler(buf, protocol=2).dump(spec.obj())
    stored = zipfile.ZIP_STORED
    entries = [(f"{folder}/data.pkl", buf.getvalue(), stored),
               (f"{folder}/.format_version", b"1", stored),
               (f"{folder}/.storage_alignment", b"64", stored),
               (f"{folder}/byteorder", b"little", stored)]
    for key, (_, data) in spec.storages.items():
        entries.append((f"{folder}/data/{key}", data, stored))
    entries += [(f"{folder}/version", b"3\n", stored),
                (f"{folder}/.data/serialization_id", b"0123456789", stored)]
    return entries


def legacy_bytes(spec, keys=None, records=None, sys_info=None, trailing=b""):
    out = io.BytesIO()
    pickle.dump(LEGACY_MAGIC, out, protocol=2)
    pickle.dump(1001, out, protocol=2)
    pickle.dump(sys_info or {"protocol_version": 1001, "little_endian": True,
                             "type_sizes": {"short": 2, "int": 4, "long": 4}}, out, protocol=2)
    LegacyPickler(out, protocol=2).dump(spec.obj())
    keys = list(spec.storages) if keys is None else keys
    pickle.dump(keys, out, protocol=2)
    for key in keys:
        dtype, data = spec.storages.get(key, ["float32", b""])
        numel = len(data) // np.dtype(DTYPES[dtype][1]).itemsize
        if records and key in records:
            numel = records[key]
        out.write(struct.pack("<q", numel))
        out.write(data)
    out.write(trailing)
    return out.getvalue()


# Spec mutations (the pickle and its storages); each returns a short label.

def m_share(rng, s):
    """All storages in one, each tensor at its offset there (valid: as flattened RNN weights
    are saved). Only float32 storages (a cast one stays apart)."""
    blob, base = b"", {}
    for key, (dtype, data) in list(s.storages.items()):
        if dtype == "float32":
            base[key] = len(blob) // 4
            blob += s.storages.pop(key)[1]
    one = Stor("flat", "float32", len(blob) // 4)
    for _, t in s.tensors:
        t.n = t.stor.numel - t.offset
        if t.stor.key in base:
            t.offset += base[t.stor.key]
            t.stor = one
    s.storages["flat"] = ["float32", blob]
    return "share"


def pick(rng, s, two_d=False):
    cands = [t for _, t in s.tensors if len(t.size) == 2] if two_d else [t for _, t in s.tensors]
    return rng.choice(cands)


def m_transpose(rng, s):
    """A weight stored transposed (column-major strides)."""
    t = pick(rng, s, two_d=True)
    dtype, data = s.storages[t.stor.key]
    a = np.frombuffer(data, np.float32)[t.offset:] if dtype == "float32" else np.zeros(0)
    if t.stride != [t.size[1], 1] or a.size < t.size[0] * t.size[1]:
        return "transpose-skipped"  # an earlier mutation made it something else
    a = a[: t.size[0] * t.size[1]].reshape(t.size)
    key = f"t{rng.randrange(1000)}"
    s.storages[key] = ["float32", np.ascontiguousarray(a.T).tobytes()]
    t.stor, t.offset, t.stride = Stor(key, "float32", a.size), 0, [1, t.size[0]]
    return "transpose"


def m_expand(rng, s):
    """A tensor with stride 0 (one value repeated), or a 1-row weight repeated."""
    t = pick(rng, s)
    key = f"e{rng.randrange(1000)}"
    s.storages[key] = ["float32", np.float32([rng.uniform(-1, 1)] * 3).tobytes()]
    t.stor, t.offset, t.stride = Stor(key, "float32", 3), rng.randrange(3), [0] * len(t.size)
    return "expand"


def m_offset(rng, s):
    """A tensor moved inside a longer storage (valid), or past its end (refused)."""
    t = pick(rng, s)
    dtype, data = s.storages[t.stor.key]
    pad = rng.randrange(0, 9)
    s.storages[t.stor.key] = [dtype, b"\x00\x00\x80\x3f" * pad + data]
    t.stor.numel += pad
    if rng.random() < 0.3:
        t.offset += pad + rng.randrange(1, 5)
        return "offset-past-end"
    t.offset += pad
    return "offset"


def m_cast(rng, s):
    """One storage stored as another float type (the value cast, as .half() saves it)."""
    t = pick(rng, s)
    key = t.stor.key
    if sum(1 for _, u in s.tensors if u.stor is not None and u.stor.key == key) > 1:
        return "cast-skipped"
    dtype = rng.choice(["float64", "float16"])
    a = np.frombuffer(s.storages[key][1], np.float32).astype(DTYPES[dtype][1])
    s.storages[key] = [dtype, a.tobytes()]
    t.stor.dtype = dtype
    return f"cast-{dtype}"


def m_two_types(rng, s):
    """Two references to one storage key, as two storage classes (torch sizes it by the first)."""
    a, b = rng.sample([t for _, t in s.tensors], 2)
    b.stor = Stor(a.stor.key, rng.choice(["float64", "float16"]), a.stor.numel)
    return "two-types"


def m_numel(rng, s):
    """The pickle declares another element count than the storage holds."""
    t = pick(rng, s)
    t.stor.numel += rng.choice([-1, 1, 7])
    return "numel"


def m_same_key(rng, s):
    """Two tensors through one storage key (the first's bytes serve both)."""
    a, b = rng.sample([t for _, t in s.tensors], 2)
    b.stor = a.stor
    b.offset = rng.randrange(0, 3)
    return "same-key"


def m_negative(rng, s):
    t = pick(rng, s)
    t.stride = [-x if x else -1 for x in t.stride]
    return "negative-stride"


def m_size(rng, s):
    """A tensor reshaped (fewer elements: valid storage, invalid GRU), or made 0-d."""
    t = pick(rng, s)
    if rng.random() < 0.5:
        t.size, t.stride = [], []
    else:
        t.size = [max(1, t.size[0] - 1)] + t.size[1:]
    return "resize"


def m_keys(rng, s):
    """Storage keys renamed to arbitrary strings."""
    ren = {}
    for key in list(s.storages):
        new = rng.choice(["x", "w", "0a", "weird key", "ä", "9" * 30]) + str(len(ren))
        ren[key] = new
        s.storages[new] = s.storages.pop(key)
    seen = set()
    for _, t in s.tensors:
        if id(t.stor) not in seen:
            seen.add(id(t.stor))
            t.stor.key = ren[t.stor.key]
    return "keys"


def m_wrap(rng, s):
    s.wrap = rng.choice(["state_dict", "model", "model_state_dict"])
    return "wrapped"


SPEC_MUTATIONS = [m_share, m_transpose, m_expand, m_offset, m_cast, m_two_types, m_numel,
                  m_same_key, m_negative, m_size, m_keys, m_wrap]


# Zip mutations (the entries as written); each returns a label.

def z_reorder(rng, e, ctx):
    rng.shuffle(e)
    return "reorder"


def z_duplicate(rng, e, ctx):
    i = rng.randrange(len(e))
    name, data, m = e[i]
    other = bytes(rng.randrange(256) for _ in range(len(data))) if data else b"x"
    if rng.random() < 0.5:
        e.append((name, other, m))
    else:
        e.insert(0, (name, other, m))
    return "duplicate"


def z_case_twin(rng, e, ctx):
    i = rng.randrange(len(e))
    name, data, m = e[i]
    e.append((name.upper(), data, m))
    return "case-twin"


def z_drop(rng, e, ctx):
    name = e.pop(rng.randrange(len(e)))[0]
    return "drop-" + name.split("/", 1)[1].split("/")[0]


def z_extra(rng, e, ctx):
    folder = e[0][0].split("/")[0]
    where = rng.choice([f"{folder}/extra.txt", "other/data.pkl", f"{folder}/data/99",
                        "other/data/0", "top.txt"])
    e.insert(rng.randrange(len(e) + 1), (where, b"junk", zipfile.ZIP_STORED))
    return "extra-" + where.replace("/", "_")


def z_deflate(rng, e, ctx):
    i = rng.randrange(len(e))
    name, data, _ = e[i]
    e[i] = (name, data, zipfile.ZIP_DEFLATED)
    return "deflate"


def z_byteorder(rng, e, ctx):
    for i, (name, _, m) in enumerate(e):
        if name.endswith("/byteorder"):
            e[i] = (name, rng.choice([b"big", b"middle", b""]), m)
    return "byteorder"


def z_record(rng, e, ctx):
    """A storage record shorter or longer than its tensors need."""
    recs = [i for i, (n, _, _) in enumerate(e) if "/data/" in n]
    i = rng.choice(recs)
    name, data, m = e[i]
    e[i] = (name, data[:-4] if rng.random() < 0.5 else data + b"\0\0\0\0", m)
    return "record-size"


def z_folder(rng, e, ctx):
    new = rng.choice(["model", "a b", "ckpt.v2", "x"])
    if rng.random() < 0.3:  # one entry alone in another folder
        i = rng.randrange(len(e))
        n, d, m = e[i]
        e[i] = (new + "/" + n.split("/", 1)[1], d, m)
        return "folder-one"
    for i, (n, d, m) in enumerate(e):
        e[i] = (new + "/" + n.split("/", 1)[1], d, m)
    return "folder"


def z_nested(rng, e, ctx):
    for i, (n, d, m) in enumerate(e):
        e[i] = ("outer/" + n, d, m)
    return "nested-folder"


def z_zip64(rng, e, ctx):
    ctx["zip64"] = True
    return "zip64"


def z_prefix(rng, e, ctx):
    ctx["prefix"] = rng.choice([b"#!junk\n", b"\0" * 64])
    return "prefix-bytes"


def z_trailing(rng, e, ctx):
    ctx["trailing"] = rng.choice([b"\0" * 10, b"PK\x05\x06" + b"\0" * 18, b"tail"])
    return "trailing-bytes"


ZIP_MUTATIONS = [z_reorder, z_duplicate, z_case_twin, z_drop, z_extra, z_deflate, z_byteorder,
                 z_record, z_folder, z_nested, z_zip64, z_prefix, z_trailing]


def legacy_mutant(rng, s):
    """Writes a legacy file with one legacy-only change; returns (bytes, label)."""
    kind = rng.choice(["plain", "key-order", "record-numel", "key-missing", "key-extra",
                       "views", "view-reused", "trailing", "big-endian", "long8"])
    keys = list(s.storages)
    if kind == "key-order":
        rng.shuffle(keys)
        return legacy_bytes(s, keys=keys), kind
    if kind == "record-numel":
        k = rng.choice(keys)
        n = len(s.storages[k][1]) // np.dtype(DTYPES[s.storages[k][0]][1]).itemsize
        return legacy_bytes(s, records={k: n + rng.choice([-1, 1])}), kind
    if kind == "key-missing":
        keys.pop(rng.randrange(len(keys)))
        return legacy_bytes(s, keys=keys), kind
    if kind == "key-extra":
        return legacy_bytes(s, keys=keys + ["nope"]), kind
    if kind in ("views", "view-reused"):
        # Every tensor a view of one root storage, as torch < 1.6 saved views of one buffer.
        m_share(rng, s)
        for j, (_, t) in enumerate(s.tensors):
            if t.stor.key != "flat":
                continue
            root, n = t.stor, t.n
            vk = "v0" if kind == "view-reused" and j < 2 else f"v{j}"
            t.stor = Stor(root.key, "float32", root.numel, (vk, t.offset, n))
            t.offset = 0
        return legacy_bytes(s), kind
    if kind == "trailing":
        return legacy_bytes(s, trailing=b"\x80\x02junk"), kind
    if kind == "big-endian":
        return legacy_bytes(s, sys_info={"protocol_version": 1001, "little_endian": False,
                                         "type_sizes": {"short": 2, "int": 4, "long": 4}}), kind
    if kind == "long8":
        return legacy_bytes(s, sys_info={"protocol_version": 1001, "little_endian": True,
                                         "type_sizes": {"short": 2, "int": 4, "long": 8}}), kind
    return legacy_bytes(s), kind


def make_mutant(rng, path):
    layers = rng.choice([1, 2])
    gru = torch.nn.GRU(rng.choice([2, 3]), rng.choice([3, 4]), layers,
                       bias=rng.random() < 0.8, bidirectional=rng.random() < 0.5)
    s = base_spec(rng, gru)
    labels = []
    legacy = rng.random() < 0.35
    for m in rng.sample(SPEC_MUTATIONS, rng.choice([0, 1, 1, 2])):
        if legacy and m is m_share:
            continue
        labels.append(m(rng, s))
    if legacy:
        data, label = legacy_mutant(rng, s)
        with open(path, "wb") as f:
            f.write(data)
        return ["legacy", label] + labels
    e, ctx = zip_entries(s), {}
    for m in rng.sample(ZIP_MUTATIONS, rng.choice([0, 1, 1, 2])):
        labels.append(m(rng, e, ctx))
    write_zip(e, path, ctx.get("zip64", False))
    if "prefix" in ctx or "trailing" in ctx:
        with open(path, "rb") as f:
            body = f.read()
        with open(path, "wb") as f:
            f.write(ctx.get("prefix", b"") + body + ctx.get("trailing", b""))
    return ["zip"] + labels


GRU_PARAM = ("weight_ih_l", "weight_hh_l", "bias_ih_l", "bias_hh_l")


def torch_gru(path):
    """The GRU's tensors as torch.load gives them, or the reason there is none."""
    import warnings
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any refusal counts
        return None, f"torch.load: {type(e).__name__}: {str(e).splitlines()[0][:100]}"
    if isinstance(obj, dict) and not any(k.startswith(GRU_PARAM) for k in obj):
        subs = [v for v in obj.values() if isinstance(v, dict)]
        obj = subs[0] if len(subs) == 1 else obj
    sd = {k: v for k, v in obj.items() if isinstance(k, str) and k.startswith(GRU_PARAM)}
    try:
        w = sd["weight_hh_l0"]
        hidden, inp = w.shape[1], sd["weight_ih_l0"].shape[1]
        layers = 1 + max(int(k.split("_l")[1].split("_")[0]) for k in sd)
        gru = torch.nn.GRU(inp, hidden, layers, bias="bias_ih_l0" in sd,
                           bidirectional="weight_hh_l0_reverse" in sd)
        gru.load_state_dict(sd, strict=True)
    except Exception as e:  # noqa: BLE001
        return None, f"not a GRU: {type(e).__name__}: {str(e).splitlines()[0][:100]}"
    for v in sd.values():
        if not torch.isfinite(v).all():
            return None, "non-finite weights"
    return sd, None


def gru_gru(gru, path, out):
    if os.path.exists(out):
        os.remove(out)
    r = subprocess.run([gru, "convert", "--weights", path, "--out", out],
                       capture_output=True, text=True)
    if r.returncode != 0:
        lines = r.stderr.strip().splitlines() or ["(no message)"]
        if r.returncode not in (1, 2) or len(lines) > 1 or "panicked" in r.stderr:
            return None, "CRASH " + r.stderr.strip()[:300]
        return None, lines[0][:160]
    return load_file(out), None


def compare(ref, got):
    if set(ref) != set(got):
        return f"names differ: torch {sorted(ref)} gru {sorted(got)}"
    for k, v in ref.items():
        g = got[k]
        want = v.to(torch.from_numpy(g).dtype).numpy()
        if want.shape != g.shape:
            return f"{k}: shape {g.shape} vs torch {want.shape}"
        if want.tobytes() != g.tobytes():
            d = np.abs(want.astype(np.float64) - g.astype(np.float64)).max()
            return f"{k}: values differ (max |d| {d:.3g})"
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gru", default="target/release/gru")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--count", type=int, default=400)
    ap.add_argument("--keep", help="keep the failing mutants in this folder")
    a = ap.parse_args()
    rng = random.Random(a.seed)
    torch.manual_seed(a.seed)
    stats = collections.Counter()
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(a.count):
            path = os.path.join(tmp, f"m{i}.pt")
            labels = make_mutant(rng, path)
            ref, why_t = torch_gru(path)
            got, why_g = gru_gru(a.gru, path, os.path.join(tmp, "out.safetensors"))
            tag = " ".join(labels)
            if why_g and why_g.startswith("CRASH"):
                verdict = "CRASH"
            elif ref is None and got is None:
                verdict = "both refuse"
            elif ref is None:
                verdict = "FAIL: gru reads what torch refuses"
                why_g = why_t
            elif got is None:
                verdict = "gru refuses"
            else:
                diff = compare(ref, got)
                verdict = "same" if diff is None else "FAIL: different numbers"
                why_g = diff
            stats[verdict] += 1
            if verdict.startswith(("FAIL", "CRASH")):
                failures.append((i, tag, verdict, why_g))
                if a.keep:
                    os.makedirs(a.keep, exist_ok=True)
                    os.replace(path, os.path.join(a.keep, f"m{i}.pt"))
            elif verdict == "gru refuses":
                print(f"  m{i} [{tag}] gru refuses, torch reads: {why_g}")
    for i, tag, verdict, why in failures:
        print(f"m{i} [{tag}] {verdict}: {why}")
    print(" ".join(f"{k}: {v}" for k, v in sorted(stats.items())), f"(seed {a.seed})")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
