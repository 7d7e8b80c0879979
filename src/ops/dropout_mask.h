// Which elements dropout keeps: a counter-based hash of (seed, element index), the same function on
// the CPU and in the CUDA kernel, so both backends drop the same elements and a mask is drawn again
// from its seed instead of being stored (the backward, a recomputed layer, a resumed run).
#pragma once

#include <cstdint>

#include "ops/host_device.h"

namespace moeforge::ops {

// Elements whose 32-bit draw is below `threshold` (= p * 2^32) are dropped.
MF_HOST_DEVICE inline bool dropout_keeps(uint64_t seed, uint64_t index, uint32_t threshold) {
  uint64_t x = seed + (index + 1) * 0x9e3779b97f4a7c15ull;  // splitmix64 of the element's counter
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  x ^= x >> 31;
  return static_cast<uint32_t>(x >> 32) >= threshold;
}

inline uint32_t dropout_threshold(float p) {
  return static_cast<uint32_t>(static_cast<double>(p) * 4294967296.0);
}

}  // namespace moeforge::ops
