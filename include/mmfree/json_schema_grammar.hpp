// mmfree: a JSON Schema as a GBNF grammar (grammar.hpp), for structured output.
//
// Supported: type (object, array, string, number, integer, boolean, null, or a list of them),
// properties and required (properties in the schema's order; no others), items, minItems,
// maxItems, minLength, maxLength, enum, const, anyOf, oneOf, allOf of one schema, local $ref
// (#/$defs/..., #/definitions/...), and annotations (title, description, default, examples,
// $schema, $id, additionalProperties: false). A schema without a type is any JSON value.
// Keywords that would constrain the text in ways the grammar does not (pattern, format, minimum,
// ...) are refused with an error naming them, never ignored.
//
// Whitespace between tokens is at most one space or newline, and numbers have at most 16
// digits before the point, so a generation always reaches the end of the document.
#pragma once

#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "mmfree/error.hpp"

namespace mmfree {

class JsonSchemaGrammar {
 public:
  // Ordered: properties come in the order the schema writes them.
  using Json = nlohmann::ordered_json;

  // GBNF text for the schema in `text` (JSON); `where` names it in errors.
  static std::string convert_text(std::string_view text, const std::string& where = "json_schema") {
    Json j;
    try {
      j = Json::parse(text);
    } catch (const std::exception& e) {
      fail(where, std::string("is not valid JSON (") + e.what() + ")");
    }
    return convert(j, where);
  }

  // GBNF text for `schema`; `where` names it in errors.
  static std::string convert(const Json& schema, const std::string& where = "json_schema") {
    JsonSchemaGrammar c(schema, where);
    const std::string root = c.visit(schema, "#");
    std::string out = "root ::= " + root + "\n";
    out += kCommon;
    for (const auto& r : c.rules_) out += r + "\n";
    return out;
  }

  // Any JSON value (OpenAI's response_format {"type": "json_object"}).
  static std::string any_value() { return std::string("root ::= object\n") + kCommon; }

 private:
  static constexpr const char* kCommon =
      "ws ::= ([ \\n])?\n"
      "value ::= object | array | string | number | boolean | null\n"
      "object ::= \"{\" ws ( string ws \":\" ws value ws ( \",\" ws string ws \":\" ws value ws )* )? \"}\"\n"
      "array ::= \"[\" ws ( value ws ( \",\" ws value ws )* )? \"]\"\n"
      "char ::= [^\"\\\\\\x00-\\x1F\\x7F] | \"\\\\\" ( [\"\\\\/bfnrt] | \"u\" [0-9a-fA-F]{4} )\n"
      "string ::= \"\\\"\" char* \"\\\"\"\n"
      "integer ::= \"-\"? ( \"0\" | [1-9] [0-9]{0,15} )\n"
      "number ::= integer ( \".\" [0-9]{1,16} )? ( [eE] [-+]? [0-9]{1,3} )?\n"
      "boolean ::= \"true\" | \"false\"\n"
      "null ::= \"null\"\n";

  JsonSchemaGrammar(const Json& root, std::string where) : root_(root), where_(std::move(where)) {}

  [[noreturn]] void bad(const std::string& at, const std::string& problem) const { fail(where_, at + ": " + problem); }

  // A GBNF literal for the JSON text of v.
  static std::string literal(const Json& v) {
    const std::string s = v.dump(-1, ' ', false, Json::error_handler_t::replace);
    std::string out = "\"";
    for (char ch : s) {
      if (ch == '"' || ch == '\\') out += '\\';
      if (ch == '\n') {
        out += "\\n";
        continue;
      }
      out += ch;
    }
    return out + "\"";
  }

  std::string add_rule(const std::string& body) {
    const std::string name = "s" + std::to_string(rules_.size());
    rules_.push_back(name + " ::= " + body);
    return name;
  }

