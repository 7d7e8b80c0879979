#include "optim/schedule.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace moeforge {

LrSchedule parse_lr_schedule(const std::string& name) {
  if (name == "constant") return LrSchedule::kConstant;
  if (name == "constant_with_warmup") return LrSchedule::kConstantWithWarmup;
  if (name == "linear") return LrSchedule::kLinear;
  // Transformers' cosine_with_restarts at its default num_cycles=1 (there are no lr_scheduler_kwargs
  // here) is the cosine schedule: one half-period from the peak to 0.
  if (name == "cosine" || name == "cosine_with_restarts") return LrSchedule::kCosine;
  fail(ErrorCode::kInvalidArgument, "unknown lr_scheduler_type '", name,
       "' (constant, constant_with_warmup, linear, cosine, cosine_with_restarts)");
}

const char* lr_schedule_name(LrSchedule s) {
  switch (s) {
    case LrSchedule::kConstant: return "constant";
    case LrSchedule::kConstantWithWarmup: return "constant_with_warmup";
    case LrSchedule::kLinear: return "linear";
    case LrSchedule::kCosine: return "cosine";
  }
  return "?";
}

double lr_multiplier(LrSchedule schedule, int64_t step, int64_t warmup, int64_t total) {
  if (schedule == LrSchedule::kConstant) return 1.0;
  if (step < warmup) return static_cast<double>(step) / static_cast<double>(std::max<int64_t>(1, warmup));
  const double progress = static_cast<double>(step - warmup) /
                          static_cast<double>(std::max<int64_t>(1, total - warmup));
  switch (schedule) {
    case LrSchedule::kConstantWithWarmup: return 1.0;
    case LrSchedule::kLinear: return std::max(0.0, 1.0 - progress);
    case LrSchedule::kCosine: return std::max(0.0, 0.5 * (1.0 + std::cos(M_PI * progress)));
    default: return 1.0;
  }
}

}  // namespace moeforge
