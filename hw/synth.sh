#!/usr/bin/env bash
# Synthesise the core with yosys at several lane counts and report cells, LUTs and FFs.
# --check: fail if any netlist contains a multiplier (and skip generic synth, whose cell count
#          is only reported). Usage: hw/synth.sh [--check]
#          hw/synth.sh --check-module FILE.v TOP   (the same check on another module)
#
# Multipliers are counted in the elaborated netlist (hierarchy, proc, flatten: before any
# optimisation or techmap), where every `*`, `/`, `%` and `**` is still a $mul, $div, $mod or
# $pow cell. Generic synth's final netlist has already mapped them to gates, so a count there
# could never fail.
set -euo pipefail
cd "$(dirname "$0")"
check=${1:-}
out=$(mktemp -d)
coarse_muls() {  # FILE TOP [chparam command]: multiplier cells as elaborated
  yosys -q -p "read_verilog $1; ${3:-} hierarchy -top $2; proc; flatten; opt_clean; tee -o $out/coarse.txt stat" >/dev/null
  (grep -E '\$(mul|div|mod|divfloor|modfloor|pow)\b' $out/coarse.txt || true) | awk '{s+=$2} END {print s+0}'
}
if [ "$check" = "--check-module" ]; then
  n=$(coarse_muls "$2" "$3")
  echo "$3: $n multiplier cells as elaborated"
  rm -rf "$out"
  [ "$n" = "0" ]
  exit
fi
printf '| lanes | generic cells | multipliers (elaborated) | Xilinx LUTs | Xilinx FFs | Xilinx CARRY4 | Xilinx DSP48 |\n'
printf '| --- | --- | --- | --- | --- | --- | --- |\n'
for bytes in 4 16 64; do
  lanes=$((bytes * 4))
  cells=-
  if [ "$check" != "--check" ]; then
    yosys -q -p "read_verilog rtl/ternary_acc.v; chparam -set BYTES $bytes ternary_acc; synth -top ternary_acc; tee -o $out/g$bytes.txt stat" >/dev/null
    cells=$(awk '/Number of cells:/ {print $4; exit}' $out/g$bytes.txt)
  fi
  yosys -q -p "read_verilog rtl/ternary_acc.v; chparam -set BYTES $bytes ternary_acc; synth_xilinx -top ternary_acc -flatten; tee -o $out/x$bytes.txt stat" >/dev/null
  muls=$(coarse_muls rtl/ternary_acc.v ternary_acc "chparam -set BYTES $bytes ternary_acc;")
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
