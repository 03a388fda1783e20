// The device runtime seam on the CPU runtime (runs everywhere), and host
// memory registration, whose outcome depends on the machine.
#include "cuda/device_runtime.h"

#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

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
using ::kvtier::testing::RefCopy;
using ::kvtier::testing::RefGather;
using ::kvtier::testing::StatusIs;
using ::testing::HasSubstr;

constexpr EngineShape kShape{.num_blocks = 16,
                             .tokens_per_block = 16,
                             .num_kv_heads = 2,
                             .head_size = 72,
                             .dtype = DType::kFloat16};

bool CudaUsable() {
  DeviceRuntimeOptions o;
  o.kind = DeviceRuntimeOptions::Kind::kCuda;
  return DeviceRuntime::Create(o).ok();
}

TEST(DeviceRuntimeTest, CpuRuntimeBasics) {
  DeviceRuntimeOptions o;
  o.kind = DeviceRuntimeOptions::Kind::kCpu;
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<DeviceRuntime> rt, DeviceRuntime::Create(o));
  EXPECT_EQ(rt->Name(), "cpu");
  EXPECT_FALSE(rt->IsGpu());
  EXPECT_EQ(rt->DeviceCount(), 0);
  EXPECT_THAT(rt->Description(), HasSubstr("cpu"));

  ASSERT_OK_AND_ASSIGN(void* a, rt->AllocPinned(1000));
  ASSERT_OK_AND_ASSIGN(void* b, rt->AllocDevice(1000));
  EXPECT_EQ(reinterpret_cast<uintptr_t>(a) % 256, 0u);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(b) % 256, 0u);
  std::vector<std::byte> src(1000);
  testing::FillRandom(src.data(), src.size(), 3);
  ASSERT_OK_AND_ASSIGN(DeviceStream stream, rt->CreateStream());
  ASSERT_OK(rt->Memcpy(a, src.data(), src.size(), stream));
  ASSERT_OK(rt->Memcpy(b, a, src.size(), stream));
  ASSERT_OK_AND_ASSIGN(DeviceEvent event, rt->CreateEvent());
  ASSERT_OK(rt->RecordEvent(event, stream));
  ASSERT_OK(rt->StreamWaitEvent(stream, event));
  ASSERT_OK(rt->SynchronizeEvent(event));
  ASSERT_OK_AND_ASSIGN(bool done, rt->EventDone(event));
  EXPECT_TRUE(done);
  ASSERT_OK(rt->SynchronizeStream(stream));
  EXPECT_EQ(std::memcmp(b, src.data(), src.size()), 0);
  EXPECT_OK(rt->DestroyEvent(event));
  EXPECT_OK(rt->DestroyStream(stream));
  EXPECT_OK(rt->FreePinned(a));
  EXPECT_OK(rt->FreeDevice(b));

  EXPECT_THAT(rt->AllocDevice(0), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("bytes")));
  EXPECT_THAT(rt->Memcpy(nullptr, src.data(), 4, nullptr),
              StatusIs(absl::StatusCode::kInvalidArgument));
  // The CPU runtime has nothing to pin for; callers report the fallback.
  EXPECT_THAT(rt->RegisterHost(src.data(), src.size()),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("pageable")));
}

TEST(DeviceRuntimeTest, AutoPicksCudaOnlyWhenUsable) {
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<DeviceRuntime> rt, DeviceRuntime::Create({}));
  EXPECT_EQ(rt->IsGpu(), CudaUsable());
  EXPECT_EQ(rt->Name(), CudaUsable() ? "cuda" : "cpu");
}

TEST(DeviceRuntimeTest, CudaUnavailableIsFailedPrecondition) {
  if (CudaUsable()) GTEST_SKIP() << "a CUDA device is visible; this checks the fallback";
  DeviceRuntimeOptions o;
  o.kind = DeviceRuntimeOptions::Kind::kCuda;
  EXPECT_THAT(DeviceRuntime::Create(o).status(),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       ::testing::AnyOf(HasSubstr("no CUDA device visible"),
                                        HasSubstr("built without CUDA"))));
}

TEST(DeviceRuntimeTest, OptionsValidate) {
  DeviceRuntimeOptions o;
  o.device = -1;
  EXPECT_THAT(DeviceRuntime::Create(o).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("device")));
  o.device = 0;
  o.kind = static_cast<DeviceRuntimeOptions::Kind>(9);
  EXPECT_THAT(DeviceRuntime::Create(o).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("kind")));
}

TEST(DeviceRuntimeTest, RegisterHostMemoryForDevice) {
  EXPECT_THAT(RegisterHostMemoryForDevice(nullptr, 4096),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("base")));
  std::vector<std::byte> arena(1 << 20);
  EXPECT_THAT(RegisterHostMemoryForDevice(arena.data(), 0),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("bytes")));
  const absl::Status s = RegisterHostMemoryForDevice(arena.data(), arena.size());
  if (CudaUsable()) {
    ASSERT_OK(s);
    EXPECT_OK(UnregisterHostMemoryForDevice(arena.data()));
  } else {
    // The DRAM arena keeps its memory pageable and reports this status.
    EXPECT_THAT(s, StatusIs(absl::StatusCode::kFailedPrecondition));
    EXPECT_THAT(UnregisterHostMemoryForDevice(arena.data()),
                StatusIs(absl::StatusCode::kFailedPrecondition));
  }
}

