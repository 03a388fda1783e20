// The CUDA gather/scatter kernels against the CPU path (label "gpu"). Every
// test skips when kvtier was built without CUDA or no device is visible.
#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "absl/types/span.h"
#include "cuda/device_runtime.h"
#include "cuda/kv_copy.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"
#include "tests/unit/cuda/kv_reference.h"

namespace kvtier {
namespace {

using ::kvtier::testing::FirstDifference;
using ::kvtier::testing::HostPool;
using ::kvtier::testing::PoolKind;
using ::kvtier::testing::RandomBlockIds;
using ::kvtier::testing::StatusIs;
using ::testing::HasSubstr;

constexpr uint32_t kLayers = 3;

// Owns device or pinned memory of one runtime.
class Buffer {
 public:
  Buffer(DeviceRuntime* rt, size_t bytes, bool pinned) : rt_(rt), pinned_(pinned) {
    auto p = pinned ? rt->AllocPinned(bytes) : rt->AllocDevice(bytes);
    EXPECT_TRUE(p.ok()) << p.status();
    if (p.ok()) ptr_ = static_cast<std::byte*>(*p);
  }
  ~Buffer() {
    if (ptr_ == nullptr) return;
    EXPECT_OK(pinned_ ? rt_->FreePinned(ptr_) : rt_->FreeDevice(ptr_));
  }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  std::byte* get() const { return ptr_; }

 private:
  DeviceRuntime* rt_;
  bool pinned_;
  std::byte* ptr_ = nullptr;
};

class CudaKvCopyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    DeviceRuntimeOptions o;
    o.kind = DeviceRuntimeOptions::Kind::kCuda;
    auto rt = DeviceRuntime::Create(o);
    if (!rt.ok()) GTEST_SKIP() << testing::NoCudaReason(rt.status());
    rt_ = std::move(rt).value();
    auto stream = rt_->CreateStream();
    ASSERT_TRUE(stream.ok()) << stream.status();
    stream_ = *stream;
  }
  void TearDown() override {
    if (rt_ != nullptr) EXPECT_OK(rt_->DestroyStream(stream_));
  }

  // A device copy of `host`, with the layout re-pointed at device memory.
  struct DevicePool {
    std::vector<std::unique_ptr<Buffer>> tensors;
    EngineLayout layout;
  };
  DevicePool Upload(const HostPool& host) {
    DevicePool d;
    std::vector<void*> bases;
    for (const auto& t : host.storage()) {
      d.tensors.push_back(std::make_unique<Buffer>(rt_.get(), t.size(), false));
      EXPECT_OK(rt_->Memcpy(d.tensors.back()->get(), t.data(), t.size(), stream_));
      bases.push_back(d.tensors.back()->get());
    }
    EXPECT_OK(rt_->SynchronizeStream(stream_));
    d.layout = testing::MakeLayout(host.kind(), std::move(bases), kLayers, host.shape());
    return d;
  }
  // The device pool's bytes, tensor by tensor.
  std::vector<std::vector<std::byte>> Download(const DevicePool& d, size_t bytes) {
    std::vector<std::vector<std::byte>> out;
    for (const auto& t : d.tensors) {
      out.emplace_back(bytes);
      EXPECT_OK(rt_->Memcpy(out.back().data(), t->get(), bytes, stream_));
    }
    EXPECT_OK(rt_->SynchronizeStream(stream_));
    return out;
  }

  std::unique_ptr<DeviceRuntime> rt_;
  DeviceStream stream_ = nullptr;
};

// kind, dtype, block size, head size, direct (kernels on host memory, no staging)
using Param = std::tuple<PoolKind, DType, uint32_t, uint32_t, bool>;

class CudaKvCopyLayoutTest : public CudaKvCopyTest, public ::testing::WithParamInterface<Param> {};

