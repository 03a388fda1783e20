// `kvtier bench blob`: Put Blob and ranged Get Blob of whole chunks through
// kvtier's Blob client (libcurl multi, Shared Key) beside the curl
// command-line tool moving the same objects (--parallel, SAS token), against
// an Azurite the benchmark starts on a free loopback port.
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "src/cli/bench.h"
#include "src/cli/report.h"
#include "src/common/temp_path.h"
#include "src/tiers/blob/azurite.h"
#include "src/tiers/blob/blob_client.h"

namespace kvtier::cli {

namespace {

constexpr char kContainer[] = "kvtier-bench";

std::vector<std::byte> Pattern(size_t n, uint32_t seed) {
  std::vector<std::byte> v(n);
  uint64_t s = seed * 0x9E3779B97F4A7C15ull + 7;
  for (size_t i = 0; i < n; ++i) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    v[i] = static_cast<std::byte>(s >> 56);
  }
  return v;
}

std::string ObjectName(const char* side, const char* op, uint64_t size, int i) {
  return absl::StrCat("bench/", side, "/", op, "/", size, "/", i);
}

// Runs `ops` transfers from `inflight` threads; returns bytes per second, or
// 0 when a transfer failed (the error goes to stderr).
template <typename Fn>
double RunKvtier(int inflight, int ops, uint64_t size, Fn transfer) {
  std::atomic<int> next{0};
  std::atomic<bool> failed{false};
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<std::thread> pool;
  for (int t = 0; t < inflight; ++t) {
    pool.emplace_back([&, t] {
      for (int i = next++; i < ops && !failed.load(); i = next++) {
        absl::Status s = transfer(t, i);
        if (!s.ok()) {
          if (!failed.exchange(true)) {
            std::fprintf(stderr, "kvtier bench blob: %s\n", std::string(s.message()).c_str());
          }
        }
      }
    });
  }
  for (std::thread& th : pool) th.join();
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return failed.load() ? 0 : static_cast<double>(size) * ops / secs;
}

// Runs curl with a config file of `ops` transfers, `inflight` in parallel;
// returns bytes per second, or 0 when curl failed.
double RunCurl(const std::string& curl, const std::string& config, uint64_t size, int ops) {
  const auto t0 = std::chrono::steady_clock::now();
  pid_t pid = ::fork();
  if (pid == 0) {
    execlp(curl.c_str(), curl.c_str(), "--no-progress-meter", "--config", config.c_str(),
           static_cast<char*>(nullptr));
    _exit(127);
  }
  int status = 0;
  if (pid < 0 || ::waitpid(pid, &status, 0) != pid) return 0;
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    std::fprintf(stderr, "kvtier bench blob: curl exited with %d (config %s)\n",
                 WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status), config.c_str());
    return 0;
  }
  return static_cast<double>(size) * ops / secs;
}

// A curl config: `ops` transfers, `inflight` at once, every answer checked.
std::string CurlConfig(const BlobClient& client, const std::string& api_version, bool put,
                       uint64_t size, int ops, int inflight, const std::string& data_file) {
  std::string c =
      absl::StrCat("parallel\nparallel-max = ", inflight,
                   "\nsilent\nshow-error\nfail\nheader = \"x-ms-version: ", api_version, "\"\n");
  if (put) absl::StrAppend(&c, "header = \"x-ms-blob-type: BlockBlob\"\n");
  for (int i = 0; i < ops; ++i) {
    const std::string url = client.BlobUrl(ObjectName("curl", put ? "put" : "get", size, i));
    absl::StrAppend(&c, "url = \"", url, "\"\noutput = \"/dev/null\"\n");
    if (put) absl::StrAppend(&c, "upload-file = \"", data_file, "\"\n");
  }
  return c;
}

struct Row {
  std::string op;
  uint64_t size = 0;
  int inflight = 0;
  double kvtier = 0;  // median bytes/s
  double curl = 0;    // median bytes/s
  double ratio = 0;   // median of per-repetition ratios
};

}  // namespace

