// kvtierd end to end: real daemon processes on temporary sockets and ports,
// real clients (in this process and in helper processes).
#include <signal.h>
#include <sys/stat.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "grpcpp/create_channel.h"
#include "gtest/gtest.h"
#include "kvtier/client.h"
#include "kvtier/v1/cache.grpc.pb.h"
#include "src/server/wire.h"
#include "tests/integration/daemon_harness.h"
#include "tests/integration/workload.h"
#include "tests/testing/status_matchers.h"

namespace kvtier::testing {
namespace {

using ::testing::HasSubstr;

constexpr const char* kAdmin = "admin-token-0123456789abcdef";
constexpr const char* kTokenA = "tenant-a-token-0123456789";
constexpr const char* kTokenB = "tenant-b-token-0123456789";

std::unique_ptr<Client> Connect(const std::string& socket, const std::string& token = "",
                                bool shm = true) {
  ClientOptions o;
  o.socket_path = socket;
  o.token = token;
  o.shared_memory = shm;
  o.rpc_timeout_ms = 3000;
  auto c = Client::Create(o);
  EXPECT_TRUE(c.ok()) << c.status();
  return std::move(*c);
}

std::vector<std::byte> Payload(const BlockKey& key, size_t n) {
  std::vector<std::byte> p(n);
  KeyedBytes(key, p.data(), n);
  return p;
}

// Saves the chunks of `tokens` in `ns` through `client`; returns the refs.
std::vector<ChunkRef> SaveChain(Client& client, const Namespace& ns,
                                const std::vector<TokenId>& tokens) {
  std::vector<ChunkRef> refs = *ns.Chunks(tokens);
  std::vector<std::vector<std::byte>> payloads;
  std::vector<absl::Span<const std::byte>> spans;
  for (const ChunkRef& r : refs) payloads.push_back(Payload(r.key, ns.PayloadBytes(r.num_tokens)));
  for (auto& p : payloads) spans.push_back(p);
  auto results = client.SaveBatch(ns, refs, spans);
  EXPECT_TRUE(results.ok()) << results.status();
  if (results.ok()) {
    for (const absl::Status& s : *results) EXPECT_TRUE(s.ok()) << s;
  }
  return refs;
}

std::vector<TokenId> Tokens(int n, int seed) {
  std::vector<TokenId> t(n);
  for (int i = 0; i < n; ++i) t[i] = static_cast<TokenId>((i * 2654435761u + seed) % 50000);
  return t;
}

// A raw stub, to send requests the client library would never build.
std::unique_ptr<v1::Cache::Stub> RawStub(const std::string& socket) {
  return v1::Cache::NewStub(
      grpc::CreateChannel("unix:" + socket, grpc::InsecureChannelCredentials()));
}

std::unique_ptr<grpc::ClientContext> Ctx(const std::string& token = "") {
  auto ctx = std::make_unique<grpc::ClientContext>();
  ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  if (!token.empty()) ctx->AddMetadata("authorization", std::string("Bearer ") + token);
  return ctx;
}

std::string ConfigWithTenants(const TempDir& dir, int lease_seconds = 30,
                              absl::string_view more_limits = "") {
  return dir.Write("kvtierd.yaml", absl::StrCat(R"(
auth:
  admin_token: )",
                                                kAdmin, R"(
  tenants:
    - name: a
      token: )",
                                                kTokenA, R"(
      cache_salts: [salt-a]
      shared_memory: true
    - name: b
      token: )",
                                                kTokenB, R"(
      cache_salts: [salt-b]
limits:
  max_keys_per_request: 64
  max_message_bytes: 64KiB
  max_grpc_message_bytes: 4MiB
  lease_seconds: )",
                                                lease_seconds, "\n", more_limits));
}

// ---- many processes at once ---------------------------------------------------

TEST(Daemon, ConcurrentClientProcessesShareOverlappingChains) {
  TempDir dir;
  ASSERT_OK_AND_ASSIGN(auto daemon, Daemon::Start(dir));
  std::vector<std::unique_ptr<Process>> clients;
  for (int id = 0; id < 4; ++id) {
    std::vector<std::string> argv = {
        ChainClientPath(), "--socket", daemon->socket(), "--id", absl::StrCat(id), "--rounds", "3"};
    if (id % 2 == 1) argv.push_back("--no-shm");  // half stream over gRPC
    ASSERT_OK_AND_ASSIGN(auto p, Process::Start(argv, dir.File(absl::StrCat("client", id))));
    clients.push_back(std::move(p));
  }
  for (auto& c : clients) {
    ASSERT_OK_AND_ASSIGN(int code, c->Wait(absl::Seconds(120)));
    EXPECT_EQ(code, 0) << c->Log();
    EXPECT_THAT(c->Log(), HasSubstr("\"wrong\":0"));
  }
  EXPECT_THAT(clients[0]->Log(), HasSubstr("\"shm\":true"));
  EXPECT_THAT(clients[1]->Log(), HasSubstr("\"shm\":false"));

  // The daemon saw the overlap: shared prefixes were hits, and each chunk of
  // the shared prefixes was stored once.
  auto client = Connect(daemon->socket());
  ASSERT_OK_AND_ASSIGN(CacheStats st, client->FetchStats());
  ASSERT_EQ(st.tiers.size(), 2u);
  EXPECT_EQ(st.tiers[1].tier, Tier::kNvme);
  EXPECT_EQ(st.tiers[1].chunks, 0u) << "DRAM had room for everything";
  EXPECT_GT(st.tiers[0].hits, 0u);
  EXPECT_GT(st.lookup_hits, 0u);
  // 3 shared prefixes of 4 chunks + 4 clients x 6 chains x 4 own chunks.
  EXPECT_EQ(st.tiers[0].chunks, 3u * 4 + 4u * 6 * 4);

  // Every chunk any client saved is readable by this process, byte for byte.
  ASSERT_OK_AND_ASSIGN(Namespace ns, Namespace::Create(SmallNamespace()));
  for (int id = 0; id < 4; ++id) {
    std::vector<ChunkRef> refs = *ns.Chunks(ChainTokens(id, 5, 8, 4, ns.tokens_per_chunk()));
    std::vector<std::byte> out(ns.FullChunkPayloadBytes());
    for (const ChunkRef& r : refs) {
      ASSERT_OK_AND_ASSIGN(size_t n, client->Load(ns, r.key, absl::MakeSpan(out)));
      EXPECT_EQ(n, out.size());
      EXPECT_EQ(out, Payload(r.key, n));
    }
  }
  ASSERT_OK_AND_ASSIGN(int code, daemon->Stop());
  EXPECT_EQ(code, 0);
}

