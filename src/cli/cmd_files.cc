// `kvtier put FILE` / `kvtier get NAME OUT`: store a file in kvtierd as a
// chain of chunks and read it back. A handy end-to-end check of a daemon and
// a way to measure it with real files.
//
// Layout: the file namespace (model id --model, default "kvtier-files";
// uint8 "KV" of 256 bytes per token, 16-token blocks, chunks of up to 65536
// tokens) holds, under the name's key, a 4 KiB manifest chunk:
//   "KVTFILE1" | file size u64 | chunk bytes u64 | chunks u64 |
//   digest u64 | name length u32 | name
// (little-endian; digest = XXH3-64 over the XXH3-64 of every chunk's bytes,
// each as u64), followed by the data chunks chained to it: chunk i's key is
// HashBlock(ns, key of chunk i-1, {i}). The last chunk is zero-padded to
// whole 4 KiB blocks.
#include <cstdio>
#include <cstring>
#include <fstream>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kvtier/client.h"
#include "src/cli/commands.h"
#include "src/cli/daemon_flags.h"
#include "src/cli/report.h"
#include "src/core/hash.h"

namespace kvtier::cli {
namespace {

constexpr uint32_t kBytesPerToken = 256;
constexpr uint32_t kBlockTokens = 16;
constexpr uint64_t kBlockBytes = kBytesPerToken * kBlockTokens;  // 4 KiB
constexpr uint32_t kMaxChunkTokens = 65536;                      // 16 MiB
constexpr char kManifestMagic[8] = {'K', 'V', 'T', 'F', 'I', 'L', 'E', '1'};
constexpr size_t kBatch = 8;  // chunks per request

constexpr const char* kFileFlagsHelp =
    "  --model ID   namespace model id (default kvtier-files)\n"
    "  --salt SALT  cache salt (tenant)\n";

absl::StatusOr<Namespace> FileNamespace(const std::string& model, const std::string& salt) {
  NamespaceOptions o;
  o.model_id = model;
  o.model_revision = "v1";
  o.layout = KvLayout{1, 1, kBytesPerToken, 1, kBlockTokens, DType::kUInt8};
  o.tokens_per_chunk = kMaxChunkTokens;
  o.cache_salt = salt;
  return Namespace::Create(o);
}

BlockKey ManifestKey(const Namespace& ns, const std::string& name) {
  std::vector<TokenId> tokens{static_cast<TokenId>(name.size())};
  for (size_t i = 0; i < name.size(); i += 4) {
    uint32_t v = 0;
    std::memcpy(&v, name.data() + i, std::min<size_t>(4, name.size() - i));
    tokens.push_back(v);
  }
  return HashBlock(ns.id(), BlockKey{}, tokens);
}

BlockKey DataKey(const Namespace& ns, const BlockKey& prev, uint64_t i) {
  const TokenId t[] = {static_cast<TokenId>(i), static_cast<TokenId>(i >> 32)};
  return HashBlock(ns.id(), prev, t);
}

template <typename T>
void Put(std::vector<std::byte>& b, size_t off, T v) {
  std::memcpy(b.data() + off, &v, sizeof(v));
}
template <typename T>
T Get(const std::vector<std::byte>& b, size_t off) {
  T v;
  std::memcpy(&v, b.data() + off, sizeof(v));
  return v;
}

struct Manifest {
  uint64_t file_bytes = 0;
  uint64_t chunk_bytes = 0;
  uint64_t chunks = 0;
  uint64_t digest = 0;
};

uint32_t TokensFor(uint64_t bytes) {
  return static_cast<uint32_t>((bytes + kBlockBytes - 1) / kBlockBytes * kBlockTokens);
}

absl::Status SaveChecked(Client& client, const Namespace& ns, const std::vector<ChunkRef>& refs,
                         const std::vector<absl::Span<const std::byte>>& payloads) {
  absl::StatusOr<std::vector<absl::Status>> r = client.SaveBatch(ns, refs, payloads);
  if (!r.ok()) return r.status();
  for (size_t i = 0; i < r->size(); ++i) {
    if (!(*r)[i].ok()) {
      return absl::Status((*r)[i].code(),
                          absl::StrCat("chunk ", refs[i].key.ToHex(), ": ", (*r)[i].message()));
    }
  }
  return absl::OkStatus();
}

}  // namespace

int RunPut(const std::vector<std::string>& args) {
  Flags flags(args);
  if (flags.Help()) {
    std::printf(
        "usage: kvtier put FILE [--name NAME] [--chunk 1MiB] [--model ID] [--salt SALT]\n"
        "                  [daemon flags]\n\n"
        "Stores FILE in kvtierd under NAME (default: FILE as given) as a chain of\n"
        "chunks of --chunk bytes (a multiple of 4 KiB, at most 16 MiB), with a\n"
        "progress bar. `kvtier get NAME OUT` reads it back.\n\n%s\n%s",
        kFileFlagsHelp, kDaemonFlagsHelp);
    return 0;
  }
  std::string name = flags.String("name", "");
  const uint64_t chunk_bytes = flags.Bytes("chunk", 1ull << 20);
  const std::string model = flags.String("model", "kvtier-files");
  const std::string salt = flags.String("salt", "");
  ClientOptions co = TakeClientOptions(flags);
  if (absl::Status s = flags.Finish(); !s.ok()) return Fail("put", s);
  if (flags.Positional().size() != 1) {
    return Fail("put", absl::InvalidArgumentError("FILE: give exactly one file"));
  }
  const std::string path = flags.Positional()[0];
  if (name.empty()) name = path;
  if (chunk_bytes == 0 || chunk_bytes % kBlockBytes != 0 ||
      chunk_bytes > uint64_t{kMaxChunkTokens} * kBytesPerToken) {
    return Fail("put",
                absl::InvalidArgumentError("--chunk: must be a multiple of 4 KiB, at most 16 MiB"));
  }
  if (name.size() > kBlockBytes - 64) {
    return Fail("put", absl::InvalidArgumentError("--name: longer than 4000 bytes"));
  }
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) {
    return Fail("put", absl::InvalidArgumentError(absl::StrCat("FILE: cannot read '", path, "'")));
  }
  const uint64_t file_bytes = static_cast<uint64_t>(in.tellg());
  in.seekg(0);
  absl::StatusOr<Namespace> ns = FileNamespace(model, salt);
  if (!ns.ok()) return Fail("put", ns.status());
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Create(co);
  if (!client.ok()) return Fail("put", client.status());

