// The chunk decoder (src/core/chunk_format.h), which reads chunks back from
// DRAM slots, NVMe, Blob objects and other nodes, against the format as
// docs/chunk-format.md gives it, read field by field here.
//
// Input: byte 0 says what to make right before decoding, so that the fuzzer
// gets past the checksums it cannot forge: bit 0 the payload checksum (when
// the type and length allow), bit 1 the header checksum, bit 2 the reader
// expects this chunk's namespace, key and layout (else all zero), bits 4-5
// then change one of them (1 the namespace, 2 the key, 3 the layout), bit 3
// the reader verifies the payload checksum. The rest is the chunk.
#include <cstring>
#include <string>
#include <vector>

#include "fuzz/fuzz_target.h"
#include "src/common/bytes.h"
#include "src/core/chunk_format.h"
#include "src/core/hash.h"

namespace kvtier::fuzz {

std::vector<std::string> Seeds() {
  std::vector<std::string> seeds;
  for (ChecksumType type : {ChecksumType::kXxh3_64, ChecksumType::kCrc32c}) {
    for (bool sealed : {true, false}) {
      ChunkHeader h;
      h.checksum_type = type;
      h.namespace_id = 0x1234;
      h.key = BlockKey{7, 9};
      h.layout_signature = 0xabcd;
      h.num_tokens = 16;
      h.sealed = sealed;
      std::string payload(200, '\0');
      for (size_t i = 0; i < payload.size(); ++i) payload[i] = static_cast<char>(i * 7);
      std::string encoded(kChunkHeaderBytes + payload.size() + 8, '\0');
      (void)EncodeChunk(
          h,
          absl::MakeConstSpan(reinterpret_cast<const std::byte*>(payload.data()), payload.size()),
          absl::MakeSpan(reinterpret_cast<std::byte*>(encoded.data()), encoded.size()));
      // Checksums made right after the damage (most inputs then decode),
      // and left as damaged.
      for (char control : {'\x0f', '\x1f', '\x2f', '\x3f', '\x0c'}) {
        seeds.push_back(control + encoded);
      }
    }
  }
  return seeds;
}

}  // namespace kvtier::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvtier;  // NOLINT(google-build-using-namespace): one function
  if (size == 0) return 0;
  const uint8_t control = data[0];
  std::vector<std::byte> buf(size - 1);
  if (!buf.empty()) std::memcpy(buf.data(), data + 1, buf.size());
  std::byte* p = buf.data();
  const bool has_header = buf.size() >= kChunkHeaderBytes;
  const uint8_t type = has_header ? LoadLE<uint8_t>(p + 6) : 0;
  const bool known_type = type == 1 || type == 2;
  const uint64_t length = has_header ? LoadLE<uint64_t>(p + 40) : 0;
  const bool fits = has_header && length <= buf.size() - kChunkHeaderBytes;
  const absl::Span<const std::byte> payload =
      fits ? absl::MakeConstSpan(buf).subspan(kChunkHeaderBytes, length)
           : absl::Span<const std::byte>();
  if ((control & 1) != 0 && known_type && fits) {
    StoreLE<uint64_t>(p + 48, PayloadChecksum(static_cast<ChecksumType>(type), payload));
  }
  if ((control & 2) != 0 && has_header) {
    StoreLE<uint32_t>(p + 60, static_cast<uint32_t>(Xxh3_64({p, 60})));
  }
  ChunkExpectation expect;
  if ((control & 4) != 0 && has_header) {
    expect.namespace_id = LoadLE<uint64_t>(p + 8);
    expect.key = BlockKey{LoadLE<uint64_t>(p + 16), LoadLE<uint64_t>(p + 24)};
    expect.layout_signature = LoadLE<uint64_t>(p + 32);
    switch ((control >> 4) & 3) {
      case 1:
        expect.namespace_id ^= 1;
        break;
      case 2:
        expect.key.lo ^= 1;
        break;
      case 3:
        expect.layout_signature ^= 1;
        break;
      default:
        break;
    }
  }
  expect.verify_payload_checksum = (control & 8) != 0;

  // The format, field by field.
  const uint8_t flags = has_header ? LoadLE<uint8_t>(p + 7) : 0;
  const bool header_ok = has_header && LoadLE<uint32_t>(p) == kChunkMagic &&
                         LoadLE<uint16_t>(p + 4) == kChunkFormatVersion &&
                         LoadLE<uint32_t>(p + 60) == static_cast<uint32_t>(Xxh3_64({p, 60})) &&
                         known_type && (flags & ~kChunkFlagUnsealed) == 0;
  const bool matches = header_ok && LoadLE<uint64_t>(p + 8) == expect.namespace_id &&
                       LoadLE<uint64_t>(p + 16) == expect.key.hi &&
                       LoadLE<uint64_t>(p + 24) == expect.key.lo &&
                       LoadLE<uint64_t>(p + 32) == expect.layout_signature;
  const bool sealed = (flags & kChunkFlagUnsealed) == 0;
  const bool checksum_ok =
      header_ok && fits &&
      PayloadChecksum(static_cast<ChecksumType>(type), payload) == LoadLE<uint64_t>(p + 48);

  absl::StatusOr<DecodedChunk> d = DecodeChunk(buf, expect);
  if (!header_ok || !fits) {
    KVTIER_FUZZ_CHECK(absl::IsDataLoss(d.status()));
    return 0;
  }
  if (!matches) {
    KVTIER_FUZZ_CHECK(absl::IsInvalidArgument(d.status()));
    return 0;
  }
  if (expect.verify_payload_checksum && (!sealed || !checksum_ok)) {
    KVTIER_FUZZ_CHECK(absl::IsDataLoss(d.status()));
    return 0;
  }
  KVTIER_FUZZ_CHECK(d.ok());
  KVTIER_FUZZ_CHECK(d->payload.data() == buf.data() + kChunkHeaderBytes);
  KVTIER_FUZZ_CHECK(d->payload.size() == length && d->header.payload_length == length);
  KVTIER_FUZZ_CHECK(d->header.sealed == sealed);
  KVTIER_FUZZ_CHECK(d->header.num_tokens == LoadLE<uint32_t>(p + 56));
  // Decoding loses nothing: the header encodes back to the same 64 bytes.
  std::byte again[kChunkHeaderBytes];
  EncodeChunkHeader(d->header, again);
  KVTIER_FUZZ_CHECK(std::memcmp(again, p, kChunkHeaderBytes) == 0);
  return 0;
}
