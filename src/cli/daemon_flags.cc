#include "src/cli/daemon_flags.h"

#include <cstdio>
#include <cstdlib>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "src/common/token_list.h"

namespace kvtier::cli {
namespace {

std::string Env(const char* name) {
  const char* v = std::getenv(name);
  return v == nullptr ? std::string() : std::string(v);
}

}  // namespace

ClientOptions TakeClientOptions(Flags& flags) {
  ClientOptions o;
  o.address = flags.String("address", "");
  const std::string socket = flags.String("socket", Env("KVTIER_SOCKET"));
  if (o.address.empty()) o.socket_path = socket;
  // A token file may list several tokens (src/common/token_list.h): the
  // first is sent.
  o.token = SentToken(flags.String("token", Env("KVTIER_TOKEN")));
  if (const std::string text = flags.FileText("token-file"); !text.empty()) {
    o.token = SentToken(text);
  }
  o.tls_ca_file = flags.String("tls-ca", "");
  o.tls_cert_file = flags.String("tls-cert", "");
  o.tls_key_file = flags.String("tls-key", "");
  o.tls_server_name = flags.String("tls-server-name", "");
  o.shared_memory = !flags.Bool("no-shm");
  return o;
}

NamespaceOptions TakeNamespaceOptions(Flags& flags) {
  NamespaceOptions o;
  o.model_id = flags.String("model", "kvtier-demo/tiny-chat");
  o.model_revision = flags.String("revision", "v1");
  o.layout.num_layers = static_cast<uint32_t>(flags.Int("layers", 4));
  o.layout.num_kv_heads = static_cast<uint32_t>(flags.Int("kv-heads", 4));
  o.layout.head_size = static_cast<uint32_t>(flags.Int("head-size", 64));
  o.layout.kv_tensors = static_cast<uint32_t>(flags.Int("kv-tensors", 2));
  o.layout.tokens_per_block = static_cast<uint32_t>(flags.Int("block", 16));
  absl::StatusOr<DType> dtype = ParseDType(flags.String("dtype", "bfloat16"));
  o.layout.dtype = dtype.ok() ? *dtype : static_cast<DType>(0);
  o.tokens_per_chunk = static_cast<uint32_t>(flags.Int("chunk-tokens", 256));
  o.tp_rank = static_cast<uint32_t>(flags.Int("tp-rank", 0));
  o.tp_size = static_cast<uint32_t>(flags.Int("tp-size", 1));
  o.pp_rank = static_cast<uint32_t>(flags.Int("pp-rank", 0));
  o.pp_size = static_cast<uint32_t>(flags.Int("pp-size", 1));
  o.cache_salt = flags.String("salt", "");
  return o;
}

absl::StatusOr<std::vector<BlockKey>> ParseKeyList(const std::string& text) {
  std::vector<BlockKey> keys;
  size_t i = 0;
  for (absl::string_view part : absl::StrSplit(text, ',', absl::SkipWhitespace())) {
    absl::StatusOr<BlockKey> k = BlockKey::FromHex(std::string(absl::StripAsciiWhitespace(part)));
    if (!k.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("--keys[", i, "]: ", k.status().message()));
    }
    keys.push_back(*k);
    ++i;
  }
  return keys;
}

int Fail(const char* cmd, const absl::Status& status) {
  std::fprintf(stderr, "kvtier %s: %s: %s\n", cmd, absl::StatusCodeToString(status.code()).c_str(),
               std::string(status.message()).c_str());
  return absl::IsInvalidArgument(status) ? 2 : 1;
}

}  // namespace kvtier::cli
