// Chat data of a model whose template moeforge ships a training variant of (src/chat/training_templates/):
// the variant is picked with no flag, and the ids and assistant masks equal what Transformers'
// apply_chat_template(..., return_assistant_tokens_mask=True) gives with that variant
// (tests/data/chat/training_templates/, made by python/oracle/training_template_masks.py).
#include <gtest/gtest.h>

#include <fstream>

#include "chat/chat_template.h"
#include "chat/training_templates.h"
#include "core/error.h"
#include "data/example_encoder.h"
#include "data/token_corpus.h"
#include "data_test_util.h"
#include "io/sha256.h"
#include "testing.h"

namespace moeforge::data {
namespace {

using moeforge::testing::test_data_dir;
using nlohmann::ordered_json;

// The real tokenizer folder of a family with a shipped training template (named as the template).
std::filesystem::path tokenizer_folder(const std::string& family) {
  return moeforge::testing::shared_assets_dir() / "tokenizers" / family;
}
std::filesystem::path qwen3_folder() { return tokenizer_folder("qwen3"); }

ordered_json read_json(const std::filesystem::path& path) {
  std::ifstream in(path);
  return ordered_json::parse(in);
}

ordered_json golden_of(const std::string& family) {
  return read_json(test_data_dir() / "chat" / "training_templates" / (family + ".json"));
}
ordered_json qwen3_golden() { return golden_of("qwen3"); }

// The dataset line of a conversation file: its messages, and its tools when it has them.
ordered_json dataset_line(const std::string& conversation) {
  ordered_json c = read_json(test_data_dir() / "chat" / "conversations" / (conversation + ".json"));
  ordered_json line{{"messages", c["messages"]}};
  if (c.contains("tools")) line["tools"] = c["tools"];
  return line;
}

std::vector<uint32_t> golden_ids(const ordered_json& golden_case) {
  return golden_case["input_ids"].get<std::vector<uint32_t>>();
}
std::vector<uint8_t> golden_mask(const ordered_json& golden_case) {
  return golden_case["assistant_masks"].get<std::vector<uint8_t>>();
}

// Each shipped template, by family (its name and its tokenizer folder's).
class ShippedTrainingTemplate : public ::testing::TestWithParam<std::string> {};

// The fixture was made from the template the library carries, not an older text of it.
TEST_P(ShippedTrainingTemplate, GoldenWasMadeFromTheShippedTemplate) {
  const std::string_view source = chat::training_template_named(GetParam()).source;
  EXPECT_EQ(sha256_hex(source.data(), source.size()), golden_of(GetParam())["training_template_sha256"].get<std::string>())
      << "src/chat/training_templates/" << GetParam() << ".jinja changed: rerun python/oracle/training_template_masks.py";
}

TEST_P(ShippedTrainingTemplate, ConversationsMatchTransformers) {
  const std::filesystem::path folder = tokenizer_folder(GetParam());
  MF_SKIP_IF_MISSING(folder);
  const Tokenizer tokenizer = Tokenizer::from_file(folder);
  const chat::ChatTemplate own = chat::ChatTemplate::from_folder(folder);
  const ExampleEncoder encoder(tokenizer, &own, eos_token_id_from_config(folder, tokenizer));
  ASSERT_NE(encoder.messages_template(), nullptr);
  EXPECT_EQ(encoder.messages_template()->source_name(), "moeforge:" + GetParam());

  const ordered_json cases = golden_of(GetParam())["cases"];
  int trained_conversations = 0;
  for (const auto& golden : cases) {
    const std::string name = golden["conversation"];
    const ordered_json line = dataset_line(name);
    if (golden.contains("error")) {  // Transformers raised: the line is refused too
      EXPECT_THROW(encoder.encode(line, name), Error) << name;
      continue;
    }
    const EncodedExample e = encoder.encode(line, name);
    EXPECT_EQ(e.ids, golden_ids(golden)) << name;
    EXPECT_EQ(e.loss_mask, golden_mask(golden)) << name;
    trained_conversations += std::find(e.loss_mask.begin(), e.loss_mask.end(), 1) != e.loss_mask.end();
    if (golden["same_text_as_model_template"].get<bool>()) {  // the variant's promise, in the template's header
      chat::ChatRequest request;
      request.messages = line["messages"];
      if (line.contains("tools")) request.tools = line["tools"];
      EXPECT_EQ(tokenizer.encode(own.render(request).text, false).ids,
                std::vector<int32_t>(e.ids.begin(), e.ids.end()))
          << name;
    }
  }
  EXPECT_GE(trained_conversations, 5);
}

INSTANTIATE_TEST_SUITE_P(Families, ShippedTrainingTemplate, ::testing::Values("qwen3", "deepseek_v3"));

// `moeforge pretokenize` on multi-turn Qwen3 chat data, with no flag: what Transformers gives.
TEST(TrainingTemplate, PretokenizeQwen3MultiTurnChatWithNoFlag) {
  MF_SKIP_IF_MISSING(qwen3_folder());
  testing::ScratchDir dir;
  std::string jsonl;
  std::vector<ordered_json> expected;
  const ordered_json cases = qwen3_golden()["cases"];
  for (const auto& golden : cases) {
    if (golden.contains("error")) continue;
    jsonl += dataset_line(golden["conversation"]).dump() + "\n";
    expected.push_back(golden);
  }
  const auto input = dir.write("chat.jsonl", jsonl);
  const auto output = dir.path() / "chat.mfbin";
  moeforge::testing::CommandResult r = moeforge::testing::run_moeforge(
      {"pretokenize", "--tokenizer", qwen3_folder().string(), "--input", input.string(), "--output", output.string()});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("rendered with moeforge:qwen3"), std::string::npos) << r.err;
  const TokenCorpus corpus = TokenCorpus::open_mfbin(output);
  ASSERT_EQ(corpus.num_documents(), expected.size());
  for (size_t d = 0; d < expected.size(); ++d) {
    const DocumentView doc = corpus.document(d);
    std::vector<uint8_t> mask;
    for (uint64_t t = 0; t < doc.tokens.size(); ++t) mask.push_back(corpus.loss_bit(doc.first_token + t));
    EXPECT_EQ(std::vector<uint32_t>(doc.tokens.begin(), doc.tokens.end()), golden_ids(expected[d])) << d;
    EXPECT_EQ(mask, golden_mask(expected[d])) << d;
  }
}

// A template moeforge does not recognise (here Qwen3's with one comment added) keeps the prefix rule,
// whose refusal names the shipped templates; naming one as the override uses it.
TEST(TrainingTemplate, UnknownTemplateKeepsThePrefixRuleAndCanNameAShippedOne) {
  MF_SKIP_IF_MISSING(qwen3_folder());
  testing::ScratchDir dir;
  const auto edited = dir.write(
      "edited.jinja", read_json(qwen3_folder() / "tokenizer_config.json")["chat_template"].get<std::string>() + "{# edited #}");
  const Tokenizer tokenizer = Tokenizer::from_file(qwen3_folder());
  const chat::ChatTemplate unknown = chat::ChatTemplate::from_folder(qwen3_folder(), edited);
  const ExampleEncoder plain(tokenizer, &unknown, std::nullopt);
  EXPECT_EQ(plain.messages_template(), &unknown);
  try {
    plain.encode(dataset_line("multi_turn"), "chat.jsonl:1");
    FAIL() << "the prefix rule accepted a conversation Qwen3's template re-renders";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("moeforge:qwen3"), std::string::npos) << e.what();
  }

  const chat::ChatTemplate named = chat::ChatTemplate::from_folder(qwen3_folder(), "moeforge:qwen3");
  const ExampleEncoder encoder(tokenizer, &named, std::nullopt);
  const ordered_json cases = qwen3_golden()["cases"];
  for (const auto& golden : cases)
    if (golden["conversation"] == "multi_turn") {
      EXPECT_EQ(encoder.encode(dataset_line("multi_turn"), "chat.jsonl:1").loss_mask, golden_mask(golden));
    }
}

TEST(TrainingTemplate, UnknownNameListsTheShippedOnes) {
  try {
    chat::ChatTemplate::from_folder(test_data_dir() / "datasets" / "tiny_tokenizer", "moeforge:qwen9");
    FAIL() << "an unknown training template name was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kNotFound);
    EXPECT_NE(std::string(e.what()).find("'qwen9' (it ships moeforge:deepseek_v3, moeforge:qwen3)"), std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace moeforge::data