  const uint64_t chunks = (file_bytes + chunk_bytes - 1) / chunk_bytes;
  // The manifest (the chain's root) is saved first so the data chunks link
  // to it; it holds the digest, so the file is read twice rather than held.
  const BlockKey root = ManifestKey(*ns, name);
  std::vector<uint64_t> chunk_hashes;
  {
    std::vector<std::byte> buf(chunk_bytes);
    for (uint64_t i = 0; i < chunks; ++i) {
      const uint64_t n = std::min(chunk_bytes, file_bytes - i * chunk_bytes);
      in.read(reinterpret_cast<char*>(buf.data()), static_cast<std::streamsize>(n));
      chunk_hashes.push_back(Xxh3_64({buf.data(), n}));
    }
  }
  std::vector<std::byte> manifest(kBlockBytes);
  std::memcpy(manifest.data(), kManifestMagic, 8);
  Put<uint64_t>(manifest, 8, file_bytes);
  Put<uint64_t>(manifest, 16, chunk_bytes);
  Put<uint64_t>(manifest, 24, chunks);
  Put<uint64_t>(manifest, 32,
                Xxh3_64({reinterpret_cast<const std::byte*>(chunk_hashes.data()),
                         chunk_hashes.size() * sizeof(uint64_t)}));
  Put<uint32_t>(manifest, 40, static_cast<uint32_t>(name.size()));
  std::memcpy(manifest.data() + 44, name.data(), name.size());
  // A name already stored with other contents is refused: its chunks would
  // be taken as already present and the old file would stay.
  {
    std::vector<std::byte> old(kBlockBytes);
    absl::StatusOr<size_t> got = (*client)->Load(*ns, root, absl::MakeSpan(old));
    if (got.ok() && old != manifest) {
      return Fail("put", absl::FailedPreconditionError(absl::StrCat(
                             "'", name,
                             "' is stored with other contents: evict it first "
                             "(kvtier evict --model ",
                             model,
                             " --revision v1 --layers 1 "
                             "--kv-heads 1 --head-size 256 --kv-tensors 1 --dtype uint8 "
                             "--chunk-tokens 65536",
                             salt.empty() ? "" : " --salt " + salt, " --keys ", root.ToHex(),
                             ") or use another --name")));
    }
    if (!got.ok() && !absl::IsNotFound(got.status())) return Fail("put", got.status());
  }
  ChunkRef mref{root, BlockKey{}, 0, kBlockTokens};
  absl::Status s = SaveChecked(**client, *ns, {mref}, {absl::MakeConstSpan(manifest)});
  if (!s.ok()) return Fail("put", s);

