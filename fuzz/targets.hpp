// mmfree's fuzz targets as plain functions: the libFuzzer entry point (main.cpp, via entry.cpp) calls
// them, and so does the normal test suite (tests/test_fuzz_replay.cpp), which replays the kept
// corpus (fuzz/corpus/<target>) and every input that ever made a target fail
// (fuzz/regressions/<target>) through exactly this code, under the sanitizers in CI.
//
// A target returns normally for any input: bad input must be an mmfree::Error, never a crash,
// undefined behaviour or a broken invariant (__builtin_trap).
#pragma once

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <functional>
#include <filesystem>
#include <map>
#include <sstream>
#include <string>
#include <string_view>

#include "mmfree/mmfree.hpp"
#include "mmfree/parse.hpp"
#include "mmfree/serve/prefix_cache.hpp"
#include "mmfree/serve/request.hpp"
#include "mmfree/serve/stop_text.hpp"

namespace mmfree::fuzz {

// The file parsers take paths: inputs go through a memory-backed file, one per process.
inline std::string as_file(const uint8_t* data, size_t size, const char* suffix) {
  const std::string path = "/dev/shm/mmfree-fuzz-" + std::to_string(::getpid()) + suffix;
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) return path;
  if (size) std::fwrite(data, 1, size, f);
  std::fclose(f);
  return path;
}

inline int safetensors(const uint8_t* data, size_t size) {
  try {
    SafetensorsFile f(as_file(data, size, ".safetensors"));
    for (auto& [name, t] : f.tensors()) {
      if (t.dtype == DType::F32 || t.dtype == DType::F16 || t.dtype == DType::BF16) (void)t.to_floats(true);
      if (t.dtype == DType::I32) (void)t.to_int32();
    }
  } catch (const Error&) {
  }
  return 0;
}