  std::string visit(const Json& s, const std::string& at, int depth = 0) {
    if (depth > 64) bad(at, "nests too deeply (a recursive $ref?)");
    if (s.is_boolean()) {
      if (s.get<bool>()) return "value";
      bad(at, "'false' admits no value");
    }
    if (!s.is_object()) bad(at, "must be an object");
    static const std::set<std::string> known = {
        "type", "properties", "required", "items", "minItems", "maxItems", "minLength", "maxLength", "enum",
        "const", "anyOf", "oneOf", "allOf", "$ref", "$defs", "definitions", "title", "description", "default",
        "examples", "$schema", "$id", "additionalProperties", "$comment"};
    for (auto it = s.begin(); it != s.end(); ++it)
      if (!known.count(it.key())) bad(at, "'" + it.key() + "' is not supported");
    if (s.contains("additionalProperties") && s["additionalProperties"] != false)
      bad(at, "'additionalProperties' other than false is not supported (objects hold the listed properties only)");
    if (s.contains("$ref")) {
      const std::string ref = s["$ref"].is_string() ? s["$ref"].get<std::string>() : "";
      for (const char* pre : {"#/$defs/", "#/definitions/"})
        if (ref.rfind(pre, 0) == 0) {
          const std::string key = ref.substr(std::string(pre).size());
          const char* sect = pre[2] == '$' ? "$defs" : "definitions";
          if (!root_.contains(sect) || !root_[sect].contains(key)) bad(at, "$ref '" + ref + "' names nothing");
          if (auto done = refs_.find(ref); done != refs_.end()) return done->second;
          // Recursive references: name the rule before visiting its body.
          const std::string name = "r" + std::to_string(refs_.size());
          refs_[ref] = name;
          const std::string body = visit(root_[sect][key], ref, depth + 1);
          rules_.push_back(name + " ::= " + body);
          return name;
        }
      bad(at, "$ref must point into #/$defs or #/definitions");
    }
    if (s.contains("const")) return literal(s["const"]);
    if (s.contains("enum")) {
      if (!s["enum"].is_array() || s["enum"].empty()) bad(at, "'enum' must be a non-empty array");
      std::string alts;
      for (const auto& v : s["enum"]) alts += (alts.empty() ? "" : " | ") + literal(v);
      return "(" + alts + ")";
    }
    for (const char* k : {"anyOf", "oneOf"})
      if (s.contains(k)) {
        if (!s[k].is_array() || s[k].empty()) bad(at, std::string("'") + k + "' must be a non-empty array");
        std::string alts;
        for (size_t i = 0; i < s[k].size(); ++i)
          alts += (i ? " | " : "") + visit(s[k][i], at + "/" + k + "/" + std::to_string(i), depth + 1);
        return "(" + alts + ")";
      }
    if (s.contains("allOf")) {
      if (!s["allOf"].is_array() || s["allOf"].size() != 1) bad(at, "'allOf' is supported with one schema only");
      return visit(s["allOf"][0], at + "/allOf/0", depth + 1);
    }
    if (!s.contains("type")) return s.contains("properties") ? object(s, at, depth) : "value";
    const auto& t = s["type"];
    if (t.is_array()) {
      std::string alts;
      for (const auto& one : t) {
        Json copy = s;
        copy["type"] = one;
        alts += (alts.empty() ? "" : " | ") + visit(copy, at, depth + 1);
      }
      if (alts.empty()) bad(at, "'type' is an empty list");
      return "(" + alts + ")";
    }
    if (!t.is_string()) bad(at, "'type' must be a string or a list of strings");
    const std::string type = t.get<std::string>();
    if (type == "object") return object(s, at, depth);
    if (type == "array") return array(s, at, depth);
    if (type == "string") return string(s, at);
    if (type == "integer") return "integer";
    if (type == "number") return "number";
    if (type == "boolean") return "boolean";
    if (type == "null") return "null";
    bad(at, "unknown type '" + type + "'");
  }

