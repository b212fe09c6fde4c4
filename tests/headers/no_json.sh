#!/usr/bin/env bash
# The model's headers include no JSON parser: nlohmann/json costs about 2 s of every translation
# unit that reaches it (GCC 12), and a program that only runs a model never parses JSON. Parsing
# lives in the headers of the formats (config_json.hpp, tokenizer_json.hpp, safetensors.hpp, ...).
#   no_json.sh INCLUDE_DIR CXX
set -uo pipefail
inc="$1" cxx="$2"
fails=0
for h in mmfree/config.hpp mmfree/tensor.hpp mmfree/embedding.hpp mmfree/weights.hpp mmfree/model.hpp \
         mmfree/tokenizer.hpp mmfree/sampler.hpp mmfree/generate.hpp mmfree/speculative.hpp mmfree/grammar_filter.hpp \
         mmfree/state_file.hpp mmfree/serve/scheduler.hpp mmfree/serve/state_store.hpp mmfree/serve/sessions.hpp \
         mmfree/serve/prefix_cache.hpp; do
  [ -f "$inc/$h" ] || { echo "FAIL $h: no such header"; fails=$((fails + 1)); continue; }
  if ! deps=$(printf '#include <%s>\n' "$h" | "$cxx" -std=c++20 -x c++ -M -I "$inc" - 2>&1); then
    echo "FAIL $h: does not preprocess"; echo "$deps" | head -5; fails=$((fails + 1))
  elif echo "$deps" | grep -q 'nlohmann'; then
    echo "FAIL $h includes nlohmann/json"; fails=$((fails + 1))
  fi
done
echo "$fails failed"
[ "$fails" -eq 0 ]
