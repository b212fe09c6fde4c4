// mmfree-cli: command-line flags, and what every command shares (the model, its options).
#pragma once

#include <algorithm>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "mmfree/mmfree.hpp"
#include "mmfree/parse.hpp"

namespace cli {

using mmfree::fail;

// One command: its name, a one-line summary, its usage, and what runs it.
struct Args;
struct Command {
  const char* name;
  const char* summary;
  const char* usage;  // the options, as `mmfree-cli NAME --help` prints them
  int (*run)(const Args&);
};
const std::vector<Command>& commands();  // main.cpp
std::string usage_of(const Command& c);

// Flags as "--name value" pairs; boolean flags (`switches`) have no value.
struct Args {
  const Command* command = nullptr;
  std::map<std::string, std::string> values;
  std::map<std::string, bool> switches;

  bool has(const std::string& k) const { return values.count(k) > 0; }
  bool on(const std::string& k) const { return switches.count(k) > 0; }
  std::string str(const std::string& k) const {
    auto it = values.find(k);
    if (it == values.end()) fail("--" + k, "is required (see mmfree-cli " + std::string(command->name) + " --help)");
    return it->second;
  }
  // Every flag given must be one this command knows.
  void allow(std::vector<std::string> known, bool model_flags = true) const {
    if (model_flags) known.insert(known.end(), {"model", "threads", "kernels", "format", "no-huge-pages", "interleaved", "wide"});
    auto check = [&](const std::string& k) {
      if (std::find(known.begin(), known.end(), k) == known.end())
        fail("--" + k, "unknown option for '" + std::string(command->name) + "' (see mmfree-cli " + command->name +
                           " --help)");
    };
    for (auto& [k, v] : values) check(k);
    for (auto& [k, v] : switches) check(k);
  }
};

// The bundled model unless --model names another.
inline std::string model_path(const Args& a) { return a.has("model") ? a.str("model") : std::string(MMFREE_DEFAULT_MODEL); }

// Threads default to every core this process may use, as llama.cpp users expect.
inline mmfree::ModelOptions model_options(const Args& a) {
  mmfree::ModelOptions o;
  const int cores = mmfree::available_cores();
  o.threads = cores;
  if (a.has("threads")) o.threads = int(mmfree::parse_int(a.str("threads"), "--threads", 1, 4 * int64_t(cores)));
  if (a.has("kernels")) o.kernels = a.str("kernels");
  if (a.has("format")) o.format = mmfree::parse_format(a.str("format"), "--format");
  if (a.on("no-huge-pages")) o.huge_pages = false;
  if (a.has("interleaved")) {
    const std::string v = a.str("interleaved");
    if (v == "on") o.interleaved = true;
    else if (v == "off") o.interleaved = false;
    else if (v != "auto") mmfree::fail("--interleaved " + v, "expected auto, on or off");
  }
  if (a.has("wide")) {
    const std::string v = a.str("wide");
    if (v == "on") o.wide = true;
    else if (v == "off") o.wide = false;
    else if (v != "auto") mmfree::fail("--wide " + v, "expected auto, on or off");
  }
  return o;
}

inline mmfree::Model load(const Args& a) { return mmfree::load_model(model_path(a), model_options(a)); }

// "decode avx512 (...), prefill avx512 (...), chosen by measurement in 21 ms" / "... (forced by --kernels)".
inline std::string kernel_summary(const mmfree::Model& m) {
  using mmfree::kernels::Regime;
  const auto& c = m.kernel_choice();
  std::string s = std::string("decode ") + describe(c.decode, Regime::Decode) + ", batch " + describe(c.batch, Regime::Batch) +
                  ", prefill " + describe(c.prefill, Regime::Prefill);
  char buf[64];
  if (m.options().kernels.empty()) std::snprintf(buf, sizeof buf, ", chosen by measurement in %.0f ms", c.seconds * 1e3);
  else std::snprintf(buf, sizeof buf, " (forced by --kernels)");
  s += buf;
  if (m.interleaved_bytes()) {
    std::snprintf(buf, sizeof buf, "; interleaved copy %.0f MiB", double(m.interleaved_bytes()) / (1 << 20));
    s += buf;
  }
  if (m.wide_bytes()) {
    std::snprintf(buf, sizeof buf, "; wide copy %.0f MiB", double(m.wide_bytes()) / (1 << 20));
    s += buf;
  }
  return s;
}

// A one-line progress bar on stderr, redrawn when the percentage changes.
inline void progress(const char* what, double frac) {
  static int last = -1;
  if (int(frac * 100) == last) return;
  last = int(frac * 100);
  const int w = 40, n = int(frac * w);
  std::fprintf(stderr, "\r%s [%.*s%*s] %3d%%", what, n, "========================================", w - n, "", int(frac * 100));
  if (frac >= 1) std::fprintf(stderr, "\n"), last = -1;
}

inline void print_ids(const std::vector<int32_t>& ids) {
  for (size_t i = 0; i < ids.size(); ++i) std::printf("%s%d", i ? " " : "", ids[i]);
  std::printf("\n");
}

// The whole of a file, or an error naming it.
std::string read_text_file(const std::string& path);

// --grammar FILE.gbnf or --json-schema FILE.json, compiled (nullptr when neither is given).
inline std::shared_ptr<const mmfree::Grammar> grammar_from_args(const Args& a) {
  if (a.has("grammar") && a.has("json-schema")) mmfree::fail("--grammar", "give --grammar or --json-schema, not both");
  if (!a.has("grammar") && !a.has("json-schema")) return nullptr;
  const std::string file = a.str(a.has("grammar") ? "grammar" : "json-schema");
  const std::string text = read_text_file(file);
  return std::make_shared<const mmfree::Grammar>(
      mmfree::Grammar::parse(a.has("grammar") ? text : mmfree::JsonSchemaGrammar::convert_text(text, file), file));
}

// --draft MODEL or --lookup N (and --draft-tokens K): what drafts for speculative decoding.
struct DrafterArgs {
  std::shared_ptr<const mmfree::Model> draft;  // --draft: loaded, sharing the target's threads
  int lookup = 0;                              // --lookup N
  int draft_tokens = 8;
  explicit operator bool() const { return draft || lookup > 0; }
  // g's drafter, following g.sampling (a draft model samples as the target does), and its draft
  // length bound.
  void apply(mmfree::GenerateOptions& g) const {
    g.draft_tokens = draft_tokens;
    if (lookup > 0) {
      g.drafter = [n = lookup] { return std::make_unique<mmfree::LookupDrafter>(n); };
    } else if (draft) {
      g.drafter = [d = draft, s = g.sampling] { return std::make_unique<mmfree::DraftModelDrafter<mmfree::CpuAccumulate>>(*d, s); };
    }
  }
};
inline DrafterArgs drafter_args(const Args& a, const mmfree::Model& target) {
  DrafterArgs d;
  if (a.has("draft") && a.has("lookup")) mmfree::fail("--draft", "give --draft MODEL or --lookup N, not both");
  if (a.has("draft-tokens") && !a.has("draft") && !a.has("lookup"))
    mmfree::fail("--draft-tokens", "needs a drafter: --draft MODEL or --lookup N");
  if (a.has("draft-tokens")) d.draft_tokens = int(mmfree::parse_int(a.str("draft-tokens"), "--draft-tokens", 1, 64));
  if (a.has("lookup")) d.lookup = int(mmfree::parse_int(a.str("lookup"), "--lookup", 1, 64));
  if (a.has("draft")) {
    mmfree::ModelOptions o = model_options(a);
    o.kernels.clear();  // the target's forced kernels may not suit the draft's shapes; it measures its own
    o.pool = target.options().pool;  // the two run in turn: one set of threads
    d.draft = std::make_shared<const mmfree::Model>(mmfree::load_model(a.str("draft"), o));
    mmfree::check_draft_model(target, *d.draft, a.str("draft"));
  }
  return d;
}

}  // namespace cli
