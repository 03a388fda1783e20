// `kvtier soak`: kvtierd under a steady mixed workload for a while.
//
// The command starts its own kvtierd (temporary folder, two tenants with
// their own cache salts, DRAM and NVMe small enough that both tiers evict all
// the time) and runs client threads against it until the time is up. Each
// thread plays one tenant: it picks a document (skewed towards a few popular
// ones, so chains are found again), looks its chain up, loads the chunks
// found and checks every byte against what was saved, and saves the rest.
// Half the threads use the shared-memory path, half gRPC. Now and then a
// thread checks isolation: the other tenant's chains are never found in its
// own namespace, and the other tenant's namespace is refused.
//
// Meanwhile a sampler reads the daemon's resident memory, open file
// descriptors and threads every second. At the end the daemon is stopped
// with SIGTERM and must exit 0.
//
// The run fails (exit 1) on any wrong byte, any isolation breach, any error
// other than the ones a full or busy cache may give (ResourceExhausted,
// Unavailable, and NotFound for a chunk evicted between Lookup and Load), a
// daemon that dies or does not exit cleanly, or growth after the warm-up
// quarter of the run beyond the limits (file descriptors, threads, and
// resident memory when --max-rss-growth is given).
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "kvtier/client.h"
#include "kvtier/namespace.h"
#include "src/cli/child_process.h"
#include "src/cli/commands.h"
#include "src/cli/flags.h"
#include "src/cli/report.h"
#include "src/common/temp_path.h"

namespace kvtier::cli {
namespace {

using Clock = std::chrono::steady_clock;

constexpr int kTenants = 2;
const char* const kSalts[kTenants] = {"soak-salt-a", "soak-salt-b"};

// What the daemon looks like from /proc at one moment.
struct Sample {
  double seconds = 0;  // since the workload started
  uint64_t rss_bytes = 0;
  uint64_t fds = 0;
  uint64_t threads = 0;
};

bool ReadSample(pid_t pid, Sample* s) {
  std::ifstream status(absl::StrCat("/proc/", pid, "/status"));
  if (!status) return false;
  std::string line;
  while (std::getline(status, line)) {
    uint64_t v = 0;
    if (line.rfind("VmRSS:", 0) == 0) {
      std::string digits;
      for (char c : line) {
        if (c >= '0' && c <= '9') digits.push_back(c);
      }
      if (absl::SimpleAtoi(digits, &v)) s->rss_bytes = v * 1024;
    } else if (line.rfind("Threads:", 0) == 0 &&
               absl::SimpleAtoi(absl::StripAsciiWhitespace(line.substr(8)), &v)) {
      s->threads = v;
    }
  }
  std::error_code ec;
  uint64_t fds = 0;
  for (auto it = std::filesystem::directory_iterator(absl::StrCat("/proc/", pid, "/fd"), ec);
       !ec && it != std::filesystem::directory_iterator(); it.increment(ec)) {
    ++fds;
  }
  s->fds = fds;
  return !ec;
}

// The payload of chunk `index` of document `doc` of tenant `tenant`: the
// same bytes every time, different for every chunk.
void Fill(int tenant, uint64_t doc, uint32_t index, std::vector<std::byte>& out) {
  std::mt19937_64 rng((uint64_t(tenant) << 56) ^ (doc << 20) ^ index ^ 0x5eed);
  for (size_t i = 0; i + 8 <= out.size(); i += 8) {
    const uint64_t x = rng();
    std::memcpy(out.data() + i, &x, 8);
  }
}

// The key of chunk `index` of `doc` in tenant `tenant`'s key space.
BlockKey KeyOf(int tenant, uint64_t doc, uint32_t index) {
  return BlockKey{0x50A4000000000000ull | (uint64_t(tenant) << 40) | doc, uint64_t(index) + 1};
}

struct Counters {
  std::atomic<uint64_t> requests{0};
  std::atomic<uint64_t> lookups{0};
  std::atomic<uint64_t> hits{0};  // chunks loaded and checked
  std::atomic<uint64_t> saves{0};
  std::atomic<uint64_t> bytes_loaded{0};
  std::atomic<uint64_t> bytes_saved{0};
  std::atomic<uint64_t> evicted_before_load{0};  // NotFound after a Lookup found it
  std::atomic<uint64_t> refused_full{0};         // ResourceExhausted
  std::atomic<uint64_t> refused_busy{0};         // Unavailable
  std::atomic<uint64_t> isolation_checks{0};
  std::atomic<uint64_t> isolation_breaches{0};
  std::atomic<uint64_t> wrong_bytes{0};  // chunks whose bytes differ
  std::atomic<uint64_t> unexpected{0};
};

// Set by SIGINT or SIGTERM: the run ends early and reports as usual.
std::atomic<bool> g_stop{false};
void OnStopSignal(int) { g_stop.store(true); }

struct Workload {
  uint64_t docs = 0;
  uint32_t max_chain = 0;
  uint32_t tokens_per_chunk = 0;
  Clock::time_point end;

