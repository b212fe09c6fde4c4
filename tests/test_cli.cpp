// mmfree-cli end to end: the interfaces the issues specify, and its errors.
#include <gtest/gtest.h>

#include <array>
#include <cstdio>
#include <fstream>
#include <sstream>

#include "mmfree/mmfree.hpp"
#include "test_util.hpp"

namespace tests_cli {  // this file's own names (the tests compile in unity batches)

using namespace mmfree;
using namespace mmfree::test;

namespace {

struct CliRun {
  int code;
  std::string out, err;
};

CliRun run_cli(const std::string& args) {
  TempDir d;
  const std::string cmd = std::string(MMFREE_CLI) + " " + args + " >" + d.file("o") + " 2>" + d.file("e");
  const int st = std::system(cmd.c_str());
  return {WIFEXITED(st) ? WEXITSTATUS(st) : -1, read_file(d.file("o")), read_file(d.file("e"))};
}

const std::string kTiny = data_dir() + "/kjv-tiny";

}  // namespace

TEST(Cli, LogitsWritesSafetensorsEqualToPrefill) {
  TempDir d;
  CliRun r = run_cli("logits --model " + kTiny + " --ids 1,1142,333 --out " + d.file("l.safetensors"));
  ASSERT_EQ(r.code, 0) << r.err;
  SafetensorsFile f(d.file("l.safetensors"));
  EXPECT_EQ(f.find("input_ids")->to_int32(), (std::vector<int32_t>{1, 1142, 333}));
  EXPECT_EQ(f.find("logits")->shape, (std::vector<int64_t>{3, 4096}));
  Model m = load_model(kTiny);
  EXPECT_EQ(f.find("logits")->to_floats(), m.prefill(std::vector<int32_t>{1, 1142, 333}));
}

TEST(Cli, NoHugePagesGivesTheSameLogits) {
  TempDir d;
  const std::string model = std::string(MMFREE_TEST_DATA) + "/../../models/kjv-demo.gguf";
  CliRun a = run_cli("logits --model " + model + " --ids 1,1142,333 --out " + d.file("a.safetensors"));
  CliRun b = run_cli("logits --model " + model + " --no-huge-pages --ids 1,1142,333 --out " + d.file("b.safetensors"));
  ASSERT_EQ(a.code, 0) << a.err;
  ASSERT_EQ(b.code, 0) << b.err;
  EXPECT_EQ(SafetensorsFile(d.file("a.safetensors")).find("logits")->to_floats(),
            SafetensorsFile(d.file("b.safetensors")).find("logits")->to_floats());
}

TEST(Cli, GenerateGreedyPrintsIds) {
  CliRun r = run_cli("generate --model " + kTiny + " --ids 1,1142,333,2693 -n 24 --temperature 0 --print-ids");
  ASSERT_EQ(r.code, 0) << r.err;
  SafetensorsFile g(kTiny + "/golden.safetensors");
  const auto want = g.find("genesis.greedy_ids")->to_int32();
  std::string expect;
  for (size_t i = 0; i < want.size(); ++i) {
    if (i) expect += ' ';
    expect += std::to_string(want[i]);
  }
  EXPECT_EQ(r.out, expect + "\n");
}

// Speculative decoding changes how fast, never what: the goldens again, drafted by kjv-tiny for the
// bundled model and by lookup, with the acceptance on the stats line.
TEST(Cli, GenerateWithADrafterPrintsTheSameIds) {
  const std::string ids = " --ids 1,1142,333,2693,1142,333 -n 40 --temperature 0 --print-ids";
  const CliRun plain = run_cli("generate" + ids);
  ASSERT_EQ(plain.code, 0) << plain.err;
  for (const std::string& drafter : std::vector<std::string>{" --draft " + kTiny, " --lookup 2", " --lookup 3 --draft-tokens 3"}) {
    SCOPED_TRACE(drafter);
    const CliRun r = run_cli("generate" + ids + drafter);
    ASSERT_EQ(r.code, 0) << r.err;
    EXPECT_EQ(r.out, plain.out);
    EXPECT_NE(r.err.find("speculative: accepted "), std::string::npos) << r.err;
  }
  struct Case {
    std::string args, msg;
  };
  for (const Case& c : std::vector<Case>{
           {"--draft " + kTiny + " --lookup 2", "--draft: give --draft MODEL or --lookup N, not both"},
           {"--draft-tokens 4", "--draft-tokens: needs a drafter"},
           {"--lookup 2 --draft-tokens 0", "--draft-tokens: '0' is out of range"},
           {"--lookup 0", "--lookup: '0' is out of range"},
           {"--draft /nonexistent/model", "/nonexistent/model"},
           {"--draft " + data_dir() + "/odd-b", "cannot draft for this model"}}) {
    const CliRun r = run_cli("generate --ids 1,5 -n 3 " + c.args);
    EXPECT_NE(r.code, 0) << c.args;
    EXPECT_NE(r.err.find(c.msg), std::string::npos) << c.args << ": " << r.err;
  }
}

TEST(Cli, BadInputsFailWithMessages) {
  struct Case {
    std::string args, msg;
  };
  const std::vector<Case> cases = {
      {"", "no command given"},
      {"frobnicate", "unknown command 'frobnicate'"},
      {"generate --model " + kTiny + " --ids 1,99999 --print-ids", "--ids: '99999' is out of range [0, 4095]"},
      {"generate --model " + kTiny + " --ids 1,-3 --print-ids", "--ids: '-3' is out of range"},
      {"generate --model " + kTiny + " --ids 1,x --print-ids", "--ids: 'x' is not an integer"},
      {"generate --model " + kTiny + " --ids 1 -n 1e9", "-n: '1e9' is not an integer"},
      {"generate --model " + kTiny + " --ids 1 -t 0", "--threads: '0' is out of range"},
      {"generate --model " + kTiny + " --ids 1 --bogus 3", "--bogus: unknown option"},
      {"serve --port 0 --speculative-tokens 4", "--speculative-tokens: needs a drafter"},
      {"serve --port 0 --lookup 2 --draft " + kTiny, "--draft: give --draft MODEL or --lookup N, not both"},
      {"serve --port 0 --draft " + data_dir() + "/odd-b", "cannot draft for this model"},
      {"bench --speculate 1.5 -n 4", "--speculate: '1.5' is out of range"},
      {"bench --lookup 2 -n 4", "give the prompts, one per line: -f FILE"},
      {"generate --model /nonexistent --ids 1", "/nonexistent: no such file or directory"},
      {"generate --model " + kTiny + "/config.json --ids 1", "not a checkpoint directory"},
      {"logits --model " + kTiny + " --ids 1", "--out: is required"},
      {"generate --model", "--model: missing value"},
      {"generate --model " + kTiny + " --ids 1 -n 99999999999", "-n: '99999999999' is out of range [0, 16777216]"},
      {"generate --model " + kTiny + " --ids 1 -n 99999999999999999999999", "-n: '99999999999999999999999' is out of range"},
  };
  for (auto& c : cases) {
    CliRun r = run_cli(c.args);
    EXPECT_NE(r.code, 0) << c.args;
    EXPECT_NE(r.err.find(c.msg), std::string::npos) << c.args << "\nstderr: " << r.err;
  }
}

TEST(Cli, TokenizeEncodesAndDecodes) {
  CliRun r = run_cli("tokenize --model " + kTiny + " --text 'In the beginning God created the heaven and the earth.'");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, "1 1142 333 2693 464 2431 357 333 833 342 333 1644\n");
  r = run_cli("tokenize --tokenizer " + kTiny + "/tokenizer.json --decode '1 1142 333 2693'");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, "In the beginning\n");
  r = run_cli("tokenize --model " + kTiny + " --decode '1 99999'");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("--decode: '99999' is out of range"), std::string::npos) << r.err;
  r = run_cli("tokenize --tokenizer /nonexistent.json --text hi");
  EXPECT_NE(r.err.find("/nonexistent.json: cannot open"), std::string::npos) << r.err;
}

