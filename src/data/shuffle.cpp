#include "data/shuffle.h"

#include <utility>

#include "core/error.h"

namespace moeforge::data {

uint64_t SplitMix64::next() {
  uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

uint64_t SplitMix64::below(uint64_t bound) {
  MF_ASSERT(bound > 0);
  // Values under `threshold` would make some residues one more likely than others.
  const uint64_t threshold = (0 - bound) % bound;
  for (;;) {
    uint64_t r = next();
    if (r >= threshold) return r % bound;
  }
}

uint64_t mix_seed(uint64_t seed, uint64_t stream) {
  SplitMix64 a(seed);
  SplitMix64 b(a.next() ^ stream);
  return b.next();
}

std::vector<uint64_t> shuffled(std::vector<uint64_t> items, uint64_t seed, uint64_t stream) {
  SplitMix64 rng(mix_seed(seed, stream));
  for (size_t i = items.size(); i > 1; --i) std::swap(items[i - 1], items[rng.below(i)]);
  return items;
}

}  // namespace moeforge::data