TEST_P(CudaKvCopyLayoutTest, MatchesCpuPath) {
  const auto [kind, dtype, bs, head_size, direct] = GetParam();
  EngineShape shape{.num_blocks = 24,
                    .tokens_per_block = bs,
                    .num_kv_heads = kind == PoolKind::kMla ? 1u : 2u,
                    .head_size = head_size,
                    .dtype = dtype};
  HostPool host(kind, kLayers, shape, 5);
  DevicePool dev = Upload(host);
  KvCopierOptions options;
  if (direct) options.host_staging_bytes = 0;
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<KvCopier> copier, rt_->CreateKvCopier(dev.layout, options));

  // Three chunks: a whole chunk, a partial one (partial last block), one token.
  const std::vector<int32_t> ids = RandomBlockIds(24, 9, 17);
  const std::vector<int32_t> a(ids.begin(), ids.begin() + 4), b(ids.begin() + 4, ids.begin() + 7),
      c(ids.begin() + 7, ids.begin() + 8);
  const uint32_t ta = 4 * bs, tb = 2 * bs + (bs > 1 ? bs / 2 + 1 : 1), tc = 1;
  const size_t ba = host.layout().PayloadBytes(ta), bb = host.layout().PayloadBytes(tb),
               bc = host.layout().PayloadBytes(tc);

  // Gather into pinned memory; chunk b lands one byte past an aligned address,
  // forcing the narrow-access fallback for it.
  Buffer pinned(rt_.get(), ba + bb + 1 + bc, true);
  Buffer device(rt_.get(), ba + bb + bc, false);
  std::byte* pa = pinned.get();
  std::byte* pb = pinned.get() + ba + 1;
  std::byte* pc = pb + bb;
  const std::vector<ChunkTransfer> to_pinned = {{a, ta, pa, ba}, {b, tb, pb, bb}, {c, tc, pc, bc}};
  ASSERT_OK(copier->Gather(to_pinned, stream_));
  // And into device memory, layer by layer, last layer first.
  const std::vector<ChunkTransfer> to_device = {{a, ta, device.get(), ba},
                                                {b, tb, device.get() + ba, bb},
                                                {c, tc, device.get() + ba + bb, bc}};
  for (uint32_t layer = kLayers; layer-- > 0;)
    ASSERT_OK(copier->GatherLayer(layer, to_device, stream_));
  std::vector<std::byte> from_device(ba + bb + bc);
  ASSERT_OK(rt_->Memcpy(from_device.data(), device.get(), from_device.size(), stream_));
  ASSERT_OK(rt_->SynchronizeStream(stream_));

  std::vector<std::byte> want_a(ba), want_b(bb), want_c(bc);
  ASSERT_OK(Gather(host.layout(), a, ta, absl::MakeSpan(want_a)));
  ASSERT_OK(Gather(host.layout(), b, tb, absl::MakeSpan(want_b)));
  ASSERT_OK(Gather(host.layout(), c, tc, absl::MakeSpan(want_c)));
  EXPECT_EQ(FirstDifference(pa, want_a.data(), ba), -1);
  EXPECT_EQ(FirstDifference(pb, want_b.data(), bb), -1);
  EXPECT_EQ(FirstDifference(pc, want_c.data(), bc), -1);
  EXPECT_EQ(FirstDifference(from_device.data(), want_a.data(), ba), -1);
  EXPECT_EQ(FirstDifference(from_device.data() + ba, want_b.data(), bb), -1);
  EXPECT_EQ(FirstDifference(from_device.data() + ba + bb, want_c.data(), bc), -1);

  // Scatter random payloads from pinned memory; the device pool must equal
  // the host pool after the CPU scatter of the same bytes.
  testing::FillRandom(pa, ba, 31);
  testing::FillRandom(pb, bb, 32);
  testing::FillRandom(pc, bc, 33);
  ASSERT_OK(copier->Scatter(to_pinned, stream_));
  ASSERT_OK(Scatter(host.layout(), a, ta, {pa, ba}));
  ASSERT_OK(Scatter(host.layout(), b, tb, {pb, bb}));
  ASSERT_OK(Scatter(host.layout(), c, tc, {pc, bc}));
  std::vector<std::vector<std::byte>> got = Download(dev, host.tensor_bytes());
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_EQ(FirstDifference(got[i].data(), host.storage()[i].data(), host.tensor_bytes()), -1)
        << "tensor " << i;
  }

  // One layer from device memory: only that layer changes.
  ASSERT_OK(rt_->Memcpy(device.get(), want_a.data(), ba, stream_));
  ASSERT_OK(copier->ScatterLayer(1, {{a, ta, device.get(), ba}}, stream_));
  ASSERT_OK(ScatterLayer(host.layout(), 1, a, ta, want_a));
  got = Download(dev, host.tensor_bytes());
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_EQ(FirstDifference(got[i].data(), host.storage()[i].data(), host.tensor_bytes()), -1)
        << "tensor " << i;
  }
}

