// Bad input to `moeforge step` gets a clear message naming the problem and exit code 2, never a crash.
#include <fstream>
#include <functional>

#include "io/safetensors.h"
#include "testing.h"

namespace moeforge {
namespace {

namespace fs = std::filesystem;

class ModelErrors : public ::testing::Test {
 protected:
  // The golden fixture the test starts from.
  virtual const char* fixture() const { return "moe_untied_norm"; }

  void SetUp() override {
    src_ = testing::test_data_dir() / "golden" / fixture();
    dir_ = testing::unique_temp_path(std::string("mf_model_errors_") +
                                     ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    for (const char* f : {"config.json", "model.safetensors", "batch.safetensors"})
      fs::copy_file(src_ / f, dir_ / f);
  }
  void TearDown() override { fs::remove_all(dir_); }

  // Rewrites dir_/file keeping every tensor except those `edit` replaces or drops (empty tensor).
  void rewrite(const std::string& file,
               const std::function<void(std::vector<NamedTensor>&)>& edit) {
    std::vector<NamedTensor> tensors;
    {
      SafetensorsFile f = SafetensorsFile::open(src_ / file);
      for (const auto& n : f.names()) tensors.emplace_back(n, f.get(n).clone());
    }
    edit(tensors);
    write_safetensors(dir_ / file, tensors);
  }

  testing::CommandResult step() {
    return testing::run_moeforge({"step", "--model", dir_.string(), "--batch",
                                  (dir_ / "batch.safetensors").string(), "--out",
                                  (dir_ / "out.safetensors").string()});
  }

  void expect_error(const std::vector<std::string>& fragments) {
    auto r = step();
    EXPECT_EQ(r.exit_code, 2) << r.err;
    for (const auto& f : fragments) EXPECT_NE(r.err.find(f), std::string::npos) << "'" << f << "' not in: " << r.err;
    EXPECT_FALSE(fs::exists(dir_ / "out.safetensors"));
  }

  fs::path src_, dir_;
};

TEST_F(ModelErrors, MissingTensorIsNamed) {
  rewrite("model.safetensors", [](std::vector<NamedTensor>& t) {
    std::erase_if(t, [](const NamedTensor& x) { return x.first == "model.layers.1.mlp.experts.3.up_proj.weight"; });
  });
  expect_error({"lacks", "model.layers.1.mlp.experts.3.up_proj.weight"});
}

TEST_F(ModelErrors, UnexpectedTensorIsNamed) {
  rewrite("model.safetensors", [](std::vector<NamedTensor>& t) {
    t.emplace_back("model.layers.0.self_attn.rotary_emb.inv_freq", Tensor::zeros({6}, DType::kF32));
  });
  expect_error({"does not use", "model.layers.0.self_attn.rotary_emb.inv_freq"});
}

TEST_F(ModelErrors, WrongShapeNamesExpectedAndFound) {
  rewrite("model.safetensors", [](std::vector<NamedTensor>& t) {
    for (auto& [name, tensor] : t)
      if (name == "model.layers.0.self_attn.q_proj.weight") tensor = Tensor::zeros({48, 41}, DType::kF32);
  });
  expect_error({"model.layers.0.self_attn.q_proj.weight", "[48, 41]", "[48, 40]"});
}

// A block-FP8 checkpoint (DeepSeek-V3's release format) whose weights and scales disagree.
class Fp8ModelErrors : public ModelErrors {
 protected:
  const char* fixture() const override { return "deepseek_v3_fp8_blocks"; }
};

TEST_F(Fp8ModelErrors, WeightWithoutItsScalesIsNamed) {
  rewrite("model.safetensors", [](std::vector<NamedTensor>& t) {
    std::erase_if(t, [](const NamedTensor& x) { return x.first == "model.layers.1.self_attn.kv_b_proj.weight_scale_inv"; });
  });
  expect_error({"model.layers.1.self_attn.kv_b_proj.weight", "stored in FP8 without its",
                "model.layers.1.self_attn.kv_b_proj.weight_scale_inv"});
}

TEST_F(Fp8ModelErrors, ScaleGridOfAnotherShapeIsNamed) {
  rewrite("model.safetensors", [](std::vector<NamedTensor>& t) {
    for (auto& [name, tensor] : t)
      if (name == "model.layers.0.mlp.down_proj.weight_scale_inv") tensor = Tensor::zeros({4, 1}, DType::kF32);
  });
  expect_error({"model.layers.0.mlp.down_proj.weight_scale_inv has shape [4, 1], expected [4, 2]",
                "weight_block_size"});
}

// A GPT-OSS checkpoint in MXFP4 (OpenAI's release format) whose blocks and scales disagree.
class Mxfp4ModelErrors : public ModelErrors {
 protected:
  const char* fixture() const override { return "gpt_oss_mxfp4_tied"; }
};

TEST_F(Mxfp4ModelErrors, BlocksWithoutTheirScalesAreNamed) {
  rewrite("model.safetensors", [](std::vector<NamedTensor>& t) {
    std::erase_if(t, [](const NamedTensor& x) { return x.first == "model.layers.1.mlp.experts.down_proj_scales"; });
  });
  expect_error({"model.layers.1.mlp.experts.down_proj_blocks has no model.layers.1.mlp.experts.down_proj_scales"});
}

TEST_F(Mxfp4ModelErrors, ScalesOfAnotherShapeAreNamed) {
  rewrite("model.safetensors", [](std::vector<NamedTensor>& t) {
    for (auto& [name, tensor] : t)
      if (name == "model.layers.0.mlp.experts.gate_up_proj_scales") tensor = Tensor::zeros({4, 64, 2}, DType::kU8);
  });
  expect_error({"model.layers.0.mlp.experts.gate_up_proj_scales has shape [4, 64, 2], expected [4, 64, 1]"});
}

TEST_F(ModelErrors, ConfigWeightsMismatch) {
  std::ifstream in(src_ / "config.json");
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  auto pos = text.find("\"moe_intermediate_size\": 20");
  ASSERT_NE(pos, std::string::npos);
  text.replace(pos, 27, "\"moe_intermediate_size\": 24");
  std::ofstream(dir_ / "config.json") << text;
  expect_error({"has shape", "config.json implies"});
}

TEST_F(ModelErrors, TokenOutOfVocabulary) {
  rewrite("batch.safetensors", [](std::vector<NamedTensor>& t) {
    for (auto& [name, tensor] : t)
      if (name == "input_ids") tensor.data<int64_t>()[3] = 131;  // vocab_size is 131
  });
  expect_error({"input_ids[0, 3] = 131", "outside the vocabulary"});
}

TEST_F(ModelErrors, UnknownBatchTensor) {
  rewrite("batch.safetensors", [](std::vector<NamedTensor>& t) { t.emplace_back("token_type_ids", Tensor::zeros({2, 9}, DType::kI64)); });
  expect_error({"unexpected tensor 'token_type_ids'"});
}

TEST_F(ModelErrors, AllLabelsIgnored) {
  rewrite("batch.safetensors", [](std::vector<NamedTensor>& t) {
    for (auto& [name, tensor] : t)
      if (name == "labels")
        for (int64_t i = 0; i < tensor.numel(); ++i) tensor.data<int64_t>()[i] = -100;
  });
  expect_error({"every label of the batch is -100"});
}

TEST_F(ModelErrors, MissingModelFolder) {
  auto r = testing::run_moeforge({"step", "--model", (dir_ / "nope").string(), "--batch",
                                  (dir_ / "batch.safetensors").string(), "--out", (dir_ / "o").string()});
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("nope"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace moeforge
