// moeforge demo: the embedded default. With no arguments and no network it builds a small Qwen3-MoE
// (random initialisation, the demo tokenizer compiled into this binary), fine-tunes it on a
// synthetic chat task — reversing a string of capital letters — and shows the held-out exact-match
// accuracy before and after, the loss falling, the saved Hugging Face folder and the HTML report.
#include <filesystem>
#include <fstream>
#include <random>
#include <set>

#include "chat/chat_template.h"
#include "command.h"
#include "core/log.h"
#include "demo_assets.h"
#include "io/hf_folder.h"
#include "model/generate.h"
#include "tokenizer/tokenizer.h"
#include "train/session.h"

namespace moeforge::cli {
namespace {

namespace fs = std::filesystem;

// A tiny Qwen3-MoE: 2 layers of 8 experts (top-2), the auxiliary loss on so the report shows balance.
constexpr const char* kDemoConfig = R"({
  "architectures": ["Qwen3MoeForCausalLM"],
  "model_type": "qwen3_moe",
  "vocab_size": 300,
  "hidden_size": 64,
  "intermediate_size": 128,
  "moe_intermediate_size": 64,
  "num_hidden_layers": 2,
  "num_attention_heads": 4,
  "num_key_value_heads": 2,
  "head_dim": 16,
  "num_experts": 8,
  "num_experts_per_tok": 2,
  "norm_topk_prob": true,
  "decoder_sparse_step": 1,
  "mlp_only_layers": [],
  "output_router_logits": true,
  "router_aux_loss_coef": 0.01,
  "rms_norm_eps": 1e-06,
  "rope_theta": 10000.0,
  "max_position_embeddings": 512,
  "initializer_range": 0.05,
  "tie_word_embeddings": false,
  "attention_bias": false,
  "hidden_act": "silu",
  "eos_token_id": 2,
  "torch_dtype": "float32"
}
)";

struct Question {
  std::string letters, answer;
};

std::string random_letters(std::mt19937_64& rng) {
  std::uniform_int_distribution<int> len(3, 6), letter(0, 25);
  std::string s(static_cast<size_t>(len(rng)), 'A');
  for (char& c : s) c = static_cast<char>('A' + letter(rng));
  return s;
}

nlohmann::ordered_json conversation(const Question& q, bool with_answer) {
  nlohmann::ordered_json msgs = nlohmann::ordered_json::array();
  msgs.push_back({{"role", "user"}, {"content", "Reverse the letters: " + q.letters}});
  if (with_answer) msgs.push_back({{"role", "assistant"}, {"content", q.answer}});
  return msgs;
}

// Held-out questions are strings the training set never contains.
void make_task(uint64_t seed, int n_train, int n_eval, std::vector<Question>& train, std::vector<Question>& eval) {
  std::mt19937_64 rng(seed);
  std::set<std::string> seen;
  auto draw = [&](std::vector<Question>& out, int n) {
    while (static_cast<int>(out.size()) < n) {
      std::string s = random_letters(rng);
      if (!seen.insert(s).second) continue;
      out.push_back({s, std::string(s.rbegin(), s.rend())});
    }
  };
  draw(eval, n_eval);
  draw(train, n_train);
}

void write_jsonl(const fs::path& path, const std::vector<Question>& qs) {
  std::string text;
  for (const auto& q : qs) text += nlohmann::ordered_json{{"messages", conversation(q, true)}}.dump() + "\n";
  atomic_write_file(path, text);
}

// An answer as the table shows it: printable ASCII, at most 12 characters. The untrained model
// answers with random tokens, often pieces of UTF-8 characters that would print as U+FFFD.
std::string table_cell(const std::string& answer) {
  std::string cell;
  for (unsigned char c : answer) {
    if (cell.size() == 12) return cell.substr(0, 9) + "...";
    if ((c & 0xC0) == 0x80) continue;  // the rest of a multi-byte character: shown once, as its lead byte
    cell += c >= 0x20 && c < 0x7F ? static_cast<char>(c) : '?';
  }
  return cell;
}

// Greedy answers to the held-out questions; returns the exact-match accuracy and fills `answers` as
// the table shows them.
double accuracy(CausalLM& model, const Tokenizer& tok, const chat::ChatTemplate& chat,
                const std::vector<Question>& qs, std::vector<std::string>& answers) {
  GenerationConfig gc;
  gc.max_new_tokens = 10;
  gc.eos_token_ids = {*tok.token_to_id("<|im_end|>")};
  int correct = 0;
  answers.clear();
  for (const auto& q : qs) {
    chat::ChatRequest req;
    req.messages = conversation(q, false);
    req.add_generation_prompt = true;
    std::string prompt = chat.render(req).text;
    std::vector<int32_t> out = generate(model, tok.encode(prompt, false).ids, gc);
    if (!out.empty() && out.back() == gc.eos_token_ids[0]) out.pop_back();
    const std::string answer = tok.decode(out, true);
    correct += answer == q.answer;
    answers.push_back(table_cell(answer));
  }
  return static_cast<double>(correct) / static_cast<double>(qs.size());
}

