// Helpers shared by the NVMe tier tests and the crash-test writer process:
// deterministic chunks (the payload follows from the key, so two processes
// agree on the bytes), temporary folders, and file-system mounts.
#ifndef KVTIER_TESTS_UNIT_TIERS_NVME_TEST_UTIL_H_
#define KVTIER_TESTS_UNIT_TIERS_NVME_TEST_UTIL_H_

#include <stdlib.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "kvtier/keys.h"
#include "src/common/temp_path.h"
#include "src/core/chunk_format.h"
#include "src/tiers/tier.h"

namespace kvtier::nvme_test {

inline constexpr uint64_t kNs = 0xC0FFEE;
inline constexpr uint64_t kLayout = 0x1A70;

struct TestChunk {
  ChunkMeta meta;
  std::vector<std::byte> encoded;
};

// The payload of `key`: `bytes` pseudo-random bytes seeded by the key.
inline std::vector<std::byte> PayloadFor(const BlockKey& key, size_t bytes) {
  std::vector<std::byte> p(bytes);
  std::mt19937_64 rng(key.hi * 0x9E3779B97F4A7C15ull ^ key.lo);
  size_t i = 0;
  for (; i + 8 <= bytes; i += 8) {
    uint64_t v = rng();
    std::memcpy(p.data() + i, &v, 8);
  }
  for (; i < bytes; ++i) p[i] = static_cast<std::byte>(rng());
  return p;
}

inline TestChunk MakeChunk(const BlockKey& key, size_t payload_bytes,
                           const BlockKey& parent = BlockKey{}, uint64_t ns = kNs) {
  TestChunk c;
  c.meta.namespace_id = ns;
  c.meta.key = key;
  c.meta.parent = parent;
  c.meta.layout_signature = kLayout;
  c.meta.num_tokens = 16;
  ChunkHeader h;
  h.namespace_id = ns;
  h.key = key;
  h.layout_signature = kLayout;
  h.num_tokens = 16;
  std::vector<std::byte> payload = PayloadFor(key, payload_bytes);
  c.encoded.resize(kChunkHeaderBytes + payload_bytes);
  if (!EncodeChunk(h, payload, absl::MakeSpan(c.encoded)).ok()) std::abort();
  return c;
}

// A fresh folder under `parent` (default /tmp), removed on destruction.
class TempDir {
 public:
  explicit TempDir(const std::string& parent = "/tmp") {
    absl::StatusOr<std::string> dir = MakeTempDir(parent, "kvtier-nvme-");
    if (!dir.ok()) std::abort();
    path_ = *dir;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string volume() const { return path_ + "/kvtier-nvme.dat"; }

 private:
  std::string path_;
};

// Runs a shell command; true when it exits with 0.
inline bool Run(const std::string& command) { return std::system(command.c_str()) == 0; }

}  // namespace kvtier::nvme_test

#endif  // KVTIER_TESTS_UNIT_TIERS_NVME_TEST_UTIL_H_
