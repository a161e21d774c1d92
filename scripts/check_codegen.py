#!/usr/bin/env python3
"""The codegen guard of the CPU kernel: disassembles a build and fails unless every SIMD level's
microkernel is made of the instructions its source names.

    scripts/check_codegen.py target/release/gru                       # an x86-64 binary
    scripts/check_codegen.py --arch aarch64 target/aarch64-unknown-linux-gnu/release/libgru_core.rlib

Checks (x86-64):
  - no function of `gru_core::cpu` holds a gather or scatter (an autovectorizer once spread a
    kernel's accumulators over gathers and scatters: 20-60x slower on AVX-512 hosts), nor calls
    libm's software `fma`;
  - each level's microkernel entry exists and its multiply-adds are that level's: AVX-512 zmm
    FMAs, AVX2 ymm FMAs (and no zmm), SSE2 xmm multiplies and adds (no AVX, no FMA); none calls
    anything but the panics of failed bounds checks (its tile, register rows and intrinsics
    must be inlined whole);
  - the gate pass of a step (`time_loop::advance`) is vectorized at each level's width, f32 and
    f64 (no libm `exp`/`tanh` per value);
  - the quantized int8 tiles hold `vpmaddubsw ymm`, the min/max of their inputs `vminps ymm`.
Checks (aarch64): the NEON entries hold `fmla v.4s` (f32) and `fmla v.2d` (f64), the gate pass
`fdiv v.4s` (f32) and `fdiv v.2d` (f64), the quantized int8 tiles `sdot v.4s`.
Exits 1 with one line per failure.
"""
import argparse
import os
import re
import shutil
import subprocess
import sys

MK = "gru_core::cpu::microkernel::"


def objdump() -> str:
    # rustup's llvm-tools (`rustup component add llvm-tools`) first: it reads every target.
    sysroot = subprocess.run(["rustc", "--print", "sysroot"], capture_output=True, text=True).stdout.strip()
    for triple in ("x86_64-unknown-linux-gnu", "aarch64-unknown-linux-gnu"):
        p = os.path.join(sysroot, "lib", "rustlib", triple, "bin", "llvm-objdump")
        if os.access(p, os.X_OK):
            return p
    p = shutil.which("llvm-objdump")
    if p:
        return p
    sys.exit("check_codegen: no llvm-objdump: run `rustup component add llvm-tools`")


def functions(path: str) -> dict:
    """Function name (demangled, hash dropped) -> instruction lines; names seen twice (generic
    copies, several codegen units) keep every copy's lines, each copy as its own entry."""
    out = subprocess.run(
        [objdump(), "-d", "-r", "--demangle", "--no-show-raw-insn", path],
        capture_output=True, text=True, check=True,
    ).stdout
    funcs: dict = {}
    current = None
    head = re.compile(r"^[0-9a-f]+ <(.*)>:$")
    for line in out.splitlines():
        m = head.match(line)
        if m:
            name = re.sub(r"::h[0-9a-f]{16}( \(\.llvm\.\d+\))?$", "", m.group(1))
            current = []
            funcs.setdefault(name, []).append(current)
        elif current is not None and line.strip():
            current.append(line.strip())
    return funcs


def check_x86(funcs: dict) -> list:
    errors = []
    gather = re.compile(r"\bv(p)?(gather|scatter)\w*")
    fma_call = re.compile(r"call.*<(fmaf?|__fmaf?)(@plt)?>")
    for name, copies in funcs.items():
        if "gru_core::cpu::" not in name:
            continue
        for body in copies:
            g = [i for i in body if gather.search(i)]
            if g:
                errors.append(f"{name}: {len(g)} gather/scatter instructions (e.g. `{g[0]}`)")
            if any(fma_call.search(i) for i in body):
                errors.append(f"{name}: calls libm's software fma")
    wants = [
        # entry, must match, must not match
        ("x86_avx512::run_f32", r"vfmadd\d+ps\s.*zmm", None),
        ("x86_avx512::run_f64", r"vfmadd\d+pd\s.*zmm", None),
        ("x86_avx2::run_f32", r"vfmadd\d+ps\s.*ymm", r"zmm"),
        ("x86_avx2::run_f64", r"vfmadd\d+pd\s.*ymm", r"zmm"),
        ("x86_sse2::run_f32", r"\bmulps\s", r"\bv\w+\s.*[xyz]mm"),
        ("x86_sse2::run_f64", r"\bmulpd\s", r"\bv\w+\s.*[xyz]mm"),
        # The gate pass (sigmoid, tanh: a polynomial exp) of one step, in each level's build.
        ("gru_core::cpu::time_loop::advance::avx512", r"vfmadd\d+ps\s.*zmm", None),
        ("gru_core::cpu::time_loop::advance::avx2", r"vfmadd\d+ps\s.*ymm", r"zmm"),
        # Its f64 copy (f64 models, an f32 model's wide steps): the exp polynomial's FMAs and
        # the gates' divisions at the level's width (libm's exp and tanh, one call per value,
        # leave no packed f64 FMA: calls through the GOT show no name to check).
        ("gru_core::cpu::time_loop::advance::avx512", r"vfmadd\d+pd\s.*zmm", None),
        ("gru_core::cpu::time_loop::advance::avx512", r"vdivpd\s.*zmm", None),
        ("gru_core::cpu::time_loop::advance::avx2", r"vfmadd\d+pd\s.*ymm", r"zmm"),
        ("gru_core::cpu::time_loop::advance::avx2", r"vdivpd\s.*ymm", r"zmm"),
        ("gru_core::cpu::time_loop::advance", r"\bdivpd\s", None),
        # The quantized int8 tiles and the min and max of their inputs.
        ("gru_core::quantized::int8::avx2::run", r"vpmaddubsw\s.*ymm", r"zmm"),
        ("gru_core::quantized::input::row_min_max_avx2", r"vminps\s.*ymm", None),
    ]
    errors += check_entries(funcs, wants)
    return errors


