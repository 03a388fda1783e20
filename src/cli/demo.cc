#include "src/cli/demo.h"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <random>
#include <system_error>

#include "absl/strings/str_cat.h"
#include "kvtier/cache.h"
#include "kvtier/client.h"
#include "kvtier/namespace.h"
#include "src/cli/flags.h"
#include "src/cli/report.h"
#include "src/common/temp_path.h"

namespace kvtier::cli {
namespace {

constexpr const char* kHelp =
    "usage: kvtier demo [--conversations 8] [--turns 6] [--system-tokens 1024]\n"
    "                   [--dram 64MiB] [--nvme FOLDER|off] [--nvme-capacity 1GiB]\n"
    "                   [--seed 1] [--quiet] [--json]\n"
    "                   [--socket PATH [--token TOKEN]]\n\n"
    "Runs a multi-turn chat workload through the embedded cache: DRAM (--dram)\n"
    "over an NVMe tier in FOLDER (default: a temporary folder under /var/tmp,\n"
    "removed at exit; 'off' keeps everything in DRAM). DRAM is smaller than the\n"
    "workload, so older chunks are demoted to NVMe and served from there. Every\n"
    "conversation shares one system prompt, and each turn's prompt is the whole\n"
    "conversation so far plus a new user message, so later turns find their\n"
    "prefix cached. For each request the demo looks up the prompt's chunk chain,\n"
    "loads the cached chunks (checking every byte against the KV that prefill\n"
    "would have produced), 'prefills' the rest and saves it. It prints one line\n"
    "per request (with how many of the cached chunks came from NVMe) and a\n"
    "summary: lookups, prefix hits, prefill tokens saved and bytes per tier.\n"
    "Exits 1 if any loaded byte is wrong.\n\n"
    "With --socket the same workload runs against kvtierd through kvtier::Client\n"
    "(OpenCache in daemon mode; --token or $KVTIER_TOKEN when the daemon has\n"
    "tokens); --dram and --nvme are then the daemon's business.";

// Stand-in for prefill: the KV of a chunk is a pure function of its key (which
// names its whole prefix), so a loaded chunk can be checked byte for byte.
void FakePrefill(const BlockKey& key, absl::Span<std::byte> out) {
  uint64_t s = key.hi ^ (key.lo * 0x9E3779B97F4A7C15ull) ^ 0xD1B54A32D192ED03ull;
  size_t i = 0;
  for (; i + 8 <= out.size(); i += 8) {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    std::memcpy(out.data() + i, &s, 8);
  }
  for (; i < out.size(); ++i) out[i] = static_cast<std::byte>(s >> (8 * (i % 8)));
}

struct Conversation {
  std::vector<TokenId> tokens;
};

// A folder removed (recursively) on destruction, when set.
class OwnedFolder {
 public:
  ~OwnedFolder() {
    if (path_.empty()) return;
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  void Own(std::string path) { path_ = std::move(path); }

 private:
  std::string path_;
};

}  // namespace

int RunDemo(const std::vector<std::string>& args) {
  Flags flags(args);
  if (flags.Help()) {
    std::printf("%s\n", kHelp);
    return 0;
  }
  const int64_t conversations = flags.Int("conversations", 8);
  const int64_t turns = flags.Int("turns", 6);
  const int64_t system_tokens = flags.Int("system-tokens", 1024);
  const uint64_t dram = flags.Bytes("dram", 64ull << 20);
  std::string nvme = flags.String("nvme", "");
  const uint64_t nvme_capacity = flags.Bytes("nvme-capacity", 1ull << 30);
  const int64_t seed = flags.Int("seed", 1);
  const bool quiet = flags.Bool("quiet");
  const bool json = flags.Bool("json");
  const std::string socket = flags.String("socket", "");
  const char* env_token = std::getenv("KVTIER_TOKEN");
  const std::string token = flags.String("token", env_token != nullptr ? env_token : "");
  if (absl::Status s = flags.Finish(); !s.ok()) {
    std::fprintf(stderr, "kvtier demo: %s\n", std::string(s.message()).c_str());
    return 2;
  }
  if (conversations < 1 || turns < 1 || system_tokens < 0) {
    std::fprintf(stderr, "kvtier demo: --conversations and --turns must be >= 1\n");
    return 2;
  }

  NamespaceOptions nso;
  nso.model_id = "kvtier-demo/tiny-chat";
  nso.model_revision = "v1";
  nso.layout = KvLayout{/*num_layers=*/4, /*num_kv_heads=*/4,      /*head_size=*/64,
                        /*kv_tensors=*/2, /*tokens_per_block=*/16, DType::kBFloat16};
  nso.tokens_per_chunk = 256;
  absl::StatusOr<Namespace> ns = Namespace::Create(nso);
  if (!ns.ok()) {
    std::fprintf(stderr, "kvtier demo: %s\n", ns.status().ToString().c_str());
    return 1;
  }
  CacheConfig cc;
  cc.embedded.dram_capacity_bytes = dram;
  OwnedFolder nvme_folder;  // declared before the cache: removed after it closes
  if (socket.empty() && nvme != "off") {
    if (nvme.empty()) {
      absl::StatusOr<std::string> tmp = MakeTempDir("/var/tmp", "kvtier-demo-");
      if (!tmp.ok()) {
        std::fprintf(stderr, "kvtier demo: --nvme: %s\n", tmp.status().ToString().c_str());
        return 1;
      }
      nvme = *tmp;
      nvme_folder.Own(nvme);
    }
    cc.embedded.nvme.path = nvme;
    cc.embedded.nvme.capacity_bytes = nvme_capacity;
    // Every chunk of this model fits slots sized for a full chunk.
    cc.embedded.nvme.slot_payload_bytes = {ns->FullChunkPayloadBytes()};
  }
  if (!socket.empty()) {
    cc.mode = "daemon";
    cc.daemon.socket_path = socket;
    cc.daemon.token = token;
  }
  absl::StatusOr<std::unique_ptr<Cache>> cache = OpenCache(cc);
  if (!cache.ok()) {
    std::fprintf(stderr, "kvtier demo: %s\n", cache.status().ToString().c_str());
    return 1;
  }

  std::mt19937_64 rng(static_cast<uint64_t>(seed));
  auto random_tokens = [&](size_t n) {
    std::vector<TokenId> t(n);
    for (auto& x : t) x = static_cast<TokenId>(rng() % 128000);
    return t;
  };
  const std::vector<TokenId> system_prompt = random_tokens(static_cast<size_t>(system_tokens));
  std::vector<Conversation> convs(static_cast<size_t>(conversations));
  for (auto& c : convs) c.tokens = system_prompt;

  if (!quiet && !json) {
    std::printf(
        "kvtier demo: %lld conversations x %lld turns, shared system prompt of %lld "
        "tokens, %s per chunk of %u tokens, %s\n\n",
        static_cast<long long>(conversations), static_cast<long long>(turns),
        static_cast<long long>(system_tokens), HumanBytes(ns->FullChunkPayloadBytes()).c_str(),
        ns->tokens_per_chunk(),
        !socket.empty()
            ? absl::StrCat("kvtierd at ", socket).c_str()
            : absl::StrCat("DRAM ", HumanBytes(dram),
                           cc.embedded.nvme.enabled()
                               ? absl::StrCat(" + NVMe ", HumanBytes(nvme_capacity), " in ", nvme)
                               : std::string(" (no NVMe)"))
                  .c_str());
    std::printf("%-5s %-4s %8s %8s %7s %6s %9s\n", "conv", "turn", "prompt", "cached", "hit",
                "nvme", "load ms");
  }

  std::vector<std::byte> buf(ns->FullChunkPayloadBytes());
  std::vector<std::byte> expect(ns->FullChunkPayloadBytes());
  uint64_t prompt_tokens = 0, saved_tokens = 0, chunks_looked_up = 0, chunks_hit = 0;
  uint64_t requests = 0, wrong = 0, save_failures = 0, from_nvme = 0;
  auto t0 = std::chrono::steady_clock::now();
  for (int64_t turn = 0; turn < turns; ++turn) {
    for (size_t ci = 0; ci < convs.size(); ++ci) {
      Conversation& c = convs[ci];
      std::vector<TokenId> user = random_tokens(200 + rng() % 400);
      c.tokens.insert(c.tokens.end(), user.begin(), user.end());
      absl::StatusOr<std::vector<ChunkRef>> chunks = ns->Chunks(c.tokens);
      if (!chunks.ok()) {
        std::fprintf(stderr, "kvtier demo: %s\n", chunks.status().ToString().c_str());
        return 1;
      }
      std::vector<BlockKey> keys = Namespace::Keys(*chunks);
      absl::StatusOr<LookupResult> hit = (*cache)->Lookup(*ns, keys);
      if (!hit.ok()) {
        std::fprintf(stderr, "kvtier demo: lookup: %s\n", hit.status().ToString().c_str());
        return 1;
      }
      size_t nvme_chunks = 0;
      for (const ChunkLocation& loc : hit->chunks) nvme_chunks += loc.tier == Tier::kNvme;
      // Chunks on NVMe start coming up to DRAM while the first ones load.
      if (nvme_chunks > 0) {
        (void)(*cache)->Prefetch(*ns, absl::MakeConstSpan(keys).first(hit->matched));
      }
      auto l0 = std::chrono::steady_clock::now();
      size_t loaded = 0;
      for (; loaded < hit->matched; ++loaded) {
        const ChunkRef& ch = (*chunks)[loaded];
        absl::StatusOr<size_t> n = (*cache)->Load(*ns, ch.key, absl::MakeSpan(buf));
        if (!n.ok()) break;  // evicted since the lookup: recompute from here
        FakePrefill(ch.key, absl::MakeSpan(expect).first(*n));
        if (std::memcmp(buf.data(), expect.data(), *n) != 0) ++wrong;
      }
      double load_ms =
          std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - l0).count();
      for (size_t i = loaded; i < chunks->size(); ++i) {
        const ChunkRef& ch = (*chunks)[i];
        absl::Span<std::byte> payload = absl::MakeSpan(buf).first(ns->PayloadBytes(ch.num_tokens));
        FakePrefill(ch.key, payload);
        if (!(*cache)->Save(*ns, ch, payload).ok()) {
          ++save_failures;
        }
      }
      uint64_t cached = loaded * uint64_t{ns->tokens_per_chunk()};
      ++requests;
      prompt_tokens += c.tokens.size();
      saved_tokens += cached;
      chunks_looked_up += keys.size();
      chunks_hit += loaded;
      from_nvme += std::min(nvme_chunks, loaded);
      if (!quiet && !json) {
        std::printf("%-5zu %-4lld %8zu %8llu %6.1f%% %6zu %9.2f\n", ci,
                    static_cast<long long>(turn), c.tokens.size(),
                    static_cast<unsigned long long>(cached),
                    100.0 * static_cast<double>(cached) / static_cast<double>(c.tokens.size()),
                    nvme_chunks, load_ms);
      }
      // The assistant's answer joins the conversation for the next turn.
      std::vector<TokenId> answer = random_tokens(100 + rng() % 200);
      c.tokens.insert(c.tokens.end(), answer.begin(), answer.end());
    }
  }
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  CacheStats st = (*cache)->Stats();

