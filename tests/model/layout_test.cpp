// Every trainable family's weight map binds each checkpoint tensor to a parameter slice of its
// shape, and the real Qwen3-30B-A3B config.json builds the right parameters without allocating.
#include <map>

#include "arch/architecture.h"
#include "arch/weight_map.h"
#include "model/causal_lm.h"
#include "testing.h"

namespace moeforge {
namespace {

TEST(Layout, Qwen3_30B_A3B_WithoutAllocating) {
  const auto path = testing::test_data_dir() / "configs" / "qwen3-30b-a3b" / "config.json";
  ModelConfig config = load_model_config(path);
  const size_t before = cpu_memory_stats().in_use;
  const ModelDescription d = describe_model(config);
  EXPECT_EQ(cpu_memory_stats().in_use, before);  // nothing allocated
  ASSERT_TRUE(d.trainable());

  std::map<std::string, Shape> bound;
  for (const CheckpointTensor& t : d.tensors)
    bound[t.name] = slice_shape(t.slice, d.weights.params.entry(t.slice.param).shape);
  std::map<std::string, Shape> want;
  for (const auto& t : checkpoint_tensors(config)) want[t.name] = t.shape;
  EXPECT_TRUE(bound == want) << "a checkpoint tensor is bound to a slice of another shape";
  EXPECT_EQ(d.weights.params.numel(), count_parameters(config).total);
  EXPECT_EQ(d.weights.params.numel(), 30532122624);  // Transformers 5.17 num_parameters() (tests/data/configs/param_counts.json)
  EXPECT_EQ(bound.at("model.layers.47.mlp.experts.127.down_proj.weight"), (Shape{2048, 768}));
  EXPECT_EQ(d.weights.layers.size(), 48u);
}

// Each checkpoint tensor is a distinct slice: no two tensors share a parameter's elements, and every
// element of every parameter belongs to exactly one tensor (so load fills, and save writes, all).
TEST(Layout, EveryParameterElementIsExactlyOneCheckpointTensor) {
  for (const char* name : {"qwen3-30b-a3b", "qwen3-8b", "tiny-qwen3-moe-tied", "tiny-olmoe", "mixtral-8x7b", "tiny-mixtral",
                           "tiny-qwen2-moe"}) {
    const auto path = testing::test_data_dir() / "configs" / name / "config.json";
    SCOPED_TRACE(name);
    const ModelDescription d = describe_model(load_model_config(path));
    ASSERT_TRUE(d.trainable());
    std::vector<int64_t> covered(d.weights.params.size(), 0);
    for (const CheckpointTensor& t : d.tensors) covered[t.slice.param] += shape_numel(t.shape);
    for (size_t i = 0; i < covered.size(); ++i)
      EXPECT_EQ(covered[i], d.weights.params.entry(static_cast<int>(i)).numel()) << d.weights.params.entry(static_cast<int>(i)).name;
  }
}

}  // namespace
}  // namespace moeforge
