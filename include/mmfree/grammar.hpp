// mmfree: grammars that constrain generation. A Grammar is compiled from GBNF, the notation
// llama.cpp uses (docs/grammars.md): rules `name ::= alternatives`, "literals" with escapes,
// [character classes] (negated with ^, ranges a-z), `.` for any character, ( groups ), and the
// postfix operators * + ? {m} {m,} {m,n}; `#` starts a comment; the start rule is `root`.
// Characters are Unicode code points; the text is UTF-8.
//
// A GrammarMatcher follows the text generated so far as a set of parse stacks (a pushdown
// automaton that keeps every parse alive at once). Stacks are linked lists of nodes that share
// their tails, so a character's successors cost a few nodes, not copies of whole stacks.
#pragma once

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "mmfree/error.hpp"

namespace mmfree {

class Grammar {
 public:
  // One element of a rule's alternative: match a character class, call a rule, or end the
  // alternative.
  struct Element {
    enum Kind : uint8_t { End, Rule, Chars } kind;
    int32_t value;  // Rule: the rule's index; Chars: the class's index
  };
  struct CharClass {
    std::vector<std::pair<uint32_t, uint32_t>> ranges;  // inclusive
    bool negated = false;
    bool matches(uint32_t c) const {
      bool in = false;
      for (const auto& [a, b] : ranges)
        if (c >= a && c <= b) {
          in = true;
          break;
        }
      return in != negated;
    }
    // Some code point in [lo, hi] matches (a character whose first bytes are known).
    bool intersects(uint32_t lo, uint32_t hi) const {
      if (!negated) {
        for (const auto& [a, b] : ranges)
          if (a <= hi && b >= lo) return true;
        return false;
      }
      // Negated: [lo, hi] is not wholly inside the excluded ranges.
      uint32_t c = lo;
      for (bool moved = true; moved && c <= hi;) {
        moved = false;
        for (const auto& [a, b] : ranges)
          if (c >= a && c <= b) {
            if (b >= hi) return false;
            c = b + 1;
            moved = true;
          }
      }
      return c <= hi;
    }
  };

  // Compiles GBNF text; `where` names it in errors (a file, a request field).
  static Grammar parse(std::string_view text, const std::string& where = "grammar") {
    Grammar g;
    g.where_ = where;
    Parser p(text, where, g);
    p.run();
    return g;
  }

  const std::vector<Element>& elements() const { return elems_; }
  const std::vector<CharClass>& classes() const { return classes_; }
  // Start element of every alternative of rule r.
  const std::vector<int32_t>& alternatives(int32_t r) const { return rules_[size_t(r)]; }
  int32_t root() const { return root_; }
  size_t rule_count() const { return rules_.size(); }
  const std::string& where() const { return where_; }

 private:
  struct Parser {
    std::string_view s;
    const std::string& where;
    Grammar& g;
    size_t i = 0;
    std::map<std::string, int32_t, std::less<>> ids;  // rule name -> index
    std::vector<uint8_t> defined;
    std::vector<std::string> names;

    Parser(std::string_view text, const std::string& w, Grammar& gr) : s(text), where(w), g(gr) {}

