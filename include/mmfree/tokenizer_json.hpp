// mmfree: a Tokenizer read from Hugging Face's tokenizer.json (and tokenizer_config.json beside
// it, for the BOS/EOS flags), validated: what the Tokenizer cannot reproduce (a normaliser,
// pre-tokeniser or decoder other than the Llama/Mistral family's) is refused by name. Kept apart
// from tokenizer.hpp so that code which only encodes and decodes includes no JSON parser.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "mmfree/error.hpp"
#include "mmfree/json_field.hpp"
#include "mmfree/tokenizer.hpp"

namespace mmfree {

// The reading itself: a friend of Tokenizer, whose private tables it fills. Callers use
// read_tokenizer and parse_tokenizer below.
struct TokenizerReader {
  // From a tokenizer.json; tokenizer_config.json next to it (if any) sets BOS/EOS flags.
  static Tokenizer read(const std::string& path) {
    namespace fs = std::filesystem;
    std::error_code ec;
    if (fs::is_directory(path, ec)) fail(path, "is a directory, expected tokenizer.json");
    std::ifstream in(path, std::ios::binary);
    if (!in) fail(path, "cannot open");
    nlohmann::json j, cfg;
    try {
      j = nlohmann::json::parse(in);
    } catch (const nlohmann::json::exception& e) {
      fail(path, std::string("not valid JSON: ") + e.what());
    }
    const fs::path cfg_path = fs::path(path).parent_path() / "tokenizer_config.json";
    if (fs::exists(cfg_path, ec)) {
      std::ifstream ci(cfg_path, std::ios::binary);
      try {
        cfg = nlohmann::json::parse(ci);
      } catch (const nlohmann::json::exception& e) {
        fail(cfg_path.string(), std::string("not valid JSON: ") + e.what());
      }
    }
    try {
      return parse(j, cfg, path);
    } catch (const nlohmann::json::exception& e) {
      fail(path, std::string("unexpected structure: ") + e.what());
    }
  }

