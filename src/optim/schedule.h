// Learning-rate schedules with the Hugging Face `get_scheduler` semantics: the multiplier for
// optimizer step s (0-based, the first update uses s = 0) of `total` steps with `warmup` warm-up steps.
#pragma once

#include <cstdint>
#include <string>

namespace moeforge {

enum class LrSchedule { kConstant, kConstantWithWarmup, kLinear, kCosine };
LrSchedule parse_lr_schedule(const std::string& name);  // HF `lr_scheduler_type` names
const char* lr_schedule_name(LrSchedule s);

double lr_multiplier(LrSchedule schedule, int64_t step, int64_t warmup, int64_t total);

}  // namespace moeforge