    [[noreturn]] void error(const std::string& what) const {
      size_t line = 1, col = 1;
      for (size_t k = 0; k < i && k < s.size(); ++k) {
        if (s[k] == '\n') ++line, col = 1;
        else ++col;
      }
      fail(where, what + " at line " + std::to_string(line) + ", column " + std::to_string(col));
    }
    int32_t rule_id(std::string_view name) {
      auto it = ids.find(name);
      if (it != ids.end()) return it->second;
      const int32_t id = int32_t(g.rules_.size());
      g.rules_.emplace_back();
      defined.push_back(0);
      names.emplace_back(name);
      ids.emplace(std::string(name), id);
      return id;
    }
    int32_t new_rule(const std::string& hint) {
      return rule_id(hint + "~" + std::to_string(g.rules_.size()));
    }
    static bool name_char(char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_'; }
    void skip_space() {
      while (i < s.size()) {
        if (s[i] == '#') {
          while (i < s.size() && s[i] != '\n') ++i;
        } else if (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r') {
          ++i;
        } else {
          break;
        }
      }
    }
    // A rule's head `name ::=` starts here.
    bool at_rule_head() const {
      size_t k = i;
      while (k < s.size() && name_char(s[k])) ++k;
      if (k == i) return false;
      while (k < s.size() && (s[k] == ' ' || s[k] == '\t')) ++k;
      return s.substr(k, 3) == "::=";
    }
    std::string_view name() {
      const size_t b = i;
      while (i < s.size() && name_char(s[i])) ++i;
      if (i == b) error("expected a rule name");
      return s.substr(b, i - b);
    }
    uint32_t utf8_char() {  // one code point of the grammar's text
      const auto c = static_cast<unsigned char>(s[i]);
      int n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
      if (!n || i + size_t(n) > s.size()) error("invalid UTF-8");
      uint32_t v = n == 1 ? c : c & (0x7F >> n);
      for (int k = 1; k < n; ++k) {
        const auto d = static_cast<unsigned char>(s[i + size_t(k)]);
        if ((d & 0xC0) != 0x80) error("invalid UTF-8");
        v = (v << 6) | (d & 0x3F);
      }
      i += size_t(n);
      return v;
    }
    uint32_t hex(int digits) {
      uint32_t v = 0;
      for (int k = 0; k < digits; ++k, ++i) {
        if (i >= s.size() || !std::isxdigit(static_cast<unsigned char>(s[i]))) error("expected " + std::to_string(digits) + " hex digits");
        const char c = s[i];
        v = v * 16 + uint32_t(c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10);
      }
      if (v > 0x10FFFF) error("code point out of range");
      return v;
    }
    uint32_t char_or_escape() {
      if (i >= s.size()) error("unexpected end");
      if (s[i] != '\\') return utf8_char();
      if (++i >= s.size()) error("unexpected end after '\\'");
      const char c = s[i++];
      switch (c) {
        case 'n': return '\n';
        case 't': return '\t';
        case 'r': return '\r';
        case '\\': return '\\';
        case '"': return '"';
        case '\'': return '\'';
        case '[': return '[';
        case ']': return ']';
        case '-': return '-';
        case '^': return '^';
        case '/': return '/';
        case 'x': return hex(2);
        case 'u': return hex(4);
        case 'U': return hex(8);
        default: --i, error(std::string("unknown escape '\\") + c + "'");
      }
    }
    int32_t add_class(CharClass c) {
      g.classes_.push_back(std::move(c));
      return int32_t(g.classes_.size() - 1);
    }

    void run() {
      skip_space();
      while (i < s.size()) {
        if (!at_rule_head()) error("expected a rule ('name ::= ...')");
        const std::string_view n = name();
        const int32_t r = rule_id(n);
        if (defined[size_t(r)]) error("rule '" + std::string(n) + "' is defined twice");
        defined[size_t(r)] = 1;
        skip_space();
        i += 3;  // ::=
        alternatives(r, /*nested=*/false);
      }
      for (size_t r = 0; r < names.size(); ++r)
        if (!defined[r]) fail(where, "rule '" + names[r] + "' is used but never defined");
      auto root = ids.find("root");
      if (root == ids.end()) fail(where, "has no 'root' rule");
      g.root_ = root->second;
    }

    // alternatives of rule r, up to the next rule's head (top level) or ')' (nested).
    void alternatives(int32_t r, bool nested) {
      for (;;) {
        std::vector<Element> seq;
        sequence(seq, nested);
        seq.push_back({Element::End, 0});
        g.rules_[size_t(r)].push_back(int32_t(g.elems_.size()));
        g.elems_.insert(g.elems_.end(), seq.begin(), seq.end());
        skip_space();
        if (i < s.size() && s[i] == '|') {
          ++i;
          continue;
        }
        return;
      }
    }
    void sequence(std::vector<Element>& out, bool nested) {
      for (;;) {
        skip_space();
        if (i >= s.size() || s[i] == '|' || (nested && s[i] == ')')) return;
        if (!nested && at_rule_head()) return;
        const size_t begin = out.size();
        const char c = s[i];
        if (c == '"') {
          ++i;
          while (i < s.size() && s[i] != '"') {
            const uint32_t ch = char_or_escape();
            out.push_back({Element::Chars, add_class({{{ch, ch}}, false})});
          }
          if (i >= s.size()) error("unterminated string");
          ++i;
        } else if (c == '[') {
          ++i;
          CharClass cc;
          if (i < s.size() && s[i] == '^') cc.negated = true, ++i;
          while (i < s.size() && s[i] != ']') {
            const uint32_t a = char_or_escape();
            uint32_t b = a;
            if (i + 1 < s.size() && s[i] == '-' && s[i + 1] != ']') {
              ++i;
              b = char_or_escape();
              if (b < a) error("character range is backwards");
            }
            cc.ranges.emplace_back(a, b);
          }
          if (i >= s.size()) error("unterminated character class");
          ++i;
          out.push_back({Element::Chars, add_class(std::move(cc))});
        } else if (c == '.') {
          ++i;
          out.push_back({Element::Chars, add_class({{}, true})});
        } else if (c == '(') {
          ++i;
          const int32_t r = new_rule("group");
          defined[size_t(r)] = 1;
          alternatives(r, /*nested=*/true);
          skip_space();
          if (i >= s.size() || s[i] != ')') error("expected ')'");
          ++i;
          out.push_back({Element::Rule, r});
        } else if (name_char(c)) {
          out.push_back({Element::Rule, rule_id(name())});
        } else {
          error(std::string("unexpected '") + c + "'");
        }
        // Postfix operators apply to what was just read (a literal of several characters as a whole).
        postfix(out, begin);
      }
    }
    void postfix(std::vector<Element>& out, size_t begin) {
      if (i >= s.size()) return;
      const char c = s[i];
      if (c != '*' && c != '+' && c != '?' && c != '{') return;
      int64_t lo = 0, hi = -1;  // hi -1: unbounded
      ++i;
      if (c == '+') lo = 1;
      else if (c == '?') hi = 1;
      else if (c == '{') {
        auto number = [&] {
          skip_space();
          const size_t b = i;
          int64_t v = 0;
          while (i < s.size() && std::isdigit(static_cast<unsigned char>(s[i])) && v < 100000) v = v * 10 + (s[i++] - '0');
          if (i == b) error("expected a number in { }");
          skip_space();
          return v;
        };
        lo = number();
        hi = lo;
        if (i < s.size() && s[i] == ',') {
          ++i;
          skip_space();
          hi = i < s.size() && s[i] == '}' ? -1 : number();
        }
        if (i >= s.size() || s[i] != '}') error("expected '}'");
        ++i;
        if (hi >= 0 && hi < lo) error("repetition {m,n} with n < m");
        if (lo > 1000 || hi > 1000) error("repetition counts above 1000 are not supported");
      }
      // The item as one rule, then: lo copies, and (hi - lo) nested optionals or a star.
      std::vector<Element> item(out.begin() + long(begin), out.end());
      out.resize(begin);
      int32_t x;
      if (item.size() == 1 && item[0].kind == Element::Rule) {
        x = item[0].value;
      } else {
        x = new_rule("item");
        defined[size_t(x)] = 1;
        item.push_back({Element::End, 0});
        g.rules_[size_t(x)].push_back(int32_t(g.elems_.size()));
        g.elems_.insert(g.elems_.end(), item.begin(), item.end());
      }
      for (int64_t k = 0; k < lo; ++k) out.push_back({Element::Rule, x});
      auto add_rule = [&](std::vector<std::vector<Element>> alts) {
        const int32_t r = new_rule("rep");
        defined[size_t(r)] = 1;
        for (auto& a : alts) {
          a.push_back({Element::End, 0});
          g.rules_[size_t(r)].push_back(int32_t(g.elems_.size()));
          g.elems_.insert(g.elems_.end(), a.begin(), a.end());
        }
        return r;
      };
      if (hi < 0) {  // star ::= x star | (empty)
        const int32_t star = new_rule("star");
        defined[size_t(star)] = 1;
        g.rules_[size_t(star)].push_back(int32_t(g.elems_.size()));
        g.elems_.insert(g.elems_.end(), {{Element::Rule, x}, {Element::Rule, star}, {Element::End, 0}});
        g.rules_[size_t(star)].push_back(int32_t(g.elems_.size()));
        g.elems_.push_back({Element::End, 0});
        out.push_back({Element::Rule, star});
      } else if (hi > lo) {  // opt_k ::= x opt_{k-1} | (empty)
        int32_t tail = add_rule({{{Element::Rule, x}}, {}});
        for (int64_t k = 1; k < hi - lo; ++k) tail = add_rule({{{Element::Rule, x}, {Element::Rule, tail}}, {}});
        out.push_back({Element::Rule, tail});
      }
    }
  };