TEST(Daemon, CliPutGetRoundTripsAFile) {
  TempDir dir;
  ASSERT_OK_AND_ASSIGN(auto daemon, Daemon::Start(dir));
  std::string data(3 * 1048576 + 12345, '\0');
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>((i * 131) ^ (i >> 9));
  const std::string in = dir.Write("in.bin", data);
  for (const char* transport : {"", "--no-shm"}) {
    const std::string name = absl::StrCat("file", transport);
    const std::string out = dir.File(absl::StrCat("out", transport));
    std::string put =
        absl::StrCat(CliPath(), " put ", in, " --name ", name, " --chunk 1MiB ", transport,
                     " --socket ", daemon->socket(), " > ", dir.File("put.log"), " 2>&1");
    ASSERT_EQ(std::system(put.c_str()), 0) << put;
    std::string get = absl::StrCat(CliPath(), " get ", name, " ", out, " ", transport, " --socket ",
                                   daemon->socket(), " > ", dir.File("get.log"), " 2>&1");
    ASSERT_EQ(std::system(get.c_str()), 0) << get;
    std::ifstream f(out, std::ios::binary);
    std::string back((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    EXPECT_TRUE(back == data) << "round trip through " << (*transport ? transport : "shm");
  }
  // A name that was never stored is NOT_FOUND (exit 1).
  std::string missing = absl::StrCat(CliPath(), " get nothing-here ", dir.File("x"), " --socket ",
                                     daemon->socket(), " 2>/dev/null");
  EXPECT_EQ(std::system(missing.c_str()), 1 << 8);
}

TEST(Daemon, CliDemoStatsLookupAndEvictWorkAgainstTheDaemon) {
  TempDir dir;
  // The daemon accepts both admin tokens of its file.
  constexpr const char* kNextAdmin = "next-admin-token-0123456789";
  const std::string token_file = dir.Write("admin.token", absl::StrCat(kNextAdmin, "\n", kAdmin));
  ASSERT_OK_AND_ASSIGN(auto daemon, Daemon::Start(dir, {"--admin-token-file", token_file}));
  const std::string common = absl::StrCat(" --socket ", daemon->socket(), " --token ", kAdmin);
  auto run = [&](const std::string& args, const std::string& out) {
    return std::system(
        absl::StrCat(CliPath(), " ", args, common, " > ", dir.File(out), " 2>&1").c_str());
  };
  auto read = [&](const std::string& name) {
    std::ifstream f(dir.File(name));
    return std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  };
  // The demo through the daemon checks every loaded byte (exit 1 otherwise).
  ASSERT_EQ(run("demo --quiet --conversations 3 --turns 3", "demo.txt"), 0) << read("demo.txt");
  EXPECT_THAT(read("demo.txt"), HasSubstr("chunks with wrong bytes"));
  ASSERT_EQ(run("stats --json", "stats.json"), 0) << read("stats.json");
  EXPECT_THAT(read("stats.json"), HasSubstr("\"tier\":\"dram\""));
  EXPECT_THAT(read("stats.json"),
              ::testing::ContainsRegex("\"tier\":\"dram\",[^}]*\"chunks\":[1-9]"));
  EXPECT_THAT(read("stats.json"), HasSubstr("\"tier\":\"nvme\""));

  // Lookup by token ids: the daemon chunks them as the client library does.
  ASSERT_OK_AND_ASSIGN(Namespace ns, Namespace::Create(SmallNamespace()));
  auto client = Connect(daemon->socket(), kAdmin);
  const std::vector<TokenId> tokens = Tokens(200, 11);  // 3 full chunks + 8 tokens
  std::vector<ChunkRef> saved = SaveChain(*client, ns, tokens);
  ASSERT_EQ(saved.size(), 3u);
  ASSERT_OK_AND_ASSIGN(TokenLookup tl, client->LookupTokens(ns, tokens));
  EXPECT_EQ(tl.result.matched, 3u);
  ASSERT_EQ(tl.chunks.size(), 3u);
  for (size_t i = 0; i < 3; ++i) EXPECT_EQ(tl.chunks[i].key, saved[i].key);
  ASSERT_OK_AND_ASSIGN(DaemonPrefetchResult pf, client->DaemonPrefetch(ns, Namespace::Keys(saved)));
  EXPECT_EQ(pf.matched, 3u);
  EXPECT_EQ(pf.resident_in_dram, 3u);

  std::string ns_flags =
      " --model kvtier-test/small --revision 1 --layers 2 --kv-heads 2 --head-size 64 "
      "--dtype float16 --chunk-tokens 64";
  std::string keys;
  for (const ChunkRef& c : saved) keys += (keys.empty() ? "" : ",") + c.key.ToHex();
  ASSERT_EQ(run("lookup --keys " + keys + ns_flags, "lookup.txt"), 0) << read("lookup.txt");
  EXPECT_THAT(read("lookup.txt"), HasSubstr("3 of 3 leading chunks cached"));
  ASSERT_EQ(run("evict --keys " + saved[1].key.ToHex() + ns_flags, "evict.txt"), 0)
      << read("evict.txt");
  EXPECT_THAT(read("evict.txt"), HasSubstr("removed 2 chunks"));
  ASSERT_EQ(run("lookup --keys " + keys + ns_flags, "lookup2.txt"), 0);
  EXPECT_THAT(read("lookup2.txt"), HasSubstr("1 of 3 leading chunks cached"));
  // A wrong token makes the CLI fail with the code.
  EXPECT_NE(std::system(absl::StrCat(CliPath(), " stats --socket ", daemon->socket(),
                                     " --token not-the-token-at-all-0000 > ",
                                     dir.File("denied.txt"), " 2>&1")
                            .c_str()),
            0);
  EXPECT_THAT(read("denied.txt"), HasSubstr("PERMISSION_DENIED"));
  // --token-file: the CLI sends the file's first token; a file it cannot
  // read is an error, not an empty token.
  const std::string socket = absl::StrCat(" --socket ", daemon->socket());
  const std::string cli_tokens =
      dir.Write("cli.token", absl::StrCat(kNextAdmin, "\nnot-the-token-at-all-0000\n"));
  EXPECT_EQ(std::system(absl::StrCat(CliPath(), " stats", socket, " --token-file ", cli_tokens,
                                     " > ", dir.File("next.txt"), " 2>&1")
                            .c_str()),
            0)
      << read("next.txt");
  EXPECT_NE(
      std::system(absl::StrCat(CliPath(), " stats", socket, " --token-file ",
                               dir.File("no-such.token"), " > ", dir.File("nofile.txt"), " 2>&1")
                      .c_str()),
      0);
  EXPECT_THAT(read("nofile.txt"), HasSubstr("--token-file: cannot read"));
}

// ---- security -----------------------------------------------------------------

// Token files are read again while kvtierd runs (every tls.reload_seconds):
// a token is replaced in three steps without a restart, and a file that
// cannot be used leaves the tokens as they were, with a warning.
TEST(Daemon, TokenFilesAreReadAgainWhileItRuns) {
  TempDir dir;
  const std::string old_admin = "admin-token-old-0123456789";
  const std::string new_admin = "admin-token-new-0123456789";
  const std::string tenant = "tenant-a-token-0123456789";
  // As the kubelet updates a Secret: the new file replaces the old by rename.
  auto replace = [&](const std::string& name, const std::string& text) {
    const std::string next = dir.Write(name + ".next", text);
    ASSERT_EQ(std::rename(next.c_str(), dir.File(name).c_str()), 0);
  };
  replace("admin.token", old_admin);
  replace("tenant.token", tenant);
  const std::string yaml = dir.Write(
      "kvtierd.yaml", absl::StrCat("tls:\n  reload_seconds: 1\nauth:\n  admin_token_file: ",
                                   dir.File("admin.token"), "\n  tenants:\n    - name: a\n",
                                   "      token_file: ", dir.File("tenant.token"), "\n"));
  ASSERT_OK_AND_ASSIGN(auto daemon, Daemon::Start(dir, {"--config", yaml}));
  // The status of a call with `token` (Stats needs a known token).
  auto stats = [&](const std::string& token) {
    return Connect(daemon->socket(), token, /*shm=*/false)->FetchStats().status();
  };
  // Waits (up to 10 s) until `token`'s calls give `code`.
  auto becomes = [&](const std::string& token, absl::StatusCode code) {
    const absl::Time deadline = absl::Now() + absl::Seconds(10);
    while (stats(token).code() != code && absl::Now() < deadline) {
      absl::SleepFor(absl::Milliseconds(100));
    }
    return stats(token).code() == code;
  };
  auto logged = [&](const std::string& text) {
    const absl::Time deadline = absl::Now() + absl::Seconds(10);
    while (!absl::StrContains(daemon->process().Log(), text) && absl::Now() < deadline) {
      absl::SleepFor(absl::Milliseconds(100));
    }
    return absl::StrContains(daemon->process().Log(), text);
  };
  EXPECT_OK(stats(old_admin));
  EXPECT_THAT(stats(new_admin), StatusIs(absl::StatusCode::kPermissionDenied));

  replace("admin.token", absl::StrCat(old_admin, "\n", new_admin, "\n"));
  EXPECT_TRUE(becomes(new_admin, absl::StatusCode::kOk)) << daemon->process().Log();
  EXPECT_OK(stats(old_admin));
  replace("admin.token", new_admin);
  EXPECT_TRUE(becomes(old_admin, absl::StatusCode::kPermissionDenied));
  EXPECT_OK(stats(new_admin));
  EXPECT_TRUE(logged("token file read again"));

  // Files that cannot be used: the tokens stay, with a warning naming the
  // setting and never a token.
  replace("admin.token", "short");
  EXPECT_TRUE(logged("must be at least 16 characters")) << daemon->process().Log();
  replace("tenant.token", new_admin);  // the admin's: one token, two principals
  EXPECT_TRUE(logged("auth.tenants[0].token: is used twice")) << daemon->process().Log();
  replace("admin.token", "");
  EXPECT_TRUE(logged("is empty")) << daemon->process().Log();
  EXPECT_OK(stats(new_admin));
  EXPECT_OK(stats(tenant));
  EXPECT_THAT(daemon->process().Log(), HasSubstr("the previous tokens stay"));
  EXPECT_THAT(daemon->process().Log(), ::testing::Not(HasSubstr(new_admin)));
  EXPECT_THAT(daemon->process().Log(), ::testing::Not(HasSubstr(tenant)));
}

// A client with a token file whose token the daemon refused goes back to
// shared memory once the file holds a token it knows: the refusal stands
// only until the file is read again.
TEST(Daemon, AClientTokenFileRefusedOnceGetsSharedMemoryBack) {
  TempDir dir;
  ASSERT_OK_AND_ASSIGN(auto daemon, Daemon::Start(dir, {"--config", ConfigWithTenants(dir)}));
  ASSERT_OK_AND_ASSIGN(Namespace ns, Namespace::Create(SmallNamespace("salt-a")));
  auto replace = [&](const std::string& text) {
    const std::string next = dir.Write("client.token.next", text);
    ASSERT_EQ(std::rename(next.c_str(), dir.File("client.token").c_str()), 0);
  };
  replace("not-a-known-token-0123456789");
  ClientOptions o;
  o.socket_path = daemon->socket();
  o.token_file = dir.File("client.token");
  o.token_reload_ms = 100;
  o.rpc_timeout_ms = 3000;
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Client> client, Client::Create(o));
  ASSERT_OK_AND_ASSIGN(std::vector<ChunkRef> chunks, ns.Chunks(Tokens(256, 3)));
  EXPECT_THAT(SaveKeyed(*client, ns, chunks), StatusIs(absl::StatusCode::kPermissionDenied));
  EXPECT_FALSE(client->using_shared_memory());

  replace(kTokenA);
  absl::SleepFor(absl::Milliseconds(300));
  ASSERT_OK(SaveKeyed(*client, ns, chunks));
  ASSERT_OK(CheckKeyedLoads(*client, ns, chunks));
  EXPECT_TRUE(client->using_shared_memory());
}

TEST(Daemon, TokensAndTenantsAreEnforcedWithoutLeaks) {
  TempDir dir;
  ASSERT_OK_AND_ASSIGN(auto daemon, Daemon::Start(dir, {"--config", ConfigWithTenants(dir)}));
  ASSERT_OK_AND_ASSIGN(Namespace ns_a, Namespace::Create(SmallNamespace("salt-a")));
  ASSERT_OK_AND_ASSIGN(Namespace ns_b, Namespace::Create(SmallNamespace("salt-b")));
  const std::vector<TokenId> tokens = Tokens(256, 1);

  auto a = Connect(daemon->socket(), kTokenA);
  std::vector<ChunkRef> refs = SaveChain(*a, ns_a, tokens);
  std::vector<BlockKey> keys = Namespace::Keys(refs);
  ASSERT_OK_AND_ASSIGN(LookupResult hit, a->Lookup(ns_a, keys));
  EXPECT_EQ(hit.matched, keys.size());
  EXPECT_TRUE(a->using_shared_memory());

  // No token, a wrong token.
  auto none = Connect(daemon->socket(), "");
  EXPECT_THAT(none->Lookup(ns_a, keys), StatusIs(absl::StatusCode::kUnauthenticated));
  auto wrong = Connect(daemon->socket(), "not-a-token-at-all-000000");
  EXPECT_THAT(wrong->Lookup(ns_a, keys), StatusIs(absl::StatusCode::kPermissionDenied));
  std::vector<std::byte> out(ns_a.FullChunkPayloadBytes());
  EXPECT_THAT(wrong->Load(ns_a, keys[0], absl::MakeSpan(out)),
              StatusIs(absl::StatusCode::kPermissionDenied));

  // Tenant b: tenant a's namespace is refused; its own namespace with the
  // same keys finds nothing; a's bytes never reach it.
  auto b = Connect(daemon->socket(), kTokenB);
  EXPECT_THAT(b->Lookup(ns_a, keys), StatusIs(absl::StatusCode::kPermissionDenied));
  EXPECT_THAT(b->Load(ns_a, keys[0], absl::MakeSpan(out)),
              StatusIs(absl::StatusCode::kPermissionDenied));
  EXPECT_THAT(b->Pin(ns_a, keys[0]), StatusIs(absl::StatusCode::kPermissionDenied));
  EXPECT_THAT(b->Save(ns_a, refs[0], Payload(refs[0].key, out.size())),
              StatusIs(absl::StatusCode::kPermissionDenied));
  ASSERT_OK_AND_ASSIGN(LookupResult b_hit, b->Lookup(ns_b, keys));
  EXPECT_EQ(b_hit.matched, 0u);
  EXPECT_THAT(b->Load(ns_b, keys[0], absl::MakeSpan(out)), StatusIs(absl::StatusCode::kNotFound));
  // Tenant b may not map the arena: its bytes stream over gRPC, and raw
  // Reserve calls are refused.
  std::vector<ChunkRef> b_refs = SaveChain(*b, ns_b, tokens);
  EXPECT_FALSE(b->using_shared_memory());
  {
    // Without the arena a pin owns a copy of the chunk.
    ASSERT_OK_AND_ASSIGN(ChunkPin pin, b->Pin(ns_b, b_refs[1].key));
    std::vector<std::byte> copy(pin.payload().begin(), pin.payload().end());
    EXPECT_EQ(copy, Payload(b_refs[1].key, copy.size()));
  }
  {
    auto stub = RawStub(daemon->socket());
    v1::ReserveRequest req;
    wire::NamespaceToProto(ns_b.options(), req.mutable_namespace_());
    wire::ChunkToProto(refs[0], req.add_chunks());
    v1::ReserveResponse resp;
    grpc::Status s = stub->Reserve(Ctx(kTokenB).get(), req, &resp);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED) << s.error_message();
  }

  // Evict and Config need the admin token.
  EXPECT_THAT(a->Evict(ns_a), StatusIs(absl::StatusCode::kPermissionDenied));
  EXPECT_THAT(a->DaemonConfigYaml(), StatusIs(absl::StatusCode::kPermissionDenied));
  auto admin = Connect(daemon->socket(), kAdmin);
  ASSERT_OK_AND_ASSIGN(std::string yaml, admin->DaemonConfigYaml());
  EXPECT_THAT(yaml, HasSubstr("<redacted>"));
  EXPECT_THAT(yaml, ::testing::Not(HasSubstr(kTokenA)));
  ASSERT_OK_AND_ASSIGN(uint64_t removed, admin->Evict(ns_a, {keys[2]}));
  EXPECT_EQ(removed, keys.size() - 2);  // keys[2] and its descendants
  ASSERT_OK_AND_ASSIGN(hit, a->Lookup(ns_a, keys));
  EXPECT_EQ(hit.matched, 2u);
  ASSERT_OK_AND_ASSIGN(removed, admin->EvictNamespaceId(ns_a.id()));
  EXPECT_EQ(removed, 2u);
  ASSERT_OK_AND_ASSIGN(hit, a->Lookup(ns_a, keys));
  EXPECT_EQ(hit.matched, 0u);
  ASSERT_OK_AND_ASSIGN(b_hit, b->Lookup(ns_b, Namespace::Keys(*ns_b.Chunks(tokens))));
  EXPECT_EQ(b_hit.matched, keys.size()) << "evicting a's namespace leaves b's";

  // The side channel refuses a wrong token outright.
  {
    auto bad = Connect(daemon->socket(), "not-a-token-at-all-000000");
    EXPECT_THAT(bad->Save(ns_a, refs[0], Payload(refs[0].key, out.size())),
                StatusIs(absl::StatusCode::kPermissionDenied));
    EXPECT_FALSE(bad->using_shared_memory());
  }
}

