// mmfree-cli: the commands, one function each (defined in cmd_*.cpp).
#pragma once

#include "args.hpp"

namespace cli {

int cmd_generate(const Args& a);    // cmd_generate.cpp
int cmd_tokenize(const Args& a);    // cmd_inspect.cpp
int cmd_logits(const Args& a);      // cmd_inspect.cpp
int cmd_perplexity(const Args& a);  // cmd_inspect.cpp
int cmd_info(const Args& a);        // cmd_inspect.cpp
int cmd_bench(const Args& a);       // cmd_bench.cpp
int cmd_convert(const Args& a);     // cmd_convert.cpp
int cmd_init_random(const Args& a); // cmd_convert.cpp
int cmd_serve(const Args& a);       // cmd_serve.cpp
int cmd_eval(const Args& a);        // cmd_eval.cpp
int bench_drafter(const Args& a, int32_t threads, int64_t n, int64_t reps, bool json);  // cmd_bench_speculate.cpp
int bench_speculate(const Args& a, int32_t threads, int64_t prompt_tokens, int64_t n, int64_t reps, bool json);  // cmd_bench_speculate.cpp

}  // namespace cli
