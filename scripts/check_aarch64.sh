#!/usr/bin/env bash
# The CPU kernel on aarch64 Linux, from this x86-64 machine: a cross build of gru-core whose NEON
# microkernel the codegen guard checks, then under qemu-user (correctness only, not speed)
# gru-core's unit tests (every tile at the NEON and scalar levels against an exact product) and,
# at both levels, the reference cases against PyTorch and the edge-shape sweep on 1 and 3 threads.
# Installs what it needs (rust target, cross gcc, qemu-user-static) when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=aarch64-unknown-linux-gnu
rustup target add "$TARGET" >/dev/null
rustup component add llvm-tools >/dev/null 2>&1 || true
if ! command -v aarch64-linux-gnu-gcc >/dev/null || ! command -v qemu-aarch64-static >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc-aarch64-linux-gnu qemu-user-static >/dev/null
  else
    echo "check_aarch64: needs gcc-aarch64-linux-gnu and qemu-user-static (apt)" >&2
    exit 1
  fi
fi
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64-static -L /usr/aarch64-linux-gnu"
# Release: the GEMM crate candle uses does not build for aarch64 in debug (its f16 assembly).
cargo build --release -p gru-core --target "$TARGET"
python3 scripts/check_codegen.py --arch aarch64 "target/$TARGET/release/libgru_core.rlib"
cargo test --release -p gru-core --lib --target "$TARGET"
# (The child test directly: the parent's child processes would not go through qemu.)
for level in scalar baseline; do
  GRU_CPU_LEVEL=$level cargo test --release --target "$TARGET" --test cpu_levels -- \
    level_child_runs_the_cases_and_the_sweep --exact --ignored
done
# Quantized GRUs against PyTorch's (x86) numbers: the int8 dot-product tiles (`sdot`: qemu's CPU
# has them) and the NEON fp16 loop, then the portable loops.
cargo test --release --target "$TARGET" --test quantized
GRU_CPU_LEVEL=scalar cargo test --release --target "$TARGET" --test quantized
