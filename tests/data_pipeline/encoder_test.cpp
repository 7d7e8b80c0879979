// JSONL examples to tokens and loss masks, against the fixtures Transformers made
// (tests/data/datasets/make_fixtures.py), and the errors of bad lines.
#include <gtest/gtest.h>

#include <fstream>

#include "chat/chat_template.h"
#include "core/error.h"
#include "data/data_loader.h"
#include "data/dataset.h"
#include "data_test_util.h"
#include "testing.h"

namespace moeforge::data {
namespace {

using moeforge::testing::test_data_dir;
using testing::ScratchDir;

std::filesystem::path datasets_dir() { return test_data_dir() / "datasets"; }

struct Fixture {
  explicit Fixture(const std::string& folder)
      : tokenizer(Tokenizer::from_file(datasets_dir() / folder)),
        chat(chat::ChatTemplate::from_folder(datasets_dir() / folder)),
        encoder(tokenizer, &chat, eos_token_id_from_config(datasets_dir() / folder, tokenizer)) {}
  Tokenizer tokenizer;
  chat::ChatTemplate chat;
  ExampleEncoder encoder;
};

std::vector<nlohmann::json> read_jsonl(const std::filesystem::path& path) {
  std::ifstream in(path);
  std::vector<nlohmann::json> out;
  for (std::string line; std::getline(in, line);) out.push_back(nlohmann::json::parse(line));
  return out;
}

void expect_matches_transformers(const std::string& folder) {
  Fixture f(folder);
  LoadReport report;
  TokenCorpus corpus = load_jsonl(datasets_dir() / "examples.jsonl", f.encoder, {}, &report);
  const std::vector<nlohmann::json> expected = read_jsonl(datasets_dir() / ("expected_" + folder + ".jsonl"));
  ASSERT_EQ(corpus.num_documents(), expected.size());
  EXPECT_EQ(report.lines, static_cast<int64_t>(expected.size()));
  EXPECT_EQ(report.bad_lines, 0);
  for (uint64_t d = 0; d < corpus.num_documents(); ++d) {
    DocumentView doc = corpus.document(d);
    std::vector<int64_t> ids(doc.tokens.begin(), doc.tokens.end()), mask;
    for (uint64_t k = 0; k < doc.tokens.size(); ++k) mask.push_back(corpus.loss_bit(doc.first_token + k));
    EXPECT_EQ(ids, expected[d]["ids"].get<std::vector<int64_t>>()) << folder << " line " << d + 1;
    EXPECT_EQ(mask, expected[d]["loss_mask"].get<std::vector<int64_t>>()) << folder << " line " << d + 1;
  }
}

TEST(ExampleEncoder, MatchesTransformersWithGenerationBlocks) { expect_matches_transformers("tiny_tokenizer"); }

TEST(ExampleEncoder, MatchesTransformersWithThePrefixRule) { expect_matches_transformers("tiny_tokenizer_prefix"); }

TEST(ExampleEncoder, ThreadCountDoesNotChangeTheCorpus) {
  Fixture f("tiny_tokenizer");
  ScratchDir dir;
  std::ifstream in(datasets_dir() / "examples.jsonl");
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>()), many;
  for (int i = 0; i < 40; ++i) many += text;
  auto path = dir.write("many.jsonl", many);
  TokenCorpus one = load_jsonl(path, f.encoder, {.num_threads = 1});
  TokenCorpus four = load_jsonl(path, f.encoder, {.num_threads = 4});
  ASSERT_EQ(one.num_tokens(), four.num_tokens());
  ASSERT_EQ(one.num_documents(), four.num_documents());
  for (uint64_t d = 0; d < one.num_documents(); ++d) {
    auto a = one.document(d).tokens, b = four.document(d).tokens;
    ASSERT_TRUE(std::equal(a.begin(), a.end(), b.begin(), b.end())) << "document " << d;
  }
  for (uint64_t t = 0; t < one.num_tokens(); ++t) ASSERT_EQ(one.loss_bit(t), four.loss_bit(t));
}

TEST(ExampleEncoder, EosTokenFromConfig) {
  Fixture f("tiny_tokenizer");
  EXPECT_EQ(eos_token_id_from_config(datasets_dir() / "tiny_tokenizer", f.tokenizer), f.tokenizer.token_to_id("</s>"));
  EXPECT_EQ(eos_token_id_from_config(datasets_dir() / "tiny_tokenizer" / "tokenizer.json", f.tokenizer),
            f.tokenizer.token_to_id("</s>"));
  ScratchDir dir;  // a folder without tokenizer_config.json: no EOS rule
  EXPECT_EQ(eos_token_id_from_config(dir.path(), f.tokenizer), std::nullopt);
}

// Each bad line alone: the error names FILE:LINE and what is wrong.
TEST(ExampleEncoder, BadLinesNameFileAndLine) {
  Fixture f("tiny_tokenizer");
  ScratchDir dir;
  const std::string good = R"({"text": "fine"})";
  const std::vector<std::pair<std::string, std::string>> cases = {
      {R"({"text": "unterminated)", "invalid JSON"},
      {R"(["text", "an array"])", "expected a JSON object"},
      {R"({"content": "none of the forms", "id": 7})",
       "not a dataset line moeforge reads; expected {\"text\": ...}, {\"messages\": [...]}, {\"prompt\": ..., "
       "\"completion\": ...}, Alpaca {\"instruction\": ..., \"input\": ..., \"output\": ...} or ShareGPT "
       "{\"conversations\": [{\"from\": ..., \"value\": ...}, ...]}; this line's keys: 'content', 'id'"},
      {R"({"text": 5})", "'text' must be a string"},
      {R"({"text": "a", "messages": []})", "holds keys of more than one form ('text', 'messages')"},
      {R"({"messages": [{"content": "no role"}]})", "messages[0] has no 'role'"},
      {R"({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant"}]})",
       "messages[1] (role 'assistant') has no 'content'"},
      {R"({"messages": []})", "'messages' is an empty list"},
      {R"({"messages": "hello"})", "must be a list of messages"},
      {R"({"prompt": "only a prompt"})", "has 'prompt' but no 'completion'"},
      {R"({"prompt": "p", "completion": [{"role": "assistant", "content": "c"}]})", "both be strings or both be lists"},
      {"   ", "blank line"},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    auto path = dir.write("bad" + std::to_string(i) + ".jsonl", good + "\n" + good + "\n" + cases[i].first + "\n" + good + "\n");
    try {
      load_jsonl(path, f.encoder, {});
      ADD_FAILURE() << "accepted: " << cases[i].first;
    } catch (const Error& e) {
      const std::string msg = e.what();
      EXPECT_EQ(e.code(), ErrorCode::kFormat) << msg;
      EXPECT_NE(msg.find(path.string() + ":3: "), std::string::npos) << msg;
      EXPECT_NE(msg.find(cases[i].second), std::string::npos) << msg;
    }
  }
}

