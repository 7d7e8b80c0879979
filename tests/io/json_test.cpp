#include "io/json.h"

#include <fstream>

#include "io_test_util.h"

namespace moeforge {
namespace {

using testing::ScratchDir;

template <typename F>
Error catch_error(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e;
  }
  ADD_FAILURE() << "no moeforge::Error was thrown";
  return Error(ErrorCode::kInternal, "");
}

TEST(Json, SyntaxErrorNamesFileLineAndColumn) {
  ScratchDir dir;
  const auto path = dir / "config.json";
  std::ofstream(path) << "{\n  \"a\": 1,\n  \"b\": tru\n}\n";
  Error e = catch_error([&] { read_json_file(path); });
  EXPECT_EQ(e.code(), ErrorCode::kFormat);
  EXPECT_NE(std::string(e.what()).find(path.string()), std::string::npos) << e.what();
  EXPECT_NE(std::string(e.what()).find("line 3"), std::string::npos) << e.what();
  EXPECT_NE(std::string(e.what()).find("column"), std::string::npos) << e.what();
}

// A number past the double range is a value error in nlohmann, not a parse error (fuzz_safetensors).
TEST(Json, NumberOverflowIsAFormatError) {
  Error e = catch_error([] { parse_json(R"({"shape": [46116e860184273812]})", "header.json"); });
  EXPECT_EQ(e.code(), ErrorCode::kFormat);
  EXPECT_NE(std::string(e.what()).find("header.json: invalid JSON"), std::string::npos) << e.what();
}

// JSON nested 20,000 deep (a 40 KB dataset line) crashed `train`: every parse stops at
// kMaxJsonDepth, naming the source, before the deep value is built.
TEST(Json, NestingPastTheLimitIsAFormatError) {
  const std::string arrays = std::string(20000, '[') + std::string(20000, ']');
  std::string objects;
  for (int i = 0; i < 20000; ++i) objects += R"({"a": )";
  objects += "1" + std::string(20000, '}');
  for (const std::string& text : {arrays, objects, R"({"tools": )" + arrays + "}"}) {
    const std::string expected = "data.jsonl:3: JSON nested more than 512 levels deep";
    Error e = catch_error([&] { parse_json_text<OrderedJson>(text, "data.jsonl:3"); });
    EXPECT_EQ(e.code(), ErrorCode::kFormat);
    EXPECT_NE(std::string(e.what()).find(expected), std::string::npos) << e.what();
    e = catch_error([&] { parse_json_text(text, "data.jsonl:3"); });
    EXPECT_NE(std::string(e.what()).find(expected), std::string::npos) << e.what();
    e = catch_error([&] { parse_json(text, "data.jsonl:3"); });
    EXPECT_NE(std::string(e.what()).find(expected), std::string::npos) << e.what();
  }
  // kMaxJsonDepth levels are accepted, one more is not.
  const auto nested = [](int depth) { return std::string(depth, '[') + std::string(depth, ']'); };
  EXPECT_NO_THROW(parse_json_text(nested(kMaxJsonDepth), "ok.json"));
  EXPECT_THROW(parse_json_text(nested(kMaxJsonDepth + 1), "deep.json"), Error);
}

TEST(Json, ParseFilterStillApplies) {
  // The filter drops values after the depth check has passed them.
  auto drop_b = [](int, Json::parse_event_t event, Json& parsed) {
    return !(event == Json::parse_event_t::key && parsed == "b");
  };
  EXPECT_EQ(parse_json_text(R"({"a": 1, "b": [2]})", "filtered.json", drop_b), Json({{"a", 1}}));
}

TEST(Json, MissingFileIsNotFound) {
  ScratchDir dir;
  Error e = catch_error([&] { read_json_file(dir / "absent.json"); });
  EXPECT_EQ(e.code(), ErrorCode::kNotFound);
  EXPECT_NE(std::string(e.what()).find("absent.json"), std::string::npos);
}

TEST(Json, DuplicateKeyIsAnError) {
  Error e = catch_error([] { parse_json(R"({"x": {"k": 1, "k": 2}})", "dup.json"); });
  EXPECT_EQ(e.code(), ErrorCode::kFormat);
  EXPECT_NE(std::string(e.what()).find("dup.json: key 'k' appears twice"), std::string::npos)
      << e.what();
  // The same key in different objects is fine.
  EXPECT_NO_THROW(parse_json(R"({"a": {"k": 1}, "b": {"k": 2}})", "ok.json"));
}

TEST(Json, RequireChecksPresenceAndType) {
  Json j = parse_json(R"({"hidden_size": 64, "eps": 1e-6, "name": "qwen3", "big": 5000000000,
                          "neg": -3, "frac": 2.5, "list": [1, 2], "flag": true, "null": null})",
                      "config.json");
  EXPECT_EQ(require<int64_t>(j, "hidden_size", "config.json"), 64);
  EXPECT_DOUBLE_EQ(require<double>(j, "eps", "config.json"), 1e-6);
  EXPECT_DOUBLE_EQ(require<double>(j, "hidden_size", "config.json"), 64.0);  // ints are numbers
  EXPECT_EQ(require<std::string>(j, "name", "config.json"), "qwen3");
  EXPECT_EQ(require<std::vector<int>>(j, "list", "config.json"), (std::vector<int>{1, 2}));
  EXPECT_TRUE(require<bool>(j, "flag", "config.json"));

  Error missing = catch_error([&] { require<int64_t>(j, "num_experts", "config.json"); });
  EXPECT_EQ(missing.code(), ErrorCode::kNotFound);
  EXPECT_STREQ(missing.what(), "config.json: missing key 'num_experts'");
  EXPECT_EQ(catch_error([&] { require<int64_t>(j, "null", "config.json"); }).code(),
            ErrorCode::kNotFound);

  Error frac = catch_error([&] { require<int64_t>(j, "frac", "config.json"); });
  EXPECT_EQ(frac.code(), ErrorCode::kFormat);
  EXPECT_STREQ(frac.what(), "config.json: key 'frac' must be an integer, got number 2.5");
  EXPECT_EQ(catch_error([&] { require<int32_t>(j, "big", "config.json"); }).code(), ErrorCode::kFormat);
  EXPECT_EQ(catch_error([&] { require<uint32_t>(j, "neg", "config.json"); }).code(), ErrorCode::kFormat);
  EXPECT_EQ(catch_error([&] { require<std::string>(j, "hidden_size", "config.json"); }).code(),
            ErrorCode::kFormat);
  Error elem = catch_error([&] { require<std::vector<std::string>>(j, "list", "config.json"); });
  EXPECT_NE(std::string(elem.what()).find("key 'list'[0] must be a string"), std::string::npos)
      << elem.what();
}

TEST(Json, OptionalGetter) {
  Json j = parse_json(R"({"rope_theta": 1000000, "sliding_window": null, "bad": "x"})", "c.json");
  EXPECT_EQ(get_optional<double>(j, "rope_theta", "c.json"), 1e6);
  EXPECT_FALSE(get_optional<int64_t>(j, "sliding_window", "c.json").has_value());
  EXPECT_FALSE(get_optional<int64_t>(j, "absent", "c.json").has_value());
  EXPECT_EQ(catch_error([&] { get_optional<double>(j, "bad", "c.json"); }).code(), ErrorCode::kFormat);
  Json arr = Json::array();
  EXPECT_EQ(catch_error([&] { get_optional<double>(arr, "x", "c.json"); }).code(), ErrorCode::kFormat);
}

}  // namespace
}  // namespace moeforge