  bool Over() const { return g_stop.load() || Clock::now() >= end; }
};

class Worker {
 public:
  Worker(int id, int tenant, std::unique_ptr<Client> client, const Namespace& own,
         const Namespace& other, const Workload& w, Counters& c, absl::Mutex& log_mu)
      : id_(id),
        tenant_(tenant),
        client_(std::move(client)),
        own_(own),
        other_(other),
        w_(w),
        c_(c),
        log_mu_(log_mu),
        rng_(0x50a4 + id),
        want_(own.PayloadBytes(w.tokens_per_chunk)),
        got_(want_.size()) {}

  void Run() {
    CheckOtherNamespaceIsRefused();
    for (uint64_t n = 0; !w_.Over(); ++n) {
      OneRequest();
      if (n % 64 == 63) CheckIsolation();
    }
  }

 private:
  // The first few problems are printed; all are counted.
  static constexpr uint64_t kPrinted = 10;

  void Unexpected(const std::string& what, const absl::Status& s) {
    if (c_.unexpected.fetch_add(1) >= kPrinted) return;
    absl::MutexLock lock(&log_mu_);
    std::fprintf(stderr, "kvtier soak: thread %d: %s: %s\n", id_, what.c_str(),
                 s.ToString().c_str());
  }

  uint64_t PickDoc() {
    // Skewed: a quarter of the documents take about half the requests.
    const double u = std::uniform_real_distribution<double>(0, 1)(rng_);
    return std::min<uint64_t>(w_.docs - 1, static_cast<uint64_t>(double(w_.docs) * u * u));
  }
  uint32_t ChainLength(uint64_t doc) const {
    return 1 + static_cast<uint32_t>((doc * 0x9E3779B97F4A7C15ull >> 40) % w_.max_chain);
  }

  void OneRequest() {
    c_.requests.fetch_add(1);
    const uint64_t doc = PickDoc();
    const uint32_t len = ChainLength(doc);
    std::vector<BlockKey> chain;
    chain.reserve(len);
    for (uint32_t i = 0; i < len; ++i) chain.push_back(KeyOf(tenant_, doc, i));
    absl::StatusOr<LookupResult> found = client_->Lookup(own_, chain);
    c_.lookups.fetch_add(1);
    if (!found.ok()) return Unexpected("Lookup", found.status());
    uint32_t i = 0;
    for (; i < found->matched; ++i) {
      absl::StatusOr<size_t> n = client_->Load(own_, chain[i], absl::MakeSpan(got_));
      if (absl::IsNotFound(n.status())) {
        c_.evicted_before_load.fetch_add(1);
        break;
      }
      if (!n.ok()) return Unexpected("Load", n.status());
      Fill(tenant_, doc, i, want_);
      if (*n != want_.size() || std::memcmp(got_.data(), want_.data(), want_.size()) != 0) {
        if (c_.wrong_bytes.fetch_add(1) >= kPrinted) continue;
        absl::MutexLock lock(&log_mu_);
        std::fprintf(stderr, "kvtier soak: thread %d: chunk %u of document %llu has wrong bytes\n",
                     id_, i, static_cast<unsigned long long>(doc));
        continue;
      }
      c_.hits.fetch_add(1);
      c_.bytes_loaded.fetch_add(*n);
    }
    for (; i < len; ++i) {
      Fill(tenant_, doc, i, want_);
      ChunkRef ref{chain[i], i == 0 ? BlockKey{} : chain[i - 1], i * w_.tokens_per_chunk,
                   w_.tokens_per_chunk};
      absl::Status s = client_->Save(own_, ref, want_);
      if (s.ok()) {
        c_.saves.fetch_add(1);
        c_.bytes_saved.fetch_add(want_.size());
      } else if (absl::IsResourceExhausted(s)) {
        c_.refused_full.fetch_add(1);
        return;
      } else if (absl::IsUnavailable(s)) {
        c_.refused_busy.fetch_add(1);
        return;
      } else {
        return Unexpected("Save", s);
      }
    }
  }