TEST(ExampleEncoder, SkipBadLinesCountsThem) {
  Fixture f("tiny_tokenizer");
  ScratchDir dir;
  auto path = dir.write("mixed.jsonl",
                        "{\"text\": \"one\"}\n{broken\n{\"text\": \"two\"}\n{\"other\": 1}\n\n{\"text\": \"three\"}\n");
  EXPECT_THROW(load_jsonl(path, f.encoder, {}), Error);
  LoadReport report;
  TokenCorpus corpus = load_jsonl(path, f.encoder, {.skip_bad_lines = true}, &report);
  EXPECT_EQ(report.lines, 6);
  EXPECT_EQ(report.bad_lines, 3);
  EXPECT_EQ(report.documents, 3);
  EXPECT_EQ(corpus.num_documents(), 3u);
  ASSERT_EQ(report.bad_line_errors.size(), 3u);
  EXPECT_NE(report.bad_line_errors[0].find(path.string() + ":2: invalid JSON"), std::string::npos);
  EXPECT_NE(report.bad_line_errors[1].find(path.string() + ":4: "), std::string::npos);
  EXPECT_NE(report.bad_line_errors[2].find(path.string() + ":5: blank line"), std::string::npos);
  // Document 1 is line 3.
  const Encoding two = f.tokenizer.encode("two", true);
  EXPECT_EQ(corpus.document(1).tokens[1], static_cast<uint32_t>(two.ids[1]));
}