int RunBlobBench(Flags& flags) {
  const bool json = flags.Bool("json");
  const std::vector<uint64_t> sizes = flags.BytesList("sizes", {1ull << 20, 4ull << 20});
  const std::vector<int64_t> inflights = flags.IntList("inflight", {1, 4, 16, 32});
  const int64_t reps = flags.Int("reps", 3);
  const uint64_t bytes_per_run = flags.Bytes("bytes", 64ull << 20);
  const std::string curl = flags.String("curl", "curl");
  if (absl::Status s = flags.Finish(); !s.ok()) {
    std::fprintf(stderr, "kvtier bench blob: %s\n", std::string(s.message()).c_str());
    return 2;
  }
  if (reps < 1 || sizes.empty() || inflights.empty()) {
    std::fprintf(stderr, "kvtier bench blob: --reps, --sizes and --inflight must not be empty\n");
    return 2;
  }
  for (int64_t n : inflights) {
    if (n < 1 || n > 256) {
      std::fprintf(stderr, "kvtier bench blob: --inflight %lld is outside [1, 256]\n",
                   static_cast<long long>(n));
      return 2;
    }
  }

  absl::StatusOr<std::unique_ptr<AzuriteProcess>> azurite = AzuriteProcess::Start();
  if (!azurite.ok()) {
    std::fprintf(stderr, "kvtier bench blob: %s\n", azurite.status().ToString().c_str());
    return 1;
  }
  absl::StatusOr<std::string> sas = blob_internal::AccountSas(
      kAzuriteAccount, kAzuriteKey, "rwdlac", absl::Now() + absl::Hours(24));
  BlobClientOptions o;
  o.endpoint = (*azurite)->endpoint();
  o.account = kAzuriteAccount;
  o.container = kContainer;
  o.shared_key = kAzuriteKey;
  o.single_put_max_bytes = 64ull << 20;  // whole chunks in one Put Blob, as curl sends them
  o.max_connections = 256;
  o.request_timeout_ms = 60000;
  absl::StatusOr<std::unique_ptr<BlobClient>> client = BlobClient::Create(o);
  BlobClientOptions so = o;
  so.shared_key.clear();
  so.sas = sas.ok() ? *sas : "";
  absl::StatusOr<std::unique_ptr<BlobClient>> sas_client =
      sas.ok() ? BlobClient::Create(so) : absl::StatusOr<std::unique_ptr<BlobClient>>(sas.status());
  if (!client.ok() || !sas_client.ok()) {
    std::fprintf(stderr, "kvtier bench blob: %s\n",
                 (!client.ok() ? client.status() : sas_client.status()).ToString().c_str());
    return 1;
  }
  const absl::Duration kOpDeadline = absl::Minutes(2);
  if (absl::Status s = (*client)->CreateContainer(absl::Now() + kOpDeadline); !s.ok()) {
    std::fprintf(stderr, "kvtier bench blob: %s\n", s.ToString().c_str());
    return 1;
  }
  absl::StatusOr<std::string> tmp = MakeTempDir("/tmp", "kvtier-bench-blob-");
  if (!tmp.ok()) {
    std::fprintf(stderr, "kvtier bench blob: %s\n", tmp.status().ToString().c_str());
    return 1;
  }
  RemoveOnExit cleanup(*tmp);

  const int64_t max_inflight = *std::max_element(inflights.begin(), inflights.end());
  std::vector<Row> rows;
  for (uint64_t size : sizes) {
    const std::vector<std::byte> data = Pattern(size, static_cast<uint32_t>(size));
    const std::string data_file = absl::StrCat(*tmp, "/chunk-", size);
    {
      std::ofstream f(data_file, std::ios::binary);
      f.write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(size));
    }
    const int max_ops =
        static_cast<int>(std::max<uint64_t>(2 * max_inflight, (bytes_per_run + size - 1) / size));
    // The objects the GETs read, for both sides.
    for (int i = 0; i < max_ops; ++i) {
      for (const char* side : {"kvtier", "curl"}) {
        absl::Status s = (*client)->Upload(ObjectName(side, "get", size, i), data, {},
                                           absl::Now() + kOpDeadline);
        if (!s.ok()) {
          std::fprintf(stderr, "kvtier bench blob: %s\n", s.ToString().c_str());
          return 1;
        }
      }
    }
    std::vector<std::vector<std::byte>> buffers(static_cast<size_t>(max_inflight),
                                                std::vector<std::byte>(size));
    for (const char* op : {"put", "get"}) {
      const bool put = std::string(op) == "put";
      for (int64_t inflight64 : inflights) {
        const int inflight = static_cast<int>(inflight64);
        const int ops =
            static_cast<int>(std::max<uint64_t>(2 * inflight, (bytes_per_run + size - 1) / size));
        const std::string config = absl::StrCat(*tmp, "/curl-", op, "-", size, "-", inflight);
        {
          std::ofstream f(config);
          f << CurlConfig(**sas_client, o.api_version, put, size, ops, inflight, data_file);
        }
        std::vector<double> ours, theirs, ratios;
        for (int64_t rep = 0; rep < reps; ++rep) {
          double k = 0, c = 0;
          auto run_kvtier = [&] {
            k = RunKvtier(inflight, ops, size, [&](int t, int i) -> absl::Status {
              if (put) {
                return (*client)->Upload(ObjectName("kvtier", "put", size, i), data, {},
                                         absl::Now() + kOpDeadline);
              }
              std::vector<std::byte>& buf = buffers[static_cast<size_t>(t)];
              absl::StatusOr<BlobRangeResult> r =
                  (*client)->GetRange(ObjectName("kvtier", "get", size, i), 0, absl::MakeSpan(buf),
                                      absl::Now() + kOpDeadline);
              if (!r.ok()) return r.status();
              if (r->bytes != size) {
                return absl::DataLossError(absl::StrCat("GET returned ", r->bytes, " bytes"));
              }
              return absl::OkStatus();
            });
          };
          auto run_curl = [&] { c = RunCurl(curl, config, size, ops); };
          // Alternate which side goes first.
          if (rep % 2 == 0) {
            run_kvtier();
            run_curl();
          } else {
            run_curl();
            run_kvtier();
          }
          if (k == 0 || c == 0) return 1;
          ours.push_back(k);
          theirs.push_back(c);
          ratios.push_back(k / c);
        }
        if (!put) {
          // The last GET's bytes are the object's.
          if (buffers[0] != data) {
            std::fprintf(stderr, "kvtier bench blob: GET returned other bytes\n");
            return 1;
          }
        }
        rows.push_back(Row{op, size, inflight, Median(ours), Median(theirs), Median(ratios)});
        if (!json) {
          std::fprintf(stderr, "  %s %s x%d: kvtier %s, curl %s\n", op, HumanBytes(size).c_str(),
                       inflight, HumanRate(rows.back().kvtier).c_str(),
                       HumanRate(rows.back().curl).c_str());
        }
      }
    }
  }
  const BlobClientStats st = (*client)->Stats();
  double worst = 1e9;
  for (const Row& r : rows) worst = std::min(worst, r.ratio);

  if (json) {
    Json results = Json::Array();
    for (const Row& r : rows) {
      results.Push(Json::Object()
                       .Set("op", r.op)
                       .Set("chunk_bytes", r.size)
                       .Set("inflight", r.inflight)
                       .Set("kvtier_mbps", r.kvtier / 1e6)
                       .Set("curl_mbps", r.curl / 1e6)
                       .Set("ratio", r.ratio));
    }
    Json j = Json::Object();
    j.Set("suite", "blob")
        .Set("reference", "curl --parallel (SAS)")
        .Set("endpoint", "azurite-blob on loopback")
        .Set("reps", reps)
        .Set("results", std::move(results))
        .Set("retries", st.retries)
        .Set("ratios", Json::Object().Set("min_vs_curl", worst))
        .Set("targets", Json::Object().Set("vs_curl", 0.9));
    std::printf("%s\n", j.Dump().c_str());
    return 0;
  }
  std::printf(
      "kvtier bench blob: Azurite on 127.0.0.1:%d; medians of %lld repetitions, about %s per "
      "run (ratio = median of per-repetition ratios)\n\n",
      (*azurite)->port(), static_cast<long long>(reps), HumanBytes(bytes_per_run).c_str());
  Table t({"op", "chunk", "in flight", "kvtier", "curl", "ratio"});
  for (const Row& r : rows) {
    t.AddRow({r.op, HumanBytes(r.size), absl::StrCat(r.inflight), HumanRate(r.kvtier),
              HumanRate(r.curl), Fixed(r.ratio, 2)});
  }
  t.Print();
  std::printf("\nretries during the run: %llu; target: >= 0.90x curl (worst here: %.2fx)\n",
              static_cast<unsigned long long>(st.retries), worst);
  return 0;
}

}  // namespace kvtier::cli