  std::vector<Element> elems_;
  std::vector<CharClass> classes_;
  std::vector<std::vector<int32_t>> rules_;
  int32_t root_ = -1;
  std::string where_;
};

// Where a text stands in a grammar: every parse still alive. Feed it characters (UTF-8 bytes);
// it says whether the text so far is a prefix of the language and whether it is a whole sentence.
class GrammarMatcher {
 public:
  static constexpr int32_t kAccepted = -1;  // a stack with nothing left: the text is complete

  explicit GrammarMatcher(const Grammar& g) : g_(&g) {
    for (int32_t a : g.alternatives(g.root())) expand(a, kNone, tops_, 0);
    normalize(tops_);
  }

  // A position: the stacks' tops and an unfinished UTF-8 character (its bits and the bytes
  // still to come).
  struct Position {
    std::vector<int32_t> tops;
    uint32_t partial = 0;
    int pending = 0;
    int length = 0;  // bytes of the unfinished character
  };
  Position position() const { return {tops_, partial_, pending_, length_}; }

  // The position after byte b, from p; empty tops: b cannot come next.
  Position feed(const Position& p, uint8_t b) const {
    Position q;
    q.partial = p.partial;
    q.pending = p.pending;
    q.length = p.length;
    if (q.pending == 0) {
      if (b < 0x80) return advance(p.tops, b);
      // Leads of 2-, 3- and 4-byte characters (C0, C1 and F5..FF never appear in UTF-8).
      const int n = b >= 0xC2 && b <= 0xDF ? 1 : (b >> 4) == 14 ? 2 : b >= 0xF0 && b <= 0xF4 ? 3 : -1;
      if (n < 0) return q;
      q.partial = b & (0x3F >> n);
      q.pending = n;
      q.length = n + 1;
    } else {
      if ((b & 0xC0) != 0x80) return q;
      q.partial = (q.partial << 6) | (b & 0x3F);
      if (--q.pending == 0) {
        // Overlong forms, surrogates and code points past U+10FFFF are not characters.
        const uint32_t c = q.partial;
        if ((q.length == 3 && c < 0x800) || (q.length == 4 && c < 0x10000) || (c >= 0xD800 && c <= 0xDFFF) || c > 0x10FFFF)
          return Position{};
        return advance(p.tops, c);
      }
    }
    // Unfinished: alive while some stack can take a character beginning with these bytes.
    // (The smallest character of its length, never past U+10FFFF, never only surrogates.)
    const uint32_t least = q.length == 2 ? 0x80 : q.length == 3 ? 0x800 : 0x10000;
    const uint32_t lo = std::max(q.partial << (6 * q.pending), least);
    const uint32_t hi = std::min(((q.partial + 1) << (6 * q.pending)) - 1, uint32_t(0x10FFFF));
    if (lo > hi || (lo >= 0xD800 && hi <= 0xDFFF)) return Position{};
    for (int32_t t : p.tops)
      if (t != kAccepted && cls(t).intersects(lo, hi)) {
        q.tops = p.tops;
        break;
      }
    return q;
  }
  Position feed(const Position& p, std::string_view bytes) const {
    Position q = p;
    for (char c : bytes) {
      q = feed(q, static_cast<uint8_t>(c));
      if (q.tops.empty()) break;
    }
    return q;
  }
  static bool alive(const Position& p) { return !p.tops.empty(); }
  static bool complete(const Position& p) {
    return p.pending == 0 && std::find(p.tops.begin(), p.tops.end(), kAccepted) != p.tops.end();
  }
  // Only the end can come: the text is complete and nothing may follow it.
  static bool finished(const Position& p) { return p.pending == 0 && p.tops.size() == 1 && p.tops[0] == kAccepted; }