TEST(Daemon, TcpWithoutTokensIsRefusedAtStart) {
  TempDir dir;
  auto d = Daemon::Start(dir, {"--tcp", absl::StrCat("127.0.0.1:", FreePort())});
  ASSERT_FALSE(d.ok());
  EXPECT_THAT(std::string(d.status().message()), HasSubstr("listen.tcp"));
}

// ---- malformed and oversized requests ---------------------------------------------

TEST(Daemon, MalformedAndOversizedRequestsNameTheField) {
  TempDir dir;
  ASSERT_OK_AND_ASSIGN(auto daemon, Daemon::Start(dir, {"--config", ConfigWithTenants(dir)}));
  ASSERT_OK_AND_ASSIGN(Namespace ns, Namespace::Create(SmallNamespace("salt-a")));
  auto stub = RawStub(daemon->socket());
  auto expect_invalid = [](const grpc::Status& s, const std::string& field) {
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << s.error_message();
    EXPECT_THAT(s.error_message(), HasSubstr(field));
  };
  v1::LookupResponse lresp;
  {
    v1::LookupRequest req;
    wire::NamespaceToProto(ns.options(), req.mutable_namespace_());
    req.add_keys("fifteen-bytes!!");
    expect_invalid(stub->Lookup(Ctx(kTokenA).get(), req, &lresp), "keys[0]");
  }
  {
    v1::LookupRequest req;
    wire::NamespaceToProto(ns.options(), req.mutable_namespace_());
    for (int i = 0; i < 65; ++i) req.add_keys(wire::KeyToBytes(BlockKey{1, uint64_t(i + 1)}));
    expect_invalid(stub->Lookup(Ctx(kTokenA).get(), req, &lresp), "max_keys_per_request");
  }
  {
    v1::LookupRequest req;
    wire::NamespaceToProto(ns.options(), req.mutable_namespace_());
    req.add_keys(wire::KeyToBytes(BlockKey{1, 1}));
    req.add_keys(wire::KeyToBytes(BlockKey{1, 1}));
    expect_invalid(stub->Lookup(Ctx(kTokenA).get(), req, &lresp), "keys[1]");
  }
  {
    v1::LookupRequest req;
    req.add_keys(wire::KeyToBytes(BlockKey{1, 1}));
    expect_invalid(stub->Lookup(Ctx(kTokenA).get(), req, &lresp), "namespace: required");
  }
  {
    v1::LookupRequest req;
    wire::NamespaceToProto(ns.options(), req.mutable_namespace_());
    req.mutable_namespace_()->mutable_layout()->set_dtype(v1::DTYPE_UNSPECIFIED);
    expect_invalid(stub->Lookup(Ctx(kTokenA).get(), req, &lresp), "namespace.layout.dtype");
  }
  {
    v1::LookupRequest req;
    wire::NamespaceToProto(ns.options(), req.mutable_namespace_());
    req.mutable_namespace_()->set_tokens_per_chunk(40);  // not a multiple of 16
    expect_invalid(stub->Lookup(Ctx(kTokenA).get(), req, &lresp), "namespace.tokens_per_chunk");
  }
  {
    v1::LookupRequest req;
    wire::NamespaceToProto(ns.options(), req.mutable_namespace_());
    req.add_keys(wire::KeyToBytes(BlockKey{1, 1}));
    req.add_token_ids(5);
    expect_invalid(stub->Lookup(Ctx(kTokenA).get(), req, &lresp), "keys, token_ids");
  }
  // A wrong token is refused before the request is even looked at.
  {
    v1::LookupRequest req;
    req.add_keys("garbage");
    grpc::Status s = stub->Lookup(Ctx("not-a-token-at-all-000000").get(), req, &lresp);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  }
  // Save streams.
  const ChunkRef ref = (*ns.Chunks(Tokens(64, 9)))[0];
  const size_t bytes = ns.PayloadBytes(ref.num_tokens);  // 64 KiB
  auto save = [&](const std::vector<v1::SaveRequest>& msgs) {
    auto ctx = Ctx(kTokenA);
    v1::SaveResponse resp;
    auto w = stub->Save(ctx.get(), &resp);
    for (const auto& m : msgs) {
      if (!w->Write(m)) break;
    }
    w->WritesDone();
    return w->Finish();
  };
  v1::SaveRequest first;
  wire::NamespaceToProto(ns.options(), first.mutable_namespace_());
  wire::ChunkToProto(ref, first.mutable_chunk());
  {
    v1::SaveRequest m = first;
    m.set_data(std::string(128 << 10, 'x'));  // over max_message_bytes (64 KiB)
    expect_invalid(save({m}), "data: 131072 bytes in one message exceed");
  }
  {
    v1::SaveRequest m = first;
    m.set_data(std::string(bytes / 2, 'x'));
    v1::SaveRequest more;
    more.set_data(std::string(bytes / 2 + 1, 'x'));
    expect_invalid(save({m, more}), "gets more than its");
  }
  {
    v1::SaveRequest m = first;
    m.set_data(std::string(bytes / 2, 'x'));
    expect_invalid(save({m}), "incomplete");
  }
  {
    v1::SaveRequest m = first;
    m.mutable_chunk()->set_num_tokens(17);
    expect_invalid(save({m}), "chunk.num_tokens");
  }
  {
    v1::SaveRequest m;
    m.set_data("x");
    expect_invalid(save({m}), "namespace: required");
  }
  // Nothing of the failed streams became visible.
  auto a = Connect(daemon->socket(), kTokenA);
  ASSERT_OK_AND_ASSIGN(LookupResult r, a->Lookup(ns, {ref.key}));
  EXPECT_EQ(r.matched, 0u);
  ASSERT_OK_AND_ASSIGN(CacheStats st, a->FetchStats());
  EXPECT_EQ(st.tiers[0].pinned_chunks, 0u) << "aborted streams give their slots back";
  // Reserve with a bad chunk; Commit of handles that do not exist.
  {
    v1::ReserveRequest req;
    wire::NamespaceToProto(ns.options(), req.mutable_namespace_());
    wire::ChunkToProto(ref, req.add_chunks());
    req.mutable_chunks(0)->set_key("short");
    v1::ReserveResponse resp;
    expect_invalid(stub->Reserve(Ctx(kTokenA).get(), req, &resp), "chunks[0].key");
    v1::CommitRequest commit;
    commit.add_handles(12345);
    v1::CommitResponse cresp;
    ASSERT_TRUE(stub->Commit(Ctx(kTokenA).get(), commit, &cresp).ok());
    ASSERT_EQ(cresp.results_size(), 1);
    EXPECT_EQ(cresp.results(0).code(), static_cast<int>(grpc::StatusCode::FAILED_PRECONDITION));
    EXPECT_THAT(cresp.results(0).message(), HasSubstr("handles[0]"));
  }
}