TEST(Cli, GeneratePromptStreamsTextAndStats) {
  CliRun r = run_cli("generate --model " + kTiny + " --prompt 'In the beginning' -n 24 --temperature 0");
  ASSERT_EQ(r.code, 0) << r.err;
  // The greedy continuation of the golden "genesis" case, as text.
  Tokenizer tok = read_tokenizer(kTiny + "/tokenizer.json");
  SafetensorsFile g(kTiny + "/golden.safetensors");
  EXPECT_EQ(r.out, tok.decode(g.find("genesis.greedy_ids")->to_int32()) + "\n");
  for (auto s : {"prompt tokens: 4", "prefill", "decode", "time to first token", "peak memory"})
    EXPECT_NE(r.err.find(s), std::string::npos) << r.err;
  // Same seed, same text; sampling flags out of range are refused.
  CliRun a = run_cli("generate --prompt 'And God said' -n 30 --seed 5 --temperature 1.2 --no-stats");
  CliRun b = run_cli("generate --prompt 'And God said' -n 30 --seed 5 --temperature 1.2 --no-stats");
  EXPECT_EQ(a.out, b.out);
  EXPECT_EQ(a.code, 0) << a.err;
  for (auto [flag, msg] : {std::pair<std::string, std::string>{"--top-p 0", "--top-p: '0' is out of range"},
                           {"--temperature -1", "--temperature: '-1' is out of range"},
                           {"--min-p 1.5", "--min-p"},
                           {"--top-k -2", "--top-k"},
                           {"-t 100000", "--threads"}}) {
    CliRun e = run_cli("generate --prompt x " + flag);
    EXPECT_NE(e.code, 0) << flag;
    EXPECT_NE(e.err.find(msg), std::string::npos) << flag << ": " << e.err;
  }
}