  // The other tenant's chains, asked for in this tenant's own namespace,
  // are never found: this tenant never saves in that key space.
  void CheckIsolation() {
    c_.isolation_checks.fetch_add(1);
    const uint64_t doc = PickDoc();
    std::vector<BlockKey> chain;
    for (uint32_t i = 0; i < ChainLength(doc); ++i) chain.push_back(KeyOf(1 - tenant_, doc, i));
    absl::StatusOr<LookupResult> found = client_->Lookup(own_, chain);
    if (!found.ok()) return Unexpected("isolation Lookup", found.status());
    if (found->matched != 0) {
      if (c_.isolation_breaches.fetch_add(1) >= kPrinted) return;
      absl::MutexLock lock(&log_mu_);
      std::fprintf(stderr, "kvtier soak: thread %d found %zu chunks of the other tenant\n", id_,
                   found->matched);
    }
  }

  // The other tenant's namespace is refused to this tenant's token.
  void CheckOtherNamespaceIsRefused() {
    c_.isolation_checks.fetch_add(1);
    const BlockKey key = KeyOf(1 - tenant_, 0, 0);
    absl::StatusOr<LookupResult> found = client_->Lookup(other_, absl::MakeConstSpan(&key, 1));
    if (!absl::IsPermissionDenied(found.status())) {
      c_.isolation_breaches.fetch_add(1);
      absl::MutexLock lock(&log_mu_);
      std::fprintf(stderr,
                   "kvtier soak: thread %d: the other tenant's namespace answered %s, not "
                   "PERMISSION_DENIED\n",
                   id_, found.status().ToString().c_str());
    }
  }