// ---- leases, draining, restarts ------------------------------------------------------

TEST(Daemon, AbandonedReservationsAndPinsExpire) {
  TempDir dir;
  ASSERT_OK_AND_ASSIGN(auto daemon, Daemon::Start(dir, {"--config", ConfigWithTenants(dir, 1)}));
  ASSERT_OK_AND_ASSIGN(Namespace ns, Namespace::Create(SmallNamespace("salt-a")));
  auto a = Connect(daemon->socket(), kTokenA);
  std::vector<ChunkRef> refs = SaveChain(*a, ns, Tokens(128, 3));
  auto stub = RawStub(daemon->socket());
  // A reservation never committed and a pin never released.
  ChunkRef fresh = (*ns.Chunks(Tokens(64, 77)))[0];
  v1::ReserveRequest req;
  wire::NamespaceToProto(ns.options(), req.mutable_namespace_());
  wire::ChunkToProto(fresh, req.add_chunks());
  v1::ReserveResponse resp;
  ASSERT_TRUE(stub->Reserve(Ctx(kTokenA).get(), req, &resp).ok());
  ASSERT_EQ(resp.reservations_size(), 1);
  EXPECT_GT(resp.reservations(0).length(), 0u);
  v1::PinRequest pin;
  wire::NamespaceToProto(ns.options(), pin.mutable_namespace_());
  pin.add_keys(wire::KeyToBytes(refs[0].key));
  v1::PinResponse presp;
  ASSERT_TRUE(stub->Pin(Ctx(kTokenA).get(), pin, &presp).ok());
  ASSERT_OK_AND_ASSIGN(CacheStats st, a->FetchStats());
  EXPECT_EQ(st.tiers[0].pinned_chunks, 2u);
  // Another tenant cannot commit or release them.
  v1::CommitRequest commit;
  commit.add_handles(resp.reservations(0).handle());
  v1::CommitResponse cresp;
  ASSERT_TRUE(stub->Commit(Ctx(kAdmin).get(), commit, &cresp).ok());
  EXPECT_NE(cresp.results(0).code(), 0);
  // After the lease (1 s) the daemon takes both back.
  absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (absl::Now() < deadline) {
    st = *a->FetchStats();
    if (st.tiers[0].pinned_chunks == 0) break;
    absl::SleepFor(absl::Milliseconds(100));
  }
  EXPECT_EQ(st.tiers[0].pinned_chunks, 0u);
  ASSERT_OK_AND_ASSIGN(LookupResult r, a->Lookup(ns, {fresh.key}));
  EXPECT_EQ(r.matched, 0u) << "an expired reservation never becomes visible";
  ASSERT_TRUE(stub->Commit(Ctx(kTokenA).get(), commit, &cresp).ok());
  EXPECT_EQ(cresp.results(0).code(), static_cast<int>(grpc::StatusCode::FAILED_PRECONDITION));
}

