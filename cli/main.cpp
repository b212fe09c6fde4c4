// mmfree-cli: run MatMul-free language models from the command line.
//
//   mmfree-cli COMMAND [options]      mmfree-cli COMMAND --help      mmfree-cli --help
#include <cstdio>
#include <fstream>
#include <string>

#include "commands.hpp"

namespace cli {

const char* kCommon =
    "model options (every command that runs a model):\n"
    "  -m, --model M          a GGUF file or a Hugging Face directory (default: the bundled model)\n"
    "  -t, --threads N        threads (default: every core this process may use)\n"
    "  --kernels NAME|DECODE,PREFILL   force kernels (default: chosen by measuring at load)\n"
    "  --format tq2|tq1       the ternary layout held in memory (default: the file's)\n"
    "  --no-huge-pages        weights in ordinary pages\n"
    "  --interleaved auto|on|off  a second copy of the weights that passes of several tokens\n"
    "                         read faster (AVX-512); auto: kept where memory allows and it\n"
    "                         measures faster (default)\n"
    "  --wide auto|on|off     TQ1: one more copy in 2-bit digits, which prompts may read\n"
    "                         faster (AVX-512); auto as above (default)\n";

const std::vector<Command>& commands() {
  static const std::vector<Command> all = {
      {"generate", "generate text from a prompt (or interactively)",
       "  -p, --prompt TEXT      the prompt (or -f FILE, or --ids 1,5,9: token ids used verbatim)\n"
       "  -f, --file FILE        read the prompt from FILE\n"
       "  -i, --interactive      after the prompt, read a line at a time from stdin and continue from the\n"
       "                         state so far: each turn reads only its new text\n"
       "  --save-state F         save the state after every token printed (prompt and generated)\n"
       "  --load-state F         start from a saved state, then read the prompt (no BOS) and continue\n"
       "  -n, --max-new-tokens N tokens to generate (per turn; default 128)\n"
       "  --temperature T --top-k K --top-p P --min-p P --repeat-penalty R --repeat-last-n N --seed S\n"
       "                         sampling (temperature 0: greedy)\n"
       "  --presence-penalty P --frequency-penalty F   OpenAI's penalties over the generated tokens\n"
       "  --logit-bias ID:B[,ID:B...]                  added to those tokens' logits (-100 ... 100)\n"
       "  --grammar FILE.gbnf | --json-schema FILE.json  only text the grammar (llama.cpp's GBNF) or\n"
       "                         the schema allows; generation ends where it is complete\n"
       "  --print-ids            print the token ids (prompt and generated) instead of text; exactly -n tokens\n"
       "  --draft MODEL          speculative decoding: a smaller model of the same vocabulary drafts tokens and\n"
       "                         one pass of this model checks them (greedy output unchanged; sampling exact)\n"
       "  --lookup N             speculative decoding drafting from n-grams (up to N tokens) of the text so far\n"
       "  --draft-tokens K       at most K drafted tokens per pass (default 8; fewer as acceptance says)\n"
       "  --no-stats             no statistics line on stderr\n",
       cmd_generate},
      {"serve", "an OpenAI-compatible HTTP server that decodes all its requests as one batch",
       "  --host H               address to listen on (default 127.0.0.1; others need --api-key or --allow-public)\n"
       "  --port N               port (default 8080; 0: any free port, printed on stderr)\n"
       "  --parallel N           sequences decoded together, one batched step for all (default 64)\n"
       "  --queue N              requests waiting for a place; beyond: 503 with Retry-After (default 2x parallel)\n"
       "  --api-key KEY, --api-key-file F   require Authorization: Bearer KEY\n"
       "  --allow-public         listen beyond loopback without a key (prints a warning)\n"
       "  --max-body BYTES       request body limit (default 1 MiB)\n"
       "  --max-prompt-tokens N  (default 8192)   --max-tokens N  max_tokens ceiling (default 4096)\n"
       "  --timeout SECONDS      per request (default 600)\n"
       "  --max-connections N    open connections at once, each with its own thread; beyond, new ones wait\n"
       "                         in the listen backlog (default 2048, or 2x (parallel + queue) if more)\n"
       "  --max-connections-per-address N   beyond it, a client address's newest idle connections are\n"
       "                         closed (default 256; raise it behind a proxy)\n"
       "  --request-time SECONDS a connection must send a whole request within this (default 30)\n"
       "  --name NAME            the model id in responses (default: the file name)\n"
       "  --draft MODEL | --lookup N   speculative decoding for every stream (as generate's), while a step\n"
       "                         holds fewer tokens than reading the weights takes (measured at start)\n"
       "  --draft-tokens K       drafts of at most K tokens (default 8)\n"
       "  --speculative-tokens N draft only while a step holds fewer than N tokens (default: measured)\n"
       "  --prefix-cache MB      keep the states after prompt beginnings, at most MB of them, least\n"
       "                         recently used out (default 256; 0: off): prompts that share a beginning\n"
       "                         read it once, and \"continue_from\": ID continues an earlier completion\n"
       "  --prefix-interval N    checkpoints every N tokens along a prompt (default 64)\n"
       "  --state-dir DIR        sessions (\"session\": ID) and the prefix cache are also kept in DIR, written\n"
       "                         atomically: they survive a restart, even kill -9\n"
       "  --sessions-memory MB   keep at most MB of session states in memory, the least recently used\n"
       "                         on disk only (needs --state-dir)\n"
       "  --session-store redis://HOST:PORT   sessions and the prefix cache in Redis instead, shared by\n"
       "                         every replica using it\n"
       "  --prefix-ttl SECONDS   how long a prefix cache entry lives in Redis (default 86400; 0: always)\n"
       "  --persist-every N      while streaming, also persist a session's state every N tokens\n"
       "  --exit-with-parent     stop when the process that started the server ends\n",
       cmd_serve},
      {"tokenize", "text to token ids, or ids to text",
       "  -p, --prompt, --text TEXT   text to encode (or -f FILE)\n"
       "  --decode \"1 2 3\"       ids to decode\n"
       "  -m, --model M          the model whose tokenizer to use (default: the bundled model)\n"
       "  --tokenizer FILE.json  a tokenizer.json instead\n"
       "  --no-bos               do not add the tokenizer's BOS\n",
       cmd_tokenize},
      {"logits", "logits of every position of a sequence, to a safetensors file",
       "  --ids 1,5,9            the sequence\n"
       "  --out FILE.safetensors where to write input_ids [T] and logits [T, V]\n",
       cmd_logits},
      {"perplexity", "perplexity of a text (chapters separated by blank lines)",
       "  -f, --file TEXT        the text\n"
       "  --window N             tokens scored per window (default 256)\n"
       "  --windows N            at most N windows (default 64)\n",
       cmd_perplexity},
      {"eval", "multiple-choice questions scored by log-likelihood (acc and acc_norm, against chance)",
       "  -f, --file Q.jsonl     one {\"context\": ..., \"choices\": [...], \"answer\": i} a line\n"
       "  --server URL           also through a running mmfree-cli serve (echo + logprobs), compared\n"
       "                         with the library's numbers (fails beyond 1e-4)\n"
       "  --api-key KEY          the server's key\n"
       "  --limit N              the first N questions\n"
       "  --json                 JSON instead of text\n",
       cmd_eval},
      {"info", "what a model is: architecture, parameters, memory, kernels, tokenizer", "", cmd_info},
      {"bench", "prefill and decode speed, llama-bench style",
       "  -p, --prompt-tokens N  prompt length (default 512)\n"
       "  -n, --max-new-tokens N tokens decoded (default 128)\n"
       "  -t, --threads-list L   thread counts, e.g. 1,2 (default 1 and every core)\n"
       "  -r, --repetitions N    repetitions (default 3)\n"
       "  --batch 1,2,4,...      instead: step_batch over B sequences for each B, against the roofline\n"
       "                         (read bandwidth and int8 peak measured in the same run), and a prefill of -p\n"
       "  --grammar F.gbnf | --json-schema F.json   instead: -n tokens decoded with the constraint against\n"
       "                         without it (temperature 1, no filters; the last -t), and the cost of its masks\n"
       "  --speculate A[,A...]   instead: speculative decoding with a synthetic drafter whose tokens are right\n"
       "                         with probability A, against plain decoding (tokens/s, tokens per pass), and\n"
       "                         the cost of a verification pass of k + 1 tokens (-p defaults to 32 here)\n"
       "  --draft MODEL | --lookup N  -f PROMPTS   instead: a real drafter on real text, greedy, against plain\n"
       "                         decoding: acceptance and speedup over the prompts of PROMPTS (one per line)\n"
       "  --draft-tokens K       with --speculate, --draft or --lookup: drafts of at most K tokens (default 8)\n"
       "  --json                 JSON instead of a table\n",
       cmd_bench},
      {"convert", "a Hugging Face checkpoint to GGUF",
       "  -m, --model HF_DIR     the checkpoint (config.json, model.safetensors, tokenizer.json)\n"
       "  --out FILE.gguf        the output\n"
       "  --weights tq2|tq1      ternary type: ggml's TQ2_0 (2 bits) or TQ1_0 (1.6 bits; default)\n"
       "  --embeddings f16|bf16  the embeddings' type (default: as in the checkpoint)\n",
       cmd_convert},
      {"init-random", "a randomly initialised model of a paper's size, for benchmarks",
       "  --preset 370m|1.3b|2.7b|tiny   the size\n"
       "  --out FILE.gguf|DIR    GGUF file, or a Hugging Face directory (BF16)\n"
       "  --weights tq2|tq1      ternary type of a GGUF output\n"
       "  --seed S               random seed (default 1)\n"
       "  --tokenizer FILE.json  a tokenizer to embed\n",
       cmd_init_random},
  };
  return all;
}

bool takes_model(const Command& c) {
  const std::string n = c.name;
  return n != "convert" && n != "init-random";
}

std::string usage_of(const Command& c) {
  std::string s = std::string("usage: mmfree-cli ") + c.name + " [options]\n" + c.summary + "\n" + c.usage;
  if (takes_model(c)) s += kCommon;
  return s;
}

std::string overview() {
  std::string s = "usage: mmfree-cli COMMAND [options]    (mmfree-cli COMMAND --help for its options)\ncommands:\n";
  for (auto& c : commands()) {
    char line[160];
    std::snprintf(line, sizeof line, "  %-12s %s\n", c.name, c.summary);
    s += line;
  }
  return s;
}

std::string read_text_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(path, "cannot open");
  std::string text((std::istreambuf_iterator<char>(in)), {});
  if (in.bad()) fail(path, "read error");
  return text;
}