TEST(Cli, PerplexityAndInfo) {
  CliRun r = run_cli("perplexity --model " + kTiny + " --file " + data_dir() + "/kjv-val.txt --windows 4 -t 2");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out.rfind("perplexity: ", 0), 0u) << r.out;
  EXPECT_NE(r.out.find(" over 1024 tokens\n"), std::string::npos) << r.out;
  EXPECT_NE(r.err.find("perplexity "), std::string::npos) << r.err;  // the progress bar, with the running value
  EXPECT_NE(r.err.find("100%"), std::string::npos) << r.err;
  r = run_cli("perplexity --model " + kTiny + " --file /nonexistent.txt");
  EXPECT_NE(r.err.find("/nonexistent.txt: cannot open"), std::string::npos) << r.err;
  r = run_cli("info --model " + kTiny);
  ASSERT_EQ(r.code, 0) << r.err;
  for (auto s : {"2 layers, hidden 128", "vocab 4096", "packed ternary", "tokenizer    4096 tokens"})
    EXPECT_NE(r.out.find(s), std::string::npos) << r.out;
}

TEST(Cli, BenchPrintsTableAndJson) {
  CliRun r = run_cli("bench --model " + kTiny + " -p 8 -n 4 -r 2 -t 1,2");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("| model | size | threads | pp8 tok/s | tg4 tok/s | time to first token | peak RSS | kernels (decode, batch, prefill) |"),
            std::string::npos) << r.out;
  // A Hugging Face directory is ternarised into the default format.
  EXPECT_NE(r.out.find(std::string("| 2x128 ") + format_name(kDefaultFormat) + " |"), std::string::npos) << r.out;
  r = run_cli("bench --model " + kTiny + " -p 4 -n 2 -r 1 -t 1 --json");
  ASSERT_EQ(r.code, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  ASSERT_EQ(j.size(), 1u);
  EXPECT_EQ(j[0]["threads"], 1);
  EXPECT_GT(j[0]["decode_tps"].get<double>(), 0);
  // The kernels used for each regime are named, and are kernels this CPU runs.
  for (const char* key : {"decode_kernel", "batch_kernel", "prefill_kernel"})
    EXPECT_NO_THROW(kernels::find_kernel(j[0][key].get<std::string>())) << key << " " << j[0][key];
  r = run_cli("bench --model " + kTiny + " -p 4 -n 2 -r 1 -t 1 --json --kernels avx2,scalar");
  if (kernels::cpu_has(kernels::Isa::Avx2)) {
    ASSERT_EQ(r.code, 0) << r.err;
    const auto f = nlohmann::json::parse(r.out);
    EXPECT_EQ(f[0]["decode_kernel"], "avx2");
    EXPECT_EQ(f[0]["batch_kernel"], "scalar");
    EXPECT_EQ(f[0]["prefill_kernel"], "scalar");
  }
  // --batch: step_batch per B against the roofline measured in the same run.
  r = run_cli("bench --model " + kTiny + " --batch 1,3 -p 5 -r 1 -t 1 --json");
  ASSERT_EQ(r.code, 0) << r.err;
  const auto b = nlohmann::json::parse(r.out);
  ASSERT_EQ(b.size(), 1u);
  EXPECT_GT(b[0]["read_gbs"].get<double>(), 0);
  EXPECT_GT(b[0]["weight_bytes_per_token"].get<double>(), 0);
  EXPECT_GT(b[0]["macs_per_token"].get<double>(), 0);
  ASSERT_EQ(b[0]["batches"].size(), 2u);
  EXPECT_EQ(b[0]["batches"][1]["batch"], 3);
  for (const auto& row : b[0]["batches"]) {
    const double tok_s = row["tok_s"].get<double>(), step_ms = row["step_ms"].get<double>();
    EXPECT_NEAR(tok_s, row["batch"].get<double>() / step_ms * 1e3, tok_s * 1e-6);
    EXPECT_NEAR(row["roofline_frac"].get<double>(), tok_s / row["roofline_tok_s"].get<double>(), 1e-9);
    EXPECT_TRUE(row["bound"] == "memory" || row["bound"] == "compute") << row["bound"];
  }
  EXPECT_EQ(b[0]["prefill"]["tokens"], 5);
  EXPECT_GT(b[0]["prefill"]["gmac_s"].get<double>(), 0);
  // The ceilings are never below their probes nor below what the run itself reached, so no
  // share exceeds 1; each says where it came from.
  const double bw = b[0]["read_gbs"].get<double>(), peak = b[0]["int8_peak_gmacs"].get<double>();
  EXPECT_GE(bw, b[0]["read_probe_gbs"].get<double>());
  EXPECT_GE(peak, b[0]["int8_probe_gmacs"].get<double>());
  for (const char* from : {"read_from", "int8_peak_from"})
    EXPECT_TRUE(b[0][from] == "probe" || b[0][from] == "chooser" || b[0][from] == "passes") << b[0][from];
  for (const auto& row : b[0]["batches"]) EXPECT_LE(row["roofline_frac"].get<double>(), 1.0 + 1e-9) << row["batch"];
  EXPECT_LE(b[0]["prefill"]["peak_frac"].get<double>(), 1.0 + 1e-9);
  // --speculate: the synthetic drafter's speedup for each ALPHA, and each verification pass
  // against one decoding step and against its roofline, both ceilings measured in the same run.
  r = run_cli("bench --model " + kTiny + " --speculate 0,1 -n 12 -r 1 -t 1 --json");
  ASSERT_EQ(r.code, 0) << r.err;
  const auto sp = nlohmann::json::parse(r.out);
  ASSERT_EQ(sp.size(), 2u);
  EXPECT_EQ(sp[0]["alpha"], 0.0);
  EXPECT_EQ(sp[1]["alpha"], 1.0);
  for (const auto& run : sp) {
    EXPECT_EQ(run["drafter"], "synthetic");
    EXPECT_NEAR(run["speedup"].get<double>(), run["tps"].get<double>() / run["plain_tps"].get<double>(), 1e-9);
    EXPECT_GT(run["read_gbs"].get<double>(), 0);
    EXPECT_GT(run["int8_peak_gmacs"].get<double>(), 0);
    EXPECT_GT(run["step_of_roofline"].get<double>(), 0);
    EXPECT_LE(run["step_of_roofline"].get<double>(), 1.0 + 1e-9);
    const auto& costs = run["pass_cost"];
    ASSERT_EQ(costs.size(), 8u);
    double last_floor = 0;
    for (size_t i = 0; i < costs.size(); ++i) {
      const auto& c = costs[i];
      EXPECT_EQ(c["k"], int(i) + 1);
      EXPECT_EQ(c["tokens"], int(i) + 2);
      EXPECT_NEAR(c["of_step"].get<double>(), c["ms"].get<double>() / run["step_ms"].get<double>(), 1e-9);
      // The roofline of k + 1 tokens: never above the pass itself, never below fewer tokens'.
      EXPECT_NEAR(c["of_roofline"].get<double>(), c["roofline_ms"].get<double>() / c["ms"].get<double>(), 1e-9);
      EXPECT_LE(c["of_roofline"].get<double>(), 1.0 + 1e-9) << c["k"];
      EXPECT_GE(c["roofline_ms"].get<double>(), last_floor) << c["k"];
      last_floor = c["roofline_ms"].get<double>();
      EXPECT_TRUE(c["bound"] == "memory" || c["bound"] == "compute") << c["bound"];
    }
  }
  // A drafter that is always wrong keeps nothing (one token per pass); one always right keeps
  // every token it drafts. (How many it drafts depends on the passes' measured cost, so on
  // timing: under the sanitisers α = 1 made 1.09 tokens per pass, 2.00 without them.)
  EXPECT_EQ(sp[0]["acceptance"].get<double>(), 0.0);
  EXPECT_NEAR(sp[0]["tokens_per_pass"].get<double>(), 1.0, 1e-9);
  if (sp[1]["mean_draft"].get<double>() > 0) {
    EXPECT_EQ(sp[1]["acceptance"].get<double>(), 1.0);
  }
  EXPECT_GE(sp[1]["tokens_per_pass"].get<double>(), 1.0);
  r = run_cli("bench --model " + kTiny + " --batch 0");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("--batch"), std::string::npos) << r.err;
  r = run_cli("bench --model " + kTiny + " -t 0");
  EXPECT_NE(r.code, 0);
}

