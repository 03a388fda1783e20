// Small namespaces and deterministic KV for cache tests.
#ifndef KVTIER_TESTS_TESTING_CACHE_FIXTURES_H_
#define KVTIER_TESTS_TESTING_CACHE_FIXTURES_H_

#include <cstddef>
#include <cstdint>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "kvtier/namespace.h"

namespace kvtier::testing {

// 512 bytes per token, 64-token (32 KiB) chunks.
inline NamespaceOptions SmallModel(std::string salt = "") {
  NamespaceOptions o;
  o.model_id = "test/small";
  o.layout = KvLayout{2, 2, 32, 2, 16, DType::kFloat16};
  o.tokens_per_chunk = 64;
  o.cache_salt = std::move(salt);
  return o;
}

// KV that a prefill of this chunk would produce: a function of its key.
inline std::vector<std::byte> KvFor(const ChunkRef& c, size_t bytes) {
  std::vector<std::byte> v(bytes);
  uint64_t s = c.key.hi ^ (c.key.lo * 0x9E3779B97F4A7C15ull);
  for (size_t i = 0; i < bytes; ++i) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    v[i] = static_cast<std::byte>(s >> 56);
  }
  return v;
}

// `n` random token ids below 50000.
inline std::vector<TokenId> Tokens(size_t n, uint32_t seed) {
  std::vector<TokenId> t(n);
  std::mt19937 rng(seed);
  for (auto& x : t) x = rng() % 50000;
  return t;
}

}  // namespace kvtier::testing

#endif  // KVTIER_TESTS_TESTING_CACHE_FIXTURES_H_