Args parse(int argc, char** argv) {
  Args a;
  const std::string name = argv[1];
  for (auto& c : commands())
    if (name == c.name) a.command = &c;
  if (!a.command) fail("mmfree-cli", "unknown command '" + name + "'\n" + overview());
  // bench takes llama-bench's short flags: -p prompt tokens, -t a list of thread counts.
  const bool bench = name == "bench";
  const std::map<std::string, std::string> aliases = {
      {"-n", "--max-new-tokens"}, {"-t", bench ? "--threads-list" : "--threads"}, {"-m", "--model"},
      {"-p", bench ? "--prompt-tokens" : "--prompt"}, {"-r", "--repetitions"}, {"-f", "--file"},
      {"-i", "--interactive"}, {"-h", "--help"}};
  const std::vector<std::string> switches = {"print-ids", "help", "no-stats", "no-bos", "json", "no-huge-pages", "interactive",
                                               "allow-public", "exit-with-parent"};
  for (int i = 2; i < argc; ++i) {
    std::string k = argv[i];
    if (auto it = aliases.find(k); it != aliases.end()) k = it->second;
    if (k.rfind("--", 0) != 0) fail("argument '" + k + "'", "unexpected (options start with - or --)");
    k = k.substr(2);
    if (std::find(switches.begin(), switches.end(), k) != switches.end()) {
      a.switches[k] = true;
      continue;
    }
    if (i + 1 >= argc) fail("--" + k, "missing value");
    a.values[k] = argv[++i];
  }
  return a;
}

}  // namespace cli

int main(int argc, char** argv) {
  using namespace cli;
  try {
    if (argc < 2) fail("mmfree-cli", "no command given\n" + overview());
    const std::string first = argv[1];
    if (first == "help" || first == "--help" || first == "-h") {
      if (argc > 2)
        for (auto& c : commands())
          if (argv[2] == std::string(c.name)) return std::fputs(usage_of(c).c_str(), stdout), 0;
      std::fputs(overview().c_str(), stdout);
      return 0;
    }
    const Args a = parse(argc, argv);
    if (a.on("help")) {
      std::fputs(usage_of(*a.command).c_str(), stdout);
      return 0;
    }
    return a.command->run(a);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
