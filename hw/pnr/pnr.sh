#!/usr/bin/env bash
# Place and route the core (in pnr/harness.v) on iCE40 parts with yosys + nextpnr-ice40 and
# report what the tools measured: Fmax, logic cells, RAM blocks.
#   hw/pnr/pnr.sh [LANES...]      (default 16 32 64; each on the HX8K and, where it fits, the UP5K)
#   A lane count written tq1-N is the TQ1 core (tq1_decoder.v in front of the core) at N lanes.
set -uo pipefail
cd "$(dirname "$0")"
lanes=("$@")
[ ${#lanes[@]} -eq 0 ] && lanes=(16 32 64)
out=$(mktemp -d)
printf '| lanes | part | logic cells (of) | RAM blocks | Fmax (MHz) |\n| --- | --- | --- | --- | --- |\n'
for n in "${lanes[@]}"; do
  top=pnr_harness src=../rtl/ternary_acc.v
  if [[ $n == tq1-* ]]; then top=pnr_harness_tq1 src="$src ../rtl/tq1_decoder.v"; fi
  bytes=$((${n#tq1-} / 4))
  yosys -q -p "read_verilog $src harness.v; chparam -set BYTES $bytes $top; synth_ice40 -top $top -json $out/h$n.json" >/dev/null 2>&1 || { echo "| $n | - | synthesis failed | | |"; continue; }
  for part in "hx8k --package ct256" "up5k --package sg48"; do
    name=${part%% *}
    if nextpnr-ice40 --$part --json $out/h$n.json --pcf-allow-unconstrained --timing-allow-fail --freq 150 --seed 1 \
         --report $out/r$n$name.json >$out/log$n$name.txt 2>&1; then
      python3 - "$out/r$n$name.json" "$n" "$name" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
u = r["utilization"]
fmax = min(v["achieved"] for v in r["fmax"].values())
print(f'| {sys.argv[2]} | iCE40 {sys.argv[3].upper()} | {u["ICESTORM_LC"]["used"]} ({u["ICESTORM_LC"]["available"]}) | {u["ICESTORM_RAM"]["used"]} | {fmax:.1f} |')
PY
    else
      echo "| $n | iCE40 ${name^^} | does not fit | | |"
    fi
  done
done
rm -rf "$out"
