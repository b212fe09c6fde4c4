#!/usr/bin/env bash
# Refresh the kept corpus (fuzz/corpus/<target>): run a campaign (fuzz/run.sh, SECONDS per target,
# default 300), then merge what it found with the kept corpus into a minimal set that keeps every
# edge (libFuzzer -merge=1 -use_counters=0: hit counts are not kept apart), of small inputs
# only, and replace fuzz/corpus/<target> with it.
#
#   fuzz/refresh_corpus.sh [SECONDS] [TARGET...]     (SECONDS 0: merge the last campaign's corpus only)
#
# CI's short runs start from this corpus, so they begin at the coverage the campaigns reached.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-300}
[ $# -gt 0 ] && shift
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(fuzz_safetensors fuzz_config fuzz_tokenizer_load fuzz_tokenizer_text fuzz_gguf fuzz_cli_numbers fuzz_server_request fuzz_state_file fuzz_prefix_record fuzz_grammar)
if [ "$secs" != 0 ]; then
  bash fuzz/run.sh "$secs" "${targets[@]}" || { echo "a target failed: fix it (and add the input to fuzz/regressions) first"; exit 1; }
fi
build=build-fuzz
# Larger inputs are left out (libFuzzer's merge keeps files whole): the kept corpus stays a few
# hundred KB in all, and the short CI runs grow larger inputs from it again.
declare -A maxlen=([fuzz_gguf]=4096 [fuzz_safetensors]=1536 [fuzz_config]=512 [fuzz_tokenizer_load]=768 [fuzz_tokenizer_text]=512)
for t in "${targets[@]}"; do
  out=$build/merged/$t
  small=$build/small/$t
  rm -rf "$out" "$small" && mkdir -p "$out" "$small" fuzz/corpus/$t
  # (the same input in both folders has the same name, its hash: one copy each)
  for d in fuzz/corpus/$t $build/corpus/$t; do
    [ -d "$d" ] || continue
    find "$d" -type f -size -"$((${maxlen[$t]:-4096} + 1))"c -exec cp -f -t "$small" {} +
  done
  $build/fuzz/$t -merge=1 -use_counters=0 -max_len="${maxlen[$t]:-4096}" "$out" "$small" > $build/$t.merge.log 2>&1
  rm -rf fuzz/corpus/$t && mkdir -p fuzz/corpus/$t && cp "$out"/* fuzz/corpus/$t/
  echo "$t: $(ls fuzz/corpus/$t | wc -l) files, $(du -sk fuzz/corpus/$t | cut -f1) KiB"
done
du -sh fuzz/corpus
