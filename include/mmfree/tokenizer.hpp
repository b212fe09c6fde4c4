// mmfree: the tokenizer of Hugging Face's `tokenizer.json` (Llama/Mistral family: BPE with byte
// fallback); reading one is tokenizer_json.hpp's (read_tokenizer, parse_tokenizer).
//
// Encoding follows the `tokenizers` library step by step:
//   1. added/special tokens are split out of the raw text (leftmost-longest);
//   2. each remaining segment is normalised (legacy: Prepend "▁" + Replace " " -> "▁") and/or
//      pre-tokenised (Metaspace with prepend_scheme first/always/never, optional split);
//   3. each word is BPE-merged by merge rank, lowest first, leftmost on ties, with a
//      priority queue over a linked list of symbols (O(n log n) per word: a whole chapter
//      is one word in the legacy layout);
//   4. characters missing from the vocabulary become <0xXX> byte tokens (byte fallback) or
//      <unk> (consecutive ones fused);
//   5. BOS/EOS as tokenizer_config.json or the post-processor template says.
// Decoding runs the decoder chain (Replace, ByteFallback, Fuse, Strip, Metaspace) and skips
// special tokens. IncrementalDecoder streams text and never splits a UTF-8 character.
#pragma once

#include <algorithm>
#include <cstdint>
#include <queue>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "mmfree/error.hpp"

namespace mmfree {

namespace utf8 {
// Length of the UTF-8 sequence starting at s[i], or 0 if it is not a valid one.
inline size_t seq_len(std::string_view s, size_t i) {
  const unsigned char c = static_cast<unsigned char>(s[i]);
  size_t n;
  uint32_t cp;
  if (c < 0x80) return 1;
  if (c >= 0xc2 && c <= 0xdf) n = 2, cp = c & 0x1f;
  else if (c >= 0xe0 && c <= 0xef) n = 3, cp = c & 0x0f;
  else if (c >= 0xf0 && c <= 0xf4) n = 4, cp = c & 0x07;
  else return 0;
  if (i + n > s.size()) return 0;
  for (size_t k = 1; k < n; ++k) {
    const unsigned char d = static_cast<unsigned char>(s[i + k]);
    if ((d & 0xc0) != 0x80) return 0;
    cp = (cp << 6) | (d & 0x3f);
  }
  if ((n == 3 && cp < 0x800) || (n == 4 && (cp < 0x10000 || cp > 0x10ffff)) || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
  return n;
}
// True if s[i..] could still become a valid sequence with more bytes.
inline bool incomplete_prefix(std::string_view s, size_t i) {
  const unsigned char c = static_cast<unsigned char>(s[i]);
  size_t n = c >= 0xf0 && c <= 0xf4 ? 4 : c >= 0xe0 && c <= 0xef ? 3 : c >= 0xc2 && c <= 0xdf ? 2 : 0;
  if (n == 0 || i + n <= s.size()) return false;
  for (size_t k = i + 1; k < s.size(); ++k)
    if ((static_cast<unsigned char>(s[k]) & 0xc0) != 0x80) return false;
  return true;
}
inline bool valid(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    size_t n = seq_len(s, i);
    if (!n) return false;
    i += n;
  }
  return true;
}
inline const std::string kReplacement = "\xef\xbf\xbd";  // U+FFFD
}  // namespace utf8

inline void replace_all(std::string& s, std::string_view from, std::string_view to) {
  if (from.empty()) return;
  std::string out;
  out.reserve(s.size());
  size_t i = 0;
  for (size_t j; (j = s.find(from, i)) != std::string::npos; i = j + from.size()) out.append(s, i, j - i).append(to);
  out.append(s, i, std::string::npos);
  s.swap(out);
}

class Tokenizer {
 public:
  static constexpr int64_t kMaxId = 1 << 24;  // token ids above this are refused
  static inline const std::string kSpace = "\xe2\x96\x81";  // "▁"

  // ---- encoding ---------------------------------------------------------------------------