  // Moves to p (one reached by feed from position()), dropping nodes nothing refers to.
  void move_to(const Position& p) {
    if (p.tops.empty()) fail(g_->where(), "the text left the grammar");
    partial_ = p.partial;
    pending_ = p.pending;
    length_ = p.length;
    tops_ = p.tops;
    if (nodes_.size() > 4096 + 16 * live_) collect();
  }
  bool accepts(std::string_view bytes) const {
    return complete(feed(position(), bytes));
  }
  const Grammar& grammar() const { return *g_; }
  // Changes when nodes are renumbered (positions from before no longer mean the same).
  uint64_t epoch() const { return epoch_; }

 private:
  static constexpr int32_t kNone = -2;  // below the bottom of a stack
  static constexpr size_t kMaxTops = 20000, kMaxNodes = size_t(1) << 22;
  struct Node {
    int32_t elem;    // the next element to match (a Chars element at a top)
    int32_t parent;  // the node to return to, kNone at the bottom
  };

  const Grammar::CharClass& cls(int32_t top) const {
    return g_->classes()[size_t(g_->elements()[size_t(nodes_[size_t(top)].elem)].value)];
  }
  int32_t node(int32_t elem, int32_t parent) const {
    const uint64_t key = (uint64_t(uint32_t(elem)) << 32) | uint32_t(parent);
    auto [it, fresh] = intern_.try_emplace(key, int32_t(nodes_.size()));
    if (fresh) nodes_.push_back({elem, parent});
    return it->second;
  }
  // Every top reachable from element `elem` with `parent` below it, without reading a character.
  void expand(int32_t elem, int32_t parent, std::vector<int32_t>& out, int depth) const {
    if (depth > 2000) fail(g_->where(), "a rule can call itself without reading a character (left recursion), or rules nest deeper than 2000 without one");
    // A grammar so ambiguous that one character leaves this many parses alive would take the
    // machine with it: it is refused (the limits are far above any practical grammar's).
    if (out.size() > kMaxTops || nodes_.size() > kMaxNodes) fail(g_->where(), "is too ambiguous (over " + std::to_string(kMaxTops) + " parses alive at once)");
    const auto& e = g_->elements()[size_t(elem)];
    switch (e.kind) {
      case Grammar::Element::Chars: out.push_back(node(elem, parent)); return;
      case Grammar::Element::End:
        if (parent == kNone) out.push_back(kAccepted);
        else expand(nodes_[size_t(parent)].elem, nodes_[size_t(parent)].parent, out, depth + 1);
        return;
      case Grammar::Element::Rule: {
        // A call in tail position returns straight to its caller's caller: loops (x*, x+)
        // keep their stacks the same height, so positions inside them repeat.
        const bool tail = g_->elements()[size_t(elem + 1)].kind == Grammar::Element::End;
        const int32_t ret = tail ? parent : node(elem + 1, parent);
        for (int32_t a : g_->alternatives(e.value)) expand(a, ret, out, depth + 1);
        return;
      }
    }
  }
  Position advance(const std::vector<int32_t>& tops, uint32_t c) const {
    Position q;
    for (int32_t t : tops) {
      if (t == kAccepted || !cls(t).matches(c)) continue;
      const Node n = nodes_[size_t(t)];
      expand(n.elem + 1, n.parent, q.tops, 0);
    }
    normalize(q.tops);
    return q;
  }
  static void normalize(std::vector<int32_t>& tops) {
    std::sort(tops.begin(), tops.end());
    tops.erase(std::unique(tops.begin(), tops.end()), tops.end());
  }
  // Keeps only the nodes the current stacks use.
  void collect() {
    std::vector<Node> old = std::move(nodes_);
    nodes_.clear();
    intern_.clear();
    std::unordered_map<int32_t, int32_t> moved;
    auto copy = [&](auto&& self, int32_t n) -> int32_t {
      if (n == kNone || n == kAccepted) return n;
      if (auto it = moved.find(n); it != moved.end()) return it->second;
      const int32_t parent = self(self, old[size_t(n)].parent);
      const int32_t m = node(old[size_t(n)].elem, parent);
      moved.emplace(n, m);
      return m;
    };
    for (auto& t : tops_) t = copy(copy, t);
    normalize(tops_);
    live_ = nodes_.size();
    ++epoch_;
  }

  const Grammar* g_;
  std::vector<int32_t> tops_;
  uint32_t partial_ = 0;
  int pending_ = 0, length_ = 0;
  // Nodes are interned: equal stacks are equal indices. Mutable: finding what may come next
  // grows them (a cache, not a change of position).
  mutable std::vector<Node> nodes_;
  mutable std::unordered_map<uint64_t, int32_t> intern_;
  size_t live_ = 0;
  uint64_t epoch_ = 0;
};

}  // namespace mmfree
