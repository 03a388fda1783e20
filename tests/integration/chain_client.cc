// A client process for the multi-process integration test: saves and loads
// chains that overlap with other clients' through kvtierd and checks every
// loaded byte. Prints one summary line; exits 0 when nothing was wrong.
//
//   kvtier_chain_client --socket S [--token T] [--no-shm] --id N
//                       [--chains 6] [--chunks 8] [--shared 4] [--rounds 3]
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "kvtier/client.h"
#include "tests/integration/workload.h"

int main(int argc, char** argv) {
  using namespace kvtier;
  ClientOptions co;
  int id = 0, chains = 6, chunks = 8, shared = 4, rounds = 3;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string { return i + 1 < argc ? argv[++i] : ""; };
    auto next_int = [&]() {
      int v = 0;
      if (!absl::SimpleAtoi(next(), &v)) {
        std::fprintf(stderr, "bad value for %s\n", a.c_str());
        std::exit(2);
      }
      return v;
    };
    if (a == "--socket") {
      co.socket_path = next();
    } else if (a == "--token") {
      co.token = next();
    } else if (a == "--no-shm") {
      co.shared_memory = false;
    } else if (a == "--id") {
      id = next_int();
    } else if (a == "--chains") {
      chains = next_int();
    } else if (a == "--chunks") {
      chunks = next_int();
    } else if (a == "--shared") {
      shared = next_int();
    } else if (a == "--rounds") {
      rounds = next_int();
    } else {
      std::fprintf(stderr, "unknown flag %s\n", a.c_str());
      return 2;
    }
  }
  absl::StatusOr<Namespace> ns = Namespace::Create(testing::SmallNamespace());
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Create(co);
  if (!ns.ok() || !client.ok()) return 2;
  const size_t bytes = ns->FullChunkPayloadBytes();
  uint64_t saved = 0, loaded = 0, wrong = 0, errors = 0, lookups_matched = 0;
  std::vector<std::byte> want(bytes);
  for (int round = 0; round < rounds; ++round) {
    for (int c = 0; c < chains; ++c) {
      std::vector<TokenId> tokens =
          testing::ChainTokens(id, c, chunks, shared, ns->tokens_per_chunk());
      absl::StatusOr<std::vector<ChunkRef>> refs = ns->Chunks(tokens);
      if (!refs.ok()) return 2;
      std::vector<BlockKey> keys = Namespace::Keys(*refs);
      absl::StatusOr<LookupResult> hit = (*client)->Lookup(*ns, keys);
      if (!hit.ok()) {
        std::fprintf(stderr, "lookup: %s\n", hit.status().ToString().c_str());
        ++errors;
        continue;
      }
      lookups_matched += hit->matched;
      // Load the cached prefix in one batch and check it.
      std::vector<std::vector<std::byte>> bufs(hit->matched, std::vector<std::byte>(bytes));
      std::vector<absl::Span<std::byte>> outs;
      for (auto& b : bufs) outs.push_back(absl::MakeSpan(b));
      size_t have = 0;
      if (hit->matched > 0) {
        auto r = (*client)->LoadBatch(*ns, absl::MakeConstSpan(keys).first(hit->matched), outs);
        if (!r.ok()) {
          std::fprintf(stderr, "load: %s\n", r.status().ToString().c_str());
          ++errors;
          continue;
        }
        for (; have < r->size() && (*r)[have].ok(); ++have) {
          testing::KeyedBytes(keys[have], want.data(), bytes);
          if (*(*r)[have] != bytes || std::memcmp(bufs[have].data(), want.data(), bytes) != 0) {
            ++wrong;
          }
          ++loaded;
        }
      }
      // Save the rest.
      std::vector<std::vector<std::byte>> payloads;
      std::vector<absl::Span<const std::byte>> spans;
      std::vector<ChunkRef> todo(refs->begin() + have, refs->end());
      for (const ChunkRef& r : todo) {
        payloads.emplace_back(bytes);
        testing::KeyedBytes(r.key, payloads.back().data(), bytes);
      }
      for (auto& p : payloads) spans.push_back(absl::MakeConstSpan(p));
      if (todo.empty()) continue;
      auto s = (*client)->SaveBatch(*ns, todo, spans);
      if (!s.ok()) {
        std::fprintf(stderr, "save: %s\n", s.status().ToString().c_str());
        ++errors;
        continue;
      }
      for (const absl::Status& st : *s) {
        if (st.ok()) {
          ++saved;
        } else {
          std::fprintf(stderr, "save chunk: %s\n", st.ToString().c_str());
          ++errors;
        }
      }
    }
  }
  std::printf(
      "{\"id\":%d,\"saved\":%llu,\"loaded\":%llu,\"matched\":%llu,\"wrong\":%llu,\"errors\":%llu,"
      "\"shm\":%s}\n",
      id, static_cast<unsigned long long>(saved), static_cast<unsigned long long>(loaded),
      static_cast<unsigned long long>(lookups_matched), static_cast<unsigned long long>(wrong),
      static_cast<unsigned long long>(errors), (*client)->using_shared_memory() ? "true" : "false");
  return wrong == 0 && errors == 0 ? 0 : 1;
}
