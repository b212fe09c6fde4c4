// mmfree serving: the documents the OpenAI-compatible server sends: errors, completion choices,
// usage, and the one mapping from how a sequence ended to an HTTP status.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "mmfree/error.hpp"
#include "mmfree/serve/scheduler.hpp"

namespace mmfree::api {

// A request the server refuses: the HTTP status and an OpenAI-style error body.
struct ApiError : Error {
  int status;
  std::string type;
  ApiError(int st, std::string ty, const std::string& msg) : Error(msg), status(st), type(std::move(ty)) {}
};

inline nlohmann::json error_body(int status, const std::string& type, const std::string& message) {
  return {{"error", {{"message", message}, {"type", type}, {"code", status}}}};
}

// A document as the server sends it: always valid UTF-8, whatever text it holds (a generated
// piece that ends inside a character, an error quoting the client's bytes): invalid bytes become
// U+FFFD instead of an exception.
inline std::string to_wire(const nlohmann::json& j) {
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

inline nlohmann::json completion_choice(const std::string& text, const char* finish_reason, int64_t index = 0,
                                        nlohmann::json logprobs = nullptr) {
  return {{"text", text}, {"index", index}, {"logprobs", std::move(logprobs)},
          {"finish_reason", finish_reason ? nlohmann::json(finish_reason) : nlohmann::json(nullptr)}};
}

// One token of OpenAI's completions `logprobs` object: its text, its log-probability (none for
// a text's first token), the most likely alternatives, and where its text begins in the choice.
struct LogprobEntry {
  int32_t id = -1;
  std::string text;
  std::optional<double> logprob;
  std::vector<std::pair<std::string, double>> top;
  int64_t offset = 0;
};

// {"tokens", "token_logprobs", "top_logprobs", "text_offset"} as OpenAI sends them, and the ids
// (`token_ids`, an extension: texts of different tokens can be equal). top_logprobs is null
// when no alternatives were asked for (logprobs: 0) and for a first token.
inline nlohmann::json logprobs_doc(const std::vector<LogprobEntry>& es, bool with_top) {
  nlohmann::json tokens = nlohmann::json::array(), lps = nlohmann::json::array(), tops = nlohmann::json::array(),
                 offsets = nlohmann::json::array(), ids = nlohmann::json::array();
  for (const auto& e : es) {
    tokens.push_back(e.text);
    lps.push_back(e.logprob ? nlohmann::json(*e.logprob) : nlohmann::json(nullptr));
    if (with_top && e.logprob) {
      nlohmann::json t = nlohmann::json::object();
      for (const auto& [text, lp] : e.top)
        if (!t.contains(text)) t[text] = lp;  // the most likely of tokens that read the same
      tops.push_back(std::move(t));
    } else {
      tops.push_back(nullptr);
    }
    offsets.push_back(e.offset);
    ids.push_back(e.id);
  }
  return {{"tokens", tokens}, {"token_logprobs", lps}, {"top_logprobs", tops}, {"text_offset", offsets}, {"token_ids", ids}};
}

// cached: prompt tokens not read again (the prefix cache held the state after them).
inline nlohmann::json usage(int64_t prompt, int64_t completion, int64_t cached = 0) {
  return {{"prompt_tokens", prompt},
          {"completion_tokens", completion},
          {"total_tokens", prompt + completion},
          {"prompt_tokens_details", {{"cached_tokens", cached}}}};
}

// How a finished sequence is answered: 200 for a response (max_tokens, EOS or a stop string),
// 504 for --timeout, 500 for an error; a cancelled sequence has no client left to answer.
inline int http_status(Finish f) {
  switch (f) {
    case Finish::Length:
    case Finish::Stop: return 200;
    case Finish::Timeout: return 504;
    case Finish::Cancelled: return 499;
    case Finish::Error: return 500;
  }
  return 500;
}

}  // namespace mmfree::api