  std::vector<int32_t> encode(std::string_view text, bool add_special = true) const {
    std::vector<int32_t> ids;
    if (add_special && add_bos_ && bos_id_ >= 0) ids.push_back(bos_id_);
    size_t pos = 0;
    bool first_segment = true;
    while (pos <= text.size()) {
      // Find the next added token (leftmost; longest among those at the same place).
      size_t best = std::string_view::npos, best_b = 0, best_e = 0;
      const Added* hit = nullptr;
      for (const Added& a : added_) {
        size_t from = pos;
        while (true) {
          size_t f = text.find(a.content, from);
          if (f == std::string_view::npos || f >= best) break;
          if (a.single_word && !word_bounded(text, f, f + a.content.size())) {
            from = f + 1;
            continue;
          }
          best = f, hit = &a;
          break;
        }
      }
      if (hit) {
        best_b = best, best_e = best + hit->content.size();
        if (hit->lstrip)
          while (best_b > pos && is_space(text[best_b - 1])) --best_b;
        if (hit->rstrip)
          while (best_e < text.size() && is_space(text[best_e])) ++best_e;
      }
      const size_t seg_end = hit ? best_b : text.size();
      if (seg_end > pos) encode_segment(text.substr(pos, seg_end - pos), first_segment, ids);
      if (!hit) break;
      ids.push_back(hit->id);
      first_segment = false;
      pos = best_e;
    }
    if (add_special && add_eos_ && eos_id_ >= 0) ids.push_back(eos_id_);
    return ids;
  }

  // ---- decoding ---------------------------------------------------------------------------

  // The text of `ids`, special tokens skipped, as the decoder chain produces it.
  std::string decode(const std::vector<int32_t>& ids) const {
    std::string out;
    std::string bytes;
    for (int32_t id : ids) {
      check_id(id);
      if (special_[size_t(id)]) continue;
      if (const int b = byte_value(id); b >= 0) {
        bytes.push_back(char(b));
        continue;
      }
      flush_bytes(bytes, out);
      out += piece_text(id);
    }
    flush_bytes(bytes, out);
    strip_start(out);
    return out;
  }

  // ---- facts --------------------------------------------------------------------------------

  int64_t vocab_size() const { return int64_t(pieces_.size()); }
  int32_t bos_id() const { return bos_id_; }
  int32_t eos_id() const { return eos_id_; }
  int32_t unk_id() const { return unk_id_; }
  bool adds_bos() const { return add_bos_; }
  bool adds_eos() const { return add_eos_; }
  const std::string& piece(int32_t id) const { return check_id(id), pieces_[size_t(id)]; }
  bool is_special(int32_t id) const { return check_id(id), special_[size_t(id)] != 0; }
  size_t merge_count() const { return merges_.size(); }
  std::string normalizer_kind() const { return metaspace_pre_ ? "metaspace (prepend_scheme " + prepend_scheme_ + ")" : prepend_.empty() ? "none" : "legacy (Prepend + Replace)"; }
  const std::string& source() const { return where_; }

  // Text of one token as it appears inside a decoded string (▁ -> space, bytes raw).
  const std::string& piece_text(int32_t id) const { return texts_[size_t(id)]; }
  // Byte value of a <0xXX> token, or -1.
  int byte_value(int32_t id) const { return check_id(id), byte_fallback_decoder_ ? byte_of_[size_t(id)] : -1; }
  size_t strip_start_count() const { return strip_start_; }

  void check_id(int32_t id) const {
    if (id < 0 || size_t(id) >= pieces_.size())
      fail("token id " + std::to_string(id), "out of range [0, " + std::to_string(pieces_.size()) + ") of " + where_);
  }

 private:
  friend struct TokenizerReader;  // tokenizer_json.hpp: a tokenizer.json read into one
  struct Merge {
    int32_t rank, id;
  };
  struct Added {
    std::string content;
    int32_t id = 0;
    bool lstrip = false, rstrip = false, single_word = false, special = false;
  };
  static uint64_t pair_key(int32_t a, int32_t b) { return (uint64_t(uint32_t(a)) << 32) | uint32_t(b); }
  static bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }
  static bool is_word_char(char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || (c & 0x80); }
  static bool word_bounded(std::string_view t, size_t b, size_t e) {
    return (b == 0 || !is_word_char(t[b - 1])) && (e >= t.size() || !is_word_char(t[e]));
  }

