// The chunk format: how one chunk is laid out in a DRAM slot, an NVMe slot, a
// Blob object and on the wire between nodes. docs/chunk-format.md describes
// the same bytes for readers outside kvtier.
//
//   offset size field
//   0      4    magic "KVTC" (0x4354564B little-endian)
//   4      2    format version (1)
//   6      1    checksum type (1 = xxh3-64, 2 = crc32c)
//   7      1    flags: bit 0 = unsealed (payload checksum not computed
//               yet; see SealChunk); readers reject unknown bits
//   8      8    namespace id
//   16     8    key.hi
//   24     8    key.lo
//   32     8    layout signature (Namespace::layout_signature)
//   40     8    payload length in bytes
//   48     8    payload checksum (of the checksum type; crc32c zero-extended)
//   56     4    tokens in the chunk
//   60     4    header checksum: low 32 bits of xxh3-64 over bytes [0, 60)
//   64     ...  payload (namespace.h gives its layer-major layout)
//
// A chunk written into host DRAM may be left unsealed: its checksum is
// computed (SealChunk) only when its bytes leave the node's memory (demotion
// to NVMe, a remote read, an upload), so a save into DRAM costs one memcpy.
// A verifying reader refuses an unsealed chunk.
//
// All integers are little-endian. Decoding never reads past the buffer and
// reports each mismatch with its own message: DataLoss for damaged bytes
// (magic, header checksum, payload checksum, truncation) and InvalidArgument
// when intact bytes belong to another namespace, key or layout.
//
// Thread-safety: pure functions.
#ifndef KVTIER_SRC_CORE_CHUNK_FORMAT_H_
#define KVTIER_SRC_CORE_CHUNK_FORMAT_H_

#include <cstddef>
#include <cstdint>
#include <optional>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "kvtier/keys.h"

namespace kvtier {

inline constexpr uint32_t kChunkMagic = 0x4354564B;  // "KVTC"
inline constexpr uint16_t kChunkFormatVersion = 1;
inline constexpr size_t kChunkHeaderBytes = 64;
inline constexpr uint8_t kChunkFlagUnsealed = 0x01;

enum class ChecksumType : uint8_t {
  kXxh3_64 = 1,
  kCrc32c = 2,
};

struct ChunkHeader {
  ChecksumType checksum_type = ChecksumType::kXxh3_64;
  uint64_t namespace_id = 0;
  BlockKey key;
  uint64_t layout_signature = 0;
  uint64_t payload_length = 0;
  uint64_t payload_checksum = 0;
  uint32_t num_tokens = 0;
  bool sealed = true;  // false: payload_checksum is not computed yet
};

// Checksum of `payload` with `type`.
uint64_t PayloadChecksum(ChecksumType type, absl::Span<const std::byte> payload);

// Copies `src` to `dst` (same size, not overlapping) and returns the checksum
// of the bytes, computed in cache-sized pieces right after each is copied so
// the data is read from memory once.
uint64_t CopyWithChecksum(ChecksumType type, absl::Span<const std::byte> src, std::byte* dst);

// Copies an encoded chunk (header, then payload up to src.size()) to `dst`
// and returns the checksum of the copied payload bytes [64, src.size()) under
// the checksum type named by the copied header, taken while copying as
// CopyWithChecksum does. nullopt (the bytes still copied) when src is shorter
// than a header or the type byte names no known type. The header itself is
// not checked: DecodeChunk does that.
std::optional<uint64_t> CopyChunkWithPayloadChecksum(absl::Span<const std::byte> src,
                                                     std::byte* dst);

// Writes the 64 header bytes to `dst` (header.payload_checksum as given).
void EncodeChunkHeader(const ChunkHeader& header, std::byte* dst);

// Parses and checks the header alone: magic, version, flags, checksum type and
// header checksum. DataLoss naming the field on mismatch.
absl::StatusOr<ChunkHeader> DecodeChunkHeader(absl::Span<const std::byte> bytes);

// Encodes header and payload into `out` (header.payload_length is filled in;
// the payload checksum too when header.sealed). Returns the encoded size.
// InvalidArgument if `out` is smaller than 64 + payload.size().
absl::StatusOr<size_t> EncodeChunk(ChunkHeader header, absl::Span<const std::byte> payload,
                                   absl::Span<std::byte> out);

// Computes the payload checksum of an unsealed chunk in place and rewrites
// its header as sealed; a sealed chunk is left alone. DataLoss when the
// header is damaged or the payload runs past `encoded`.
absl::Status SealChunk(absl::Span<std::byte> encoded);

// What a reader expects of a chunk.
struct ChunkExpectation {
  uint64_t namespace_id = 0;
  BlockKey key;
  uint64_t layout_signature = 0;
  bool verify_payload_checksum = true;
};

struct DecodedChunk {
  ChunkHeader header;
  absl::Span<const std::byte> payload;  // points into the decoded buffer
};

// Decodes `bytes` (header + payload, possibly followed by slack) and checks it
// against `expect`. DataLoss for damage (and, when verifying the payload
// checksum, for an unsealed chunk), InvalidArgument for a chunk of another
// namespace, key or layout.
absl::StatusOr<DecodedChunk> DecodeChunk(absl::Span<const std::byte> bytes,
                                         const ChunkExpectation& expect);

}  // namespace kvtier

#endif  // KVTIER_SRC_CORE_CHUNK_FORMAT_H_
