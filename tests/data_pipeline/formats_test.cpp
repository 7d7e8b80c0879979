// The dataset forms beyond text / messages / prompt+completion (issue 21): plain .txt files,
// Alpaca and ShareGPT lines, and TRL SFTConfig's dataset_text_field, assistant_only_loss and
// completion_only_loss. Each is checked against the form it is defined by (example_encoder.h).
#include <gtest/gtest.h>

#include "chat/chat_template.h"
#include "core/error.h"
#include "data/dataset.h"
#include "data_test_util.h"
#include "testing.h"

namespace moeforge::data {
namespace {

using testing::ScratchDir;

const std::filesystem::path kFolder = moeforge::testing::test_data_dir() / "datasets" / "tiny_tokenizer";

struct Documents {
  std::vector<std::vector<uint32_t>> ids;
  std::vector<std::vector<uint8_t>> masks;
  bool operator==(const Documents&) const = default;
};

Documents documents_of(const TokenCorpus& corpus) {
  Documents out;
  for (uint64_t d = 0; d < corpus.num_documents(); ++d) {
    const DocumentView doc = corpus.document(d);
    out.ids.emplace_back(doc.tokens.begin(), doc.tokens.end());
    std::vector<uint8_t> mask;
    for (uint64_t k = 0; k < doc.tokens.size(); ++k) mask.push_back(corpus.loss_bit(doc.first_token + k));
    out.masks.push_back(std::move(mask));
  }
  return out;
}

class DatasetForms : public ::testing::Test {
 protected:
  Documents load(const std::string& name, const std::string& contents, EncoderOptions options = {}) {
    const ExampleEncoder encoder(tokenizer_, &chat_, eos_token_id_from_config(kFolder, tokenizer_), std::move(options));
    return documents_of(load_dataset(dir_.write(name, contents), encoder, {}));
  }
  Tokenizer tokenizer_ = Tokenizer::from_file(kFolder);
  chat::ChatTemplate chat_ = chat::ChatTemplate::from_folder(kFolder);
  ScratchDir dir_;
};

// As the datasets library's text loader: one example per line (its blank lines hold none here).
TEST_F(DatasetForms, TextFileHoldsOneExamplePerLine) {
  const Documents txt = load("data.txt", "The quick brown fox.\n\nJumps over\r\nthe lazy dog</s>\n");
  EXPECT_EQ(txt, load("data.jsonl", "{\"text\": \"The quick brown fox.\"}\n{\"text\": \"Jumps over\"}\n"
                                    "{\"text\": \"the lazy dog</s>\"}\n"));
  EXPECT_EQ(txt.ids.size(), 3u);
}

TEST_F(DatasetForms, AlpacaIsAUserAndAnAssistantTurn) {
  const Documents alpaca = load("alpaca.jsonl",
                                R"({"instruction": "Reverse the word.", "input": "abc", "output": "cba"})" "\n"
                                R"({"instruction": "Say hi.", "input": "", "output": "hi"})" "\n");
  const Documents messages = load("messages.jsonl",
      R"({"messages": [{"role": "user", "content": "Reverse the word.\n\nabc"}, {"role": "assistant", "content": "cba"}]})" "\n"
      R"({"messages": [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "hi"}]})" "\n");
  EXPECT_EQ(alpaca, messages);
}

TEST_F(DatasetForms, ShareGptRolesAreRenamed) {
  const Documents sharegpt = load("sharegpt.jsonl",
      R"({"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi"}, )"
      R"({"from": "gpt", "value": "Hello"}, {"from": "human", "value": "Bye"}, {"from": "gpt", "value": "Bye"}]})" "\n");
  const Documents messages = load("messages.jsonl",
      R"({"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}, )"
      R"({"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Bye"}]})" "\n");
  EXPECT_EQ(sharegpt, messages);
}

TEST_F(DatasetForms, DatasetTextFieldNamesTheTextKey) {
  EXPECT_EQ(load("a.jsonl", R"({"content": "some words"})" "\n", {.text_field = "content"}),
            load("b.jsonl", R"({"text": "some words"})" "\n"));
}

TEST_F(DatasetForms, AssistantOnlyLossOffTrainsEveryTokenOfTheModelsRendering) {
  const std::string line = R"({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]})";
  const Documents all = load("all.jsonl", line + "\n", {.assistant_only_loss = false});
  chat::ChatRequest request;
  request.messages = nlohmann::ordered_json::parse(line)["messages"];
  const Encoding want = tokenizer_.encode(chat_.render(request).text, false);  // apply_chat_template(tokenize=True)
  ASSERT_EQ(all.ids.size(), 1u);
  EXPECT_EQ(all.ids[0], std::vector<uint32_t>(want.ids.begin(), want.ids.end()));
  EXPECT_EQ(all.masks[0], std::vector<uint8_t>(want.ids.size(), 1));
  const Documents assistant = load("assistant.jsonl", line + "\n");
  EXPECT_NE(assistant.masks[0], all.masks[0]) << "the default trains the assistant turn only";
}

TEST_F(DatasetForms, CompletionOnlyLossOffTrainsThePromptToo) {
  const std::string line = R"({"prompt": "2 + 2 =", "completion": " 4"})";
  const Documents all = load("all.jsonl", line + "\n", {.completion_only_loss = false});
  const Documents completion = load("completion.jsonl", line + "\n");
  EXPECT_EQ(all.ids, completion.ids);
  EXPECT_EQ(all.masks[0], std::vector<uint8_t>(all.ids[0].size(), 1));
  EXPECT_NE(completion.masks[0], all.masks[0]);
}

TEST_F(DatasetForms, BadLinesOfTheNewFormsNameFileLineAndKey) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {R"({"instruction": "no output"})", "an Alpaca line needs 'output'"},
      {R"({"conversations": [{"from": "bot", "value": "x"}]})",
       "conversations[0]: 'from' is 'bot'; ShareGPT turns are from 'human', 'gpt' or 'system'"},
      {R"({"conversations": [{"from": "human"}]})", "conversations[0] needs a string 'value'"},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    try {
      load(str_cat("bad", i, ".jsonl"), cases[i].first + "\n");
      ADD_FAILURE() << "accepted: " << cases[i].first;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(str_cat("bad", i, ".jsonl:1: ")), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find(cases[i].second), std::string::npos) << e.what();
    }
  }
}

// A text file not named .txt: the JSON error says what the two line formats are.
TEST_F(DatasetForms, NonJsonLinesPointToTxtFiles) {
  try {
    load("notes.jsonl", "just some prose\n");
    ADD_FAILURE() << "accepted a prose line as JSONL";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("notes.jsonl:1: invalid JSON"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("must end in .txt"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace moeforge::data