  // Normalise, pre-tokenise and BPE one segment between added tokens.
  void encode_segment(std::string_view seg, bool first_segment, std::vector<int32_t>& ids) const {
    std::string s(seg);
    for (auto& [from, to] : replace_) replace_all(s, from, to);
    if (!prepend_.empty() && !s.empty()) s = prepend_ + s;
    if (!metaspace_pre_) {
      bpe_word(s, ids);
      return;
    }
    replace_all(s, " ", metaspace_repl_);
    if (!s.empty() && (prepend_scheme_ == "always" || (prepend_scheme_ == "first" && first_segment)) &&
        s.compare(0, metaspace_repl_.size(), metaspace_repl_) != 0)
      s = metaspace_repl_ + s;
    if (!metaspace_split_) {
      bpe_word(s, ids);
      return;
    }
    // Split before every replacement character (each word starts with it).
    size_t start = 0;
    for (size_t i = metaspace_repl_.size(); i <= s.size();) {
      size_t f = s.find(metaspace_repl_, i);
      if (f == std::string::npos) break;
      if (f > start) bpe_word(std::string_view(s).substr(start, f - start), ids);
      start = f;
      i = f + metaspace_repl_.size();
    }
    if (start < s.size()) bpe_word(std::string_view(s).substr(start), ids);
  }

  // BPE over one word. Symbols form a linked list; candidate merges sit in a min-heap of
  // (rank, position) and are checked for staleness when popped.
  void bpe_word(std::string_view w, std::vector<int32_t>& ids) const {
    if (w.empty()) return;
    struct Sym {
      int32_t id;
      int32_t prev, next;
      uint32_t len;  // bytes of the word it covers (0 once merged away)
    };
    std::vector<Sym> sym;
    sym.reserve(w.size());
    bool last_unk = false;
    for (size_t i = 0; i < w.size();) {
      size_t n = utf8::seq_len(w, i);
      if (n == 0) n = 1;  // an invalid byte stands alone (and falls back to its byte token)
      auto it = vocab_.find(w.substr(i, n));
      if (it != vocab_.end()) {
        sym.push_back({it->second, 0, 0, uint32_t(n)}), last_unk = false;
      } else if (byte_fallback_ && std::all_of(w.begin() + long(i), w.begin() + long(i + n),
                                               [&](char c) { return byte_ids_[uint8_t(c)] >= 0; })) {
        for (size_t k = 0; k < n; ++k) sym.push_back({byte_ids_[uint8_t(w[i + k])], 0, 0, 1});
        last_unk = false;
      } else {
        if (unk_id_ < 0) fail(where_, "character not in the vocabulary and no <unk> token to stand for it");
        if (fuse_unk_ && last_unk) sym.back().len += uint32_t(n);
        else sym.push_back({unk_id_, 0, 0, uint32_t(n)});
        last_unk = true;
      }
      i += n;
    }
    const int32_t n = int32_t(sym.size());
    for (int32_t i = 0; i < n; ++i) sym[size_t(i)].prev = i - 1, sym[size_t(i)].next = i + 1 < n ? i + 1 : -1;
    struct Cand {
      int32_t rank, pos, left, right;
      bool operator>(const Cand& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
    };
    std::priority_queue<Cand, std::vector<Cand>, std::greater<Cand>> heap;
    auto push = [&](int32_t a) {
      const int32_t b = sym[size_t(a)].next;
      if (b < 0) return;
      auto it = merges_.find(pair_key(sym[size_t(a)].id, sym[size_t(b)].id));
      if (it != merges_.end()) heap.push({it->second.rank, a, sym[size_t(a)].id, sym[size_t(b)].id});
    };
    for (int32_t i = 0; i + 1 < n; ++i) push(i);
    while (!heap.empty()) {
      const Cand c = heap.top();
      heap.pop();
      Sym& a = sym[size_t(c.pos)];
      if (a.len == 0 || a.id != c.left || a.next < 0) continue;
      Sym& b = sym[size_t(a.next)];
      if (b.id != c.right) continue;
      a.id = merges_.at(pair_key(c.left, c.right)).id;
      a.len += b.len;
      b.len = 0;
      a.next = b.next;
      if (b.next >= 0) sym[size_t(b.next)].prev = c.pos;
      if (a.prev >= 0) push(a.prev);
      push(c.pos);
    }
    for (int32_t i = 0; i >= 0 && i < n; i = sym[size_t(i)].next) ids.push_back(sym[size_t(i)].id);
  }

  // ByteFallback: a run of byte tokens decodes as UTF-8, or to one U+FFFD per byte if it
  // is not valid (as the tokenizers library does).
  static void flush_bytes(std::string& bytes, std::string& out) {
    if (bytes.empty()) return;
    if (utf8::valid(bytes)) out += bytes;
    else
      for (size_t i = 0; i < bytes.size(); ++i) out += utf8::kReplacement;
    bytes.clear();
  }
  void strip_start(std::string& s) const {
    size_t k = 0;
    while (k < strip_start_ && k < s.size() && s[k] == ' ') ++k;
    s.erase(0, k);
  }

  std::string where_;
  // Looked up by string_view (a piece of the text) without building a string per character.
  struct PieceHash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  std::unordered_map<std::string, int32_t, PieceHash, std::equal_to<>> vocab_;
  std::vector<std::string> pieces_, texts_;
  std::vector<uint8_t> special_;
  std::unordered_map<uint64_t, Merge> merges_;
  std::vector<Added> added_;
  int32_t byte_ids_[256];
  std::vector<int16_t> byte_of_;  // byte value of each <0xXX> token, -1 for the others
  bool byte_fallback_ = false, fuse_unk_ = false, byte_fallback_decoder_ = false;
  int32_t unk_id_ = -1, bos_id_ = -1, eos_id_ = -1;
  bool add_bos_ = true, add_eos_ = false;
  std::string prepend_;
  std::vector<std::pair<std::string, std::string>> replace_, decode_replace_;
  bool metaspace_pre_ = false, metaspace_split_ = true;
  std::string metaspace_repl_ = kSpace, prepend_scheme_ = "always";
  size_t strip_start_ = 0;
};

// Streams the text of tokens as they are generated. Text is released only in whole UTF-8
// characters: a character spread over several byte tokens comes out once all have arrived.
class IncrementalDecoder {
 public:
  explicit IncrementalDecoder(const Tokenizer& t) : t_(&t) {}