  const int id_;
  const int tenant_;
  std::unique_ptr<Client> client_;
  const Namespace& own_;
  const Namespace& other_;
  const Workload& w_;
  Counters& c_;
  absl::Mutex& log_mu_;
  std::mt19937_64 rng_;
  std::vector<std::byte> want_;
  std::vector<std::byte> got_;
};

void PrintHelp() {
  std::printf(
      "usage: kvtier soak [flags]\n\n"
      "Starts kvtierd (two tenants, small DRAM and NVMe tiers that evict all the time) and\n"
      "runs a mixed Lookup/Load/Save workload against it, checking every loaded byte and\n"
      "tenant isolation, while sampling the daemon's memory, file descriptors and threads.\n"
      "Exit 1 on a wrong byte, an isolation breach, an unexpected error, a daemon that dies\n"
      "or does not stop cleanly, or growth past the limits after the warm-up quarter.\n\n"
      "  --seconds N            how long the workload runs (default 60)\n"
      "  --threads N            client threads, tenants alternating (default 4)\n"
      "  --chunk BYTES          payload bytes per chunk (default 64KiB)\n"
      "  --docs N               documents per tenant (default 500)\n"
      "  --max-chain N          longest chain, in chunks (default 16)\n"
      "  --dram BYTES           kvtierd's DRAM tier (default 64MiB)\n"
      "  --nvme-capacity BYTES  kvtierd's NVMe tier (default 256MiB)\n"
      "  --nvme-io-mode MODE    direct | buffered (default: kvtierd's)\n"
      "  --dir PATH             where the temporary folder goes (default /var/tmp)\n"
      "  --max-fd-growth N      open descriptors the daemon may gain (default 32)\n"
      "  --max-thread-growth N  threads the daemon may gain (default 16)\n"
      "  --max-rss-growth BYTES resident memory the daemon may gain (default: not checked)\n"
      "  --kvtierd PATH         the daemon binary (default: next to this one)\n"
      "  --json                 one JSON object instead of the table\n");
}

}  // namespace

int RunSoak(const std::vector<std::string>& args) {
  Flags f(args);
  if (f.Help()) {
    PrintHelp();
    return 0;
  }
  const int64_t seconds = f.Int("seconds", 60);
  const int threads = static_cast<int>(f.Int("threads", 4));
  const uint64_t chunk = f.Bytes("chunk", 64 << 10);
  const int64_t docs = f.Int("docs", 500);
  const int64_t max_chain = f.Int("max-chain", 16);
  const uint64_t dram = f.Bytes("dram", 64ull << 20);
  const uint64_t nvme = f.Bytes("nvme-capacity", 256ull << 20);
  const std::string io_mode = f.String("nvme-io-mode", "");
  const std::string parent_dir = f.String("dir", "/var/tmp");
  const int64_t max_fd_growth = f.Int("max-fd-growth", 32);
  const int64_t max_thread_growth = f.Int("max-thread-growth", 16);
  const uint64_t max_rss_growth = f.Bytes("max-rss-growth", 0);
  const std::string kvtierd = f.String("kvtierd", SiblingBinary("kvtierd", "kvtierd"));
  const bool json = f.Bool("json");
  if (absl::Status s = f.Finish(); !s.ok()) {
    std::fprintf(stderr, "kvtier soak: %s\n", std::string(s.message()).c_str());
    return 2;
  }
  if (seconds < 1 || threads < 1 || docs < 1 || max_chain < 1 || chunk < 1024 ||
      chunk % 1024 != 0) {
    std::fprintf(stderr,
                 "kvtier soak: --seconds, --threads, --docs and --max-chain must be >= 1, "
                 "--chunk a multiple of 1 KiB\n");
    return 2;
  }

  absl::StatusOr<std::string> tmp = MakeTempDir(parent_dir, "kvtier-soak-");
  if (!tmp.ok()) {
    std::fprintf(stderr, "kvtier soak: %s\n", tmp.status().ToString().c_str());
    return 1;
  }
  const std::string dir = *tmp;
  RemoveOnExit cleanup(dir);

  std::random_device rd;
  const std::string tokens[kTenants] = {absl::StrCat("soak-a-", rd(), "-", rd(), "-token"),
                                        absl::StrCat("soak-b-", rd(), "-", rd(), "-token")};
  const std::string config = dir + "/kvtierd.yaml";
  {
    std::ofstream out(config);
    out << "auth:\n  tenants:\n";
    for (int t = 0; t < kTenants; ++t) {
      out << "    - name: soak-" << char('a' + t) << "\n      token: " << tokens[t]
          << "\n      cache_salts: [" << kSalts[t] << "]\n      shared_memory: true\n";
    }
    if (!out) {
      std::fprintf(stderr, "kvtier soak: cannot write %s\n", config.c_str());
      return 1;
    }
  }
  const std::string socket = dir + "/kvtierd.sock";
  std::error_code mkdir_error;
  std::filesystem::create_directory(dir + "/nvme", mkdir_error);
  if (mkdir_error) {
    std::fprintf(stderr, "kvtier soak: %s/nvme: %s\n", dir.c_str(), mkdir_error.message().c_str());
    return 1;
  }
  std::vector<std::string> argv = {kvtierd,
                                   "--config",
                                   config,
                                   "--socket",
                                   socket,
                                   "--http",
                                   "",
                                   "--dram",
                                   absl::StrCat(dram),
                                   "--nvme",
                                   dir + "/nvme",
                                   "--nvme-capacity",
                                   absl::StrCat(nvme),
                                   "--log-level",
                                   "warn"};
  if (!io_mode.empty()) {
    argv.push_back("--nvme-io-mode");
    argv.push_back(io_mode);
  }
  std::unique_ptr<ChildProcess> daemon = ChildProcess::Start(argv, {}, dir + "/kvtierd.log");
  if (daemon == nullptr) {
    std::fprintf(stderr, "kvtier soak: cannot start %s\n", kvtierd.c_str());
    return 1;
  }
  auto log_tail = [&] {
    std::ifstream in(dir + "/kvtierd.log");
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    return text.size() > 4000 ? text.substr(text.size() - 4000) : text;
  };

  NamespaceOptions nso;
  nso.model_id = "kvtier-soak";
  nso.layout = KvLayout{4, 1, 64, 2, 16, DType::kFloat16};  // 1 KiB per token
  nso.tokens_per_chunk = static_cast<uint32_t>(chunk / 1024);
  std::vector<Namespace> spaces;
  for (int t = 0; t < kTenants; ++t) {
    nso.cache_salt = kSalts[t];
    absl::StatusOr<Namespace> ns = Namespace::Create(nso);
    if (!ns.ok()) {
      std::fprintf(stderr, "kvtier soak: %s\n", ns.status().ToString().c_str());
      return 1;
    }
    spaces.push_back(*ns);
  }
  std::vector<ClientOptions> options(kTenants);
  for (int t = 0; t < kTenants; ++t) {
    options[t].socket_path = socket;
    options[t].token = tokens[t];
  }
  bool up = false;
  for (int i = 0; i < 1500 && !up && daemon->Running(); ++i) {
    absl::StatusOr<std::unique_ptr<Client>> probe = Client::Create(options[0]);
    up = probe.ok() && (*probe)->Health().ok();
    if (!up) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  if (!up) {
    std::fprintf(stderr, "kvtier soak: kvtierd did not come up; its log ends:\n%s\n",
                 log_tail().c_str());
    return 1;
  }

  Workload w;
  w.docs = static_cast<uint64_t>(docs);
  w.max_chain = static_cast<uint32_t>(max_chain);
  w.tokens_per_chunk = nso.tokens_per_chunk;
  Counters c;
  absl::Mutex log_mu;
  std::vector<std::unique_ptr<Worker>> workers;
  for (int i = 0; i < threads; ++i) {
    const int tenant = i % kTenants;
    ClientOptions o = options[tenant];
    o.shared_memory = (i / kTenants) % 2 == 0;  // each tenant on both paths
    absl::StatusOr<std::unique_ptr<Client>> client = Client::Create(o);
    if (!client.ok()) {
      std::fprintf(stderr, "kvtier soak: client %d: %s\n", i, client.status().ToString().c_str());
      return 1;
    }
    workers.push_back(std::make_unique<Worker>(i, tenant, std::move(*client), spaces[tenant],
                                               spaces[1 - tenant], w, c, log_mu));
  }

  const Clock::time_point start = Clock::now();
  w.end = start + std::chrono::seconds(seconds);
  std::vector<std::thread> running;
  running.reserve(workers.size());
  for (auto& worker : workers) running.emplace_back([&worker] { worker->Run(); });
  std::vector<Sample> samples;
  Progress progress("soak", static_cast<uint64_t>(seconds));
  bool died = false;
  struct sigaction stop_action {};
  stop_action.sa_handler = OnStopSignal;
  sigaction(SIGINT, &stop_action, nullptr);
  sigaction(SIGTERM, &stop_action, nullptr);
  while (!w.Over()) {
    for (int i = 0; i < 10 && !w.Over(); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    Sample s;
    s.seconds = std::chrono::duration<double>(Clock::now() - start).count();
    if (!daemon->Running() || !ReadSample(daemon->pid(), &s)) {
      died = true;
      g_stop.store(true);  // the workers stop too
      break;
    }
    samples.push_back(s);
    progress.Update(static_cast<uint64_t>(std::min<double>(s.seconds, double(seconds))));
  }
  const bool stopped_early = g_stop.load() && !died;
  for (std::thread& t : running) t.join();
  progress.Finish();
  workers.clear();  // closes the clients' connections before the daemon stops

  int exit_status = -1;
  if (!died && daemon->Running()) {
    kill(daemon->pid(), SIGTERM);
    exit_status = daemon->Wait(60);
  } else {
    died = true;
  }

  // Growth from the end of the warm-up quarter to the end.
  Sample base, last;
  if (!samples.empty()) {
    last = samples.back();
    base = samples.front();
    for (const Sample& s : samples) {
      if (s.seconds <= double(seconds) / 4) base = s;
    }
  }
  const int64_t fd_growth = int64_t(last.fds) - int64_t(base.fds);
  const int64_t thread_growth = int64_t(last.threads) - int64_t(base.threads);
  const int64_t rss_growth = int64_t(last.rss_bytes) - int64_t(base.rss_bytes);

  std::vector<std::string> failures;
  if (died) failures.push_back("kvtierd died during the run");
  if (!died && exit_status != 0) {
    failures.push_back(absl::StrCat("kvtierd exited with ", exit_status, " on SIGTERM"));
  }
  if (c.wrong_bytes > 0) failures.push_back(absl::StrCat(c.wrong_bytes.load(), " wrong chunks"));
  if (c.isolation_breaches > 0) {
    failures.push_back(absl::StrCat(c.isolation_breaches.load(), " isolation breaches"));
  }
  if (c.unexpected > 0) failures.push_back(absl::StrCat(c.unexpected.load(), " unexpected errors"));
  if (c.hits == 0 || c.saves == 0) failures.push_back("the workload loaded or saved nothing");
  if (samples.size() >= 2 && fd_growth > max_fd_growth) {
    failures.push_back(absl::StrCat("open descriptors grew by ", fd_growth));
  }
  if (samples.size() >= 2 && thread_growth > max_thread_growth) {
    failures.push_back(absl::StrCat("threads grew by ", thread_growth));
  }
  if (max_rss_growth > 0 && samples.size() >= 2 && rss_growth > int64_t(max_rss_growth)) {
    failures.push_back(absl::StrCat("resident memory grew by ", HumanBytes(uint64_t(rss_growth))));
  }

  const double secs = std::chrono::duration<double>(Clock::now() - start).count();
  if (json) {
    Json j = Json::Object();
    j.Set("suite", "soak")
        .Set("seconds", secs)
        .Set("threads", threads)
        .Set("chunk_bytes", chunk)
        .Set("requests", c.requests.load())
        .Set("requests_per_s", double(c.requests.load()) / secs)
        .Set("lookups", c.lookups.load())
        .Set("chunks_loaded", c.hits.load())
        .Set("chunks_saved", c.saves.load())
        .Set("bytes_loaded", c.bytes_loaded.load())
        .Set("bytes_saved", c.bytes_saved.load())
        .Set("evicted_before_load", c.evicted_before_load.load())
        .Set("refused_full", c.refused_full.load())
        .Set("refused_busy", c.refused_busy.load())
        .Set("isolation_checks", c.isolation_checks.load())
        .Set("isolation_breaches", c.isolation_breaches.load())
        .Set("wrong_chunks", c.wrong_bytes.load())
        .Set("unexpected_errors", c.unexpected.load())
        .Set("rss_bytes_after_warmup", base.rss_bytes)
        .Set("rss_bytes_at_end", last.rss_bytes)
        .Set("fds_after_warmup", base.fds)
        .Set("fds_at_end", last.fds)
        .Set("threads_after_warmup", base.threads)
        .Set("threads_at_end", last.threads)
        .Set("daemon_exit_status", exit_status)
        .Set("stopped_early", stopped_early);
    Json fails = Json::Array();
    for (const std::string& s : failures) fails.Push(s);
    j.Set("failures", std::move(fails));
    std::printf("%s\n", j.Dump().c_str());
  } else {
    Table t({"measure", "value"});
    t.AddRow({"seconds", absl::StrCat(Fixed(secs, 1), stopped_early ? " (stopped early)" : "")});
    t.AddRow(
        {"requests", absl::StrCat(c.requests.load(), " (", Fixed(c.requests / secs, 0), "/s)")});
    t.AddRow({"chunks loaded and checked",
              absl::StrCat(c.hits.load(), " (", HumanBytes(c.bytes_loaded.load()), ")")});
    t.AddRow({"chunks saved",
              absl::StrCat(c.saves.load(), " (", HumanBytes(c.bytes_saved.load()), ")")});
    t.AddRow({"evicted between Lookup and Load", absl::StrCat(c.evicted_before_load.load())});
    t.AddRow({"saves refused: full / busy",
              absl::StrCat(c.refused_full.load(), " / ", c.refused_busy.load())});
    t.AddRow({"isolation checks / breaches",
              absl::StrCat(c.isolation_checks.load(), " / ", c.isolation_breaches.load())});
    t.AddRow({"wrong chunks", absl::StrCat(c.wrong_bytes.load())});
    t.AddRow({"unexpected errors", absl::StrCat(c.unexpected.load())});
    t.AddRow({"kvtierd resident memory: after warm-up / end",
              absl::StrCat(HumanBytes(base.rss_bytes), " / ", HumanBytes(last.rss_bytes))});
    t.AddRow(
        {"kvtierd open descriptors: after warm-up / end", absl::StrCat(base.fds, " / ", last.fds)});
    t.AddRow(
        {"kvtierd threads: after warm-up / end", absl::StrCat(base.threads, " / ", last.threads)});
    t.AddRow({"kvtierd exit status on SIGTERM", absl::StrCat(exit_status)});
    t.Print();
    std::printf("%s\n", failures.empty() ? "soak: passed" : "soak: FAILED");
    for (const std::string& s : failures) std::printf("  - %s\n", s.c_str());
  }
  if (!failures.empty() && (died || exit_status != 0)) {
    std::fprintf(stderr, "kvtierd's log ends:\n%s\n", log_tail().c_str());
  }
  return failures.empty() ? 0 : 1;
}

}  // namespace kvtier::cli
