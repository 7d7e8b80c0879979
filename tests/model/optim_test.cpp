#include "core/error.h"
#include "optim/schedule.h"
#include "testing.h"

namespace moeforge {
namespace {

// Shape of the Hugging Face schedules: warm-up from 0 (the first update uses multiplier 0), the
// peak at the end of warm-up, decay to 0 at the last step; cosine is half way at mid-decay.
TEST(Schedule, WarmupThenDecay) {
  for (auto s : {LrSchedule::kLinear, LrSchedule::kCosine}) {
    EXPECT_EQ(lr_multiplier(s, 0, 10, 110), 0.0);
    EXPECT_DOUBLE_EQ(lr_multiplier(s, 5, 10, 110), 0.5);
    EXPECT_DOUBLE_EQ(lr_multiplier(s, 10, 10, 110), 1.0);
    EXPECT_DOUBLE_EQ(lr_multiplier(s, 60, 10, 110), 0.5);
    EXPECT_NEAR(lr_multiplier(s, 110, 10, 110), 0.0, 1e-12);
    for (int64_t i = 11; i <= 110; ++i) EXPECT_LE(lr_multiplier(s, i, 10, 110), lr_multiplier(s, i - 1, 10, 110));
  }
  EXPECT_EQ(lr_multiplier(LrSchedule::kConstant, 0, 10, 110), 1.0);
  EXPECT_EQ(lr_multiplier(LrSchedule::kConstantWithWarmup, 50, 10, 110), 1.0);
  EXPECT_THROW(parse_lr_schedule("polynomial_typo"), Error);
}

}  // namespace
}  // namespace moeforge