  // Text that token `id` completes (possibly empty).
  std::string push(int32_t id) {
    t_->check_id(id);
    if (t_->is_special(id)) return "";
    const int b = t_->byte_value(id);
    std::string out;
    if (b >= 0) {
      bytes_.push_back(char(b));
      // Release the complete characters at the front; keep an incomplete tail.
      size_t i = 0;
      while (i < bytes_.size()) {
        size_t n = utf8::seq_len(bytes_, i);
        if (n) {
          out.append(bytes_, i, n);
          i += n;
        } else if (utf8::incomplete_prefix(bytes_, i)) {
          break;
        } else {
          out += utf8::kReplacement;
          ++i;
        }
      }
      bytes_.erase(0, i);
    } else {
      out = flush() + t_->piece_text(id);
    }
    return strip(out);
  }
  // Whatever is still held back (an incomplete character) as U+FFFD.
  std::string finish() { return strip(flush()); }

 private:
  std::string flush() {
    std::string out;
    for (size_t i = 0; i < bytes_.size(); ++i) out += utf8::kReplacement;
    bytes_.clear();
    return out;
  }
  std::string strip(std::string s) {
    while (stripped_ < t_->strip_start_count() && !s.empty()) {
      if (s[0] == ' ') s.erase(0, 1);
      stripped_ = t_->strip_start_count();  // only the very start of the text is stripped
    }
    return s;
  }
  const Tokenizer* t_;
  std::string bytes_;
  size_t stripped_ = 0;
};

}  // namespace mmfree
