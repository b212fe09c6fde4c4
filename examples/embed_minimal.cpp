// The smallest useful program: load a checkpoint, decode greedily from token ids.
#include <mmfree/mmfree.hpp>

#include <algorithm>
#include <cstdio>

int main(int argc, char** argv) try {
  if (argc < 2) return std::fprintf(stderr, "usage: %s MODEL_DIR\n", argv[0]), 2;
  mmfree::ModelOptions options;
  options.threads = 2;
  mmfree::Model model = mmfree::load_model(argv[1], options);
  mmfree::State state = model.new_state();
  std::vector<int32_t> prompt = {1, 1142, 333, 2693};  // <s> In the beginning
  std::vector<float> logits = model.prefill_last(prompt, state);
  for (int i = 0; i < 16; ++i) {
    int32_t next = int32_t(mmfree::argmax(logits.data(), int64_t(logits.size())));  // greedy
    std::printf("%d ", next);
    logits = model.step(next, state);
  }
  std::printf("\n");
} catch (const std::exception& e) {
  std::fprintf(stderr, "error: %s\n", e.what());
  return 1;
}