// One tenant cannot take every lease: pins and reservations are counted per
// principal, and a tenant that may not map the arena may not pin at all.
TEST(Daemon, LeasesAreLimitedPerPrincipal) {
  TempDir dir;
  ASSERT_OK_AND_ASSIGN(
      auto daemon,
      Daemon::Start(dir, {"--config", ConfigWithTenants(dir, 30,
                                                        "  max_leases: 8\n"
                                                        "  max_leases_per_principal: 5\n")}));
  ASSERT_OK_AND_ASSIGN(Namespace ns, Namespace::Create(SmallNamespace("salt-a")));
  auto a = Connect(daemon->socket(), kTokenA);
  std::vector<ChunkRef> refs = SaveChain(*a, ns, Tokens(64, 5));
  auto stub = RawStub(daemon->socket());
  auto pin = [&](const std::string& token, int copies, v1::PinResponse* resp) {
    v1::PinRequest req;
    wire::NamespaceToProto(ns.options(), req.mutable_namespace_());
    for (int i = 0; i < copies; ++i) req.add_keys(wire::KeyToBytes(refs[0].key));
    return stub->Pin(Ctx(token).get(), req, resp);
  };
  v1::PinResponse held;
  ASSERT_TRUE(pin(kTokenA, 5, &held).ok());
  v1::PinResponse more;
  grpc::Status s = pin(kTokenA, 1, &more);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << s.error_message();
  EXPECT_THAT(s.error_message(), HasSubstr("limits.max_leases_per_principal"));
  // Another principal still gets leases; the global limit still holds.
  ASSERT_TRUE(pin(kAdmin, 3, &more).ok());
  s = pin(kAdmin, 1, &more);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << s.error_message();
  EXPECT_THAT(s.error_message(), HasSubstr("limits.max_leases)"));
  // Tenant b (no shared memory) may not pin.
  s = pin(kTokenB, 1, &more);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED) << s.error_message();
  // Released leases count no more.
  v1::ReleaseRequest rel;
  for (const v1::PinnedChunk& c : held.chunks()) rel.add_pin_ids(c.pin_id());
  v1::ReleaseResponse rresp;
  ASSERT_TRUE(stub->Release(Ctx(kTokenA).get(), rel, &rresp).ok());
  EXPECT_EQ(rresp.released(), 5u);
  EXPECT_TRUE(pin(kTokenA, 5, &more).ok());
  // Concurrent requests cannot pass the limit together.
  v1::ReleaseRequest rel2;
  for (const v1::PinnedChunk& c : more.chunks()) rel2.add_pin_ids(c.pin_id());
  ASSERT_TRUE(stub->Release(Ctx(kTokenA).get(), rel2, &rresp).ok());
  std::atomic<int> granted{0};
  std::vector<std::thread> callers;
  for (int t = 0; t < 12; ++t) {
    callers.emplace_back([&] {
      v1::PinResponse r;
      if (pin(kTokenA, 1, &r).ok()) granted.fetch_add(1);
    });
  }
  for (std::thread& t : callers) t.join();
  EXPECT_EQ(granted.load(), 5);
}