  static Tokenizer parse(const nlohmann::json& j, const nlohmann::json& cfg, const std::string& where) {
    Tokenizer t;
    t.where_ = where;
    if (!j.is_object()) fail(where, "not a JSON object");
    if (!j.contains("model") || !j["model"].is_object()) fail(where, "missing 'model'");
    const auto& m = j["model"];
    using namespace json_field;
    if (string_or(m, "type", "BPE", where, "model.") != "BPE")
      fail(where, "model type " + m["type"].dump() + " is not supported (only BPE)");
    if (!m.contains("vocab") || !m["vocab"].is_object()) fail(where, "model.vocab missing or not an object");
    // Ids: integers in [0, Tokenizer::kMaxId]. (The field's name is built only for the error.)
    auto id_of = [&](const nlohmann::json& v, const auto& field) -> int64_t {
      if (v.is_number_unsigned() && v.get<uint64_t>() <= uint64_t(Tokenizer::kMaxId)) return int64_t(v.get<uint64_t>());
      return integer(v, where, field(), 0, Tokenizer::kMaxId);
    };
    int64_t max_id = -1;
    for (auto& item : m["vocab"].items())
      max_id = std::max(max_id, id_of(item.value(), [&] { return "model.vocab[" + nlohmann::json(item.key()).dump() + "]"; }));
    const nlohmann::json added = j.contains("added_tokens") ? j["added_tokens"] : nlohmann::json::array();
    if (!added.is_array()) bad(where, "added_tokens", "must be an array", added);
    for (size_t i = 0; i < added.size(); ++i) {
      if (!added[i].is_object()) bad(where, "added_tokens[" + std::to_string(i) + "]", "must be an object", added[i]);
      if (!added[i].contains("id")) fail(where, "'added_tokens[" + std::to_string(i) + "]' has no id");
      max_id = std::max(max_id, id_of(added[i]["id"], [&] { return "added_tokens[" + std::to_string(i) + "].id"; }));
    }
    t.pieces_.assign(size_t(max_id + 1), std::string());
    t.special_.assign(size_t(max_id + 1), 0);
    t.byte_of_.assign(size_t(max_id + 1), -1);
    for (auto& [tok, id] : m["vocab"].items()) {
      t.vocab_[tok] = int32_t(id.get<uint64_t>());
      t.pieces_[size_t(id.get<uint64_t>())] = tok;
    }
    t.byte_fallback_ = boolean_or(m, "byte_fallback", false, where, "model.");
    t.fuse_unk_ = boolean_or(m, "fuse_unk", false, where, "model.");
    if (has(m, "unk_token")) {
      auto it = t.vocab_.find(string(m["unk_token"], where, "model.unk_token"));
      if (it != t.vocab_.end()) t.unk_id_ = it->second;
    }
    for (int b = 0; b < 256; ++b) {
      char name[8];
      std::snprintf(name, sizeof name, "<0x%02X>", b);
      auto it = t.vocab_.find(name);
      t.byte_ids_[b] = it == t.vocab_.end() ? -1 : it->second;
      if (it != t.vocab_.end()) t.byte_of_[size_t(it->second)] = int16_t(b);
    }
    // Merges: "a b" strings or ["a", "b"] pairs; rank = position.
    if (m.contains("merges") && m["merges"].is_array()) {
      int32_t rank = 0;
      for (auto& mg : m["merges"]) {
        std::string a, b;
        if (mg.is_string()) {
          const std::string s = mg.get<std::string>();
          const size_t sp = s.find(' ', 1);
          if (sp == std::string::npos) fail(where, "merge '" + s + "' is not of the form 'a b'");
          a = s.substr(0, sp), b = s.substr(sp + 1);
        } else if (mg.is_array() && mg.size() == 2 && mg[0].is_string() && mg[1].is_string()) {
          a = mg[0].get<std::string>(), b = mg[1].get<std::string>();
        } else {
          fail(where, "merge #" + std::to_string(rank) + " is neither 'a b' nor [a, b]");
        }
        auto ia = t.vocab_.find(a), ib = t.vocab_.find(b), iab = t.vocab_.find(a + b);
        if (ia == t.vocab_.end() || ib == t.vocab_.end() || iab == t.vocab_.end())
          fail(where, "merge '" + a + " " + b + "' uses tokens missing from the vocabulary");
        t.merges_.emplace(Tokenizer::pair_key(ia->second, ib->second), Tokenizer::Merge{rank++, iab->second});
      }
    }
    // Tokenizer::Added tokens (their ids were checked above).
    for (size_t i = 0; i < added.size(); ++i) {
      const auto& a = added[i];
      const std::string at = "added_tokens[" + std::to_string(i) + "].";
      Tokenizer::Added ad;
      if (!a.contains("content")) fail(where, "'" + at + "content' is missing");
      ad.content = string(a["content"], where, at + "content");
      ad.id = int32_t(a["id"].get<uint64_t>());
      ad.lstrip = boolean_or(a, "lstrip", false, where, at);
      ad.rstrip = boolean_or(a, "rstrip", false, where, at);
      ad.single_word = boolean_or(a, "single_word", false, where, at);
      ad.special = boolean_or(a, "special", false, where, at);
      if (ad.content.empty()) fail(where, "added token with empty content");
      t.pieces_[size_t(ad.id)] = ad.content;
      t.special_[size_t(ad.id)] = ad.special;
      t.vocab_.emplace(ad.content, ad.id);
      t.added_.push_back(ad);
    }
    // Sort added tokens longest first so the leftmost match is also the longest.
    std::stable_sort(t.added_.begin(), t.added_.end(),
                     [](const Tokenizer::Added& x, const Tokenizer::Added& y) { return x.content.size() > y.content.size(); });
    normalizer(t, j.contains("normalizer") ? j["normalizer"] : nlohmann::json());
    pre_tokenizer(t, j.contains("pre_tokenizer") ? j["pre_tokenizer"] : nlohmann::json());
    decoder(t, j.contains("decoder") ? j["decoder"] : nlohmann::json());
    post_processor(t, j.contains("post_processor") ? j["post_processor"] : nlohmann::json(), cfg);
    // Each piece's text as the decoder renders it, computed once rather than per decoded token.
    t.texts_.resize(t.pieces_.size());
    for (size_t id = 0; id < t.pieces_.size(); ++id) {
      t.texts_[id] = t.pieces_[id];
      for (auto& [from, to] : t.decode_replace_) replace_all(t.texts_[id], from, to);
    }
    return t;
  }

