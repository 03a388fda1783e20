// Conversions between kvtier's C++ types and the kvtier.v1 messages, shared
// by the daemon and the client. Decoders validate and name the field in
// InvalidArgument messages ("namespace.layout.head_size: ...", "keys[2]: ...").
//
// Thread-safety: pure functions.
#ifndef KVTIER_SRC_SERVER_WIRE_H_
#define KVTIER_SRC_SERVER_WIRE_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "google/protobuf/repeated_field.h"
#include "kvtier/cache.h"
#include "kvtier/keys.h"
#include "kvtier/namespace.h"
#include "kvtier/v1/cache.pb.h"

namespace kvtier::wire {

inline constexpr size_t kKeyBytes = 16;

// 16 bytes: hi then lo, each big-endian (hex of the bytes == ToHex()).
std::string KeyToBytes(const BlockKey& key);
// Exactly 16 bytes; `allow_zero` admits the all-zero key.
absl::StatusOr<BlockKey> KeyFromBytes(absl::string_view bytes, absl::string_view field,
                                      bool allow_zero = false);
// A list of non-zero keys, at most `max_keys` of them ("keys[i]" in messages).
absl::StatusOr<std::vector<BlockKey>> KeysFromProto(
    const google::protobuf::RepeatedPtrField<std::string>& keys, absl::string_view field,
    size_t max_keys);

void NamespaceToProto(const NamespaceOptions& ns, v1::Namespace* out);
// Fills defaults for zero fields that have one, then validates
// (NamespaceOptions::Validate) with "namespace." before each field name.
absl::StatusOr<NamespaceOptions> NamespaceFromProto(const v1::Namespace& ns);

void ChunkToProto(const ChunkRef& chunk, v1::ChunkInfo* out);
// Checks the key (16 bytes, not zero) and parent (empty or 16 bytes).
absl::StatusOr<ChunkRef> ChunkFromProto(const v1::ChunkInfo& chunk, absl::string_view field);

void TierStatsToProto(const TierStats& s, v1::TierStats* out);
TierStats TierStatsFromProto(const v1::TierStats& s);

}  // namespace kvtier::wire

#endif  // KVTIER_SRC_SERVER_WIRE_H_