// A batch through the CPU copier equals the free functions chunk by chunk.
class CpuKvCopierTest : public ::testing::Test {
 protected:
  CpuKvCopierTest() : pool_(PoolKind::kFlashHnd, 3, kShape, 11) {
    rt_ = CreateCpuDeviceRuntime();
    auto copier = rt_->CreateKvCopier(pool_.layout());
    EXPECT_TRUE(copier.ok()) << copier.status();
    if (copier.ok()) copier_ = std::move(copier).value();
  }

  ChunkTransfer Transfer(const std::vector<int32_t>& ids, uint32_t tokens,
                         std::vector<std::byte>& payload) {
    payload.resize(pool_.layout().PayloadBytes(tokens));
    return {ids, tokens, payload.data(), payload.size()};
  }

  HostPool pool_;
  std::unique_ptr<DeviceRuntime> rt_;
  std::unique_ptr<KvCopier> copier_;
};

TEST_F(CpuKvCopierTest, GatherAndScatterBatches) {
  ASSERT_NE(copier_, nullptr);
  const std::vector<int32_t> a = {3, 9, 1, 14}, b = {7, 2}, c = {5};
  std::vector<std::byte> pa, pb, pc;
  const std::vector<ChunkTransfer> batch = {Transfer(a, 64, pa), Transfer(b, 20, pb),
                                            Transfer(c, 1, pc)};
  ASSERT_OK(copier_->Gather(batch, nullptr));
  EXPECT_EQ(pa, RefGather(pool_.layout(), a, 64));
  EXPECT_EQ(pb, RefGather(pool_.layout(), b, 20));
  EXPECT_EQ(pc, RefGather(pool_.layout(), c, 1));

  // Layer by layer builds the same payloads.
  std::vector<std::byte> la, lb, lc;
  const std::vector<ChunkTransfer> layered = {Transfer(a, 64, la), Transfer(b, 20, lb),
                                              Transfer(c, 1, lc)};
  for (uint32_t layer = 0; layer < 3; ++layer)
    ASSERT_OK(copier_->GatherLayer(layer, layered, nullptr));
  EXPECT_EQ(la, pa);
  EXPECT_EQ(lb, pb);
  EXPECT_EQ(lc, pc);

  // Scatter new bytes into the same blocks.
  testing::FillRandom(pa.data(), pa.size(), 21);
  testing::FillRandom(pb.data(), pb.size(), 22);
  testing::FillRandom(pc.data(), pc.size(), 23);
  HostPool expected = pool_;
  RefCopy(expected.layout(), a, 64, pa.data(), false, 0, 3);
  RefCopy(expected.layout(), b, 20, pb.data(), false, 0, 3);
  RefCopy(expected.layout(), c, 1, pc.data(), false, 0, 3);
  ASSERT_OK(copier_->Scatter(batch, nullptr));
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(FirstDifference(pool_.storage()[i].data(), expected.storage()[i].data(),
                              pool_.tensor_bytes()),
              -1);
  }
}

TEST_F(CpuKvCopierTest, RefusesBadBatches) {
  ASSERT_NE(copier_, nullptr);
  std::vector<std::byte> p1, p2;
  const std::vector<int32_t> a = {1, 2}, b = {2, 3};
  EXPECT_THAT(copier_->Gather({}, nullptr),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("empty")));
  EXPECT_THAT(copier_->GatherLayer(3, {Transfer(a, 32, p1)}, nullptr),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("layer = 3")));
  ChunkTransfer null_payload = Transfer(a, 32, p1);
  null_payload.payload = nullptr;
  EXPECT_THAT(copier_->Gather({null_payload}, nullptr),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("chunks[0].payload")));
  ChunkTransfer short_payload = Transfer(a, 32, p1);
  short_payload.payload_bytes -= 2;
  EXPECT_THAT(copier_->Gather({Transfer(b, 32, p2), short_payload}, nullptr),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("chunks[1].payload")));

  // Two chunks scattering into block 2: refused, the pool unchanged.
  const HostPool before = pool_;
  EXPECT_THAT(copier_->Scatter({Transfer(a, 32, p1), Transfer(b, 32, p2)}, nullptr),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("block 2")));
  for (size_t i = 0; i < 3; ++i) EXPECT_EQ(pool_.storage()[i], before.storage()[i]);
  // Gathering the same block into two chunks is fine.
  EXPECT_OK(copier_->Gather({Transfer(a, 32, p1), Transfer(b, 32, p2)}, nullptr));
}

TEST(DeviceRuntimeCpuTest, CreateKvCopierValidatesTheLayout) {
  auto rt = CreateCpuDeviceRuntime();
  EngineLayout l;
  EXPECT_THAT(rt->CreateKvCopier(l).status(), StatusIs(absl::StatusCode::kInvalidArgument));
}

}  // namespace
}  // namespace kvtier
