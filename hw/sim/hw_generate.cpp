// mmfree-hw-generate: greedy generation with every ternary row product on the Verilog core
// (Verilator), the rest of the model on the library's own code. Prints the same ids as
//   mmfree-cli generate --temperature 0 --print-ids --model M --ids ... -n N
// and, on stderr, the core's clock cycles per token.
//
//   mmfree-hw-generate --model PATH --ids 1,5,9 [-n N] [--print-ids] [--lanes 16|64|256]
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "mmfree/mmfree.hpp"
#include "mmfree/parse.hpp"
#include "rtl_accumulate.hpp"

namespace {

const char* kUsage =
    "usage: mmfree-hw-generate --model PATH --ids 1,5,9 [-n N] [--print-ids] [--lanes 16|64|256]\n"
    "  -m, --model PATH        a Hugging Face checkpoint directory or a .gguf file\n"
    "  --ids LIST              prompt token ids\n"
    "  -n, --max-new-tokens N  tokens to generate (default 16)\n"
    "  --print-ids             exactly N tokens (no stop at end-of-sequence), as mmfree-cli's flag\n"
    "  --lanes L               the core's lanes: 16 (default), 64 or 256\n";

int run(int argc, char** argv) {
  std::string model, ids_text;
  int64_t n = 16;
  int lanes = 16;
  bool print_ids = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) mmfree::fail(a, "needs a value");
      return argv[++i];
    };
    if (a == "-m" || a == "--model") model = value();
    else if (a == "--ids") ids_text = value();
    else if (a == "-n" || a == "--max-new-tokens") n = mmfree::parse_int(value(), a, 0, 1 << 20);
    else if (a == "--lanes") lanes = int(mmfree::parse_int(value(), a, 1, 1024));
    else if (a == "--print-ids") print_ids = true;
    else if (a == "-h" || a == "--help") return std::fputs(kUsage, stdout), 0;
    else mmfree::fail(a, std::string("unknown option\n") + kUsage);
  }
  if (model.empty() || ids_text.empty()) mmfree::fail("mmfree-hw-generate", std::string("needs --model and --ids\n") + kUsage);

  auto core = mmfree::hw::make_core(lanes);
  // One thread: the simulated core is one core. The CPU kernels are never asked, so none is
  // measured ("scalar" is named only to skip the measurement).
  mmfree::ModelOptions opt;
  opt.threads = 1;
  opt.kernels = "scalar";
  opt.huge_pages = false;
  mmfree::ThreadPool pool(1);
  mmfree::BasicModel<mmfree::hw::RtlAccumulate> m(mmfree::load_weights(model, opt, pool), opt, nullptr,
                                                  mmfree::hw::RtlAccumulate{core.get()});
  const std::vector<int32_t> prompt = mmfree::parse_id_list(ids_text, "--ids", m.vocab_size() - 1);
  if (prompt.empty()) mmfree::fail("--ids", "no token ids given");

  mmfree::GenerateOptions g;
  g.max_new_tokens = n;
  g.sampling.temperature = 0;
  g.eos_id = print_ids ? -1 : int32_t(m.config().eos_token_id);
  std::vector<int32_t> out = prompt;
  uint64_t c_first = 0;  // cycles when the first token is drawn: the prompt is read
  const auto st = mmfree::generate(m, prompt, g, [&](int32_t id) {
    if (out.size() == prompt.size()) c_first = core->cycles();
    out.push_back(id);
    return true;
  });
  for (size_t i = 0; i < out.size(); ++i) std::printf("%s%d", i ? " " : "", out[i]);
  std::printf("\n");
  // Every decoding step runs every BitLinear once, the LM head included.
  const int64_t steps = std::max<int64_t>(st.generated_tokens - 1, 0);
  int64_t weights = 0;
  mmfree::for_each_bitlinear(m.weights(), [&](const std::string&, const mmfree::BitLinear& l) {
    weights += l.out_features() * ((l.in_features() + 255) / 256 * 256);
  });
  std::fprintf(stderr, "[ %d-lane core ] prompt of %zu tokens: %llu cycles", lanes, prompt.size(),
               (unsigned long long)c_first);
  if (steps > 0)
    std::fprintf(stderr, "; %lld decoding steps: %.0f cycles per token", (long long)steps,
                 double(core->cycles() - c_first) / double(steps));
  std::fprintf(stderr, " (%lld ternary weights per token in whole 256-weight blocks: %.0f cycles at one beat per cycle)\n",
               (long long)weights, double(weights) / lanes);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "mmfree-hw-generate: %s\n", e.what());
    return 1;
  }
}
