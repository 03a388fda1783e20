#include "src/tiers/blob/azurite.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "src/common/temp_path.h"

#ifndef KVTIER_SOURCE_DIR
#define KVTIER_SOURCE_DIR "."
#endif

namespace kvtier {

namespace {

bool Executable(const std::string& path) { return ::access(path.c_str(), X_OK) == 0; }

std::string OnPath(const std::string& name) {
  const char* path = std::getenv("PATH");
  if (path == nullptr) return "";
  for (absl::string_view dir : absl::StrSplit(path, ':', absl::SkipEmpty())) {
    std::string candidate = absl::StrCat(dir, "/", name);
    if (Executable(candidate)) return candidate;
  }
  return "";
}

bool Accepts(int port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  const bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  ::close(fd);
  return ok;
}

}  // namespace

absl::StatusOr<std::string> FindAzuriteBlob() {
  if (OnPath("node").empty()) {
    return absl::NotFoundError("node is not installed (scripts/install-deps.sh installs it)");
  }
  if (const char* env = std::getenv("KVTIER_AZURITE_BLOB"); env != nullptr && *env != '\0') {
    if (Executable(env)) return std::string(env);
    return absl::NotFoundError(absl::StrCat("KVTIER_AZURITE_BLOB=", env, " is not executable"));
  }
  const std::string local = absl::StrCat(KVTIER_SOURCE_DIR, "/node_modules/.bin/azurite-blob");
  if (Executable(local)) return local;
  std::string found = OnPath("azurite-blob");
  if (!found.empty()) return found;
  return absl::NotFoundError(absl::StrCat("azurite-blob is not installed (looked for ", local,
                                          " and on PATH; scripts/install-deps.sh installs it "
                                          "with npm)"));
}

absl::StatusOr<int> FreeLoopbackPort() {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return absl::InternalError(absl::StrCat("socket: ", std::strerror(errno)));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    const int e = errno;
    ::close(fd);
    return absl::InternalError(absl::StrCat("bind: ", std::strerror(e)));
  }
  ::close(fd);
  return static_cast<int>(ntohs(addr.sin_port));
}

absl::StatusOr<std::unique_ptr<AzuriteProcess>> AzuriteProcess::Start(int port,
                                                                      const std::string& location,
                                                                      bool in_memory) {
  std::unique_ptr<AzuriteProcess> p(new AzuriteProcess());
  p->in_memory_ = in_memory;
  absl::StatusOr<std::string> binary = FindAzuriteBlob();
  if (!binary.ok()) return binary.status();
  p->binary_ = *binary;
  if (port == 0) {
    absl::StatusOr<int> free_port = FreeLoopbackPort();
    if (!free_port.ok()) return free_port.status();
    port = *free_port;
  }
  p->port_ = port;
  if (location.empty()) {
    const char* tmp = std::getenv("TMPDIR");
    absl::StatusOr<std::string> dir =
        MakeTempDir(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp", "kvtier-azurite-");
    if (!dir.ok()) return dir.status();
    p->location_ = *dir;
    p->own_location_ = true;
  } else {
    p->location_ = location;
    std::error_code ec;
    std::filesystem::create_directories(location, ec);
  }
  absl::Status s = p->Launch();
  if (!s.ok()) return s;
  return p;
}

absl::Status AzuriteProcess::Launch() {
  const std::string log = absl::StrCat(location_, "/azurite.log");
  std::vector<std::string> args = {binary_,      "--blobHost",        "127.0.0.1",
                                   "--blobPort", absl::StrCat(port_), "--skipApiVersionCheck",
                                   "--silent"};
  if (in_memory_) {
    args.emplace_back("--inMemoryPersistence");  // refused together with --location
  } else {
    args.insert(args.end(), {"--location", location_});
  }
  pid_t pid = ::fork();
  if (pid < 0) return absl::InternalError(absl::StrCat("fork: ", std::strerror(errno)));
  if (pid == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);  // never outlive the test or benchmark
    int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd >= 0) {
      ::dup2(fd, 1);
      ::dup2(fd, 2);
      ::close(fd);
    }
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    ::execv(argv[0], argv.data());
    _exit(127);
  }
  pid_ = pid;
  const absl::Time deadline = absl::Now() + absl::Seconds(60);
  while (absl::Now() < deadline) {
    if (Accepts(port_)) return absl::OkStatus();
    int status = 0;
    if (::waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      return absl::InternalError(
          absl::StrCat("azurite-blob exited before listening on port ", port_, ": ", LogTail()));
    }
    ::usleep(50 * 1000);
  }
  Stop();
  return absl::DeadlineExceededError(
      absl::StrCat("azurite-blob did not listen on port ", port_, " within 60 s: ", LogTail()));
}

void AzuriteProcess::Stop() {
  if (pid_ <= 0) return;
  ::kill(pid_, SIGTERM);
  const absl::Time deadline = absl::Now() + absl::Seconds(5);
  int status = 0;
  while (::waitpid(pid_, &status, WNOHANG) == 0) {
    if (absl::Now() >= deadline) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, &status, 0);
      break;
    }
    ::usleep(20 * 1000);
  }
  pid_ = -1;
  // The port is free once nothing accepts on it.
  const absl::Time until = absl::Now() + absl::Seconds(5);
  while (Accepts(port_) && absl::Now() < until) ::usleep(20 * 1000);
}

absl::Status AzuriteProcess::Restart() {
  Stop();
  return Launch();
}

AzuriteProcess::~AzuriteProcess() {
  Stop();
  if (own_location_) {
    std::error_code ec;
    std::filesystem::remove_all(location_, ec);
  }
}

std::string AzuriteProcess::endpoint() const {
  return absl::StrCat("http://127.0.0.1:", port_, "/", kAzuriteAccount);
}

std::string AzuriteProcess::LogTail() const {
  std::ifstream in(absl::StrCat(location_, "/azurite.log"));
  std::stringstream ss;
  ss << in.rdbuf();
  std::string text = ss.str();
  if (text.size() > 2000) text = text.substr(text.size() - 2000);
  return text.empty() ? std::string("(no output)") : text;
}

}  // namespace kvtier
