#include "src/core/chunk_format.h"

#include <algorithm>
#include <optional>
#include <random>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "src/core/hash.h"
#include "tests/testing/mutate.h"
#include "tests/testing/status_matchers.h"

namespace kvtier {
namespace {

using ::kvtier::testing::StatusIs;
using ::testing::HasSubstr;

std::vector<std::byte> RandomBytes(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<std::byte> v(n);
  for (auto& b : v) b = static_cast<std::byte>(rng());
  return v;
}

ChunkHeader SampleHeader() {
  ChunkHeader h;
  h.namespace_id = 0xabcdef0123456789ull;
  h.key = BlockKey{0x1111, 0x2222};
  h.layout_signature = 0x5151;
  h.num_tokens = 256;
  return h;
}

ChunkExpectation ExpectFor(const ChunkHeader& h) {
  return ChunkExpectation{h.namespace_id, h.key, h.layout_signature, true};
}

class ChunkFormatTest : public ::testing::TestWithParam<ChecksumType> {};

TEST_P(ChunkFormatTest, RoundTrip) {
  std::vector<std::byte> payload = RandomBytes(100000, 1);
  ChunkHeader h = SampleHeader();
  h.checksum_type = GetParam();
  std::vector<std::byte> buf(kChunkHeaderBytes + payload.size() + 100);
  ASSERT_OK_AND_ASSIGN(size_t n, EncodeChunk(h, payload, absl::MakeSpan(buf)));
  EXPECT_EQ(n, kChunkHeaderBytes + payload.size());
  ASSERT_OK_AND_ASSIGN(DecodedChunk d, DecodeChunk(buf, ExpectFor(h)));
  EXPECT_EQ(d.header.num_tokens, 256u);
  EXPECT_EQ(d.header.payload_length, payload.size());
  EXPECT_EQ(d.header.checksum_type, GetParam());
  ASSERT_EQ(d.payload.size(), payload.size());
  EXPECT_TRUE(std::equal(d.payload.begin(), d.payload.end(), payload.begin()));
}

TEST_P(ChunkFormatTest, EveryFlippedByteIsCaught) {
  std::vector<std::byte> payload = RandomBytes(4096, 2);
  ChunkHeader h = SampleHeader();
  h.checksum_type = GetParam();
  std::vector<std::byte> buf(kChunkHeaderBytes + payload.size());
  ASSERT_OK(EncodeChunk(h, payload, absl::MakeSpan(buf)).status());
  for (size_t i = 0; i < buf.size(); i += (i < kChunkHeaderBytes ? 1 : 97)) {
    std::vector<std::byte> bad = buf;
    bad[i] ^= std::byte{0x40};
    absl::StatusOr<DecodedChunk> d = DecodeChunk(bad, ExpectFor(h));
    EXPECT_FALSE(d.ok()) << "flip at byte " << i << " went unnoticed";
    EXPECT_THAT(d, StatusIs(absl::StatusCode::kDataLoss)) << "byte " << i;
  }
}

// Damage of every kind (flips, truncation, inserted, deleted and repeated
// bytes, several at once): DecodeChunk either refuses the chunk as DataLoss
// or returns exactly the original header and payload (the damage fell in the
// slack after the chunk).
TEST_P(ChunkFormatTest, DamagedChunksAreRefusedOrIntact) {
  std::vector<std::byte> payload = RandomBytes(1000, 3);
  ChunkHeader h = SampleHeader();
  h.checksum_type = GetParam();
  std::string encoded(kChunkHeaderBytes + payload.size() + 16, '\0');
  ASSERT_OK(
      EncodeChunk(h, payload,
                  absl::MakeSpan(reinterpret_cast<std::byte*>(encoded.data()), encoded.size()))
          .status());
  testing::Mutator m(static_cast<uint64_t>(GetParam()));
  int refused = 0, intact = 0;
  for (int i = 0; i < 20000; ++i) {
    const std::string bad = m.Mutate(encoded);
    absl::StatusOr<DecodedChunk> d =
        DecodeChunk(absl::MakeConstSpan(reinterpret_cast<const std::byte*>(bad.data()), bad.size()),
                    ExpectFor(h));
    if (!d.ok()) {
      ++refused;
      EXPECT_THAT(d, StatusIs(absl::StatusCode::kDataLoss)) << "iteration " << i;
      continue;
    }
    ++intact;
    EXPECT_EQ(d->header.payload_length, payload.size()) << "iteration " << i;
    EXPECT_EQ(d->header.num_tokens, h.num_tokens) << "iteration " << i;
    ASSERT_EQ(d->payload.size(), payload.size()) << "iteration " << i;
    EXPECT_TRUE(std::equal(d->payload.begin(), d->payload.end(), payload.begin()))
        << "iteration " << i;
  }
  EXPECT_GT(refused, 15000);
  EXPECT_GT(intact, 20);
}

INSTANTIATE_TEST_SUITE_P(Checksums, ChunkFormatTest,
                         ::testing::Values(ChecksumType::kXxh3_64, ChecksumType::kCrc32c));

TEST(ChunkFormat, MalformedInputsNameTheProblem) {
  std::vector<std::byte> payload = RandomBytes(1000, 3);
  ChunkHeader h = SampleHeader();
  std::vector<std::byte> buf(kChunkHeaderBytes + payload.size());
  ASSERT_OK(EncodeChunk(h, payload, absl::MakeSpan(buf)).status());

  EXPECT_THAT(DecodeChunk(absl::MakeSpan(buf).first(10), ExpectFor(h)),
              StatusIs(absl::StatusCode::kDataLoss, HasSubstr("shorter than the 64-byte header")));
  // Truncated payload.
  EXPECT_THAT(DecodeChunk(absl::MakeSpan(buf).first(500), ExpectFor(h)),
              StatusIs(absl::StatusCode::kDataLoss, HasSubstr("runs past")));
  std::vector<std::byte> bad = buf;
  bad[0] = std::byte{'X'};
  EXPECT_THAT(DecodeChunk(bad, ExpectFor(h)),
              StatusIs(absl::StatusCode::kDataLoss, HasSubstr("magic")));
  // A future version with a valid header checksum.
  ChunkHeader future = h;
  bad = buf;
  EncodeChunkHeader(future, bad.data());
  bad[4] = std::byte{9};
  EXPECT_THAT(DecodeChunk(bad, ExpectFor(h)),
              StatusIs(absl::StatusCode::kDataLoss, HasSubstr("version")));

  ChunkExpectation other_ns = ExpectFor(h);
  other_ns.namespace_id ^= 1;
  EXPECT_THAT(DecodeChunk(buf, other_ns),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("namespace")));
  ChunkExpectation other_key = ExpectFor(h);
  other_key.key.lo ^= 1;
  EXPECT_THAT(DecodeChunk(buf, other_key),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("key")));
  ChunkExpectation other_layout = ExpectFor(h);
  other_layout.layout_signature ^= 1;
  EXPECT_THAT(DecodeChunk(buf, other_layout),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("layout")));

  std::vector<std::byte> small(100);
  EXPECT_THAT(EncodeChunk(h, payload, absl::MakeSpan(small)),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("out")));
}

