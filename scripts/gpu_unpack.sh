# Sourced by the GPU scripts: `unpack PATH` prints a runnable path for a binary that was carried
# as PATH or as PATH.xz (unpacked into /tmp; Python's lzma where xz is missing).
unpack() {
  local p=$1 out
  if [ -f "$p" ]; then echo "$p"; return; fi
  if [ -f "$p.xz" ]; then
    out="/tmp/$(basename "$p")"
    xz -dc "$p.xz" >"$out" 2>/dev/null ||
      "${PYTHON:-python3}" -c 'import lzma,sys; sys.stdout.buffer.write(lzma.open(sys.argv[1]).read())' "$p.xz" >"$out"
    chmod +x "$out"; echo "$out"; return
  fi
  echo "$p"
}