// A line nested 20,000 deep (40 KB) crashed `train` even with skip_bad_lines, wherever the nesting
// sat: in tools, in a message's content, or under a message key the template never reads.
TEST(ExampleEncoder, DeeplyNestedLineIsABadLine) {
  Fixture f("tiny_tokenizer");
  ScratchDir dir;
  const std::string deep = std::string(20000, '[') + std::string(20000, ']');
  const std::string good = R"({"text": "fine"})";
  const std::string user = R"({"role": "user", "content": "hi"})";
  for (const std::string& bad : {R"({"messages": [)" + user + R"(], "tools": )" + deep + "}",
                                 R"({"messages": [{"role": "user", "content": )" + deep + "}]}",
                                 R"({"messages": [{"role": "user", "content": "hi", "unread": )" + deep + "}]}"}) {
    auto path = dir.write("deep.jsonl", good + "\n" + bad + "\n" + good + "\n");
    try {
      load_jsonl(path, f.encoder, {});
      ADD_FAILURE() << "accepted a line nested 20,000 deep";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kFormat) << e.what();
      EXPECT_NE(std::string(e.what()).find(path.string() + ":2: JSON nested more than 512 levels deep"),
                std::string::npos)
          << e.what();
    }
    LoadReport report;
    TokenCorpus corpus = load_jsonl(path, f.encoder, {.skip_bad_lines = true}, &report);
    EXPECT_EQ(report.bad_lines, 1);
    EXPECT_EQ(corpus.num_documents(), 2u);
  }
}

// A line past max_line_bytes is a bad line named with its length and the limit, never parsed.
TEST(ExampleEncoder, LineLongerThanTheLimitIsABadLine) {
  Fixture f("tiny_tokenizer");
  ScratchDir dir;
  const std::string exactly_64 = R"({"text": ")" + std::string(64 - 12, 'x') + R"("})";
  ASSERT_EQ(exactly_64.size(), 64u);
  const std::string too_long = R"({"text": ")" + std::string(100, 'y') + R"("})";
  auto path = dir.write("long.jsonl", exactly_64 + "\r\n" + too_long + "\n" + exactly_64);
  const LoadOptions limited{.max_line_bytes = 64};
  try {
    load_jsonl(path, f.encoder, limited);
    ADD_FAILURE() << "accepted a line of 112 bytes";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kFormat);
    EXPECT_NE(std::string(e.what()).find(path.string() + ":2: line of 112 bytes is longer than the limit of 64 bytes"),
              std::string::npos)
        << e.what();
  }
  LoadOptions skipping = limited;
  skipping.skip_bad_lines = true;
  LoadReport report;
  TokenCorpus corpus = load_jsonl(path, f.encoder, skipping, &report);
  EXPECT_EQ(report.lines, 3);
  EXPECT_EQ(report.bad_lines, 1);
  EXPECT_EQ(corpus.num_documents(), 2u);
  EXPECT_EQ(kMaxDatasetLineBytes, uint64_t{64} << 20);
  EXPECT_EQ(LoadOptions{}.max_line_bytes, kMaxDatasetLineBytes);
}