TEST(ChunkFormat, UnsealedChunksAreRefusedUntilSealed) {
  std::vector<std::byte> payload = RandomBytes(5000, 4);
  ChunkHeader h = SampleHeader();
  h.sealed = false;
  std::vector<std::byte> buf(kChunkHeaderBytes + payload.size());
  ASSERT_OK(EncodeChunk(h, payload, absl::MakeSpan(buf)).status());
  EXPECT_THAT(DecodeChunk(buf, ExpectFor(h)),
              StatusIs(absl::StatusCode::kDataLoss, HasSubstr("unsealed")));
  ChunkExpectation no_verify = ExpectFor(h);
  no_verify.verify_payload_checksum = false;
  EXPECT_OK(DecodeChunk(buf, no_verify).status());
  ASSERT_OK(SealChunk(absl::MakeSpan(buf)));
  ASSERT_OK_AND_ASSIGN(DecodedChunk d, DecodeChunk(buf, ExpectFor(h)));
  EXPECT_TRUE(d.header.sealed);
  EXPECT_EQ(d.header.payload_checksum, Xxh3_64(payload));
}

TEST(Hash, Crc32cKnownAnswer) {
  const char* s = "123456789";
  EXPECT_EQ(Crc32c({reinterpret_cast<const std::byte*>(s), 9}), 0xE3069283u);
  // Incremental equals one-shot.
  std::vector<std::byte> data = RandomBytes(1000, 5);
  uint32_t part = Crc32c(absl::MakeSpan(data).first(400));
  EXPECT_EQ(Crc32c(absl::MakeSpan(data).subspan(400), part), Crc32c(data));
}

TEST(Hash, CopyWithChecksumCopiesAndHashes) {
  std::vector<std::byte> src = RandomBytes(300000, 6);
  for (ChecksumType t : {ChecksumType::kXxh3_64, ChecksumType::kCrc32c}) {
    std::vector<std::byte> dst(src.size());
    uint64_t sum = CopyWithChecksum(t, src, dst.data());
    EXPECT_EQ(dst, src);
    EXPECT_EQ(sum, PayloadChecksum(t, src));
  }
}

TEST(Hash, CopyChunkWithPayloadChecksumUsesTheHeadersType) {
  std::vector<std::byte> payload = RandomBytes(200000, 8);
  for (ChecksumType t : {ChecksumType::kXxh3_64, ChecksumType::kCrc32c}) {
    ChunkHeader h = SampleHeader();
    h.checksum_type = t;
    std::vector<std::byte> buf(kChunkHeaderBytes + payload.size());
    ASSERT_OK(EncodeChunk(h, payload, absl::MakeSpan(buf)).status());
    std::vector<std::byte> dst(buf.size());
    std::optional<uint64_t> sum = CopyChunkWithPayloadChecksum(buf, dst.data());
    EXPECT_EQ(dst, buf);
    ASSERT_TRUE(sum.has_value());
    EXPECT_EQ(*sum, PayloadChecksum(t, payload));
    // A changed payload byte changes the sum of the copy.
    buf[kChunkHeaderBytes + 1234] ^= std::byte{1};
    EXPECT_NE(CopyChunkWithPayloadChecksum(buf, dst.data()), sum);
  }
  // No known checksum type, or no whole header: copied, no sum.
  std::vector<std::byte> buf(kChunkHeaderBytes + 100, std::byte{9});
  std::vector<std::byte> dst(buf.size());
  EXPECT_FALSE(CopyChunkWithPayloadChecksum(buf, dst.data()).has_value());
  EXPECT_EQ(dst, buf);
  std::vector<std::byte> small(10, std::byte{3});
  EXPECT_FALSE(CopyChunkWithPayloadChecksum(small, dst.data()).has_value());
  EXPECT_TRUE(std::equal(small.begin(), small.end(), dst.begin()));
}

}  // namespace
}  // namespace kvtier