  int64_t count(const Json& s, const char* key, const std::string& at, int64_t dflt) const {
    if (!s.contains(key)) return dflt;
    if (!s[key].is_number_integer() || s[key].get<int64_t>() < 0 || s[key].get<int64_t>() > 1000)
      bad(at, std::string("'") + key + "' must be an integer in [0, 1000]");
    return s[key].get<int64_t>();
  }

  std::string string(const Json& s, const std::string& at) {
    const int64_t lo = count(s, "minLength", at, 0), hi = count(s, "maxLength", at, -1);
    if (hi >= 0 && hi < lo) bad(at, "'maxLength' is below 'minLength'");
    if (lo == 0 && hi < 0) return "string";
    return add_rule("\"\\\"\" char{" + std::to_string(lo) + "," + (hi >= 0 ? std::to_string(hi) : "") + "} \"\\\"\"");
  }

  std::string array(const Json& s, const std::string& at, int depth) {
    const std::string item = s.contains("items") ? visit(s["items"], at + "/items", depth + 1) : "value";
    const int64_t lo = count(s, "minItems", at, 0), hi = count(s, "maxItems", at, -1);
    if (hi >= 0 && hi < lo) bad(at, "'maxItems' is below 'minItems'");
    const std::string more = "( \",\" ws " + item + " ws )";
    std::string body;
    if (hi == 0) body = "\"[\" ws \"]\"";
    else {
      const std::string rest = more + "{" + std::to_string(lo > 0 ? lo - 1 : 0) + "," + (hi >= 0 ? std::to_string(hi - 1) : "") + "}";
      const std::string some = item + " ws " + rest;
      body = "\"[\" ws " + (lo > 0 ? some : "( " + some + " )?") + " \"]\"";
    }
    return add_rule(body);
  }

  std::string object(const Json& s, const std::string& at, int depth) {
    if (!s.contains("properties")) return "object";
    if (!s["properties"].is_object()) bad(at, "'properties' must be an object");
    std::set<std::string> required;
    if (s.contains("required")) {
      if (!s["required"].is_array()) bad(at, "'required' must be an array of names");
      for (const auto& r : s["required"]) {
        if (!r.is_string() || !s["properties"].contains(r.get<std::string>())) bad(at, "'required' names a property not in 'properties'");
        required.insert(r.get<std::string>());
      }
    }
    std::vector<std::pair<std::string, bool>> kv;  // "key": value rule, required
    for (auto it = s["properties"].begin(); it != s["properties"].end(); ++it) {
      const std::string v = visit(it.value(), at + "/properties/" + it.key(), depth + 1);
      kv.emplace_back(literal(Json(it.key())) + " ws \":\" ws " + v, required.count(it.key()) > 0);
    }
    // rest[i]: the properties from i on, each after a comma (optional ones may be left out).
    std::vector<std::string> rest(kv.size() + 1);
    for (size_t i = kv.size(); i-- > 0;) {
      const std::string one = "\",\" ws " + kv[i].first + " ws";
      rest[i] = (kv[i].second ? one : "( " + one + " )?") + (rest[i + 1].empty() ? "" : " " + rest[i + 1]);
    }
    // The first property present: any optional one before the first required, or that one.
    std::string alts;
    bool all_optional = true;
    for (size_t i = 0; i < kv.size(); ++i) {
      alts += (alts.empty() ? "" : " | ") + std::string("( ") + kv[i].first + " ws" + (rest[i + 1].empty() ? "" : " " + rest[i + 1]) + " )";
      if (kv[i].second) {
        all_optional = false;
        break;
      }
    }
    if (alts.empty()) return add_rule("\"{\" ws \"}\"");
    return add_rule("\"{\" ws ( " + alts + " )" + (all_optional ? "?" : "") + " \"}\"");
  }

  const Json& root_;
  std::string where_;
  std::vector<std::string> rules_;
  std::map<std::string, std::string> refs_;
};

}  // namespace mmfree