// Lines split across the reader's 1 MiB buffer and lines without a final newline read as before.
TEST(ExampleEncoder, LongLinesAcrossReadBuffers) {
  Fixture f("tiny_tokenizer");
  ScratchDir dir;
  const std::string long_line = R"({"text": "start", "unread": ")" + std::string(3 << 20, 'z') + R"("})";
  auto path = dir.write("buffers.jsonl", long_line + "\n" + R"({"text": "end"})");
  LoadReport report;
  TokenCorpus corpus = load_jsonl(path, f.encoder, {}, &report);
  EXPECT_EQ(report.lines, 2);
  ASSERT_EQ(corpus.num_documents(), 2u);
  const auto tokens_of = [&](const char* text) {
    return f.encoder.encode(nlohmann::ordered_json{{"text", text}}, "x").ids.size();
  };
  EXPECT_EQ(corpus.document(0).tokens.size(), tokens_of("start"));
  EXPECT_EQ(corpus.document(1).tokens.size(), tokens_of("end"));
}

// The same line through the command line: exit code 2 naming FILE:LINE, or skipped and counted.
TEST(ExampleEncoder, CommandLineReportsADeeplyNestedLine) {
  ScratchDir dir;
  const std::string deep_line = R"({"text": "x", "pad": )" + std::string(20000, '[') + std::string(20000, ']') + "}";
  const auto path = dir.write("deep.jsonl", R"({"text": "one"})" "\n" + deep_line + "\n" R"({"text": "two"})" "\n");
  const std::string tokenizer = (datasets_dir() / "tiny_tokenizer").string();
  const std::string expected = path.string() + ":2: JSON nested more than 512 levels deep";
  const std::vector<std::string> pretokenize = {"pretokenize", "--tokenizer", tokenizer, "--input", path.string(),
                                                "--output", (dir.path() / "out.mfbin").string()};
  moeforge::testing::CommandResult r = moeforge::testing::run_moeforge(pretokenize);
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find(expected), std::string::npos) << r.err;
  std::vector<std::string> skipping = pretokenize;
  skipping.push_back("--skip_bad_lines");
  r = moeforge::testing::run_moeforge(skipping);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE((r.out + r.err).find("3 lines, 2 documents"), std::string::npos) << r.out << r.err;
  r = moeforge::testing::run_moeforge({"tokenize", "--tokenizer", tokenizer, "--input", path.string()});
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find(expected), std::string::npos) << r.err;
}

TEST(ExampleEncoder, MessagesNeedAChatTemplate) {
  Fixture f("tiny_tokenizer");
  ExampleEncoder no_chat(f.tokenizer, nullptr, std::nullopt);
  auto line = nlohmann::ordered_json::parse(R"({"messages": [{"role": "user", "content": "hi"}]})");
  try {
    no_chat.encode(line, "x.jsonl:7");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("x.jsonl:7: a conversation needs a chat template"), std::string::npos);
  }
  // Without an eos_token, text gets none appended.
  EncodedExample text = no_chat.encode(nlohmann::ordered_json::parse(R"({"text": "hi"})"), "x.jsonl:1");
  EXPECT_EQ(text.ids.size(), f.tokenizer.encode("hi", true).ids.size());
}

// JSONL -> corpus -> .mfbin -> the same batches.
TEST(ExampleEncoder, PretokenizedFileGivesTheSameBatches) {
  Fixture f("tiny_tokenizer");
  ScratchDir dir;
  auto jsonl = std::make_shared<const TokenCorpus>(load_dataset(datasets_dir() / "examples.jsonl", f.encoder, {}));
  jsonl->write_mfbin(dir.path() / "examples.mfbin");
  auto mfbin = std::make_shared<const TokenCorpus>(load_dataset(dir.path() / "examples.mfbin", f.encoder, {}));
  LoaderOptions o{.max_seq_length = 48, .batch_size = 2, .seed = 1};
  DataLoader a(jsonl, all_documents(jsonl->num_documents()), o), b(mfbin, all_documents(mfbin->num_documents()), o);
  for (int i = 0; i < 10; ++i) {
    PackedBatch x = *a.next(), y = *b.next();
    const int64_t* px = x.labels.data<int64_t>();
    const int64_t* py = y.labels.data<int64_t>();
    ASSERT_TRUE(std::equal(px, px + x.labels.numel(), py)) << "batch " << i;
    ASSERT_EQ(x.num_label_tokens, y.num_label_tokens);
  }
}

