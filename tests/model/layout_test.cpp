// The real Qwen3-30B-A3B config.json builds the right parameter shapes and count without allocating.
#include <map>

#include "arch/checkpoint_tensors.h"
#include "model/causal_lm.h"
#include "testing.h"

namespace moeforge {
namespace {

TEST(Layout, Qwen3_30B_A3B_WithoutAllocating) {
  const auto path = testing::test_data_dir() / "configs" / "qwen3-30b-a3b" / "config.json";
  ModelConfig config = load_model_config(path);
  const size_t before = cpu_memory_stats().in_use;
  auto layout = causal_lm_checkpoint_layout(config);
  EXPECT_EQ(cpu_memory_stats().in_use, before);  // nothing allocated

  std::map<std::string, Shape> ours(layout.begin(), layout.end());
  std::map<std::string, Shape> want;
  for (const auto& t : checkpoint_tensors(config)) want[t.name] = t.shape;
  EXPECT_EQ(ours.size(), want.size());
  EXPECT_TRUE(ours == want) << "checkpoint names or shapes differ from the architecture's list";
  int64_t total = 0;
  for (const auto& [name, shape] : layout) total += shape_numel(shape);
  EXPECT_EQ(total, count_parameters(config).total);
  EXPECT_EQ(total, 30532122624);  // Transformers 5.17 num_parameters() (tests/data/configs/param_counts.json)
  EXPECT_EQ(ours.at("model.layers.47.mlp.experts.127.down_proj.weight"), (Shape{2048, 768}));
}

}  // namespace
}  // namespace moeforge
