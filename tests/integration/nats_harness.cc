#include "tests/integration/nats_harness.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <filesystem>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace kvtier::testing {
namespace {

// Whether a server on 127.0.0.1:`port` greets a new client with INFO (it
// does so before any TLS handshake or authentication).
bool Greets(int port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return false;
  timeval tv{};
  tv.tv_sec = 1;
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  bool ok = false;
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
    char buf[4];
    size_t got = 0;
    while (got < sizeof(buf)) {
      const ssize_t n = read(fd, buf + got, sizeof(buf) - got);
      if (n <= 0) break;
      got += static_cast<size_t>(n);
    }
    ok = got == sizeof(buf) && std::string(buf, sizeof(buf)) == "INFO";
  }
  close(fd);
  return ok;
}

}  // namespace

std::string NatsServerPath() {
  for (const char* p : {"/usr/sbin/nats-server", "/usr/bin/nats-server"}) {
    if (std::filesystem::exists(p)) return p;
  }
  return "nats-server";
}

absl::StatusOr<std::unique_ptr<NatsServer>> NatsServer::Start(const TempDir& dir,
                                                              const NatsServerOptions& options) {
  const std::string js_dir = dir.File(options.name + "-js");
  std::error_code ec;
  std::filesystem::create_directories(js_dir, ec);
  // The port is free when picked, but a test running beside this one may
  // take it before nats-server binds it: then it is picked again.
  for (int attempt = 1;; ++attempt) {
    auto s = std::unique_ptr<NatsServer>(new NatsServer());
    s->port_ = options.port != 0 ? options.port : FreePort();
    std::vector<std::string> argv = {NatsServerPath(), "-a", "127.0.0.1", "-p",
                                     absl::StrCat(s->port_)};
    if (options.jetstream) argv.insert(argv.end(), {"-js", "-sd", js_dir});
    if (!options.token.empty()) argv.insert(argv.end(), {"--auth", options.token});
    if (!options.user.empty()) argv.insert(argv.end(), {"--user", options.user});
    if (!options.password.empty()) argv.insert(argv.end(), {"--pass", options.password});
    if (!options.cert_file.empty() || !options.key_file.empty()) {
      argv.insert(argv.end(), {options.verify_clients ? "--tlsverify" : "--tls", "--tlscert",
                               options.cert_file, "--tlskey", options.key_file});
    }
    if (!options.ca_file.empty()) argv.insert(argv.end(), {"--tlscacert", options.ca_file});
    const std::string log = dir.File(options.name + ".log");
    absl::StatusOr<std::unique_ptr<Process>> p = Process::Start(argv, log);
    if (!p.ok()) return p.status();
    s->process_ = std::move(*p);
    const absl::Time deadline = absl::Now() + absl::Seconds(10);
    while (absl::Now() < deadline && s->process_->Running()) {
      if (Greets(s->port_)) return s;
      absl::SleepFor(absl::Milliseconds(20));
    }
    const std::string text = s->process_->Log();
    if (options.port != 0 || !absl::StrContains(text, "address already in use") || attempt == 3) {
      return absl::DeadlineExceededError(absl::StrCat("nats-server did not start:\n", text));
    }
  }
}

std::string NatsServer::url() const { return absl::StrCat("nats://127.0.0.1:", port_); }

}  // namespace kvtier::testing
