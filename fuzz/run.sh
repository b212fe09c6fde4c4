#!/usr/bin/env bash
# Fuzz campaigns: build the libFuzzer targets (clang) and run every one of them for SECONDS each
# (default 60; --long: 600, the campaign to run before landing a change that touches a parser) on
# all cores (MMFREE_FUZZ_JOBS, default nproc), starting from the kept corpus (fuzz/corpus/<target>)
# plus seeds made from the fixtures.
#
#   fuzz/run.sh [SECONDS | --long] [TARGET...]
#
# Every target runs even when another fails. The summary table gives, per target: executions,
# coverage (edges), the size of the corpus it ended with, and findings (crash, leak, timeout and
# out-of-memory inputs, saved under build-fuzz/artifacts/). The exit status is non-zero if any
# target failed. The kept corpus in the repository is not modified: fuzz/refresh_corpus.sh does that.
set -uo pipefail
cd "$(dirname "$0")/.."
secs=60
jobs=${MMFREE_FUZZ_JOBS:-$(nproc)}
if [ "${1:-}" = "--long" ]; then secs=600; shift; elif [[ "${1:-}" =~ ^[0-9]+$ ]]; then secs=$1; shift; fi
all=(fuzz_safetensors fuzz_config fuzz_tokenizer_load fuzz_tokenizer_text fuzz_gguf fuzz_cli_numbers fuzz_server_request fuzz_state_file fuzz_prefix_record fuzz_grammar)
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=("${all[@]}")

build=build-fuzz
# Seeds are made with mmfree-cli: the one MMFREE_CLI names (CI passes the suite's own, which saves
# compiling it again with clang), else one built here beside the targets.
cli=${MMFREE_CLI:-}
if [ -n "$cli" ] && [ -x "$cli" ]; then with_cli=OFF; else with_cli=ON; cli=$build/cli/mmfree-cli; fi
cmake -S . -B $build -DMMFREE_FUZZ=ON -DMMFREE_BUILD_TESTS=OFF -DMMFREE_BUILD_EXAMPLES=OFF -DMMFREE_BUILD_HW=OFF \
  -DMMFREE_BUILD_PYTHON=OFF -DMMFREE_BUILD_CLI=$with_cli -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  >/dev/null || exit 1
cmake --build $build -j"$(nproc)" >/dev/null || exit 1

# Seeds: real files of each kind, small enough to mutate quickly.
seeds=$build/seeds
rm -rf "$seeds" && mkdir -p "$seeds"/{fuzz_safetensors,fuzz_config,fuzz_tokenizer_load,fuzz_tokenizer_text,fuzz_gguf,fuzz_cli_numbers,fuzz_server_request,fuzz_state_file,fuzz_prefix_record,fuzz_grammar}
data=tests/data/kjv-tiny
cp $data/golden.safetensors "$seeds/fuzz_safetensors/"
"$cli" logits --model $data --ids 1,2 --out "$seeds/fuzz_safetensors/small.safetensors" 2>/dev/null
cp $data/config.json "$seeds/fuzz_config/"
echo '{"hidden_size":96,"num_hidden_layers":2,"vocab_size":777,"use_lower_bound":false}' > "$seeds/fuzz_config/b.json"
printf '%s' '{"model":{"type":"BPE","vocab":{"<unk>":0,"<s>":1,"a":2,"b":3,"ab":4},"merges":["a b"],"byte_fallback":true,"unk_token":"<unk>"},"added_tokens":[{"id":1,"content":"<s>","special":true}],"normalizer":{"type":"Sequence","normalizers":[{"type":"Prepend","prepend":"_"},{"type":"Replace","pattern":{"String":" "},"content":"_"}]},"decoder":{"type":"Sequence","decoders":[{"type":"ByteFallback"},{"type":"Fuse"},{"type":"Strip","content":" ","start":1,"stop":0}]}}' > "$seeds/fuzz_tokenizer_load/t.json"
head -c 2000 tests/data/kjv-val.txt > "$seeds/fuzz_tokenizer_text/kjv.txt"
printf 'na\xc3\xafve caf\xc3\xa9 <s> \xf0\x9f\xa6\x99 \xff' > "$seeds/fuzz_tokenizer_text/mixed.txt"
"$cli" init-random --preset tiny --out "$seeds/fuzz_gguf/tiny.gguf" 2>/dev/null
s=$seeds/fuzz_server_request
printf '\x00{"prompt":"In the beginning","max_tokens":16,"temperature":0.7,"top_k":40,"top_p":0.9,"min_p":0.05,"seed":3,"stop":["\\n","LORD"],"stream":true,"stream_options":{"include_usage":true},"return_tokens":true}' > $s/a
printf '\x00{"prompt":[1,1142,333],"max_tokens":0,"n":1,"echo":false}' > $s/b
printf '\x01{"content":"In the beginning","add_special":false}' > $s/c
printf '\x02{"tokens":[1,1142,333,2693]}' > $s/d
printf '\x03ab|LORD|the\nIn the beginning God created the heaven and the earth. The LORD' > $s/e
"$cli" generate --model $data --ids 1,2 -n 2 --print-ids --no-stats --save-state "$seeds/fuzz_state_file/a.state" >/dev/null 2>&1
g=$seeds/fuzz_grammar
{ cat examples/grammars/json.gbnf; printf '\0{"a": [1, "x\\u00e9"], "b": null}'; } > $g/json
{ cat examples/grammars/verse.schema.json; printf '\0{"book": "Genesis", "chapter": 1, "words": ["a"], "holy": true}'; } > $g/schema
{ cat examples/grammars/yes-no.gbnf; printf '\0 no, because it is so.'; } > $g/yesno
printf 'root ::= [\xce\xb1-\xcf\x89]+ "\\u00e9" . ( "x" | [^a-c] ){2,3}\0\xce\xb1\xc3\xa9!xd' > $g/unicode
printf '1,5,9' > "$seeds/fuzz_cli_numbers/a"; printf '0.95' > "$seeds/fuzz_cli_numbers/b"; printf -- '-3' > "$seeds/fuzz_cli_numbers/c"