// The real Qwen3 tokenizer and template (prefix rule): a one-turn conversation trains on the
// assistant's answer and its <|im_end|> and nothing of the user's turn.
TEST(ExampleEncoder, Qwen3OneTurnConversation) {
  const auto folder = moeforge::testing::shared_assets_dir() / "tokenizers" / "qwen3";
  MF_SKIP_IF_MISSING(folder);
  Tokenizer tokenizer = Tokenizer::from_file(folder);
  chat::ChatTemplate chat = chat::ChatTemplate::from_folder(folder);
  ExampleEncoder encoder(tokenizer, &chat, eos_token_id_from_config(folder, tokenizer));
  auto line = nlohmann::ordered_json::parse(
      R"({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]})");
  EncodedExample e = encoder.encode(line, "q.jsonl:1");
  std::string trained, untrained;
  std::vector<int32_t> t_ids, u_ids;
  for (size_t k = 0; k < e.ids.size(); ++k) (e.loss_mask[k] ? t_ids : u_ids).push_back(static_cast<int32_t>(e.ids[k]));
  EXPECT_EQ(tokenizer.decode(u_ids), "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
  EXPECT_EQ(tokenizer.decode(t_ids), "<think>\n\n</think>\n\nHello!<|im_end|>\n");
}

// A chat template override with {% generation %} around each assistant turn (here made from Qwen3's
// own template, so the rendered text is unchanged) is used as given: it trains on every assistant
// turn, header included, and nothing else. (Without one, moeforge's own training template is picked:
// training_template_test.cpp.)
TEST(ExampleEncoder, Qwen3MultiTurnTakesAGenerationTemplate) {
  const auto folder = moeforge::testing::shared_assets_dir() / "tokenizers" / "qwen3";
  MF_SKIP_IF_MISSING(folder);
  Tokenizer tokenizer = Tokenizer::from_file(folder);
  chat::ChatTemplate original = chat::ChatTemplate::from_folder(folder);
  const auto line = nlohmann::ordered_json::parse(
      R"({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                       {"role": "user", "content": "Add 2+2"}, {"role": "assistant", "content": "4"}]})");
  // The training variant: the assistant branch's output, from its first rendering statement to its
  // <|im_end|>, inside one generation block.
  std::ifstream in(folder / "tokenizer_config.json");
  std::string text = nlohmann::json::parse(in).at("chat_template").get<std::string>();
  const size_t branch = text.find("message.role == \"assistant\"");
  ASSERT_NE(branch, std::string::npos);
  const size_t open = text.find("{%- if loop.index0 > ns.last_query_index %}", branch);
  const std::string end_turn = "{{- '<|im_end|>\\n' }}";
  const size_t close = text.find(end_turn, open);
  ASSERT_NE(open, std::string::npos);
  ASSERT_NE(close, std::string::npos);
  text.insert(close + end_turn.size(), "{%- endgeneration %}");
  text.insert(open, "{%- generation %}");
  const auto file = moeforge::testing::unique_temp_path("mf_qwen3_training").concat(".jinja");
  std::ofstream(file) << text;
  chat::ChatTemplate training = chat::ChatTemplate::from_folder(folder, file);
  std::filesystem::remove(file);

  ExampleEncoder encoder(tokenizer, &training, eos_token_id_from_config(folder, tokenizer));
  EncodedExample e = encoder.encode(line, "chats.jsonl:1");
  chat::ChatRequest request;
  request.messages = line["messages"];
  const std::string want_text = original.render(request).text;
  std::vector<int32_t> all(e.ids.begin(), e.ids.end());
  EXPECT_EQ(tokenizer.decode(all), want_text) << "the override changed what the model sees";
  std::string trained;
  for (size_t k = 0; k < e.ids.size(); ++k)
    if (e.loss_mask[k]) trained += tokenizer.decode({static_cast<int32_t>(e.ids[k])});
  EXPECT_EQ(trained, "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n4<|im_end|>\n");
}

}  // namespace
}  // namespace moeforge::data