  in.clear();
  in.seekg(0);
  Progress progress(absl::StrCat("put ", name), file_bytes);
  std::vector<std::vector<std::byte>> bufs(kBatch, std::vector<std::byte>(chunk_bytes));
  BlockKey prev = root;
  uint64_t done = 0;
  const auto t0 = std::chrono::steady_clock::now();
  for (uint64_t i = 0; i < chunks;) {
    std::vector<ChunkRef> refs;
    std::vector<absl::Span<const std::byte>> payloads;
    for (size_t b = 0; b < kBatch && i < chunks; ++b, ++i) {
      const uint64_t n = std::min(chunk_bytes, file_bytes - i * chunk_bytes);
      const uint32_t tokens = TokensFor(n);
      const uint64_t padded = uint64_t{tokens} * kBytesPerToken;
      in.read(reinterpret_cast<char*>(bufs[b].data()), static_cast<std::streamsize>(n));
      std::memset(bufs[b].data() + n, 0, padded - n);
      const BlockKey key = DataKey(*ns, prev, i + 1);
      refs.push_back(
          ChunkRef{key, prev, static_cast<uint32_t>(i * TokensFor(chunk_bytes)), tokens});
      payloads.push_back({bufs[b].data(), padded});
      prev = key;
      done += n;
    }
    s = SaveChecked(**client, *ns, refs, payloads);
    if (!s.ok()) return Fail("put", s);
    progress.Update(done);
  }
  progress.Finish();
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("put %s: %s in %llu chunks, %s (%s)\n", name.c_str(), HumanBytes(file_bytes).c_str(),
              static_cast<unsigned long long>(chunks),
              HumanRate(static_cast<double>(file_bytes) / std::max(secs, 1e-9)).c_str(),
              (*client)->using_shared_memory() ? "shared memory" : "gRPC stream");
  return 0;
}

