// Tokenizer errors, the tokenize command's error contract, and properties that hold whatever the
// ids are (thread safety, invalid UTF-8 replacement, offsets). The ids themselves are checked
// against the Python tokenizers library in tests/python/test_tokenizer_golden.py.
#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <string>
#include <thread>

#include "core/error.h"
#include "testing.h"
#include "tokenizer/regex.h"
#include "tokenizer/tokenizer.h"

namespace moeforge {
namespace {

using nlohmann::json;
using testing::run_moeforge;

std::filesystem::path tiny_tokenizer() { return testing::test_data_dir() / "tokenizer" / "tiny" / "tokenizer.json"; }

json tiny_json() {
  std::ifstream in(tiny_tokenizer());
  return json::parse(in);
}

// The error message of loading `spec`, or "" when it loads.
std::string load_error(const json& spec) {
  try {
    Tokenizer::from_json(spec.dump(), "spec.json");
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

class TempDir {
 public:
  TempDir() : path_(std::filesystem::temp_directory_path() / ("mf_tok_" + std::to_string(::getpid()) + "_" +
                                                             std::to_string(counter_++))) {
    std::filesystem::create_directories(path_);
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  std::filesystem::path write(const std::string& name, const std::string& text) const {
    std::ofstream(path_ / name, std::ios::binary) << text;
    return path_ / name;
  }
  const std::filesystem::path& path() const { return path_; }

 private:
  static inline int counter_ = 0;
  std::filesystem::path path_;
};

TEST(TokenizerErrors, UnknownPiecesAreNamed) {
  json spec = tiny_json();
  ASSERT_EQ(load_error(spec), "");

  json s = spec;
  s["pre_tokenizer"]["pretokenizers"][0]["type"] = "XYZ";
  EXPECT_EQ(load_error(s), "spec.json: unsupported pre_tokenizer type \"XYZ\"");

  s = spec;
  s["normalizer"] = {{"type", "Precompiled"}, {"precompiled_charsmap", "AAAA"}};
  EXPECT_EQ(load_error(s), "spec.json: unsupported normalizer type \"Precompiled\"");

  s = spec;
  s["decoder"] = {{"type", "WordPiece"}, {"prefix", "##"}};
  EXPECT_EQ(load_error(s), "spec.json: unsupported decoder type \"WordPiece\"");

  s = spec;
  s["post_processor"] = {{"type", "Mystery"}};
  EXPECT_EQ(load_error(s), "spec.json: unsupported post_processor type \"Mystery\"");

  s = spec;
  s["model"]["type"] = "Unigram";
  EXPECT_EQ(load_error(s), "spec.json: unsupported model type \"Unigram\"");

  s = spec;
  s["model"]["dropout"] = 0.1;
  EXPECT_NE(load_error(s).find("unsupported dropout 0.1"), std::string::npos) << load_error(s);

  s = spec;
  s["pre_tokenizer"]["pretokenizers"][0]["behavior"] = "Sideways";
  EXPECT_NE(load_error(s).find("unsupported behavior \"Sideways\""), std::string::npos) << load_error(s);

  s = spec;
  s["truncation"] = {{"max_length", 512}};
  EXPECT_NE(load_error(s).find("unsupported \"truncation\""), std::string::npos) << load_error(s);
}

TEST(TokenizerErrors, MalformedFilesAreNamed) {
  json s = tiny_json();
  s["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "(unclosed";
  EXPECT_NE(load_error(s).find("spec.json: pre_tokenizer Split: invalid regex \"(unclosed\""), std::string::npos)
      << load_error(s);

  s = tiny_json();
  s["model"]["merges"].push_back(json::array({"Ġ", "not-in-vocab"}));
  EXPECT_NE(load_error(s).find("merge token \"not-in-vocab\" is not in the vocabulary"), std::string::npos)
      << load_error(s);

  s = tiny_json();
  s["model"]["vocab"]["zzz"] = json::array({1});
  EXPECT_EQ(load_error(s), "spec.json: model BPE: vocab id of \"zzz\" must be a non-negative 32-bit integer");
  s["model"]["vocab"]["zzz"] = "one";
  EXPECT_EQ(load_error(s), "spec.json: model BPE: vocab id of \"zzz\" must be a non-negative 32-bit integer");

  s = tiny_json();
  s["model"]["merges"] = "a b";
  EXPECT_EQ(load_error(s), "spec.json: model BPE: \"merges\" must be a list");

  s = tiny_json();
  s["model"].erase("vocab");
  EXPECT_EQ(load_error(s), "spec.json: model BPE: missing key \"vocab\"");

  TempDir dir;
  const auto broken = dir.write("tokenizer.json", "{\"model\": {\"type\": \"BPE\", ");
  try {
    Tokenizer::from_file(broken);
    FAIL() << "broken JSON loaded";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kFormat);
    EXPECT_NE(std::string(e.what()).find(broken.string() + ": invalid JSON"), std::string::npos) << e.what();
  }
  try {
    Tokenizer::from_file(dir.path() / "absent");
    FAIL() << "a missing file loaded";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kNotFound);
    EXPECT_NE(std::string(e.what()).find("absent"), std::string::npos) << e.what();
  }
}

TEST(Tokenizer, FolderOrFile) {
  const Tokenizer a = Tokenizer::from_file(tiny_tokenizer());
  const Tokenizer b = Tokenizer::from_file(tiny_tokenizer().parent_path());
  EXPECT_EQ(a.encode("Hello world").ids, b.encode("Hello world").ids);
  EXPECT_EQ(a.vocab_size(), b.vocab_size());
}

TEST(Tokenizer, InvalidUtf8IsReplacedByU_FFFD) {
  const Tokenizer t = Tokenizer::from_file(tiny_tokenizer());
  // Each maximal ill-formed subsequence becomes one U+FFFD: \xE2\x82 (truncated), \xFF, \xC0, \xAF.
  EXPECT_EQ(t.encode("a\xE2\x82z\xFF\xC0\xAF").ids, t.encode("a\xEF\xBF\xBDz\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD").ids);
  const Encoding e = t.encode("a\xFFz");
  ASSERT_FALSE(e.offsets.empty());
  EXPECT_EQ(e.offsets.back().second, 3u);  // offsets point into the caller's 3 bytes
}

TEST(Tokenizer, OffsetsCoverAsciiText) {
  const Tokenizer t = Tokenizer::from_file(tiny_tokenizer());
  const std::string text = "Hello, world! It's 2024 <|im_start|>user\n  indented\ttabs";
  const Encoding e = t.encode(text);
  ASSERT_EQ(e.ids.size(), e.offsets.size());
  std::string rebuilt;
  for (const auto& [begin, end] : e.offsets) {
    ASSERT_LE(begin, end);
    ASSERT_EQ(begin, rebuilt.size());
    rebuilt += text.substr(begin, end - begin);
  }
  EXPECT_EQ(rebuilt, text);
  EXPECT_EQ(t.decode(e.ids), text);
}

TEST(Tokenizer, SpecialTokensAndLookups) {
  const Tokenizer t = Tokenizer::from_file(tiny_tokenizer());
  const auto im_start = t.token_to_id("<|im_start|>");
  ASSERT_TRUE(im_start.has_value());
  EXPECT_TRUE(t.is_special(*im_start));
  EXPECT_EQ(t.id_to_token(*im_start), "<|im_start|>");
  const Encoding e = t.encode("x<|im_start|>y");
  EXPECT_NE(std::find(e.ids.begin(), e.ids.end(), *im_start), e.ids.end());
  EXPECT_EQ(t.decode(e.ids, /*skip_special_tokens=*/true), "xy");
  EXPECT_EQ(t.decode(e.ids, /*skip_special_tokens=*/false), "x<|im_start|>y");
  EXPECT_FALSE(t.id_to_token(1 << 30).has_value());
}

TEST(Tokenizer, ConcurrentEncodingAgrees) {
  const std::filesystem::path qwen = testing::shared_assets_dir() / "tokenizers" / "qwen3" / "tokenizer.json";
  const std::filesystem::path path = std::filesystem::exists(qwen) ? qwen : tiny_tokenizer();
  const Tokenizer t = Tokenizer::from_file(path);
  std::vector<std::string> texts;
  std::ifstream corpus(testing::test_data_dir() / "tokenizer" / "corpus.jsonl");
  for (std::string line; std::getline(corpus, line);) texts.push_back(json::parse(line)["text"]);
  for (int copy = 0; copy < 3; ++copy) texts.insert(texts.end(), texts.begin(), texts.begin() + 100);
  std::vector<std::vector<int32_t>> sequential;
  for (const auto& text : texts) sequential.push_back(t.encode(text).ids);
  const std::vector<Encoding> batch = t.encode_batch(texts);
  ASSERT_EQ(batch.size(), texts.size());
  for (size_t i = 0; i < texts.size(); ++i) EXPECT_EQ(batch[i].ids, sequential[i]) << texts[i];
  // Four threads hammering the shared word cache.
  std::vector<std::thread> threads;
  std::vector<int> failures(4, 0);
  for (int k = 0; k < 4; ++k) {
    threads.emplace_back([&, k] {
      for (size_t i = static_cast<size_t>(k); i < texts.size(); i += 2)
        if (t.encode(texts[i]).ids != sequential[i]) ++failures[k];
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures, std::vector<int>(4, 0));
}

// The library's NFC is that of Unicode 9.0, where U+0898 (a mark of combining class 230 since
// Unicode 14.0) is unassigned, so a starter: U+0316 (class 220) stays after it instead of being
// reordered before it. Ids from tokenizers 0.23.3: Tokenizer.from_file(qwen3).encode(text).ids.
TEST(Tokenizer, MarksNewerThanTheLibraryUnicodeAreNotReordered) {
  const std::filesystem::path qwen = testing::shared_assets_dir() / "tokenizers" / "qwen3" / "tokenizer.json";
  MF_SKIP_IF_MISSING(qwen);
  const Tokenizer t = Tokenizer::from_file(qwen);
  EXPECT_EQ(t.encode("a\u0898\u0316\u0301").ids, (std::vector<int32_t>{64, 156, 95, 246, 136, 244, 53839}));
}

// Debian's libonig has the Unicode 14.0 tables, the library's Oniguruma those of 16.0; the classes
// are spelled out from 16.0's (src/tokenizer/regex_unicode.inc). U+1123F KHOJKI LETTER QA is a
// letter since 15.0 and U+1CCF0 OUTLINED DIGIT ZERO a decimal digit since 16.0. What each pattern
// matches is what tokenizers 0.23.3's Oniguruma matches (pre_tokenizers.Split(..., invert=True)).
TEST(Tokenizer, RegexClassesAreThoseOfTheLibraryUnicode) {
  using tokenizer_detail::Regex;
  const auto matches = [](const std::string& pattern, const std::string& text) {
    std::vector<tokenizer_detail::MatchRange> ranges;
    Regex(pattern, "test").find_all(text, ranges);
    std::vector<std::string> out;
    for (const auto& r : ranges) out.push_back(text.substr(r.begin, r.end - r.begin));
    return out;
  };
  using Pieces = std::vector<std::string>;
  const std::string qa = "\U0001123F", zero = "\U0001CCF0";
  EXPECT_EQ(matches("\\p{L}+", "a" + qa + "b"), Pieces{"a" + qa + "b"});
  EXPECT_EQ(matches("\\P{L}|[^\\p{L}]|\\p{^L}", qa), Pieces{});
  EXPECT_EQ(matches("[\\P{Lo}1]+", "a1" + qa), Pieces{"a1"});
  EXPECT_EQ(matches("[^\\r\\n\\p{L}\\p{N}]?\\p{L}+", "!" + qa), Pieces{"!" + qa});
  EXPECT_EQ(matches("\\w+", qa + zero + "_"), Pieces{qa + zero + "_"});
  EXPECT_EQ(matches("\\d|\\p{ decimal-number }", zero + "1"), (Pieces{zero, "1"}));
  EXPECT_EQ(matches("\\W|\\D", zero), Pieces{});
  // Under (?i) Oniguruma folds case over a bracket's classes but not over a bare \p.
  EXPECT_EQ(matches("(?i)\\p{Lu}", "aA"), Pieces{"A"});
  EXPECT_EQ(matches("(?i)[\\p{Lu}]", "aA"), (Pieces{"a", "A"}));
  EXPECT_EQ(matches("(?i)\\P{Ll}", "aA1"), (Pieces{"A", "1"}));
  EXPECT_EQ(matches("(?i)[^\\p{Lu}]", "aA1"), Pieces{"1"});
  // A pattern the library refuses is refused, though spelled out it would compile.
  EXPECT_THROW(Regex("[\\w-.]", "test"), Error);
}

// The issue's example: Qwen3's pre-tokenizer keeps U+1123F with the letters and 's apart.
// Ids from tokenizers 0.23.3: Tokenizer.from_file(qwen3).encode(text).ids.
TEST(Tokenizer, LetterNewerThanLibonigBeforeAContraction) {
  const std::filesystem::path qwen = testing::shared_assets_dir() / "tokenizers" / "qwen3" / "tokenizer.json";
  MF_SKIP_IF_MISSING(qwen);
  EXPECT_EQ(Tokenizer::from_file(qwen).encode("\U0001123F's").ids, (std::vector<int32_t>{128240, 230, 123, 594}));
}

// Only the classes change: escaped backslashes and brackets, a ']' first in a bracket, comments
// and properties other than general categories (left to libonig) stay as written.
TEST(Tokenizer, SpellingOutLeavesTheRestOfAPattern) {
  using tokenizer_detail::spell_out_unicode_classes;
  for (const std::string pattern : {"\\\\p{L}", "a\\[\\p{Han}]", "[]a](?#\\w)", "\\P{Greek}\\x{41}\\s\\h"})
    EXPECT_EQ(spell_out_unicode_classes(pattern), pattern);
  const std::string letters = spell_out_unicode_classes("\\p{L}");
  EXPECT_EQ(letters.substr(0, 25), "(?-i:[\\x{41}-\\x{5A}\\x{61}");
  const std::string ranges = letters.substr(6, letters.size() - 8);
  EXPECT_EQ(spell_out_unicode_classes("[^\\p{L}]"), "[^[" + ranges + "]]");
  EXPECT_EQ(spell_out_unicode_classes("[]\\P{L}]"), "[][^" + ranges + "]]");
}

// --- moeforge tokenize ------------------------------------------------------------------------

TEST(TokenizeCommand, EncodesAndDecodes) {
  TempDir dir;
  const auto input = dir.write("in.jsonl", "{\"text\": \"Hello world\", \"other\": 1}\n{\"text\": \"\"}\n");
  auto r = run_moeforge({"tokenize", "--tokenizer", tiny_tokenizer().string(), "--input", input.string()});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const Tokenizer t = Tokenizer::from_file(tiny_tokenizer());
  const std::string first_line = json{{"ids", t.encode("Hello world").ids}}.dump();
  EXPECT_EQ(r.out, first_line + "\n{\"ids\":[]}\n");

  const auto ids = dir.write("ids.jsonl", first_line + "\n");
  r = run_moeforge({"tokenize", "--tokenizer", tiny_tokenizer().string(), "--decode", "--input", ids.string()});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(json::parse(r.out)["text"], "Hello world");
}

TEST(TokenizeCommand, BadLinesNameFileAndLine) {
  struct Case {
    std::string content, expected;
  };
  const std::vector<Case> cases = {
      {"{\"text\": \"ok\"}\n\n{\"text\": \"ok\"}\n", ":2: blank line"},
      {"{\"text\": \"ok\"}\n{\"txt\": \"ok\"}\n", ":2: missing key \"text\""},
      {"{\"text\": 5}\n", ":1: \"text\" must be a string"},
      {"{\"text\": \"ok\"}\n{\"text\": \"ok\"}\n{\"text\": \"o\n", ":3: invalid JSON"},
      {"[\"text\"]\n", ":1: expected a JSON object"},
      {"{\"text\": \"bad \xFF utf-8\"}\n", ":1: invalid JSON"},
  };
  TempDir dir;
  for (const auto& c : cases) {
    const auto input = dir.write("bad.jsonl", c.content);
    auto r = run_moeforge({"tokenize", "--tokenizer", tiny_tokenizer().string(), "--input", input.string()});
    EXPECT_EQ(r.exit_code, 2) << c.content;
    EXPECT_EQ(r.out, "") << c.content;
    EXPECT_NE(r.err.find(input.string() + c.expected), std::string::npos) << r.err;
  }
  const auto ids = dir.write("ids.jsonl", "{\"ids\": [1, 2]}\n{\"ids\": [1, -2]}\n");
  auto r = run_moeforge({"tokenize", "--tokenizer", tiny_tokenizer().string(), "--decode", "--input", ids.string()});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_EQ(r.out, "");
  EXPECT_NE(r.err.find(ids.string() + ":2: token ids must be non-negative integers"), std::string::npos) << r.err;

  const auto broken = dir.write("tokenizer.json", "{\"model\": ");
  const auto input = dir.write("in.jsonl", "{\"text\": \"ok\"}\n");
  r = run_moeforge({"tokenize", "--tokenizer", broken.string(), "--input", input.string()});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find(broken.string() + ": invalid JSON"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace moeforge