TEST(Cli, InvalidUtf8PromptIsHandled) {
  // Bytes that are not UTF-8 fall back to byte tokens; the output stays valid UTF-8.
  CliRun r = run_cli("generate --model " + kTiny + " --prompt 'caf\xc3 \xff\xfe end' -n 8 --temperature 0 --no-stats");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_FALSE(r.out.empty());
  r = run_cli("tokenize --model " + kTiny + " --text 'x\xffy'");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find(" 258 "), std::string::npos) << r.out;  // <0xFF>
}

TEST(Cli, EveryCommandHasHelp) {
  for (const char* c : {"generate", "serve", "tokenize", "logits", "perplexity", "info", "bench", "convert", "init-random"}) {
    for (const char* flag : {" --help", " -h"}) {
      CliRun r = run_cli(std::string(c) + flag);
      EXPECT_EQ(r.code, 0) << c << flag << ": " << r.err;
      EXPECT_EQ(r.out.rfind(std::string("usage: mmfree-cli ") + c + " [options]", 0), 0u) << r.out;
    }
    CliRun r = run_cli(std::string("help ") + c);
    EXPECT_EQ(r.out.rfind(std::string("usage: mmfree-cli ") + c, 0), 0u) << r.out;
  }
  CliRun r = run_cli("--help");
  EXPECT_EQ(r.code, 0);
  EXPECT_NE(r.out.find("perplexity"), std::string::npos) << r.out;
  r = run_cli("generate --help");
  EXPECT_NE(r.out.find("-f, --file FILE"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("-t, --threads N"), std::string::npos) << r.out;
}

// -p and -f give the same prompt; every command defaults to the bundled model.
TEST(Cli, PromptFromFileAndTheBundledModelByDefault) {
  TempDir d;
  {
    std::ofstream f(d.file("prompt.txt"));
    f << "In the beginning";
  }
  CliRun p = run_cli("generate -p 'In the beginning' -n 12 --temperature 0 --no-stats");
  CliRun f = run_cli("generate -f " + d.file("prompt.txt") + " -n 12 --temperature 0 --no-stats");
  ASSERT_EQ(p.code, 0) << p.err;
  EXPECT_EQ(p.out, f.out);
  EXPECT_EQ(p.out.rfind("In the beginning", 0), 0u) << p.out;
  CliRun t = run_cli("tokenize -p 'In the beginning'");
  ASSERT_EQ(t.code, 0) << t.err;
  EXPECT_EQ(t.out, "1 1142 333 2693\n");
  EXPECT_EQ(run_cli("tokenize -f " + d.file("prompt.txt")).out, t.out);
  CliRun i = run_cli("info");
  ASSERT_EQ(i.code, 0) << i.err;
  EXPECT_NE(i.out.find("6 layers, hidden 384"), std::string::npos) << i.out;
  CliRun e = run_cli("generate -f " + d.file("missing.txt"));
  EXPECT_NE(e.err.find("missing.txt: cannot open"), std::string::npos) << e.err;
}

// With no -t, every core this process may use (its affinity, not the machine's count).
TEST(Cli, ThreadsDefaultToTheAvailableCores) {
  CliRun r = run_cli("info");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("threads      " + std::to_string(available_cores()) + "\n"), std::string::npos) << r.out;
  if (std::system("taskset -c 0 true >/dev/null 2>&1") == 0) {
    TempDir d;
    const std::string cmd = "taskset -c 0 " + std::string(MMFREE_CLI) + " info >" + d.file("o") + " 2>&1";
    ASSERT_EQ(std::system(cmd.c_str()), 0);
    EXPECT_NE(read_file(d.file("o")).find("threads      1\n"), std::string::npos) << read_file(d.file("o"));
  }
}

