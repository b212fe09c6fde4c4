#!/usr/bin/env bash
# Synthesise the core with yosys at several lane counts and report cells, LUTs and FFs.
# --check: fail if any netlist contains a multiplier cell. Usage: hw/synth.sh [--check]
set -euo pipefail
cd "$(dirname "$0")"
check=${1:-}
out=$(mktemp -d)
printf '| lanes | generic cells | of which $mul | Xilinx LUTs | Xilinx FFs | Xilinx CARRY4 | Xilinx DSP48 |\n'
printf '| --- | --- | --- | --- | --- | --- | --- |\n'
for bytes in 4 16 64; do
  lanes=$((bytes * 4))
  yosys -q -p "read_verilog rtl/ternary_acc.v; chparam -set BYTES $bytes ternary_acc; synth -top ternary_acc; tee -o $out/g$bytes.txt stat" >/dev/null
  yosys -q -p "read_verilog rtl/ternary_acc.v; chparam -set BYTES $bytes ternary_acc; synth_xilinx -top ternary_acc -flatten; tee -o $out/x$bytes.txt stat" >/dev/null
  cells=$(awk '/Number of cells:/ {print $4; exit}' $out/g$bytes.txt)
  muls=$( (grep -Ei '\$(mul|macc)|DSP48|MULT' $out/g$bytes.txt || true) | awk '{s+=$2} END {print s+0}')
  lut=$(awk '/LUT[1-6] / {s+=$2} END {print s+0}' $out/x$bytes.txt)
  ff=$(awk '/FD[RSCP]E? / {s+=$2} END {print s+0}' $out/x$bytes.txt)
  carry=$(awk '/CARRY4 / {s+=$2} END {print s+0}' $out/x$bytes.txt)
  dsp=$(awk '/DSP48/ {s+=$2} END {print s+0}' $out/x$bytes.txt)
  printf '| %d | %s | %s | %s | %s | %s | %s |\n' $lanes "$cells" "$muls" "$lut" "$ff" "$carry" "$dsp"
  if [ "$check" = "--check" ] && { [ "$muls" != "0" ] || [ "$dsp" != "0" ]; }; then
    echo "multiplier cells found at $lanes lanes" >&2
    exit 1
  fi
done
rm -rf "$out"