  static void normalizer(Tokenizer& t, const nlohmann::json& n) {
    using namespace json_field;
    if (n.is_null()) return;
    if (!n.is_object()) bad(t.where_, "normalizer", "must be an object", n);
    const std::string type = string_or(n, "type", "", t.where_, "normalizer.");
    if (type == "Sequence") {
      for (auto& x : n.at("normalizers")) normalizer(t, x);
    } else if (type == "Prepend") {
      t.prepend_ = string(n.at("prepend"), t.where_, "normalizer.prepend");
    } else if (type == "Replace") {
      if (!n.at("pattern").contains("String")) fail(t.where_, "Replace normalizer with a Regex pattern is not supported");
      t.replace_.push_back({string(n["pattern"]["String"], t.where_, "normalizer.pattern.String"),
                          string(n.at("content"), t.where_, "normalizer.content")});
    } else if (type == "NFC" || type == "NFKC" || type == "NFD" || type == "NFKD" || type == "Lowercase" || type == "Strip" ||
               type == "StripAccents" || type == "Precompiled") {
      fail(t.where_, "normalizer '" + type + "' is not supported (Llama/Mistral tokenizers use Prepend/Replace or none)");
    } else {
      fail(t.where_, "unknown normalizer type '" + type + "'");
    }
  }
  static void pre_tokenizer(Tokenizer& t, const nlohmann::json& p) {
    using namespace json_field;
    if (p.is_null()) return;
    if (!p.is_object()) bad(t.where_, "pre_tokenizer", "must be an object", p);
    const std::string type = string_or(p, "type", "", t.where_, "pre_tokenizer.");
    if (type == "Sequence") {
      for (auto& x : p.at("pretokenizers")) pre_tokenizer(t, x);
    } else if (type == "Metaspace") {
      t.metaspace_pre_ = true;
      t.metaspace_repl_ = string_or(p, "replacement", Tokenizer::kSpace, t.where_, "pre_tokenizer.");
      if (has(p, "prepend_scheme")) t.prepend_scheme_ = string(p["prepend_scheme"], t.where_, "pre_tokenizer.prepend_scheme");
      else t.prepend_scheme_ = boolean_or(p, "add_prefix_space", true, t.where_, "pre_tokenizer.") ? "always" : "never";
      t.metaspace_split_ = boolean_or(p, "split", true, t.where_, "pre_tokenizer.");
      if (t.prepend_scheme_ != "first" && t.prepend_scheme_ != "always" && t.prepend_scheme_ != "never")
        fail(t.where_, "Metaspace prepend_scheme '" + t.prepend_scheme_ + "' is unknown");
    } else {
      fail(t.where_, "pre_tokenizer '" + type + "' is not supported (only Metaspace)");
    }
  }
  static void decoder(Tokenizer& t, const nlohmann::json& d) {
    using namespace json_field;
    if (d.is_null()) return;
    if (!d.is_object()) bad(t.where_, "decoder", "must be an object", d);
    const std::string type = string_or(d, "type", "", t.where_, "decoder.");
    if (type == "Sequence") {
      for (auto& x : d.at("decoders")) decoder(t, x);
    } else if (type == "Replace") {
      if (!d.at("pattern").contains("String")) fail(t.where_, "Replace decoder with a Regex pattern is not supported");
      t.decode_replace_.push_back({string(d["pattern"]["String"], t.where_, "decoder.pattern.String"),
                                 string(d.at("content"), t.where_, "decoder.content")});
    } else if (type == "ByteFallback") {
      t.byte_fallback_decoder_ = true;
    } else if (type == "Fuse") {
    } else if (type == "Strip") {
      if (string_or(d, "content", " ", t.where_, "decoder.") != " ")
        fail(t.where_, "Strip decoder with content other than ' ' is not supported");
      t.strip_start_ = size_t(integer_or(d, "start", 0, t.where_, 0, 1 << 20, "decoder."));
    } else if (type == "Metaspace") {
      t.decode_replace_.push_back({string_or(d, "replacement", Tokenizer::kSpace, t.where_, "decoder."), " "});
      const std::string scheme = has(d, "prepend_scheme")
                                     ? string(d["prepend_scheme"], t.where_, "decoder.prepend_scheme")
                                     : (boolean_or(d, "add_prefix_space", true, t.where_, "decoder.") ? "always" : "never");
      if (scheme != "never") t.strip_start_ = 1;
    } else {
      fail(t.where_, "decoder '" + type + "' is not supported");
    }
  }
  static void post_processor(Tokenizer& t, const nlohmann::json& p, const nlohmann::json& cfg) {
    auto find_id = [&](const std::string& tok) -> int32_t {
      auto it = t.vocab_.find(tok);
      return it == t.vocab_.end() ? -1 : it->second;
    };
    auto token_name = [](const nlohmann::json& v) -> std::string {
      if (v.is_string()) return v.get<std::string>();
      if (v.is_object() && v.contains("content") && v["content"].is_string()) return v["content"].get<std::string>();
      return "";
    };
    t.bos_id_ = find_id("<s>");
    t.eos_id_ = find_id("</s>");
    if (cfg.is_object()) {
      if (cfg.contains("bos_token")) t.bos_id_ = find_id(token_name(cfg["bos_token"]));
      if (cfg.contains("eos_token")) t.eos_id_ = find_id(token_name(cfg["eos_token"]));
    }
    // Template: special tokens before/after the sequence.
    bool tmpl_bos = false, tmpl_eos = false;
    using namespace json_field;
    if (p.is_object() && string_or(p, "type", "", t.where_, "post_processor.") == "TemplateProcessing" && p.contains("single")) {
      bool seen_seq = false;
      if (!p["single"].is_array()) bad(t.where_, "post_processor.single", "must be an array", p["single"]);
      for (auto& e : p["single"]) {
        if (!e.is_object()) bad(t.where_, "post_processor.single[]", "must be an object", e);
        if (e.contains("Sequence")) seen_seq = true;
        else if (e.contains("SpecialToken")) {
          const int32_t id = find_id(string_or(e["SpecialToken"], "id", "", t.where_, "post_processor.single[].SpecialToken."));
          if (!seen_seq) tmpl_bos = true, t.bos_id_ = id >= 0 ? id : t.bos_id_;
          else tmpl_eos = true, t.eos_id_ = id >= 0 ? id : t.eos_id_;
        }
      }
      t.add_bos_ = tmpl_bos, t.add_eos_ = tmpl_eos;
    } else {
      t.add_bos_ = true;  // Llama default
    }
    if (cfg.is_object()) {
      t.add_bos_ = boolean_or(cfg, "add_bos_token", t.add_bos_, t.where_ + " (tokenizer_config.json)");
      t.add_eos_ = boolean_or(cfg, "add_eos_token", t.add_eos_, t.where_ + " (tokenizer_config.json)");
    }
  }
};

// A tokenizer.json file; tokenizer_config.json next to it (if any) sets the BOS/EOS flags.
inline Tokenizer read_tokenizer(const std::string& path) { return TokenizerReader::read(path); }
// A parsed tokenizer.json (j) and tokenizer_config.json (cfg, or null). `where` names the source
// in error messages.
inline Tokenizer parse_tokenizer(const nlohmann::json& j, const nlohmann::json& cfg, const std::string& where) {
  return TokenizerReader::parse(j, cfg, where);
}

}  // namespace mmfree
