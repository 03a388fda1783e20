#include "src/core/chunk_format.h"

#include <algorithm>
#include <cstring>

#if defined(__x86_64__)
// The payload checksums go through libxxhash's runtime dispatch, which uses
// AVX2 or AVX-512 when the CPU has them (several times the SSE2 code a
// portable build inlines; the NVMe tier hashes every byte it writes or reads).
#define XXH_STATIC_LINKING_ONLY
#include <xxh_x86dispatch.h>
#include <xxhash.h>
#else
#define XXH_INLINE_ALL
#include <xxhash.h>
#endif

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "src/common/bytes.h"
#include "src/core/hash.h"

namespace kvtier {
namespace {

// Piece size for CopyWithChecksum: small enough to stay in L1/L2 between the
// copy and the hash.
constexpr size_t kCopyPiece = size_t{32} * 1024;

uint32_t HeaderChecksum(const std::byte* header) {
  return static_cast<uint32_t>(Xxh3_64({header, 60}));
}

}  // namespace

uint64_t PayloadChecksum(ChecksumType type, absl::Span<const std::byte> payload) {
  if (type == ChecksumType::kCrc32c) return Crc32c(payload);
  return XXH3_64bits(payload.data(), payload.size());
}

uint64_t CopyWithChecksum(ChecksumType type, absl::Span<const std::byte> src, std::byte* dst) {
  if (type == ChecksumType::kCrc32c) {
    uint32_t crc = 0;
    for (size_t off = 0; off < src.size(); off += kCopyPiece) {
      size_t n = std::min(kCopyPiece, src.size() - off);
      std::memcpy(dst + off, src.data() + off, n);
      crc = Crc32c({dst + off, n}, crc);
    }
    return crc;
  }
  XXH3_state_t state;
  XXH3_64bits_reset(&state);
  for (size_t off = 0; off < src.size(); off += kCopyPiece) {
    size_t n = std::min(kCopyPiece, src.size() - off);
    std::memcpy(dst + off, src.data() + off, n);
    XXH3_64bits_update(&state, dst + off, n);
  }
  return XXH3_64bits_digest(&state);
}

std::optional<uint64_t> CopyChunkWithPayloadChecksum(absl::Span<const std::byte> src,
                                                     std::byte* dst) {
  if (src.size() < kChunkHeaderBytes) {
    std::memcpy(dst, src.data(), src.size());
    return std::nullopt;
  }
  std::memcpy(dst, src.data(), kChunkHeaderBytes);
  const uint8_t type = LoadLE<uint8_t>(dst + 6);
  const absl::Span<const std::byte> payload = src.subspan(kChunkHeaderBytes);
  if (type != static_cast<uint8_t>(ChecksumType::kXxh3_64) &&
      type != static_cast<uint8_t>(ChecksumType::kCrc32c)) {
    std::memcpy(dst + kChunkHeaderBytes, payload.data(), payload.size());
    return std::nullopt;
  }
  return CopyWithChecksum(static_cast<ChecksumType>(type), payload, dst + kChunkHeaderBytes);
}

void EncodeChunkHeader(const ChunkHeader& h, std::byte* dst) {
  std::memset(dst, 0, kChunkHeaderBytes);
  StoreLE<uint32_t>(dst + 0, kChunkMagic);
  StoreLE<uint16_t>(dst + 4, kChunkFormatVersion);
  StoreLE<uint8_t>(dst + 6, static_cast<uint8_t>(h.checksum_type));
  StoreLE<uint8_t>(dst + 7, h.sealed ? 0 : kChunkFlagUnsealed);
  StoreLE<uint64_t>(dst + 8, h.namespace_id);
  StoreLE<uint64_t>(dst + 16, h.key.hi);
  StoreLE<uint64_t>(dst + 24, h.key.lo);
  StoreLE<uint64_t>(dst + 32, h.layout_signature);
  StoreLE<uint64_t>(dst + 40, h.payload_length);
  StoreLE<uint64_t>(dst + 48, h.payload_checksum);
  StoreLE<uint32_t>(dst + 56, h.num_tokens);
  StoreLE<uint32_t>(dst + 60, HeaderChecksum(dst));
}

absl::StatusOr<ChunkHeader> DecodeChunkHeader(absl::Span<const std::byte> bytes) {
  if (bytes.size() < kChunkHeaderBytes) {
    return absl::DataLossError(
        absl::StrCat("chunk: ", bytes.size(), " bytes is shorter than the 64-byte header"));
  }
  const std::byte* p = bytes.data();
  uint32_t magic = LoadLE<uint32_t>(p);
  if (magic != kChunkMagic) {
    return absl::DataLossError(absl::StrFormat("chunk: bad magic 0x%08x", magic));
  }
  uint16_t version = LoadLE<uint16_t>(p + 4);
  if (version != kChunkFormatVersion) {
    return absl::DataLossError(absl::StrCat("chunk: unsupported format version ", version,
                                            " (this build reads ", kChunkFormatVersion, ")"));
  }
  uint32_t stored = LoadLE<uint32_t>(p + 60);
  uint32_t computed = HeaderChecksum(p);
  if (stored != computed) {
    return absl::DataLossError(absl::StrFormat(
        "chunk: header checksum mismatch (stored 0x%08x, computed 0x%08x)", stored, computed));
  }
  uint8_t type = LoadLE<uint8_t>(p + 6);
  if (type != static_cast<uint8_t>(ChecksumType::kXxh3_64) &&
      type != static_cast<uint8_t>(ChecksumType::kCrc32c)) {
    return absl::DataLossError(absl::StrCat("chunk: unknown checksum type ", type));
  }
  uint8_t flags = LoadLE<uint8_t>(p + 7);
  if ((flags & ~kChunkFlagUnsealed) != 0) {
    return absl::DataLossError(absl::StrCat("chunk: unknown flags ", flags));
  }
  ChunkHeader h;
  h.sealed = (flags & kChunkFlagUnsealed) == 0;
  h.checksum_type = static_cast<ChecksumType>(type);
  h.namespace_id = LoadLE<uint64_t>(p + 8);
  h.key.hi = LoadLE<uint64_t>(p + 16);
  h.key.lo = LoadLE<uint64_t>(p + 24);
  h.layout_signature = LoadLE<uint64_t>(p + 32);
  h.payload_length = LoadLE<uint64_t>(p + 40);
  h.payload_checksum = LoadLE<uint64_t>(p + 48);
  h.num_tokens = LoadLE<uint32_t>(p + 56);
  return h;
}

absl::StatusOr<size_t> EncodeChunk(ChunkHeader header, absl::Span<const std::byte> payload,
                                   absl::Span<std::byte> out) {
  const size_t total = kChunkHeaderBytes + payload.size();
  if (out.size() < total) {
    return absl::InvalidArgumentError(absl::StrCat(
        "out: ", out.size(), " bytes cannot hold the encoded chunk of ", total, " bytes"));
  }
  header.payload_length = payload.size();
  if (header.sealed) {
    header.payload_checksum =
        CopyWithChecksum(header.checksum_type, payload, out.data() + kChunkHeaderBytes);
  } else {
    header.payload_checksum = 0;
    std::memcpy(out.data() + kChunkHeaderBytes, payload.data(), payload.size());
  }
  EncodeChunkHeader(header, out.data());
  return total;
}

absl::Status SealChunk(absl::Span<std::byte> encoded) {
  absl::StatusOr<ChunkHeader> h = DecodeChunkHeader(encoded);
  if (!h.ok()) return h.status();
  if (h->sealed) return absl::OkStatus();
  if (h->payload_length > encoded.size() - kChunkHeaderBytes) {
    return absl::DataLossError(absl::StrCat("chunk: payload length ", h->payload_length,
                                            " runs past the ", encoded.size(), "-byte buffer"));
  }
  h->payload_checksum =
      PayloadChecksum(h->checksum_type, encoded.subspan(kChunkHeaderBytes, h->payload_length));
  h->sealed = true;
  EncodeChunkHeader(*h, encoded.data());
  return absl::OkStatus();
}

absl::StatusOr<DecodedChunk> DecodeChunk(absl::Span<const std::byte> bytes,
                                         const ChunkExpectation& expect) {
  absl::StatusOr<ChunkHeader> h = DecodeChunkHeader(bytes);
  if (!h.ok()) return h.status();
  if (h->payload_length > bytes.size() - kChunkHeaderBytes) {
    return absl::DataLossError(absl::StrCat("chunk: payload length ", h->payload_length,
                                            " runs past the ", bytes.size(), "-byte buffer"));
  }
  if (h->namespace_id != expect.namespace_id) {
    return absl::InvalidArgumentError(
        absl::StrFormat("chunk: namespace %016x does not match the expected %016x", h->namespace_id,
                        expect.namespace_id));
  }
  if (h->key != expect.key) {
    return absl::InvalidArgumentError(absl::StrCat(
        "chunk: key ", h->key.ToHex(), " does not match the expected ", expect.key.ToHex()));
  }
  if (h->layout_signature != expect.layout_signature) {
    return absl::InvalidArgumentError(
        absl::StrFormat("chunk: layout signature %016x does not match the expected %016x",
                        h->layout_signature, expect.layout_signature));
  }
  absl::Span<const std::byte> payload = bytes.subspan(kChunkHeaderBytes, h->payload_length);
  if (expect.verify_payload_checksum && !h->sealed) {
    return absl::DataLossError(absl::StrCat(
        "chunk ", h->key.ToHex(), ": unsealed (its payload checksum was never computed)"));
  }
  if (expect.verify_payload_checksum) {
    uint64_t computed = PayloadChecksum(h->checksum_type, payload);
    if (computed != h->payload_checksum) {
      return absl::DataLossError(
          absl::StrFormat("chunk %s: payload checksum mismatch (stored %016x, computed %016x)",
                          h->key.ToHex(), h->payload_checksum, computed));
    }
  }
  return DecodedChunk{*h, payload};
}

}  // namespace kvtier
