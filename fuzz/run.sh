#!/usr/bin/env bash
# Build the libFuzzer targets and run each for SECONDS (default 60) from seed corpora made
# from the fixtures. Usage: fuzz/run.sh [SECONDS] [TARGET...]. Prints executions per target.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
shift || true
build=build-fuzz
cmake -S . -B $build -DMMFREE_FUZZ=ON -DMMFREE_BUILD_TESTS=OFF -DMMFREE_BUILD_EXAMPLES=ON \
  -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build $build -j"$(nproc)" >/dev/null
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(fuzz_safetensors fuzz_config fuzz_tokenizer_load fuzz_tokenizer_text fuzz_gguf fuzz_cli_numbers)

# Seeds: real files of each kind, small enough to mutate quickly.
seeds=$build/seeds
rm -rf "$seeds" && mkdir -p "$seeds"/{safetensors,config,tokenizer,text,gguf,numbers}
data=tests/data/kjv-tiny
cp $data/golden.safetensors "$seeds/safetensors/"
build/examples/mmfree-cli logits --model $data --ids 1,2 --out "$seeds/safetensors/small.safetensors" 2>/dev/null ||
  $build/examples/mmfree-cli logits --model $data --ids 1,2 --out "$seeds/safetensors/small.safetensors"
cp $data/config.json "$seeds/config/"
echo '{"hidden_size":96,"num_hidden_layers":2,"vocab_size":777,"use_lower_bound":false}' > "$seeds/config/b.json"
printf '%s' '{"model":{"type":"BPE","vocab":{"<unk>":0,"<s>":1,"a":2,"b":3,"ab":4},"merges":["a b"],"byte_fallback":true,"unk_token":"<unk>"},"added_tokens":[{"id":1,"content":"<s>","special":true}],"normalizer":{"type":"Sequence","normalizers":[{"type":"Prepend","prepend":"_"},{"type":"Replace","pattern":{"String":" "},"content":"_"}]},"decoder":{"type":"Sequence","decoders":[{"type":"ByteFallback"},{"type":"Fuse"},{"type":"Strip","content":" ","start":1,"stop":0}]}}' > "$seeds/tokenizer/t.json"
head -c 2000 tests/data/kjv-val.txt > "$seeds/text/kjv.txt"
printf 'na\xc3\xafve caf\xc3\xa9 <s> \xf0\x9f\xa6\x99 \xff' > "$seeds/text/mixed.txt"
$build/examples/mmfree-cli init-random --preset tiny --out "$seeds/gguf/tiny.gguf" 2>/dev/null
printf '1,5,9' > "$seeds/numbers/a"; printf '0.95' > "$seeds/numbers/b"; printf -- '-3' > "$seeds/numbers/c"

declare -A corpus=([fuzz_safetensors]=safetensors [fuzz_config]=config [fuzz_tokenizer_load]=tokenizer
                   [fuzz_tokenizer_text]=text [fuzz_gguf]=gguf [fuzz_cli_numbers]=numbers)
declare -A dict=([fuzz_config]=fuzz/json.dict [fuzz_tokenizer_load]=fuzz/json.dict [fuzz_safetensors]=fuzz/json.dict
                 [fuzz_gguf]=fuzz/gguf.dict)
for t in "${targets[@]}"; do
  work=$build/corpus/$t
  mkdir -p "$work"
  args=(-max_total_time="$secs" -max_len=65536 -timeout=20 -rss_limit_mb=4096 -print_final_stats=1)
  [ -n "${dict[$t]:-}" ] && args+=(-dict="${dict[$t]}")
  echo "== $t for ${secs}s"
  mkdir -p $build/artifacts
  set +e
  $build/fuzz/$t "${args[@]}" -artifact_prefix=$build/artifacts/ "$work" "$seeds/${corpus[$t]}" > $build/$t.log 2>&1
  rc=$?
  set -e
  grep -E "stat::number_of_executed_units|ERROR|SUMMARY|Test unit written" $build/$t.log || true
  [ $rc -eq 0 ] || { echo "$t FAILED (log: $build/$t.log)"; tail -40 $build/$t.log; exit 1; }
done
