#include "tests/integration/daemon_harness.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "src/common/temp_path.h"

namespace kvtier::testing {

TempDir::TempDir() {
  absl::StatusOr<std::string> p = MakeTempDir("/tmp", "kvtd-");
  path_ = p.ok() ? *p : "/tmp";
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

std::string TempDir::Write(const std::string& name, const std::string& contents) const {
  std::ofstream out(File(name), std::ios::binary | std::ios::trunc);
  out << contents;
  return File(name);
}

absl::Status MakeCertificates(const TempDir& dir, const std::string& server_names) {
  const std::string cmd =
      absl::StrCat("(cd ", dir.path(), " && ",
                   "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
                   "-keyout ca.key -out ca.pem -days 2 -subj /CN=kvtier-test-ca && "
                   "openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
                   "-keyout server.key -out server.csr -subj /CN=localhost && "
                   "printf 'subjectAltName=",
                   server_names,
                   "\\n' > san.ext && "
                   "openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial "
                   "-out server.pem -days 2 -extfile san.ext && "
                   "openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
                   "-keyout client.key -out client.csr -subj /CN=kvtier-test-client && "
                   "openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial "
                   "-out client.pem -days 2) > ",
                   dir.File("openssl.log"), " 2>&1");
  if (std::system(cmd.c_str()) != 0) {
    std::ifstream log(dir.File("openssl.log"));
    std::stringstream text;
    text << log.rdbuf();
    return absl::InternalError("openssl failed:\n" + text.str());
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Client>> ConnectOverSocket(const std::string& socket,
                                                          const std::string& token) {
  ClientOptions o;
  o.socket_path = socket;
  o.token = token;
  o.shared_memory = false;
  return Client::Create(o);
}

int FreePort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  socklen_t len = sizeof(addr);
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  close(fd);
  return ntohs(addr.sin_port);
}

absl::StatusOr<std::unique_ptr<Process>> Process::Start(const std::vector<std::string>& argv,
                                                        const std::string& log_file) {
  pid_t pid = fork();
  if (pid < 0) return absl::InternalError(absl::StrCat("fork: ", std::strerror(errno)));
  if (pid == 0) {
    // Never outlive the test, even when it crashes.
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    int fd = open(log_file.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd >= 0) {
      dup2(fd, STDOUT_FILENO);
      dup2(fd, STDERR_FILENO);
      close(fd);
    }
    std::vector<char*> args;
    for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    execv(args[0], args.data());
    _exit(127);
  }
  return std::unique_ptr<Process>(new Process(pid, log_file));
}

Process::~Process() {
  if (!reaped_) {
    kill(pid_, SIGKILL);
    waitpid(pid_, &status_, 0);
  }
}

void Process::Signal(int sig) {
  if (!reaped_) kill(pid_, sig);
}

absl::StatusOr<int> Process::Wait(absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (!reaped_) {
    pid_t r = waitpid(pid_, &status_, WNOHANG);
    if (r == pid_) {
      reaped_ = true;
      break;
    }
    if (absl::Now() > deadline) {
      return absl::DeadlineExceededError(absl::StrCat("pid ", pid_, " still running"));
    }
    absl::SleepFor(absl::Milliseconds(10));
  }
  if (WIFEXITED(status_)) return WEXITSTATUS(status_);
  return 128 + WTERMSIG(status_);
}

bool Process::Running() {
  if (reaped_) return false;
  pid_t r = waitpid(pid_, &status_, WNOHANG);
  if (r == pid_) reaped_ = true;
  return !reaped_;
}

std::string Process::Log() const {
  std::ifstream in(log_);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

absl::Status WaitForDaemon(const std::string& socket, Process* process, absl::Duration timeout) {
  ClientOptions o;
  o.socket_path = socket;
  o.rpc_timeout_ms = 500;
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Create(o);
  if (!client.ok()) return client.status();
  const absl::Time deadline = absl::Now() + timeout;
  absl::Status last;
  while (absl::Now() < deadline) {
    if (process != nullptr && !process->Running()) {
      return absl::FailedPreconditionError(
          absl::StrCat("kvtierd exited during start:\n", process->Log()));
    }
    absl::StatusOr<DaemonHealth> h = (*client)->Health();
    if (h.ok() && h->serving) return absl::OkStatus();
    last = h.status();
    absl::SleepFor(absl::Milliseconds(20));
  }
  return absl::DeadlineExceededError(absl::StrCat("kvtierd did not answer: ", last.ToString()));
}

absl::StatusOr<std::unique_ptr<Daemon>> Daemon::Start(const TempDir& dir,
                                                      const std::vector<std::string>& extra,
                                                      const std::string& log_name) {
  // A small NVMe tier in the test's folder (the default one would be shared
  // by every test, and large).
  std::error_code ec;
  std::filesystem::create_directories(dir.File("nvme"), ec);
  // The http port is free when picked, but a test running beside this one
  // may take it before kvtierd binds it: then it is picked again.
  for (int attempt = 1;; ++attempt) {
    auto d = std::unique_ptr<Daemon>(new Daemon());
    d->socket_ = dir.File("kvtierd.sock");
    d->http_port_ = FreePort();
    std::vector<std::string> argv = {KvtierdPath(),
                                     "--socket",
                                     d->socket_,
                                     "--http",
                                     absl::StrCat("127.0.0.1:", d->http_port_),
                                     "--dram",
                                     "256MiB",
                                     "--huge-pages",
                                     "false",
                                     "--nvme",
                                     dir.File("nvme"),
                                     "--nvme-capacity",
                                     "64MiB"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    absl::StatusOr<std::unique_ptr<Process>> p = Process::Start(argv, dir.File(log_name));
    if (!p.ok()) return p.status();
    d->process_ = std::move(*p);
    absl::Status s = WaitForDaemon(d->socket_, d->process_.get(), absl::Seconds(20));
    if (s.ok()) return d;
    const bool http_taken = absl::StrContains(s.message(), "listen.http: cannot listen") &&
                            absl::StrContains(s.message(), "Address already in use");
    if (!http_taken || attempt == 3) return s;
  }
}

Daemon::~Daemon() {
  if (process_ != nullptr && process_->Running()) {
    process_->Signal(SIGTERM);
    (void)process_->Wait(absl::Seconds(15));
  }
}

absl::StatusOr<int> Daemon::Stop() {
  process_->Signal(SIGTERM);
  return process_->Wait(absl::Seconds(15));
}

absl::StatusOr<std::pair<int, std::string>> Daemon::HttpGet(const std::string& path) const {
  return ::kvtier::testing::HttpGet(http_port_, path);
}

absl::StatusOr<std::pair<int, std::string>> HttpGet(int http_port, const std::string& path) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(http_port));
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return absl::UnavailableError(absl::StrCat("http connect: ", std::strerror(errno)));
  }
  std::string req = absl::StrCat("GET ", path, " HTTP/1.1\r\nHost: localhost\r\n\r\n");
  (void)!write(fd, req.data(), req.size());
  std::string resp;
  char buf[4096];
  ssize_t n;
  while ((n = read(fd, buf, sizeof(buf))) > 0) resp.append(buf, static_cast<size_t>(n));
  close(fd);
  int code = 0;
  if (resp.size() > 12) code = std::atoi(resp.substr(9, 3).c_str());
  size_t body = resp.find("\r\n\r\n");
  return std::make_pair(code, body == std::string::npos ? "" : resp.substr(body + 4));
}

std::string KvtierdPath() { return KVTIER_KVTIERD; }
std::string ChainClientPath() { return KVTIER_CHAIN_CLIENT; }
std::string CliPath() { return KVTIER_CLI; }

}  // namespace kvtier::testing