TEST(Daemon, ClientKeepsWorkingAcrossADaemonRestart) {
  TempDir dir;
  ASSERT_OK_AND_ASSIGN(Namespace ns, Namespace::Create(SmallNamespace()));
  auto daemon = Daemon::Start(dir, {}, "first.log");
  ASSERT_TRUE(daemon.ok()) << daemon.status();
  auto client = Connect((*daemon)->socket());
  std::vector<ChunkRef> before = SaveChain(*client, ns, Tokens(256, 5));
  EXPECT_TRUE(client->using_shared_memory());
  ASSERT_OK_AND_ASSIGN(int code, (*daemon)->Stop());
  EXPECT_EQ(code, 0);
  EXPECT_FALSE(std::filesystem::exists((*daemon)->socket())) << "socket removed on exit";

  // Down: clear UNAVAILABLE errors, no hang, no crash.
  std::vector<std::byte> out(ns.FullChunkPayloadBytes());
  EXPECT_THAT(client->Lookup(ns, Namespace::Keys(before)),
              StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_THAT(client->Load(ns, before[0].key, absl::MakeSpan(out)),
              StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_THAT(client->Save(ns, before[0], Payload(before[0].key, out.size())),
              StatusIs(absl::StatusCode::kUnavailable));

  // Back (a new arena; the chunks come from the NVMe tier, where the daemon
  // copied DRAM on shutdown): the same client recovers by itself.
  auto again = Daemon::Start(dir, {}, "second.log");
  ASSERT_TRUE(again.ok()) << again.status();
  absl::Status s;
  absl::Time deadline = absl::Now() + absl::Seconds(15);
  do {
    s = client->Lookup(ns, Namespace::Keys(before)).status();
    if (!s.ok()) absl::SleepFor(absl::Milliseconds(50));
  } while (!s.ok() && absl::Now() < deadline);
  ASSERT_OK(s);
  ASSERT_OK_AND_ASSIGN(LookupResult r, client->Lookup(ns, Namespace::Keys(before)));
  EXPECT_EQ(r.matched, before.size());
  for (const ChunkLocation& loc : r.chunks) EXPECT_EQ(loc.tier, Tier::kNvme);
  std::vector<ChunkRef> after = SaveChain(*client, ns, Tokens(256, 6));
  for (const ChunkRef& c : after) {
    ASSERT_OK_AND_ASSIGN(size_t n, client->Load(ns, c.key, absl::MakeSpan(out)));
    EXPECT_EQ(out, Payload(c.key, n)) << "bytes through the new arena";
  }
  EXPECT_TRUE(client->using_shared_memory());
  // A zero-copy pin reads the new arena in place.
  ASSERT_OK_AND_ASSIGN(ChunkPin pin, client->Pin(ns, after[1].key));
  std::vector<std::byte> in_place(pin.payload().begin(), pin.payload().end());
  EXPECT_EQ(in_place, Payload(after[1].key, in_place.size()));
}

TEST(Daemon, NvmeChunksSurviveARestart) {
  TempDir dir;
  ASSERT_OK_AND_ASSIGN(Namespace ns, Namespace::Create(SmallNamespace()));
  // DRAM of two 2 MiB slabs: about 60 chunks of 64 KiB; the rest of the
  // chain is demoted to NVMe.
  const std::vector<std::string> small_dram = {"--dram", "4MiB", "--slab", "2MiB"};
  auto daemon = Daemon::Start(dir, small_dram, "first.log");
  ASSERT_TRUE(daemon.ok()) << daemon.status();
  auto client = Connect((*daemon)->socket());
  // One chunk at a time: a batch reserves all its DRAM slots at once.
  ASSERT_OK_AND_ASSIGN(std::vector<ChunkRef> chain, ns.Chunks(Tokens(64 * 200, 11)));
  ASSERT_EQ(chain.size(), 200u);
  for (const ChunkRef& c : chain) {
    ASSERT_OK(client->Save(ns, c, Payload(c.key, ns.PayloadBytes(c.num_tokens))));
  }
  ASSERT_OK_AND_ASSIGN(CacheStats st, client->FetchStats());
  ASSERT_EQ(st.tiers.size(), 2u);
  EXPECT_EQ(st.tiers[1].tier, Tier::kNvme);
  const uint64_t evicted = st.tiers[0].evictions;
  ASSERT_GT(evicted, 100u);
  // Where each chunk is: DRAM or NVMe (a chunk whose demotion is still
  // being written is briefly in neither, hence the retries).
  LookupResult before;
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  do {
    ASSERT_OK_AND_ASSIGN(before, client->Lookup(ns, Namespace::Keys(chain)));
  } while (before.matched < chain.size() && absl::Now() < deadline);
  ASSERT_EQ(before.matched, chain.size());
  std::vector<size_t> on_nvme;
  size_t nvme_prefix = 0;
  for (size_t i = 0; i < chain.size(); ++i) {
    if (before.chunks[i].tier == Tier::kNvme) {
      on_nvme.push_back(i);
      if (nvme_prefix == i) ++nvme_prefix;
    }
  }
  EXPECT_EQ(on_nvme.size(), evicted);
  ASSERT_GT(nvme_prefix, 0u);
  ASSERT_OK_AND_ASSIGN(auto metrics, (*daemon)->HttpGet("/metrics"));
  EXPECT_THAT(metrics.second, HasSubstr("kvtier_capacity_bytes{tier=\"nvme\"}"));
  EXPECT_THAT(metrics.second, HasSubstr("kvtier_checksum_failures_total{tier=\"nvme\"} 0"));
  // SIGTERM finishes the demotions in flight and writes the NVMe snapshot.
  ASSERT_OK_AND_ASSIGN(int code, (*daemon)->Stop());
  EXPECT_EQ(code, 0);
  EXPECT_THAT((*daemon)->process().Log(), HasSubstr("\"msg\":\"cache closed\""));
  client.reset();

  auto again = Daemon::Start(dir, small_dram, "second.log");
  ASSERT_TRUE(again.ok()) << again.status();
  client = Connect((*again)->socket());
  ASSERT_OK_AND_ASSIGN(st, client->FetchStats());
  ASSERT_EQ(st.tiers.size(), 2u);
  EXPECT_EQ(st.tiers[0].chunks, 0u);
  // Every evicted chunk was demoted and kept, and shutdown copied what DRAM
  // held: the whole chain is back, from NVMe.
  EXPECT_EQ(st.tiers[1].chunks, chain.size());
  ASSERT_OK_AND_ASSIGN(LookupResult r, client->Lookup(ns, Namespace::Keys(chain)));
  ASSERT_EQ(r.matched, chain.size());
  for (const ChunkLocation& loc : r.chunks) EXPECT_EQ(loc.tier, Tier::kNvme);
  std::vector<std::byte> out(ns.FullChunkPayloadBytes());
  for (size_t i = 0; i < chain.size(); ++i) {
    ASSERT_OK_AND_ASSIGN(size_t n, client->Load(ns, chain[i].key, absl::MakeSpan(out)));
    ASSERT_EQ(out, Payload(chain[i].key, n)) << "chunk " << i;
  }
  ASSERT_OK_AND_ASSIGN(metrics, (*again)->HttpGet("/metrics"));
  EXPECT_THAT(metrics.second,
              HasSubstr(absl::StrCat("kvtier_hits_total{tier=\"nvme\"} ", chain.size())));
  EXPECT_THAT(metrics.second, HasSubstr("kvtier_resident_chunks{tier=\"dram\"}"));
}

TEST(Daemon, ObservabilityAndGracefulShutdown) {
  TempDir dir;
  ASSERT_OK_AND_ASSIGN(auto daemon, Daemon::Start(dir));
  struct stat st;
  ASSERT_EQ(stat(daemon->socket().c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0660u);
  ASSERT_OK_AND_ASSIGN(auto ready, daemon->HttpGet("/readyz"));
  EXPECT_EQ(ready.first, 200);
  ASSERT_OK_AND_ASSIGN(auto health, daemon->HttpGet("/healthz"));
  EXPECT_EQ(health.first, 200);
  ASSERT_OK_AND_ASSIGN(auto missing, daemon->HttpGet("/nope"));
  EXPECT_EQ(missing.first, 404);

  ASSERT_OK_AND_ASSIGN(Namespace ns, Namespace::Create(SmallNamespace()));
  auto client = Connect(daemon->socket());
  std::vector<ChunkRef> refs = SaveChain(*client, ns, Tokens(192, 8));
  std::vector<std::byte> out(ns.FullChunkPayloadBytes());
  ASSERT_OK(client->Load(ns, refs[0].key, absl::MakeSpan(out)));
  ASSERT_OK_AND_ASSIGN(auto metrics, daemon->HttpGet("/metrics"));
  EXPECT_EQ(metrics.first, 200);
  EXPECT_THAT(metrics.second, HasSubstr("kvtier_hits_total{tier=\"dram\"} 1"));
  EXPECT_THAT(metrics.second, HasSubstr("kvtier_resident_chunks{tier=\"dram\"} 3"));
  EXPECT_THAT(metrics.second,
              HasSubstr(absl::StrCat("kvtier_bytes_total{direction=\"write\",tier=\"dram\"} ",
                                     3 * out.size())));
  EXPECT_THAT(metrics.second, HasSubstr("kvtier_rpc_duration_seconds_count{method=\"Reserve\"} 1"));
  EXPECT_THAT(metrics.second, HasSubstr("kvtier_inflight_requests"));
  EXPECT_THAT(metrics.second, HasSubstr("kvtier_checksum_failures_total{tier=\"dram\"} 0"));
  EXPECT_THAT(metrics.second, HasSubstr("kvtier_shm_grants_total 1"));
  EXPECT_THAT(metrics.second, HasSubstr("kvtier_connections_cut_total{listener=\"http\"} 0"));
  EXPECT_THAT(metrics.second,
              HasSubstr("kvtier_connections_cut_total{listener=\"shared_memory\"} 0"));

  // SIGTERM: exit 0, sockets gone, structured logs throughout.
  ASSERT_OK_AND_ASSIGN(int code, daemon->Stop());
  EXPECT_EQ(code, 0);
  EXPECT_FALSE(std::filesystem::exists(daemon->socket()));
  EXPECT_FALSE(std::filesystem::exists(daemon->socket() + ".shm"));
  const std::string log = daemon->process().Log();
  EXPECT_THAT(log, HasSubstr("\"msg\":\"kvtierd ready\""));
  EXPECT_THAT(log, HasSubstr("\"msg\":\"draining\""));
  EXPECT_THAT(log, HasSubstr("\"msg\":\"stopped\""));
  for (absl::string_view line : absl::StrSplit(log, '\n', absl::SkipEmpty())) {
    EXPECT_TRUE(absl::StartsWith(line, "{\"ts\":\"") && absl::EndsWith(line, "}")) << line;
  }
}

TEST(Daemon, BadConfigurationExitsWithTheFieldName) {
  TempDir dir;
  const std::string cfg = dir.Write("bad.yaml", "dram:\n  capacity: 1GiB\n  slabs: 2\n");
  ASSERT_OK_AND_ASSIGN(
      auto p, Process::Start({KvtierdPath(), "--config", cfg, "--socket", dir.File("s.sock")},
                             dir.File("bad.log")));
  ASSERT_OK_AND_ASSIGN(int code, p->Wait(absl::Seconds(10)));
  EXPECT_EQ(code, 2);
  EXPECT_THAT(p->Log(), HasSubstr("dram.slabs: unknown key"));
}

TEST(Daemon, NvmeSettingsAreValidatedAndStartupFaultsNameThePath) {
  TempDir dir;
  auto run = [&](std::vector<std::string> args, const std::string& log) {
    args.insert(args.begin(), {KvtierdPath(), "--socket", dir.File("s.sock"), "--http", ""});
    absl::StatusOr<std::unique_ptr<Process>> p = Process::Start(args, dir.File(log));
    EXPECT_TRUE(p.ok()) << p.status();
    absl::StatusOr<int> code = (*p)->Wait(absl::Seconds(20));
    EXPECT_TRUE(code.ok()) << code.status();
    return std::make_pair(code.ok() ? *code : -1, (*p)->Log());
  };
  // The nvme section, its flags and variables map to the effective settings.
  const std::string cfg =
      dir.Write("nvme.yaml", absl::StrCat("nvme:\n  path: ", dir.path(),
                                          "\n  capacity: 1GiB\n"
                                          "  admission: second-chance\n"
                                          "  slot_payload_sizes: [64KiB, 1MiB]\n"
                                          "  durability: power\n"));
  auto [code, log] = run({"--config", cfg, "--nvme-io-mode", "buffered", "--check-config"}, "a");
  EXPECT_EQ(code, 0) << log;
  EXPECT_THAT(log, HasSubstr("admission: second-chance"));
  EXPECT_THAT(log, HasSubstr("io_mode: buffered"));
  EXPECT_THAT(log, HasSubstr("capacity: 1073741824"));
  EXPECT_THAT(log, HasSubstr("slot_payload_sizes: [65536, 1048576]"));
  EXPECT_THAT(log, HasSubstr("durability: power"));
  std::tie(code, log) = run({"--nvme", "off", "--check-config"}, "b");
  EXPECT_EQ(code, 0) << log;
  EXPECT_THAT(log, HasSubstr("enabled: false"));
  // Bad values exit 2 naming the key.
  std::tie(code, log) = run({"--config", cfg, "--nvme-admission", "sometimes"}, "c");
  EXPECT_EQ(code, 2);
  EXPECT_THAT(log, HasSubstr("nvme.admission"));
  const std::string typo = dir.Write("typo.yaml", "nvme:\n  capacty: 1GiB\n");
  std::tie(code, log) = run({"--config", typo}, "d");
  EXPECT_EQ(code, 2);
  EXPECT_THAT(log, HasSubstr("nvme.capacty: unknown key"));
  // A configured folder that does not exist: start-up fails naming it.
  const std::string missing = dir.File("no-such-folder");
  std::tie(code, log) =
      run({"--nvme", missing, "--nvme-capacity", "64MiB", "--dram", "64MiB"}, "e");
  EXPECT_EQ(code, 1);
  EXPECT_THAT(log, HasSubstr(missing));
}

// ---- TLS ----------------------------------------------------------------------------

TEST(Daemon, TlsAndMutualTlsOnLoopbackTcp) {
  TempDir dir;
  ASSERT_OK(MakeCertificates(dir));
  const std::string tcp = absl::StrCat("127.0.0.1:", FreePort());
  const std::string token_file = dir.Write("admin.token", kAdmin);
  std::vector<std::string> flags = {"--tcp",
                                    tcp,
                                    "--tls-cert",
                                    dir.File("server.pem"),
                                    "--tls-key",
                                    dir.File("server.key"),
                                    "--admin-token-file",
                                    token_file};
  ASSERT_OK_AND_ASSIGN(Namespace ns, Namespace::Create(SmallNamespace()));
  const std::vector<TokenId> tokens = Tokens(128, 4);
  {
    ASSERT_OK_AND_ASSIGN(auto daemon, Daemon::Start(dir, flags, "tls.log"));
    ClientOptions o;
    o.address = tcp;
    o.token = kAdmin;
    o.tls_ca_file = dir.File("ca.pem");
    o.rpc_timeout_ms = 3000;
    ASSERT_OK_AND_ASSIGN(auto client, Client::Create(o));
    std::vector<ChunkRef> refs = SaveChain(*client, ns, tokens);
    EXPECT_FALSE(client->using_shared_memory()) << "TCP streams bytes over gRPC";
    std::vector<std::byte> out(ns.FullChunkPayloadBytes());
    ASSERT_OK_AND_ASSIGN(size_t n, client->Load(ns, refs[1].key, absl::MakeSpan(out)));
    EXPECT_EQ(out, Payload(refs[1].key, n));
    // Plaintext to a TLS port fails; so does TLS without the token.
    ClientOptions plain = o;
    plain.tls_ca_file.clear();
    ASSERT_OK_AND_ASSIGN(auto p, Client::Create(plain));
    EXPECT_THAT(p->Lookup(ns, {refs[0].key}), StatusIs(absl::StatusCode::kUnavailable));
    ClientOptions anon = o;
    anon.token.clear();
    ASSERT_OK_AND_ASSIGN(auto an, Client::Create(anon));
    EXPECT_THAT(an->Lookup(ns, {refs[0].key}), StatusIs(absl::StatusCode::kUnauthenticated));
    // The server's name is checked: its certificate names localhost and
    // 127.0.0.1, not wrong.example.
    ClientOptions wrong_name = o;
    wrong_name.tls_server_name = "wrong.example";
    ASSERT_OK_AND_ASSIGN(auto wn, Client::Create(wrong_name));
    EXPECT_THAT(wn->Lookup(ns, {refs[0].key}), StatusIs(absl::StatusCode::kUnavailable));
    ClientOptions right_name = o;
    right_name.tls_server_name = "localhost";
    ASSERT_OK_AND_ASSIGN(auto rn, Client::Create(right_name));
    EXPECT_OK(rn->Lookup(ns, {refs[0].key}).status());
    // A CA that did not sign the server's certificate is refused.
    ClientOptions other_ca = o;
    other_ca.tls_ca_file = dir.File("client.pem");
    ASSERT_OK_AND_ASSIGN(auto oc, Client::Create(other_ca));
    EXPECT_THAT(oc->Lookup(ns, {refs[0].key}), StatusIs(absl::StatusCode::kUnavailable));
    ASSERT_OK_AND_ASSIGN(int code, daemon->Stop());
    EXPECT_EQ(code, 0);
  }
  {
    std::vector<std::string> mtls = flags;
    mtls.insert(mtls.end(),
                {"--tls-client-ca", dir.File("ca.pem"), "--require-client-cert", "true"});
    ASSERT_OK_AND_ASSIGN(auto daemon, Daemon::Start(dir, mtls, "mtls.log"));
    ClientOptions o;
    o.address = tcp;
    o.token = kAdmin;
    o.tls_ca_file = dir.File("ca.pem");
    o.rpc_timeout_ms = 3000;
    ASSERT_OK_AND_ASSIGN(auto no_cert, Client::Create(o));
    EXPECT_THAT(no_cert->Lookup(ns, {BlockKey{1, 2}}), StatusIs(absl::StatusCode::kUnavailable));
    o.tls_cert_file = dir.File("client.pem");
    o.tls_key_file = dir.File("client.key");
    ASSERT_OK_AND_ASSIGN(auto with_cert, Client::Create(o));
    std::vector<ChunkRef> refs = SaveChain(*with_cert, ns, tokens);
    ASSERT_OK_AND_ASSIGN(LookupResult r, with_cert->Lookup(ns, Namespace::Keys(refs)));
    EXPECT_EQ(r.matched, refs.size());
  }
}

// A renewed certificate replaces the old one in place (as a Kubernetes
// Secret update does): new handshakes use it without a restart.
TEST(Daemon, TlsCertificatesAreReadAgainWithoutARestart) {
  TempDir old_certs, new_certs, live;
  ASSERT_OK(MakeCertificates(old_certs));
  ASSERT_OK(MakeCertificates(new_certs));  // another CA
  auto install = [&](const TempDir& from) {
    for (const char* name : {"server.pem", "server.key"}) {
      std::ifstream in(from.File(name), std::ios::binary);
      std::stringstream text;
      text << in.rdbuf();
      const std::string tmp = live.Write(absl::StrCat(name, ".tmp"), text.str());
      ASSERT_EQ(std::rename(tmp.c_str(), live.File(name).c_str()), 0);
    }
  };
  install(old_certs);
  const std::string tcp = absl::StrCat("127.0.0.1:", FreePort());
  ASSERT_OK_AND_ASSIGN(
      auto daemon, Daemon::Start(live,
                                 {"--tcp", tcp, "--tls-cert", live.File("server.pem"), "--tls-key",
                                  live.File("server.key"), "--admin-token-file",
                                  live.Write("admin.token", kAdmin), "--config",
                                  live.Write("tls.yaml", "tls:\n  reload_seconds: 1\n")},
                                 "reload.log"));
  ASSERT_OK_AND_ASSIGN(Namespace ns, Namespace::Create(SmallNamespace()));
  auto lookup_with = [&](const TempDir& ca) {
    ClientOptions o;
    o.address = tcp;
    o.token = kAdmin;
    o.tls_ca_file = ca.File("ca.pem");
    o.rpc_timeout_ms = 3000;
    absl::StatusOr<std::unique_ptr<Client>> c = Client::Create(o);
    if (!c.ok()) return c.status();
    return (*c)->Lookup(ns, {BlockKey{1, 2}}).status();
  };
  ASSERT_OK(lookup_with(old_certs));
  EXPECT_THAT(lookup_with(new_certs), StatusIs(absl::StatusCode::kUnavailable));

  install(new_certs);
  absl::Status s = lookup_with(new_certs);
  for (absl::Time deadline = absl::Now() + absl::Seconds(15); !s.ok() && absl::Now() < deadline;
       s = lookup_with(new_certs)) {
    absl::SleepFor(absl::Milliseconds(200));
  }
  EXPECT_TRUE(s.ok()) << "the renewed certificate was not picked up: " << s << "\n"
                      << daemon->process().Log();
  EXPECT_THAT(lookup_with(old_certs), StatusIs(absl::StatusCode::kUnavailable))
      << "the old certificate is still served";
  ASSERT_OK_AND_ASSIGN(int code, daemon->Stop());
  EXPECT_EQ(code, 0);
}

}  // namespace
}  // namespace kvtier::testing