// Interactive mode keeps the recurrent state between turns: two turns give exactly the ids of
// one greedy run over turn 1, its continuation, and turn 2.
TEST(Cli, InteractiveTurnsContinueTheState) {
  TempDir d;
  {
    std::ofstream f(d.file("turns.txt"));
    f << "In the beginning\nAnd God said\n";
  }
  const std::string cmd = std::string(MMFREE_CLI) + " generate -i -n 6 --temperature 0 --print-ids --no-stats < " +
                          d.file("turns.txt") + " >" + d.file("o") + " 2>" + d.file("e");
  ASSERT_EQ(std::system(cmd.c_str()), 0) << read_file(d.file("e"));
  std::vector<int32_t> got;
  {
    std::istringstream in(read_file(d.file("o")));
    for (int32_t x; in >> x;) got.push_back(x);
  }
  const Tokenizer tok = load_tokenizer(bundled_model());
  const auto t1 = tok.encode("In the beginning"), t2 = tok.encode("And God said", false);
  ASSERT_EQ(got.size(), t1.size() + 6 + t2.size() + 6) << read_file(d.file("o"));
  // The same sequence, greedy, in one run.
  std::vector<int32_t> ids(got.begin(), got.end() - 6);
  EXPECT_TRUE(std::equal(t1.begin(), t1.end(), got.begin()));
  EXPECT_TRUE(std::equal(t2.begin(), t2.end(), got.begin() + long(t1.size()) + 6));
  Model m = load_model(bundled_model());
  State st = m.new_state();
  auto logits = m.prefill_last(ids, st);
  for (int k = 0; k < 6; ++k) {
    const int32_t next = int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin());
    EXPECT_EQ(next, got[ids.size() + size_t(k)]) << k;
    logits = m.step(next, st);
  }
  // And the first turn's continuation is the greedy one.
  State s1 = m.new_state();
  logits = m.prefill_last(t1, s1);
  EXPECT_EQ(int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin()), got[t1.size()]);
}

}  // namespace tests_cli