inline int config(const uint8_t* data, size_t size) {
  const auto j = nlohmann::json::parse(data, data + size, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return 0;
  try {
    Config c = parse_config(j, "fuzz");
    (void)c.input_dim();
  } catch (const Error&) {
  }
  return 0;
}

inline int tokenizer_load(const uint8_t* data, size_t size) {
  const auto j = nlohmann::json::parse(data, data + size, nullptr, false);
  if (j.is_discarded()) return 0;
  try {
    Tokenizer t = parse_tokenizer(j, nlohmann::json(), "fuzz");
    const auto ids = t.encode("Hello <s> w\xc3\xb6rld \xff", true);
    (void)t.decode(ids);
  } catch (const Error&) {
  } catch (const nlohmann::json::exception&) {  // from_file maps these to mmfree::Error
  }
  return 0;
}

// Encode and decode arbitrary bytes with the real kjv tokenizer (`tokenizer_json`).
inline int tokenizer_text(const uint8_t* data, size_t size, const std::string& tokenizer_json) {
  static const Tokenizer tok = read_tokenizer(tokenizer_json);
  const std::string text(reinterpret_cast<const char*>(data), size);
  const auto ids = tok.encode(text);
  const std::string back = tok.decode(ids);
  // Valid UTF-8 round-trips exactly, unless it contains special-token text or the metaspace
  // character U+2581 itself (which decodes to a space, as in the HF library).
  if (utf8::valid(text) && text.find('<') == std::string::npos && text.find("\xe2\x96\x81") == std::string::npos &&
      back != text)
    __builtin_trap();
  // Ids from raw bytes (in range) decode, in one go and streamed, without failing.
  std::vector<int32_t> raw;
  for (size_t i = 0; i + 1 < size; i += 2) raw.push_back(int32_t((data[i] | data[i + 1] << 8) % tok.vocab_size()));
  (void)tok.decode(raw);
  IncrementalDecoder d(tok);
  for (int32_t id : raw) (void)d.push(id);
  (void)d.finish();
  return 0;
}

inline int gguf(const uint8_t* data, size_t size) {
  const std::string p = as_file(data, size, ".gguf");
  try {
    mmfree::gguf::Reader r(p);
    (void)r.tensors().size();
  } catch (const Error&) {
    return 0;
  }
  try {  // a readable file: the model loader and a forward pass must cope too
    // The preferred kernels, named instead of measured: measuring at every load would cost most
    // of each run (the measurement itself is tested in test_kernels).
    using kernels::Regime;
    ModelOptions o;
    o.kernels = std::string(kernels::incumbent(Regime::Decode, TernaryFormat::TQ2).name) + "," +
                kernels::incumbent(Regime::Batch, TernaryFormat::TQ2).name + "," +
                kernels::incumbent(Regime::Prefill, TernaryFormat::TQ2).name;
    Model m = load_model(p, o);
    State s = m.new_state();
    (void)m.step(0, s);
  } catch (const Error&) {
  }
  return 0;
}

inline int cli_numbers(const uint8_t* data, size_t size) {
  const std::string_view s(reinterpret_cast<const char*>(data), size);
  try {
    (void)parse_int(s, "-n", -5, 1 << 24);
  } catch (const Error&) {
  }
  try {
    const double v = parse_double(s, "--top-p", 0, 1);
    if (!(v >= 0 && v <= 1)) __builtin_trap();
  } catch (const Error&) {
  }
  try {
    for (int32_t id : parse_id_list(s, "--ids", 4095))
      if (id < 0 || id > 4095) __builtin_trap();
  } catch (const Error&) {
  }
  return 0;
}

// A document as the server sends it: valid UTF-8 that parses back as JSON, whatever it holds.
inline void check_wire(const nlohmann::json& doc) {
  const std::string w = api::to_wire(doc);
  if (!utf8::valid(w)) __builtin_trap();
  if (!nlohmann::json::accept(w)) __builtin_trap();
}

// The server's request handling without sockets (serve/request.hpp, serve/stop_text.hpp): the first byte picks the
// endpoint, the rest is the body. A request is either parsed into values inside every limit,
// or refused as an ApiError with a 4xx status; stop strings never release text that contains one.
// A completion that parses runs on the tokenizer's model (kjv-tiny, beside it: a few tokens) to
// the documents the server would send (the response, every stream chunk), and those and every
// error document are valid UTF-8 and valid JSON.
inline int server_request(const uint8_t* data, size_t size, const std::string& tokenizer_json) {
  static const Tokenizer tok = read_tokenizer(tokenizer_json);
  static const Model model = [&] {
    ModelOptions o;
    o.kernels = "scalar";  // nothing measured at load
    return load_model(std::filesystem::path(tokenizer_json).parent_path().string(), o);
  }();
  if (size == 0) return 0;
  const std::string body(reinterpret_cast<const char*>(data) + 1, size - 1);
  api::Limits lim;
  lim.max_prompt_tokens = 512;
  try {
    switch (data[0] % 4) {
      case 0: {
        const api::CompletionRequest r = api::parse_completion(body, tok, tok.vocab_size(), lim, 2);
        if (r.prompt.empty() || int64_t(r.prompt.size()) > lim.max_prompt_tokens) __builtin_trap();
        for (int32_t id : r.prompt)
          if (id < 0 || id >= tok.vocab_size()) __builtin_trap();
        if (r.gen.max_new_tokens < 0 || r.gen.max_new_tokens > lim.max_tokens) __builtin_trap();
        r.gen.sampling.validate();
        GenerateOptions g = r.gen;
        g.max_new_tokens = std::min<int64_t>(g.max_new_tokens, 3);
        IncrementalDecoder dec(tok);
        api::StopText stop(r.stop);
        std::string text;
        generate(model, r.prompt, g, [&](int32_t id) {
          const std::string piece = stop.push(dec.push(id));
          check_wire({{"choices", {api::completion_choice(piece, nullptr)}}, {"tokens", {id}}});
          text += piece;
          return !stop.stopped();
        });
        text += stop.push(dec.finish());
        text += stop.finish();
        nlohmann::json doc = {{"choices", {api::completion_choice(text, "stop")}}, {"usage", api::usage(int64_t(r.prompt.size()), 3)}};
        if (r.prompt_was_text) doc["prompt"] = r.prompt_text;
        for (const auto& st : r.stop) doc["stop"].push_back(st);
        check_wire(doc);
        break;
      }
      case 1: check_wire(api::tokenize(body, tok)); break;
      case 2: check_wire(api::detokenize(body, tok)); break;
      case 3: {  // stop strings: the first line holds them ('|'-separated), the rest arrives in pieces
        const size_t nl = body.find('\n');
        if (nl == std::string::npos) break;
        std::vector<std::string> stops;
        for (size_t i = 0; i <= nl;) {
          const size_t j = std::min(body.find('|', i), nl);
          if (j > i) stops.push_back(body.substr(i, j - i));
          i = j + 1;
        }
        api::StopText st(stops);
        std::string sent;
        for (size_t i = nl + 1; i < body.size(); i += 3) sent += st.push(body.substr(i, 3));
        sent += st.finish();
        for (auto& s : stops)
          if (sent.find(s) != std::string::npos) __builtin_trap();
        if (body.compare(nl + 1, sent.size(), sent) != 0) __builtin_trap();  // a prefix of the text
        if (!st.stopped() && sent.size() != body.size() - nl - 1) __builtin_trap();
        break;
      }
    }
  } catch (const api::ApiError& e) {
    if (e.status < 400 || e.status > 499) __builtin_trap();
    check_wire(api::error_body(e.status, e.type, e.what()));
  }
  return 0;
}

// State files (state_file.hpp) for the kjv-tiny model in `model_dir`: refused as an Error, or
// read into a State of the model's shape with finite values that writes back byte for byte.
inline int state_file(const uint8_t* data, size_t size, const std::string& model_dir) {
  static const Model m = [&] {
    ModelOptions o;
    o.kernels = "scalar";  // nothing is measured at load: state files do not run the model
    return load_model(model_dir, o);
  }();
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  std::istringstream in(bytes);
  try {
    const State s = read_state(m, in, "fuzz.state");
    if (s.h.size() != size_t(m.config().num_hidden_layers) || s.position < 0) __builtin_trap();
    std::ostringstream out;
    write_state(m, s, out);
    if (out.str() != bytes) __builtin_trap();
  } catch (const Error&) {
  }
  return 0;
}

// Prefix cache records (serve/prefix_cache.hpp, docs/state-files.md) for the kjv-tiny model in
// `model_dir`: refused as an Error, or a prefix and the state after it that encode back byte for
// byte.
inline int prefix_record(const uint8_t* data, size_t size, const std::string& model_dir) {
  static const Model m = [&] {
    ModelOptions o;
    o.kernels = "scalar";
    return load_model(model_dir, o);
  }();
  static serve::PrefixCache cache(m, serve::PrefixCacheOptions{});
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  const std::vector<int32_t> ids = serve::PrefixCache::record_ids(bytes);
  try {
    const State s = cache.decode(bytes, ids, "fuzz.prefix");
    if (s.position != int64_t(ids.size()) || cache.encode(ids, s) != bytes) __builtin_trap();
  } catch (const Error&) {
  }
  return 0;
}

// Grammars (grammar.hpp, json_schema_grammar.hpp): the input is a GBNF grammar (or, when it
// starts with '{', a JSON Schema), a NUL byte, and a text. A grammar is refused as an Error or
// compiled; then every prefix of a text it accepts is alive, and at the text's end (while short)
// the trie walk's mask equals asking token by token (kjv-tiny's vocabulary).
inline int grammar(const uint8_t* data, size_t size, const std::string& tokenizer_json) {
  static const auto trie = std::make_shared<const TokenTrie>(read_tokenizer(tokenizer_json));
  const std::string in(reinterpret_cast<const char*>(data), size);
  const size_t nul = in.find('\0');
  const std::string spec = in.substr(0, nul), text = nul == std::string::npos ? "" : in.substr(nul + 1);
  if (spec.size() > 2048 || text.size() > 256) return 0;
  try {
    auto g = std::make_shared<const Grammar>(Grammar::parse(!spec.empty() && spec[0] == '{' ? JsonSchemaGrammar::convert_text(spec) : spec, "fuzz"));
    GrammarMatcher m(*g);
    std::vector<GrammarMatcher::Position> path{m.position()};
    for (char c : text) path.push_back(m.feed(path.back(), static_cast<uint8_t>(c)));
    if (GrammarMatcher::complete(path.back()))
      for (const auto& p : path)
        if (!GrammarMatcher::alive(p)) __builtin_trap();
    if (!GrammarMatcher::alive(path.back()) || text.size() > 32) return 0;
    GrammarFilter f(g, trie);
    for (char c : text) {  // walk the text a byte at a time where byte tokens allow it
      const int32_t id = [&] {
        for (int32_t i = 0; i < int32_t(trie->vocab_size()); ++i)
          if (trie->bytes(i) == std::string(1, c)) return i;
        return -1;
      }();
      if (id < 0 || !f.allows(id)) return 0;
      f.accept(id);
    }
    std::vector<uint8_t> mask;
    f.mask(mask);
    for (int32_t i = 0; i < int32_t(trie->vocab_size()); ++i)
      if ((mask[size_t(i)] != 0) != f.allows(i)) __builtin_trap();
  } catch (const Error&) {
  }
  return 0;
}

// Every target by name, as the corpus folders are named (tokenizer_text needs its tokenizer).
inline std::map<std::string, std::function<int(const uint8_t*, size_t)>> all(const std::string& tokenizer_json) {
  return {{"fuzz_safetensors", safetensors},
          {"fuzz_config", config},
          {"fuzz_tokenizer_load", tokenizer_load},
          {"fuzz_tokenizer_text", [tokenizer_json](const uint8_t* d, size_t n) { return tokenizer_text(d, n, tokenizer_json); }},
          {"fuzz_gguf", gguf},
          {"fuzz_cli_numbers", cli_numbers},
          {"fuzz_server_request", [tokenizer_json](const uint8_t* d, size_t n) { return server_request(d, n, tokenizer_json); }},
          {"fuzz_state_file", [tokenizer_json](const uint8_t* d, size_t n) {
             return state_file(d, n, std::filesystem::path(tokenizer_json).parent_path().string());
           }},
          {"fuzz_prefix_record", [tokenizer_json](const uint8_t* d, size_t n) {
             return prefix_record(d, n, std::filesystem::path(tokenizer_json).parent_path().string());
           }},
          {"fuzz_grammar", [tokenizer_json](const uint8_t* d, size_t n) { return grammar(d, n, tokenizer_json); }}};
}

}  // namespace mmfree::fuzz