int run_demo(const ParsedOptions& o) {
  const fs::path out = o.str("output_dir");
  const fs::path base = out / "base-model";
  const uint64_t seed = static_cast<uint64_t>(o.integer("seed"));
  fs::create_directories(base);
  atomic_write_file(base / "tokenizer.json", kDemo_tokenizer_json);
  atomic_write_file(base / "tokenizer_config.json", kDemo_tokenizer_config_json);
  atomic_write_file(base / "config.json", kDemoConfig);
  ModelOptions mo;
  mo.device = option_device(o);
  mo.dtype = option_dtype(o);
  {
    // Initialised in float32 on the CPU whatever the backend, so every backend starts from the
    // same weights (the CPU-vs-CUDA loss-curve check relies on it).
    CausalLM init = CausalLM::from_config(load_model_config(base), ModelOptions{}, seed);
    init.save_pretrained(base, DType::kF32);
  }
  std::vector<Question> train, eval;
  make_task(seed, 4000, static_cast<int>(o.integer("eval_questions")), train, eval);
  write_jsonl(out / "train.jsonl", train);
  write_jsonl(out / "eval.jsonl", eval);

  SessionOptions s;
  s.model = base.string();
  s.model_options = mo;
  TrainingArguments& a = s.args;
  a.output_dir = (out / "model").string();
  a.overwrite_output_dir = true;  // the demo starts from scratch every time it runs
  a.learning_rate = o.real("learning_rate");
  a.per_device_train_batch_size = 8;
  a.per_device_eval_batch_size = 8;
  a.max_steps = o.integer("max_steps");
  a.warmup_steps = 20;
  a.lr_scheduler_type = "cosine";
  a.weight_decay = 0.01;
  a.logging_steps = 25;
  a.eval_steps = 100;
  a.save_steps = 0;
  a.seed = seed;
  s.data.train_file = (out / "train.jsonl").string();
  s.data.eval_file = (out / "eval.jsonl").string();
  s.data.max_seq_length = 128;
  s.data.max_eval_batches = 8;
  TrainingSession session(s);

  std::vector<std::string> before, after;
  const double acc_before = accuracy(session.model(), session.tokenizer(), *session.chat_template(), eval, before);
  MF_LOG_INFO("held-out exact-match accuracy before training: ", 100.0 * acc_before, "%");
  TrainResult r = session.run();
  if (r.interrupted) return 0;
  const double acc_after = accuracy(session.model(), session.tokenizer(), *session.chat_template(), eval, after);

  std::printf("\n%-10s %-10s %-12s %-12s\n", "question", "expected", "before", "after");
  for (size_t i = 0; i < eval.size() && i < 8; ++i)
    std::printf("%-10s %-10s %-12s %-12s\n", eval[i].letters.c_str(), eval[i].answer.c_str(), before[i].c_str(),
                after[i].c_str());
  std::printf("\nheld-out exact match: %.1f%% before -> %.1f%% after %lld steps (final loss %.4f, eval_loss %.4f)\n",
              100.0 * acc_before, 100.0 * acc_after, static_cast<long long>(r.steps), r.final_loss, r.final_eval_loss);
  std::printf("model: %s (a Hugging Face folder)\nreport: %s\n", a.output_dir.c_str(),
              (fs::path(a.output_dir) / "report.html").string().c_str());
  nlohmann::json summary = {{"accuracy_before", acc_before}, {"accuracy_after", acc_after}, {"steps", r.steps},
                            {"final_loss", r.final_loss}, {"final_eval_loss", r.final_eval_loss}};
  atomic_write_file(out / "demo_summary.json", summary.dump(2) + "\n");
  return 0;
}

CommandSpec spec() {
  CommandSpec c;
  c.name = "demo";
  c.summary = "fine-tune a small Qwen3-MoE on a synthetic chat task and show it learn (no files, no network)";
  c.options = {
      {.name = "output_dir", .type = OptionType::kPath, .default_value = "moeforge-demo", .help = "where everything goes"},
      {.name = "max_steps", .type = OptionType::kInt, .default_value = "200", .help = "optimizer steps",
       .range = NumericRange{.min = 1}},
      {.name = "learning_rate", .type = OptionType::kFloat, .default_value = "0.004", .help = "peak learning rate",
       .aliases = {"lr"}, .range = *training_option_range("learning_rate")},
      {.name = "eval_questions", .type = OptionType::kInt, .default_value = "64", .help = "held-out questions",
       .range = NumericRange{.min = 1}},
      {.name = "seed", .type = OptionType::kInt, .default_value = "1", .help = "task and initialisation seed",
       .range = *training_option_range("seed")},
      device_option(),
      dtype_option(),
  };
  c.run = run_demo;
  return c;
}

const CommandRegistration registration{spec()};

}  // namespace
}  // namespace moeforge::cli
