#include "src/server/wire.h"

#include "absl/strings/str_cat.h"
#include "src/common/status_macros.h"

namespace kvtier::wire {
namespace {

void PutBE(uint64_t v, char* out) {
  for (int i = 7; i >= 0; --i) {
    out[i] = static_cast<char>(v & 0xFF);
    v >>= 8;
  }
}

uint64_t GetBE(const char* in) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = (v << 8) | static_cast<unsigned char>(in[i]);
  return v;
}

}  // namespace

std::string KeyToBytes(const BlockKey& key) {
  std::string out(kKeyBytes, '\0');
  PutBE(key.hi, out.data());
  PutBE(key.lo, out.data() + 8);
  return out;
}

absl::StatusOr<BlockKey> KeyFromBytes(absl::string_view bytes, absl::string_view field,
                                      bool allow_zero) {
  if (bytes.size() != kKeyBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ": a key is 16 bytes, got ", bytes.size()));
  }
  BlockKey k{GetBE(bytes.data()), GetBE(bytes.data() + 8)};
  if (k.IsZero() && !allow_zero) {
    return absl::InvalidArgumentError(absl::StrCat(field, ": the zero key is not a chunk key"));
  }
  return k;
}

absl::StatusOr<std::vector<BlockKey>> KeysFromProto(
    const google::protobuf::RepeatedPtrField<std::string>& keys, absl::string_view field,
    size_t max_keys) {
  if (static_cast<size_t>(keys.size()) > max_keys) {
    return absl::InvalidArgumentError(absl::StrCat(field, ": ", keys.size(),
                                                   " keys exceed the limit of ", max_keys,
                                                   " (limits.max_keys_per_request)"));
  }
  std::vector<BlockKey> out;
  out.reserve(keys.size());
  for (int i = 0; i < keys.size(); ++i) {
    KVTIER_ASSIGN_OR_RETURN(BlockKey k, KeyFromBytes(keys[i], absl::StrCat(field, "[", i, "]")));
    out.push_back(k);
  }
  return out;
}

void NamespaceToProto(const NamespaceOptions& ns, v1::Namespace* out) {
  out->set_model_id(ns.model_id);
  out->set_model_revision(ns.model_revision);
  v1::Layout* l = out->mutable_layout();
  l->set_num_layers(ns.layout.num_layers);
  l->set_num_kv_heads(ns.layout.num_kv_heads);
  l->set_head_size(ns.layout.head_size);
  l->set_kv_tensors(ns.layout.kv_tensors);
  l->set_tokens_per_block(ns.layout.tokens_per_block);
  l->set_dtype(static_cast<v1::DType>(ns.layout.dtype));
  out->set_tokens_per_chunk(ns.tokens_per_chunk);
  out->set_tp_rank(ns.tp_rank);
  out->set_tp_size(ns.tp_size);
  out->set_pp_rank(ns.pp_rank);
  out->set_pp_size(ns.pp_size);
  out->set_cache_salt(ns.cache_salt);
}

absl::StatusOr<NamespaceOptions> NamespaceFromProto(const v1::Namespace& ns) {
  if (!ns.has_layout()) return absl::InvalidArgumentError("namespace.layout: required");
  const v1::Layout& l = ns.layout();
  if (l.dtype() == v1::DTYPE_UNSPECIFIED) {
    return absl::InvalidArgumentError("namespace.layout.dtype: required");
  }
  if (!v1::DType_IsValid(l.dtype())) {
    return absl::InvalidArgumentError(
        absl::StrCat("namespace.layout.dtype: ", l.dtype(), " is not a known dtype"));
  }
  NamespaceOptions o;
  o.model_id = ns.model_id();
  o.model_revision = ns.model_revision();
  o.layout.num_layers = l.num_layers();
  o.layout.num_kv_heads = l.num_kv_heads();
  o.layout.head_size = l.head_size();
  if (l.kv_tensors() != 0) o.layout.kv_tensors = l.kv_tensors();
  if (l.tokens_per_block() != 0) o.layout.tokens_per_block = l.tokens_per_block();
  o.layout.dtype = static_cast<DType>(l.dtype());
  if (ns.tokens_per_chunk() != 0) o.tokens_per_chunk = ns.tokens_per_chunk();
  o.tp_rank = ns.tp_rank();
  if (ns.tp_size() != 0) o.tp_size = ns.tp_size();
  o.pp_rank = ns.pp_rank();
  if (ns.pp_size() != 0) o.pp_size = ns.pp_size();
  o.cache_salt = ns.cache_salt();
  if (absl::Status s = o.Validate(); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("namespace.", s.message()));
  }
  return o;
}

void ChunkToProto(const ChunkRef& chunk, v1::ChunkInfo* out) {
  out->set_key(KeyToBytes(chunk.key));
  if (chunk.parent.IsZero()) {
    out->clear_parent();
  } else {
    out->set_parent(KeyToBytes(chunk.parent));
  }
  out->set_first_token(chunk.first_token);
  out->set_num_tokens(chunk.num_tokens);
}

absl::StatusOr<ChunkRef> ChunkFromProto(const v1::ChunkInfo& chunk, absl::string_view field) {
  ChunkRef c;
  KVTIER_ASSIGN_OR_RETURN(c.key, KeyFromBytes(chunk.key(), absl::StrCat(field, ".key")));
  if (!chunk.parent().empty()) {
    KVTIER_ASSIGN_OR_RETURN(c.parent, KeyFromBytes(chunk.parent(), absl::StrCat(field, ".parent"),
                                                   /*allow_zero=*/true));
  }
  c.first_token = chunk.first_token();
  c.num_tokens = chunk.num_tokens();
  return c;
}

void TierStatsToProto(const TierStats& s, v1::TierStats* out) {
  out->set_tier(static_cast<v1::Tier>(s.tier));
  out->set_capacity_bytes(s.capacity_bytes);
  out->set_used_bytes(s.used_bytes);
  out->set_chunks(s.chunks);
  out->set_pinned_chunks(s.pinned_chunks);
  out->set_hits(s.hits);
  out->set_misses(s.misses);
  out->set_saves(s.saves);
  out->set_save_rejections(s.save_rejections);
  out->set_evictions(s.evictions);
  out->set_bytes_written(s.bytes_written);
  out->set_bytes_read(s.bytes_read);
  out->set_corrupt_chunks(s.corrupt_chunks);
}

TierStats TierStatsFromProto(const v1::TierStats& s) {
  TierStats t;
  t.tier = static_cast<Tier>(s.tier());
  t.capacity_bytes = s.capacity_bytes();
  t.used_bytes = s.used_bytes();
  t.chunks = s.chunks();
  t.pinned_chunks = s.pinned_chunks();
  t.hits = s.hits();
  t.misses = s.misses();
  t.saves = s.saves();
  t.save_rejections = s.save_rejections();
  t.evictions = s.evictions();
  t.bytes_written = s.bytes_written();
  t.bytes_read = s.bytes_read();
  t.corrupt_chunks = s.corrupt_chunks();
  return t;
}

}  // namespace kvtier::wire