declare -A dict=([fuzz_config]=fuzz/json.dict [fuzz_tokenizer_load]=fuzz/json.dict [fuzz_safetensors]=fuzz/json.dict
                 [fuzz_gguf]=fuzz/gguf.dict [fuzz_server_request]=fuzz/json.dict [fuzz_grammar]=fuzz/json.dict)
# Inputs past these sizes explore nothing new and run slowly (a 64 KiB text costs ~100x a 1 KiB one).
declare -A maxlen=([fuzz_tokenizer_text]=1024 [fuzz_cli_numbers]=256 [fuzz_server_request]=4096 [fuzz_grammar]=2400)
mkdir -p $build/artifacts
summary=$build/summary.txt
printf '| target | seconds | runs | coverage (edges) | corpus files | findings |\n| --- | --- | --- | --- | --- | --- |\n' > $summary
failed=0
for t in "${targets[@]}"; do
  work=$build/corpus/$t
  rm -rf "$work" && mkdir -p "$work"
  [ -d fuzz/corpus/$t ] && cp fuzz/corpus/$t/* "$work/" 2>/dev/null
  arts=$build/artifacts/$t
  rm -rf "$arts" && mkdir -p "$arts"
  args=(-max_total_time="$secs" -max_len="${maxlen[$t]:-65536}" -timeout=20 -rss_limit_mb=4096 -print_final_stats=1
        -artifact_prefix="$arts/")
  # Every core fuzzes the target (libFuzzer's fork mode: jobs merged into one corpus), and a
  # failing input is saved and the campaign goes on, so one run reports every finding.
  [ "$jobs" -gt 1 ] && args+=(-fork="$jobs" -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1)
  [ -n "${dict[$t]:-}" ] && args+=(-dict="${dict[$t]}")
  echo "== $t for ${secs}s"
  $build/fuzz/$t "${args[@]}" "$work" "$seeds/$t" > $build/$t.log 2>&1
  rc=$?
  runs=$(grep -oE 'stat::number_of_executed_units: [0-9]+' $build/$t.log | grep -oE '[0-9]+$' | tail -1)
  [ -z "$runs" ] && runs=$(grep -oE '^#[0-9]+' $build/$t.log | tail -1 | tr -d '#')
  cov=$(grep -oE 'cov: [0-9]+' $build/$t.log | tail -1 | grep -oE '[0-9]+')
  files=$(ls "$work" | wc -l)
  findings=$(ls "$arts" | wc -l)
  if [ $rc -ne 0 ] || [ "$findings" -ne 0 ]; then
    failed=1
    echo "$t FAILED (exit $rc; log: $build/$t.log; inputs: $arts)"
    grep -E "ERROR|SUMMARY|runtime error|Test unit written" $build/$t.log | head -8
  fi
  printf '| %s | %s | %s | %s | %s | %s |\n' "$t" "$secs" "${runs:-?}" "${cov:-?}" "$files" "$findings" >> $summary
done
echo
cat $summary
exit $failed
