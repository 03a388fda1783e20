// The pinned DRAM arena on a real GPU (label "gpu"): the CUDA kernels gather
// engine blocks straight into a reserved arena slot and scatter a pinned
// chunk straight back, with no bounce buffer, and the bytes equal the CPU
// path's. Skips when kvtier was built without CUDA or no device is visible.
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "cuda/device_runtime.h"
#include "cuda/kv_copy.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kvtier/namespace.h"
#include "src/core/embedded_cache.h"
#include "tests/testing/status_matchers.h"
#include "tests/unit/cuda/kv_reference.h"

namespace kvtier {
namespace {

using ::kvtier::testing::FirstDifference;
using ::kvtier::testing::HostPool;
using ::kvtier::testing::PoolKind;

constexpr uint32_t kLayers = 4;
constexpr uint32_t kBlockTokens = 16;
constexpr uint32_t kChunkTokens = 64;

TEST(CudaArenaTest, KernelsMoveKvStraightBetweenDevicePoolAndArenaSlots) {
  DeviceRuntimeOptions ro;
  ro.kind = DeviceRuntimeOptions::Kind::kCuda;
  auto rt_or = DeviceRuntime::Create(ro);
  if (!rt_or.ok()) GTEST_SKIP() << testing::NoCudaReason(rt_or.status());
  std::unique_ptr<DeviceRuntime> rt = std::move(rt_or).value();
  ASSERT_OK_AND_ASSIGN(DeviceStream stream, rt->CreateStream());

  CacheOptions co;
  co.dram_capacity_bytes = 16ull << 20;
  co.slab_bytes = 4ull << 20;
  co.huge_pages = false;
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<EmbeddedCache> cache, EmbeddedCache::Create(co));
  // A GPU is visible, so the arena must be pinned; the fallback is only for
  // machines without one.
  ASSERT_TRUE(cache->Stats().gpu_registered) << cache->Stats().gpu_registration;

  const EngineShape shape{.num_blocks = 32,
                          .tokens_per_block = kBlockTokens,
                          .num_kv_heads = 2,
                          .head_size = 128,
                          .dtype = DType::kBFloat16};
  HostPool host(PoolKind::kFlashNhd, kLayers, shape, 77);
  // The same pool on the device, and an empty one to scatter into.
  std::vector<void*> src_bases, dst_bases;
  for (const auto& t : host.storage()) {
    ASSERT_OK_AND_ASSIGN(void* s, rt->AllocDevice(t.size()));
    ASSERT_OK_AND_ASSIGN(void* d, rt->AllocDevice(t.size()));
    ASSERT_OK(rt->Memcpy(s, t.data(), t.size(), stream));
    std::vector<std::byte> poison(t.size(), std::byte{0xA5});
    ASSERT_OK(rt->Memcpy(d, poison.data(), poison.size(), stream));
    ASSERT_OK(rt->SynchronizeStream(stream));
    src_bases.push_back(s);
    dst_bases.push_back(d);
  }
  const EngineLayout src = testing::MakeLayout(PoolKind::kFlashNhd, src_bases, kLayers, shape);
  const EngineLayout dst = testing::MakeLayout(PoolKind::kFlashNhd, dst_bases, kLayers, shape);
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<KvCopier> gather, rt->CreateKvCopier(src));
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<KvCopier> scatter, rt->CreateKvCopier(dst));

  NamespaceOptions no;
  no.model_id = "test/gpu-arena";
  no.layout = src.ChunkLayout();
  no.tokens_per_chunk = kChunkTokens;
  ASSERT_OK_AND_ASSIGN(Namespace ns, Namespace::Create(no));
  ASSERT_OK(src.CheckCompatible(ns));
  std::vector<TokenId> tokens(kChunkTokens * 2);
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<TokenId>(i * 7 + 3);
  ASSERT_OK_AND_ASSIGN(std::vector<ChunkRef> chunks, ns.Chunks(tokens));
  ASSERT_EQ(chunks.size(), 2u);

  const std::vector<int32_t> ids = testing::RandomBlockIds(32, 8, 5);
  const size_t bytes = ns.PayloadBytes(kChunkTokens);
  ASSERT_EQ(bytes, src.PayloadBytes(kChunkTokens));
  for (size_t c = 0; c < chunks.size(); ++c) {
    const absl::Span<const int32_t> blocks = absl::MakeConstSpan(ids).subspan(c * 4, 4);
    // Engine -> arena slot, by the kernel, then visible through the cache.
    ASSERT_OK_AND_ASSIGN(DramTier::SlotReservation slot, cache->ReserveSlot(ns, chunks[c]));
    ASSERT_FALSE(slot.already_present);
    ASSERT_EQ(slot.payload_bytes, bytes);
    std::byte* payload = cache->dram().arena().base() + slot.payload_offset;
    ASSERT_OK(gather->Gather({{blocks, kChunkTokens, payload, bytes}}, stream));
    ASSERT_OK(rt->SynchronizeStream(stream));
    ASSERT_OK(cache->CommitSlot(slot.handle));

    std::vector<std::byte> want(bytes), got(bytes);
    ASSERT_OK(Gather(host.layout(), blocks, kChunkTokens, absl::MakeSpan(want)));
    ASSERT_OK_AND_ASSIGN(size_t n, cache->Load(ns, chunks[c].key, absl::MakeSpan(got)));
    ASSERT_EQ(n, bytes);
    EXPECT_EQ(FirstDifference(got.data(), want.data(), bytes), -1) << "chunk " << c;

    // Pinned arena slot -> the empty pool, by the kernel.
    ASSERT_OK_AND_ASSIGN(ChunkPin pin, cache->Pin(ns, chunks[c].key));
    ASSERT_EQ(pin.payload().size(), bytes);
    ASSERT_OK(scatter->Scatter(
        {{blocks, kChunkTokens, const_cast<std::byte*>(pin.payload().data()), bytes}}, stream));
    ASSERT_OK(rt->SynchronizeStream(stream));
  }
  // Every scattered block equals the source pool; the others keep the poison.
  for (uint32_t l = 0; l < kLayers; ++l) {
    const size_t tensor = host.tensor_bytes();
    std::vector<std::byte> got(tensor);
    ASSERT_OK(rt->Memcpy(got.data(), dst_bases[l], tensor, stream));
    ASSERT_OK(rt->SynchronizeStream(stream));
    std::vector<std::byte> want(tensor, std::byte{0xA5});
    const size_t es = DTypeSize(shape.dtype);
    const size_t block_bytes = src.TensorBytes(kBlockTokens);
    for (int32_t id : ids) {
      for (uint32_t kv = 0; kv < 2; ++kv) {
        const size_t at = es * (kv * src.strides.kv + static_cast<size_t>(id) * src.strides.block);
        std::memcpy(want.data() + at, host.storage()[l].data() + at, block_bytes);
      }
    }
    EXPECT_EQ(FirstDifference(got.data(), want.data(), tensor), -1) << "layer " << l;
  }
  for (size_t i = 0; i < src_bases.size(); ++i) {
    EXPECT_OK(rt->FreeDevice(src_bases[i]));
    EXPECT_OK(rt->FreeDevice(dst_bases[i]));
  }
  EXPECT_OK(rt->DestroyStream(stream));
}

}  // namespace
}  // namespace kvtier
