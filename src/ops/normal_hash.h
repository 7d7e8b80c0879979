// Normal draws from a counter-based hash: element `index` of stream `stream` (a parameter's index)
// under `seed` is one Box-Muller normal from two uniforms of splitmix64(seed, stream, index). The
// same function on the CPU and in the CUDA kernel (in double precision, rounded to float once), so
// random weights depend neither on the device nor on how the work is split.
#pragma once

#include <cmath>
#include <cstdint>

#include "ops/host_device.h"

namespace moeforge::ops {

MF_HOST_DEVICE inline uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

MF_HOST_DEVICE inline float normal_at(uint64_t seed, uint64_t stream, uint64_t index, float std_dev) {
  const uint64_t a = splitmix64(seed ^ splitmix64(stream * 0x100000001b3ull + (index << 1)));
  const uint64_t b = splitmix64(a ^ 0xd1b54a32d192ed03ull);
  const double u1 = (static_cast<double>(a >> 11) + 1.0) * 0x1.0p-53;  // (0, 1]
  const double u2 = static_cast<double>(b >> 11) * 0x1.0p-53;
  return static_cast<float>(std_dev * sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

}  // namespace moeforge::ops
