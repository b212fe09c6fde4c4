#!/usr/bin/env bash
# Refresh the kept corpus (fuzz/corpus/<target>): run a campaign (fuzz/run.sh, SECONDS per target,
# default 300), then merge what it found with the kept corpus into a minimal set that keeps every
# edge (libFuzzer -merge=1), capped in size, and replace fuzz/corpus/<target> with it.
#
#   fuzz/refresh_corpus.sh [SECONDS] [TARGET...]
#
# CI's short runs start from this corpus, so they begin at the coverage the campaigns reached.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-300}
[ $# -gt 0 ] && shift
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(fuzz_safetensors fuzz_config fuzz_tokenizer_load fuzz_tokenizer_text fuzz_gguf fuzz_cli_numbers)
bash fuzz/run.sh "$secs" "${targets[@]}" || { echo "a target failed: fix it (and add the input to fuzz/regressions) first"; exit 1; }
build=build-fuzz
# Larger inputs are dropped: the kept corpus stays a few hundred KB in all.
declare -A maxlen=([fuzz_gguf]=16384 [fuzz_safetensors]=8192 [fuzz_tokenizer_text]=1024)
for t in "${targets[@]}"; do
  out=$build/merged/$t
  rm -rf "$out" && mkdir -p "$out"
  $build/fuzz/$t -merge=1 -max_len="${maxlen[$t]:-4096}" "$out" fuzz/corpus/$t $build/corpus/$t > $build/$t.merge.log 2>&1
  rm -rf fuzz/corpus/$t && mkdir -p fuzz/corpus/$t && cp "$out"/* fuzz/corpus/$t/
  echo "$t: $(ls fuzz/corpus/$t | wc -l) files, $(du -sk fuzz/corpus/$t | cut -f1) KiB"
done
du -sh fuzz/corpus
