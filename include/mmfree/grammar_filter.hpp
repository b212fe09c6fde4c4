// mmfree: a grammar as a sampler's TokenFilter: which tokens of a vocabulary keep the generated
// text a prefix of the grammar's language. Tokens' bytes are held in a trie (TokenTrie, built once
// per tokenizer and shared), so a mask walks each shared beginning once and drops a whole
// subtree at its first byte the grammar refuses: in structural positions (after `{`, `"key":`)
// almost every token falls at its first byte.
#pragma once

#include <array>
#include <map>
#include <unordered_map>
#include <memory>
#include <string>
#include <vector>

#include "mmfree/grammar.hpp"
#include "mmfree/sampler.hpp"
#include "mmfree/tokenizer.hpp"

namespace mmfree {

class TokenTrie {
 public:
  explicit TokenTrie(const Tokenizer& tok) : eos_(tok.eos_id()) {
    const int32_t V = int32_t(tok.vocab_size());
    bytes_.resize(size_t(V));
    // Build with maps, then lay out each node's children contiguously.
    struct Build {
      std::map<uint8_t, int32_t> next;
      std::vector<int32_t> ids;
    };
    std::vector<Build> b(1);
    for (int32_t id = 0; id < V; ++id) {
      if (tok.is_special(id)) continue;
      const int byte = tok.byte_value(id);
      bytes_[size_t(id)] = byte >= 0 ? std::string(1, char(byte)) : tok.piece_text(id);
      const std::string& s = bytes_[size_t(id)];
      if (s.empty()) continue;
      int32_t n = 0;
      for (char c : s) {
        auto it = b[size_t(n)].next.find(uint8_t(c));
        if (it == b[size_t(n)].next.end()) {
          b.emplace_back();
          it = b[size_t(n)].next.emplace(uint8_t(c), int32_t(b.size() - 1)).first;
        }
        n = it->second;
      }
      b[size_t(n)].ids.push_back(id);
    }
    nodes_.resize(b.size());
    for (size_t n = 0; n < b.size(); ++n) {
      nodes_[n].child_begin = int32_t(child_byte_.size());
      for (const auto& [c, k] : b[n].next) child_byte_.push_back(c), child_node_.push_back(k);
      nodes_[n].child_end = int32_t(child_byte_.size());
      nodes_[n].id_begin = int32_t(ids_.size());
      ids_.insert(ids_.end(), b[n].ids.begin(), b[n].ids.end());
      nodes_[n].id_end = int32_t(ids_.size());
    }
  }

  // The bytes a token adds to the text (empty for special tokens).
  const std::string& bytes(int32_t id) const { return bytes_[size_t(id)]; }
  size_t vocab_size() const { return bytes_.size(); }
  int32_t eos_id() const { return eos_; }

  struct Node {
    int32_t child_begin, child_end, id_begin, id_end;
  };
  const std::vector<Node>& nodes() const { return nodes_; }
  const std::vector<uint8_t>& child_byte() const { return child_byte_; }
  const std::vector<int32_t>& child_node() const { return child_node_; }
  const std::vector<int32_t>& ids() const { return ids_; }

 private:
  std::vector<std::string> bytes_;
  std::vector<Node> nodes_;
  std::vector<uint8_t> child_byte_;
  std::vector<int32_t> child_node_, ids_;
  int32_t eos_;
};

// A grammar constraint for one generation. EOS is allowed exactly when the text is a whole
// sentence of the grammar; once nothing may follow, it is the only token allowed (without an
// EOS token, nothing is, and generation ends there).
class GrammarFilter : public TokenFilter {
 public:
  GrammarFilter(std::shared_ptr<const Grammar> g, std::shared_ptr<const TokenTrie> trie)
      : g_(std::move(g)), trie_(std::move(trie)), m_(*g_) {}