std::string ParamName(const ::testing::TestParamInfo<Param>& info) {
  const auto [kind, dtype, bs, head, direct] = info.param;
  return testing::PoolKindName(kind) + "_" + std::string(DTypeName(dtype)) + "_bs" +
         std::to_string(bs) + "_d" + std::to_string(head) + (direct ? "_direct" : "_staged");
}

INSTANTIATE_TEST_SUITE_P(AllLayouts, CudaKvCopyLayoutTest,
                         ::testing::Combine(::testing::ValuesIn(testing::kAllPoolKinds),
                                            ::testing::Values(DType::kBFloat16, DType::kFloat8E4M3,
                                                              DType::kFloat32),
                                            ::testing::Values(16u, 256u),
                                            ::testing::Values(128u, 72u, 1u), ::testing::Bool()),
                         ParamName);

// More blocks and chunks than one launch carries: the batch is split; and
// more host payload bytes than the staging buffer holds: it moves in rounds.
TEST_F(CudaKvCopyTest, SplitsLargeBatches) {
  const EngineShape shape{.num_blocks = 1400,
                          .tokens_per_block = 16,
                          .num_kv_heads = 1,
                          .head_size = 64,
                          .dtype = DType::kBFloat16};
  HostPool host(PoolKind::kFlashNhd, kLayers, shape, 8);
  DevicePool dev = Upload(host);

  // 45 chunks of 30 blocks (1350 blocks, 45 chunks > 32 per launch), the last
  // block of each chunk partial.
  const std::vector<int32_t> ids = RandomBlockIds(1400, 1350, 4);
  const uint32_t tokens = 29 * 16 + 3;
  const size_t bytes = host.layout().PayloadBytes(tokens);
  Buffer pinned(rt_.get(), bytes * 45, true);
  std::vector<ChunkTransfer> batch;
  for (size_t i = 0; i < 45; ++i) {
    batch.push_back(
        {absl::MakeConstSpan(ids).subspan(i * 30, 30), tokens, pinned.get() + i * bytes, bytes});
  }
  // Default staging (one round), none, rounds of four chunks, and a buffer
  // smaller than one chunk (it grows to one chunk).
  for (size_t staging :
       {KvCopierOptions{}.host_staging_bytes, size_t{0}, 4 * bytes + 4096, size_t{1}}) {
    SCOPED_TRACE(::testing::Message() << "host_staging_bytes = " << staging);
    ASSERT_OK_AND_ASSIGN(std::unique_ptr<KvCopier> copier,
                         rt_->CreateKvCopier(dev.layout, {.host_staging_bytes = staging}));
    testing::FillRandom(pinned.get(), bytes * 45, staging + 1);
    ASSERT_OK(copier->Gather(batch, stream_));
    ASSERT_OK(rt_->SynchronizeStream(stream_));
    std::vector<std::byte> want(bytes);
    for (size_t i = 0; i < 45; ++i) {
      ASSERT_OK(Gather(host.layout(), batch[i].block_ids, tokens, absl::MakeSpan(want)));
      EXPECT_EQ(FirstDifference(pinned.get() + i * bytes, want.data(), bytes), -1) << "chunk " << i;
    }

    testing::FillRandom(pinned.get(), bytes * 45, 9);
    ASSERT_OK(copier->Scatter(batch, stream_));
    for (size_t i = 0; i < 45; ++i) {
      ASSERT_OK(
          Scatter(host.layout(), batch[i].block_ids, tokens, {pinned.get() + i * bytes, bytes}));
    }
    const std::vector<std::vector<std::byte>> got = Download(dev, host.tensor_bytes());
    for (size_t i = 0; i < got.size(); ++i) {
      EXPECT_EQ(FirstDifference(got[i].data(), host.storage()[i].data(), host.tensor_bytes()), -1);
    }
  }
}

