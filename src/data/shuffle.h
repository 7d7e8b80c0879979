// Deterministic shuffling: the same permutation on every machine, compiler and standard library
// (std::shuffle and the std distributions are implementation-defined, so they are not used).
//
// A permutation is drawn by Fisher-Yates from a SplitMix64 stream seeded with mix(seed, stream):
// stream = the epoch number for the training order of each epoch, kEvalSplitStream for the
// held-out split. Epoch e's order thus depends only on (seed, e, the documents), so a resumed run
// regenerates it without saving it.
#pragma once

#include <cstdint>
#include <vector>

namespace moeforge::data {

inline constexpr uint64_t kEvalSplitStream = 0x6576616c5f73706cull;  // "eval_spl"

class SplitMix64 {
 public:
  explicit SplitMix64(uint64_t seed) : state_(seed) {}
  uint64_t next();
  // Uniform in [0, bound), bound > 0, without modulo bias (rejection sampling).
  uint64_t below(uint64_t bound);

 private:
  uint64_t state_;
};

// A well-mixed 64-bit seed from a user seed and a stream number.
uint64_t mix_seed(uint64_t seed, uint64_t stream);

// `items` permuted by Fisher-Yates with SplitMix64(mix_seed(seed, stream)).
std::vector<uint64_t> shuffled(std::vector<uint64_t> items, uint64_t seed, uint64_t stream);

}  // namespace moeforge::data
