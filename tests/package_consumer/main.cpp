// Built against an installed mmfree through find_package: loads a model, runs one step.
#include <cstdio>
#include <mmfree/mmfree.hpp>

int main(int argc, char** argv) {
  if (argc != 2) return 2;
  mmfree::Model m = mmfree::load_model(argv[1]);
  auto st = m.new_state();
  auto logits = m.step(1, st);
  std::printf("mmfree %s vocab %zu\n", MMFREE_VERSION_STRING, logits.size());
  return logits.size() == size_t(m.vocab_size()) ? 0 : 1;
}