int RunGet(const std::vector<std::string>& args) {
  Flags flags(args);
  if (flags.Help()) {
    std::printf(
        "usage: kvtier get NAME OUT [--model ID] [--salt SALT] [daemon flags]\n\n"
        "Reads the file stored by `kvtier put` under NAME into OUT, with a progress\n"
        "bar, and checks its digest. Fails (NOT_FOUND) when any chunk was evicted.\n\n%s\n%s",
        kFileFlagsHelp, kDaemonFlagsHelp);
    return 0;
  }
  const std::string model = flags.String("model", "kvtier-files");
  const std::string salt = flags.String("salt", "");
  ClientOptions co = TakeClientOptions(flags);
  if (absl::Status s = flags.Finish(); !s.ok()) return Fail("get", s);
  if (flags.Positional().size() != 2) {
    return Fail("get", absl::InvalidArgumentError("NAME OUT: give a name and an output file"));
  }
  const std::string name = flags.Positional()[0];
  const std::string out_path = flags.Positional()[1];
  absl::StatusOr<Namespace> ns = FileNamespace(model, salt);
  if (!ns.ok()) return Fail("get", ns.status());
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Create(co);
  if (!client.ok()) return Fail("get", client.status());

  const BlockKey root = ManifestKey(*ns, name);
  std::vector<std::byte> manifest(kBlockBytes);
  absl::StatusOr<size_t> n = (*client)->Load(*ns, root, absl::MakeSpan(manifest));
  if (!n.ok()) return Fail("get", n.status());
  if (*n != kBlockBytes || std::memcmp(manifest.data(), kManifestMagic, 8) != 0 ||
      Get<uint32_t>(manifest, 40) != name.size() ||
      std::memcmp(manifest.data() + 44, name.data(), name.size()) != 0) {
    return Fail("get", absl::DataLossError(absl::StrCat("'", name, "': damaged manifest")));
  }
  Manifest m{Get<uint64_t>(manifest, 8), Get<uint64_t>(manifest, 16), Get<uint64_t>(manifest, 24),
             Get<uint64_t>(manifest, 32)};
  if (m.chunk_bytes == 0 || m.chunk_bytes % kBlockBytes != 0 ||
      m.chunk_bytes > uint64_t{kMaxChunkTokens} * kBytesPerToken ||
      m.chunks != (m.file_bytes + m.chunk_bytes - 1) / m.chunk_bytes) {
    return Fail("get", absl::DataLossError(absl::StrCat("'", name, "': inconsistent manifest")));
  }
  std::ofstream out(out_path, std::ios::binary | std::ios::trunc);
  if (!out) {
    return Fail("get",
                absl::InvalidArgumentError(absl::StrCat("OUT: cannot write '", out_path, "'")));
  }
  Progress progress(absl::StrCat("get ", name), m.file_bytes);
  std::vector<std::vector<std::byte>> bufs(kBatch, std::vector<std::byte>(m.chunk_bytes));
  std::vector<uint64_t> hashes;
  BlockKey prev = root;
  uint64_t done = 0;
  const auto t0 = std::chrono::steady_clock::now();
  for (uint64_t i = 0; i < m.chunks;) {
    std::vector<BlockKey> keys;
    std::vector<absl::Span<std::byte>> outs;
    std::vector<uint64_t> sizes;
    for (size_t b = 0; b < kBatch && i < m.chunks; ++b, ++i) {
      prev = DataKey(*ns, prev, i + 1);
      keys.push_back(prev);
      outs.push_back(absl::MakeSpan(bufs[b]));
      sizes.push_back(std::min(m.chunk_bytes, m.file_bytes - i * m.chunk_bytes));
    }
    absl::StatusOr<std::vector<absl::StatusOr<size_t>>> r = (*client)->LoadBatch(*ns, keys, outs);
    if (!r.ok()) return Fail("get", r.status());
    for (size_t b = 0; b < keys.size(); ++b) {
      if (!(*r)[b].ok()) {
        return Fail("get", absl::Status((*r)[b].status().code(),
                                        absl::StrCat("chunk ", keys[b].ToHex(), ": ",
                                                     (*r)[b].status().message())));
      }
      if (*(*r)[b] < sizes[b]) {
        return Fail("get", absl::DataLossError(absl::StrCat("chunk ", keys[b].ToHex(),
                                                            " is shorter than the manifest says")));
      }
      hashes.push_back(Xxh3_64({bufs[b].data(), sizes[b]}));
      out.write(reinterpret_cast<const char*>(bufs[b].data()),
                static_cast<std::streamsize>(sizes[b]));
      done += sizes[b];
    }
    progress.Update(done);
  }
  progress.Finish();
  out.close();
  const uint64_t digest = Xxh3_64(
      {reinterpret_cast<const std::byte*>(hashes.data()), hashes.size() * sizeof(uint64_t)});
  if (digest != m.digest || !out) {
    return Fail("get", absl::DataLossError(absl::StrCat("'", name, "': digest mismatch")));
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("get %s: %s in %llu chunks, %s (%s), digest ok\n", name.c_str(),
              HumanBytes(m.file_bytes).c_str(), static_cast<unsigned long long>(m.chunks),
              HumanRate(static_cast<double>(m.file_bytes) / std::max(secs, 1e-9)).c_str(),
              (*client)->using_shared_memory() ? "shared memory" : "gRPC stream");
  return 0;
}

}  // namespace kvtier::cli