def check_entries(funcs: dict, wants: list) -> list:
    errors = []
    for entry, want, never in wants:
        name = entry if entry.startswith("gru_core::") else MK + entry
        # (An entry's closures count as its body: a tile loop may stay a closure of its own.)
        copies = [b for f, bodies in funcs.items()
                  if f == name or (f.startswith(name + "::") and "closure" in f) for b in bodies]
        if not copies:
            errors.append(f"{name}: not in the build (no explicit microkernel at this level)")
            continue
        # (Generic functions have a copy per float type: one of them must show the level.)
        if not any(any(re.search(want, i) for i in body) for body in copies):
            errors.append(f"{name}: no instruction matching /{want}/")
        for body in copies:
            if never:
                bad = [i for i in body if re.search(never, i)]
                if bad:
                    errors.append(f"{name}: instructions of another level (e.g. `{bad[0]}`)")
            if name.startswith(MK):
                errors += [f"{name}: calls `{c}` (its tile must be inlined whole)"
                           for c in sorted(set(calls_in(name, body)))]
    return errors


# What an entry may call: the panics of failed checks (cold paths), nothing else.
COLD = re.compile(r"panic|slice_index|index_fail|unwrap_failed|expect_failed|assert_failed|"
                  r"slice_end_index|slice_start_index")


def calls_in(name: str, body: list) -> list:
    """The functions `body` calls, other than panics. In a linked binary a direct call names its
    target (`call 0x... <f>`); calls through the GOT (`call *x(%rip)`) go to other crates' symbols,
    which the tile never needs but its bounds-check panics do. In an unlinked object (`bl`) the
    target is in the relocation line that follows."""
    out = []
    for i, line in enumerate(body):
        if re.search(r"\bcall", line):
            m = re.search(r"<([^>]+)>", line)
            if m and "(%rip)" not in line and not m.group(1).startswith(name + "::"):
                target = re.sub(r"::h[0-9a-f]{16}.*", "", m.group(1))
                if not COLD.search(target):
                    out.append(target)
        elif re.search(r"R_AARCH64_(CALL26|JUMP26)", line):
            target = line.split()[-1]
            if not COLD.search(target):
                out.append(target)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("build", help="the release `gru` binary, or gru-core's rlib")
    ap.add_argument("--arch", choices=["x86_64", "aarch64"], default="x86_64")
    args = ap.parse_args()
    funcs = functions(args.build)
    if args.arch == "x86_64":
        errors = check_x86(funcs)
    else:
        errors = check_entries(funcs, [
            ("aarch64_neon::run_f32", r"\bfmla\s+v\d+\.4s", None),
            ("aarch64_neon::run_f64", r"\bfmla\s+v\d+\.2d", None),
            # The gate pass, f32 and f64 (inlined into the time loop's member closure here).
            ("gru_core::cpu::time_loop::run_stack", r"\bfdiv\s+v\d+\.4s", None),
            ("gru_core::cpu::time_loop::run_stack", r"\bfdiv\s+v\d+\.2d", None),
            ("gru_core::quantized::int8::sdot::run", r"\bsdot\s+v\d+\.4s", None),
        ])
    for e in errors:
        print(f"codegen: {e}")
    n = sum(1 for name in funcs if "gru_core::cpu::" in name)
    if errors:
        print(f"codegen check FAILED: {len(errors)} problems in {args.build} ({args.arch})")
        sys.exit(1)
    print(f"codegen check passed: {args.build} ({args.arch}), {n} functions of gru_core::cpu")


if __name__ == "__main__":
    main()