  bool allows(int32_t id) const override {
    if (id < 0 || size_t(id) >= trie_->vocab_size()) return false;
    const auto p = m_.position();
    if (id == trie_->eos_id()) return GrammarMatcher::complete(p);
    const std::string& s = trie_->bytes(id);
    return !s.empty() && GrammarMatcher::alive(m_.feed(p, s));
  }
  void mask(std::vector<uint8_t>& allowed) const override {
    allowed.assign(trie_->vocab_size(), 0);
    const auto p = m_.position();
    if (trie_->eos_id() >= 0 && GrammarMatcher::complete(p)) allowed[size_t(trie_->eos_id())] = 1;
    // The walk meets few distinct positions (inside a string, every character leads back to the
    // same one): each is numbered once and its successors looked up in a table, so a trie node
    // costs a lookup, not a step of the pushdown automaton. The table is kept from one token to
    // the next while the matcher's numbering holds: a string's positions recur at every token.
    if (!walk_ || walk_epoch_ != m_.epoch() || walk_->positions.size() > 50000) {
      walk_ = std::make_unique<Walk>(*this);
      walk_epoch_ = m_.epoch();
    }
    walk(*walk_, 0, walk_->id(p), allowed);
  }
  void accept(int32_t id) override {
    if (id == trie_->eos_id()) return;
    m_.move_to(m_.feed(m_.position(), trie_->bytes(id)));
  }
  bool finished() const { return GrammarMatcher::finished(m_.position()); }
  bool complete() const { return GrammarMatcher::complete(m_.position()); }

 private:
  struct KeyHash {
    size_t operator()(const std::vector<int32_t>& k) const {
      uint64_t h = 1469598103934665603ull;
      for (int32_t v : k) h = (h ^ uint32_t(v)) * 1099511628211ull;
      return size_t(h);
    }
  };
  struct Walk {
    explicit Walk(const GrammarFilter& filter) : f(filter) {}
    const GrammarFilter& f;
    std::vector<GrammarMatcher::Position> positions;
    std::unordered_map<std::vector<int32_t>, int32_t, KeyHash> ids;  // a position's key -> its number
    std::vector<std::array<int32_t, 256>> next;    // -2: not yet known, -1: refused
    int32_t id(const GrammarMatcher::Position& p) {
      std::vector<int32_t> key = p.tops;
      key.push_back(int32_t(p.partial)), key.push_back(p.pending), key.push_back(p.length);
      auto [it, fresh] = ids.try_emplace(std::move(key), int32_t(positions.size()));
      if (fresh) {
        positions.push_back(p);
        next.emplace_back();
        next.back().fill(-2);
      }
      return it->second;
    }
    int32_t step(int32_t s, uint8_t b) {
      int32_t& n = next[size_t(s)][b];
      if (n == -2) {
        const auto q = f.m_.feed(positions[size_t(s)], b);
        const int32_t k = GrammarMatcher::alive(q) ? id(q) : -1;
        next[size_t(s)][b] = k;  // (`n` may dangle: id() can grow `next`)
        return k;
      }
      return n;
    }
  };
  void walk(Walk& w, int32_t n, int32_t s, std::vector<uint8_t>& allowed) const {
    const auto& node = trie_->nodes()[size_t(n)];
    for (int32_t c = node.child_begin; c < node.child_end; ++c) {
      const int32_t q = w.step(s, trie_->child_byte()[size_t(c)]);
      if (q < 0) continue;
      const int32_t k = trie_->child_node()[size_t(c)];
      const auto& kn = trie_->nodes()[size_t(k)];
      for (int32_t i = kn.id_begin; i < kn.id_end; ++i) allowed[size_t(trie_->ids()[size_t(i)])] = 1;
      walk(w, k, q, allowed);
    }
  }

  std::shared_ptr<const Grammar> g_;
  std::shared_ptr<const TokenTrie> trie_;
  GrammarMatcher m_;
  mutable std::unique_ptr<Walk> walk_;
  mutable uint64_t walk_epoch_ = 0;
};

}  // namespace mmfree