  if (json) {
    Json j = Json::Object();
    j.Set("requests", requests)
        .Set("lookups", st.lookups)
        .Set("chunks_looked_up", chunks_looked_up)
        .Set("prefix_hit_chunks", chunks_hit)
        .Set("prefix_hit_chunks_on_nvme", from_nvme)
        .Set("prompt_tokens", prompt_tokens)
        .Set("prefill_tokens_saved", saved_tokens)
        .Set("wrong_bytes_chunks", wrong)
        .Set("save_failures", save_failures)
        .Set("seconds", secs);
    Json tiers = Json::Array();
    for (const TierStats& t : st.tiers) {
      tiers.Push(Json::Object()
                     .Set("tier", std::string(TierName(t.tier)))
                     .Set("bytes_written", t.bytes_written)
                     .Set("bytes_read", t.bytes_read)
                     .Set("resident_bytes", t.used_bytes)
                     .Set("chunks", t.chunks)
                     .Set("evictions", t.evictions));
    }
    j.Set("tiers", std::move(tiers));
    std::printf("%s\n", j.Dump().c_str());
  } else {
    std::printf("\nsummary\n");
    Table t({"measure", "value"});
    t.AddRow({"requests", absl::StrCat(requests)});
    t.AddRow({"lookups", absl::StrCat(st.lookups)});
    t.AddRow({"chunks looked up", absl::StrCat(chunks_looked_up)});
    t.AddRow({"prefix hits (chunks)",
              absl::StrCat(chunks_hit, " (",
                           Fixed(100.0 * chunks_hit / std::max<uint64_t>(1, chunks_looked_up), 1),
                           "%)")});
    t.AddRow({"prefix hits found on NVMe", absl::StrCat(from_nvme)});
    if (st.tiering.nvme_enabled) {
      t.AddRow({"chunks demoted to NVMe", absl::StrCat(st.tiering.demoted)});
      t.AddRow({"chunks promoted to DRAM", absl::StrCat(st.tiering.promoted)});
      t.AddRow({"demotions skipped",
                absl::StrCat(st.tiering.skipped_busy + st.tiering.skipped_full +
                             st.tiering.skipped_io_error + st.tiering.skipped_admission)});
    }
    t.AddRow({"prompt tokens", absl::StrCat(prompt_tokens)});
    t.AddRow({"prefill tokens saved",
              absl::StrCat(saved_tokens, " (",
                           Fixed(100.0 * saved_tokens / std::max<uint64_t>(1, prompt_tokens), 1),
                           "%)")});
    t.AddRow({"chunks with wrong bytes", absl::StrCat(wrong)});
    t.AddRow({"saves refused (no room)", absl::StrCat(save_failures)});
    t.AddRow({"wall time", absl::StrCat(Fixed(secs * 1000, 1), " ms")});
    t.Print();
    std::printf("\nbytes per tier\n");
    Table bt({"tier", "written", "read", "hits", "resident", "chunks", "evictions"});
    for (const TierStats& ts : st.tiers) {
      bt.AddRow({std::string(TierName(ts.tier)), HumanBytes(ts.bytes_written),
                 HumanBytes(ts.bytes_read), absl::StrCat(ts.hits), HumanBytes(ts.used_bytes),
                 absl::StrCat(ts.chunks), absl::StrCat(ts.evictions)});
    }
    bt.Print();
  }
  return wrong == 0 ? 0 : 1;
}

}  // namespace kvtier::cli