// Two threads, each on its own stream, share one copier and so its staging
// buffer; every round trip must come back intact.
TEST_F(CudaKvCopyTest, StreamsTakeTurnsOnTheStagingBuffer) {
  const EngineShape shape{.num_blocks = 64,
                          .tokens_per_block = 16,
                          .num_kv_heads = 4,
                          .head_size = 128,
                          .dtype = DType::kFloat16};
  HostPool host(PoolKind::kFlashNhd, kLayers, shape, 21);
  DevicePool dev = Upload(host);
  const size_t bytes = host.layout().PayloadBytes(64);
  // A buffer of two chunks, so each call of four chunks runs two rounds.
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<KvCopier> copier,
                       rt_->CreateKvCopier(dev.layout, {.host_staging_bytes = 2 * bytes}));
  const std::vector<int32_t> ids = RandomBlockIds(64, 64, 6);
  std::vector<std::vector<std::byte>> want(16, std::vector<std::byte>(bytes));
  for (size_t c = 0; c < 16; ++c) {
    ASSERT_OK(Gather(host.layout(), absl::MakeConstSpan(ids).subspan(c * 4, 4), 64,
                     absl::MakeSpan(want[c])));
  }
  std::atomic<int> wrong{0};
  auto worker = [&](size_t first_chunk) {
    auto stream = rt_->CreateStream();
    ASSERT_TRUE(stream.ok());
    Buffer pinned(rt_.get(), 8 * bytes, true);
    for (int rep = 0; rep < 20; ++rep) {
      testing::FillRandom(pinned.get(), 8 * bytes, rep);
      std::vector<ChunkTransfer> batch;
      for (size_t c = 0; c < 8; ++c) {
        batch.push_back({absl::MakeConstSpan(ids).subspan((first_chunk + c) * 4, 4), 64,
                         pinned.get() + c * bytes, bytes});
      }
      ASSERT_OK(copier->Gather(batch, *stream));
      ASSERT_OK(rt_->SynchronizeStream(*stream));
      for (size_t c = 0; c < 8; ++c) {
        if (FirstDifference(pinned.get() + c * bytes, want[first_chunk + c].data(), bytes) != -1) {
          ++wrong;
        }
      }
    }
    EXPECT_OK(rt_->DestroyStream(*stream));
  };
  std::thread a(worker, 0), b(worker, 8);
  a.join();
  b.join();
  EXPECT_EQ(wrong.load(), 0);
}

TEST_F(CudaKvCopyTest, RegisteredHostMemoryWorksAndPageableIsRefused) {
  const EngineShape shape{.num_blocks = 8,
                          .tokens_per_block = 16,
                          .num_kv_heads = 8,
                          .head_size = 128,
                          .dtype = DType::kBFloat16};
  HostPool host(PoolKind::kFlashNhd, kLayers, shape, 12);
  DevicePool dev = Upload(host);
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<KvCopier> copier, rt_->CreateKvCopier(dev.layout));
  const std::vector<int32_t> ids = {6, 2};
  const size_t bytes = host.layout().PayloadBytes(32);

  std::vector<std::byte> pageable(bytes);
  EXPECT_THAT(copier->Gather({{ids, 32, pageable.data(), bytes}}, stream_),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("pageable")));

  ASSERT_OK(RegisterHostMemoryForDevice(pageable.data(), pageable.size()));
  ASSERT_OK(copier->Gather({{ids, 32, pageable.data(), bytes}}, stream_));
  ASSERT_OK(rt_->SynchronizeStream(stream_));
  std::vector<std::byte> want(bytes);
  ASSERT_OK(Gather(host.layout(), ids, 32, absl::MakeSpan(want)));
  EXPECT_EQ(pageable, want);
  EXPECT_OK(UnregisterHostMemoryForDevice(pageable.data()));
}

TEST_F(CudaKvCopyTest, HostPoolIsRefused) {
  const EngineShape shape{.num_blocks = 4,
                          .tokens_per_block = 16,
                          .num_kv_heads = 1,
                          .head_size = 64,
                          .dtype = DType::kFloat16};
  HostPool host(PoolKind::kFlashNhd, kLayers, shape, 1);
  EXPECT_THAT(rt_->CreateKvCopier(host.layout()).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("layer_bases[0]")));
}

TEST_F(CudaKvCopyTest, PoolSmallerThanLayoutIsRefused) {
  const EngineShape shape{.num_blocks = 4,
                          .tokens_per_block = 16,
                          .num_kv_heads = 1,
                          .head_size = 64,
                          .dtype = DType::kFloat16};
  HostPool host(PoolKind::kFlashNhd, kLayers, shape, 1);
  DevicePool dev = Upload(host);
  EngineLayout bigger = dev.layout;
  bigger.num_blocks = 8;  // the allocations hold 4
  bigger.strides.kv *= 2;
  EXPECT_THAT(rt_->CreateKvCopier(bigger).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("not inside one")));
}

}  // namespace
}  // namespace kvtier
