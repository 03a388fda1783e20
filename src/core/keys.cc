#include "kvtier/keys.h"

#include <string>

#include "absl/status/status.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "src/common/bytes.h"
#include "src/core/hash.h"

namespace kvtier {
namespace {

constexpr std::string_view kBlockDomain = "kvtier.block.v1";
constexpr std::string_view kEngineDomain = "kvtier.engine.v1";

}  // namespace

std::string BlockKey::ToHex() const { return absl::StrFormat("%016x%016x", hi, lo); }

absl::StatusOr<BlockKey> BlockKey::FromHex(std::string_view hex) {
  if (hex.size() != 32) {
    return absl::InvalidArgumentError(
        absl::StrCat("key: want 32 hex digits, got ", hex.size(), " characters"));
  }
  BlockKey key;
  for (size_t i = 0; i < 32; ++i) {
    char c = hex[i];
    uint64_t v;
    if (c >= '0' && c <= '9') {
      v = c - '0';
    } else if (c >= 'a' && c <= 'f') {
      v = c - 'a' + 10;
    } else if (c >= 'A' && c <= 'F') {
      v = c - 'A' + 10;
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("key: '", std::string(1, c), "' at position ", i, " is not a hex digit"));
    }
    uint64_t& half = i < 16 ? key.hi : key.lo;
    half = (half << 4) | v;
  }
  return key;
}

BlockKey HashBlock(uint64_t namespace_id, const BlockKey& parent, absl::Span<const TokenId> tokens,
                   absl::Span<const uint64_t> extra) {
  std::string buf;
  buf.reserve(kBlockDomain.size() + 32 + 4 * tokens.size() + 8 * extra.size() + 8);
  buf.append(kBlockDomain);
  AppendLE<uint64_t>(buf, namespace_id);
  AppendLE<uint64_t>(buf, parent.hi);
  AppendLE<uint64_t>(buf, parent.lo);
  AppendLE<uint32_t>(buf, static_cast<uint32_t>(tokens.size()));
  for (TokenId t : tokens) AppendLE<uint32_t>(buf, t);
  AppendLE<uint32_t>(buf, static_cast<uint32_t>(extra.size()));
  for (uint64_t e : extra) AppendLE<uint64_t>(buf, e);
  return Xxh3_128(AsBytes(buf));
}

BlockKey KeyFromEngineHash(uint64_t namespace_id, absl::Span<const std::byte> engine_hash) {
  std::string buf;
  buf.reserve(kEngineDomain.size() + 12 + engine_hash.size());
  buf.append(kEngineDomain);
  AppendLE<uint64_t>(buf, namespace_id);
  AppendLE<uint32_t>(buf, static_cast<uint32_t>(engine_hash.size()));
  buf.append(reinterpret_cast<const char*>(engine_hash.data()), engine_hash.size());
  return Xxh3_128(AsBytes(buf));
}

}  // namespace kvtier
