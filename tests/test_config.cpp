#include <gtest/gtest.h>

#include "mmfree/config_json.hpp"
#include "test_util.hpp"

namespace tests_config {  // this file's own names (the tests compile in unity batches)

using namespace mmfree;
using mmfree::test::error_of;
using nlohmann::json;

TEST(Config, DefaultsAndDerivedIntermediate) {
  Config c = parse_config(json::object(), "cfg");
  EXPECT_EQ(c.vocab_size, 32000);
  EXPECT_EQ(c.hidden_size, 2048);
  EXPECT_EQ(c.num_hidden_layers, 24);
  EXPECT_EQ(c.intermediate_size, 5632);  // 2048*4*2/3 = 5461 -> 5632
  EXPECT_TRUE(c.use_lower_bound);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-6);
  // The published sizes.
  EXPECT_EQ(Config::derive_intermediate(1024, 4), 2816);
  EXPECT_EQ(Config::derive_intermediate(2560, 4), 6912);
  EXPECT_EQ(Config::derive_intermediate(96, 3), 256);
  EXPECT_EQ(Config::derive_intermediate(128, 4), 512);
  Config e = parse_config(json{{"intermediate_size", 1000}, {"hidden_size", 64}}, "cfg");
  EXPECT_EQ(e.intermediate_size, 1000);
}

TEST(Config, RefusesBadValues) {
  auto err = [](json j) -> std::string {
    return error_of([&] { parse_config(j, "my/config.json"); });
  };
  EXPECT_EQ(err(json{{"use_short_conv", true}}).rfind("my/config.json: use_short_conv", 0), 0u);
  EXPECT_NE(err(json{{"attn_mode", "chunk"}}).find("unsupported attn_mode \"chunk\""), std::string::npos);
  EXPECT_NE(err(json{{"model_type", "llama"}}).find("unsupported model_type"), std::string::npos);
  EXPECT_NE(err(json{{"hidden_size", -3}}).find("'hidden_size' is out of range [1, 65536], got -3"), std::string::npos);
  EXPECT_NE(err(json{{"hidden_size", "big"}}).find("'hidden_size' must be an integer"), std::string::npos);
  EXPECT_NE(err(json{{"hidden_size", 1e12}}).find("'hidden_size' must be an integer"), std::string::npos);
  EXPECT_NE(err(json{{"vocab_size", int64_t(1) << 40}}).find("out of range"), std::string::npos);
  EXPECT_NE(err(json{{"rms_norm_eps", -1}}).find("rms_norm_eps"), std::string::npos);
  EXPECT_NE(err(json{{"use_lower_bound", 1}}).find("true or false"), std::string::npos);
  EXPECT_NE(err(json{{"hidden_size", 100}, {"num_heads", 3}}).find("divisible"), std::string::npos);
  EXPECT_NE(err(json::array()).find("not a JSON object"), std::string::npos);
}

}  // namespace tests_config
