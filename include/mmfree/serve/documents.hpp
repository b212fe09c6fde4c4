// mmfree serving: the documents the OpenAI-compatible server sends: errors, completion choices,
// usage, and the one mapping from how a sequence ended to an HTTP status.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

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

inline nlohmann::json completion_choice(const std::string& text, const char* finish_reason) {
  return {{"text", text}, {"index", 0}, {"logprobs", nullptr},
          {"finish_reason", finish_reason ? nlohmann::json(finish_reason) : nlohmann::json(nullptr)}};
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
