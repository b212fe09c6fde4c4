// mmfree serving: stop strings over streamed text. Text is released only once it cannot be the
// start of a stop string, so a client never sees part of one.
#pragma once

#include <algorithm>
#include <string>
#include <vector>

namespace mmfree::api {

// Generated text with stop strings: text is released only once it cannot be the start of a
// stop string, and everything from the first stop string on is never released.
class StopText {
 public:
  explicit StopText(std::vector<std::string> stops) : stops_(std::move(stops)) {}
  // Appends decoded text; returns what may be sent now. stopped() turns true at a stop string.
  std::string push(const std::string& piece) {
    if (stopped_) return "";
    text_ += piece;
    size_t cut = text_.size();
    for (auto& s : stops_) {
      // Released text never holds the start of a stop string, so one cannot begin before sent_.
      const size_t at = text_.find(s, sent_);
      if (at != std::string::npos && at < cut) cut = at, stopped_ = true;
    }
    if (!stopped_)  // hold back a tail that may begin a stop string
      for (auto& s : stops_)
        for (size_t k = std::min(s.size() - 1, text_.size()); k > 0; --k)
          if (text_.compare(text_.size() - k, k, s, 0, k) == 0) {
            cut = std::min(cut, text_.size() - k);
            break;
          }
    std::string out = cut > sent_ ? text_.substr(sent_, cut - sent_) : "";
    sent_ = std::max(sent_, cut);
    if (stopped_) text_.resize(cut);
    return out;
  }
  // At the end: whatever was held back (no stop string completed).
  std::string finish() {
    if (stopped_ || sent_ >= text_.size()) return "";
    std::string out = text_.substr(sent_);
    sent_ = text_.size();
    return out;
  }
  bool stopped() const { return stopped_; }
  const std::string& text() const { return text_; }

 private:
  std::vector<std::string> stops_;
  std::string text_;
  size_t sent_ = 0;
  bool stopped_ = false;
};

}  // namespace mmfree::api
