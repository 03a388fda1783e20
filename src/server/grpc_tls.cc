#include "src/server/grpc_tls.h"

#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <sstream>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "grpcpp/security/tls_certificate_provider.h"
#include "grpcpp/security/tls_certificate_verifier.h"
#include "grpcpp/security/tls_credentials_options.h"
#include "src/common/status_macros.h"

namespace kvtier::server {
namespace {

absl::Status Invalid(absl::string_view section, absl::string_view key, absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat(section, ".", key, ": ", why));
}

}  // namespace

std::string HostOf(const std::string& host_port) {
  std::string host = host_port.substr(0, host_port.rfind(':'));
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  return host;
}

bool IsLoopbackHost(const std::string& host) {
  return host == "localhost" || host == "::1" || absl::StartsWith(host, "127.");
}

bool IsTlsHandshakeFailure(absl::string_view message) {
  const std::string lower = absl::AsciiStrToLower(message);
  // Not "handshake" alone: a connection reset during one ("Handshake read
  // failed") is an index going away, not a setting to fix.
  for (absl::string_view sign : {"handshake failed", "ssl_error_ssl", "certificate verify failed",
                                 "not in peer certificate", "wrong_version_number"}) {
    if (absl::StrContains(lower, sign)) return true;
  }
  return false;
}

absl::Status ValidateTls(const TlsConfig& tls, absl::string_view section) {
  if (tls.enabled() != !tls.key_file.empty()) {
    return Invalid(section, tls.enabled() ? "key_file" : "cert_file",
                   absl::StrCat(section, ".cert_file and ", section, ".key_file go together"));
  }
  if (!tls.client_ca_file.empty() && !tls.enabled()) {
    return Invalid(section, "client_ca_file",
                   absl::StrCat("needs ", section, ".cert_file and ", section, ".key_file"));
  }
  if (tls.reload_seconds == 0 || tls.reload_seconds > 86400) {
    return Invalid(section, "reload_seconds", "must be in 1..86400");
  }
  if (tls.require_client_cert && tls.client_ca_file.empty()) {
    return Invalid(section, "require_client_cert",
                   absl::StrCat("needs ", section, ".client_ca_file"));
  }
  for (const auto& [key, path] :
       {std::pair<const char*, const std::string*>{"cert_file", &tls.cert_file},
        {"key_file", &tls.key_file},
        {"client_ca_file", &tls.client_ca_file}}) {
    if (!path->empty() && access(path->c_str(), R_OK) != 0) {
      return Invalid(section, key, absl::StrCat("cannot read '", *path, "'"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> ReadPemFile(const std::string& path, absl::string_view field) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::InvalidArgumentError(absl::StrCat(field, ": cannot read '", path, "'"));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> ServerCredentials(
    const TlsConfig& tls, absl::string_view section) {
  if (!tls.enabled()) return grpc::InsecureServerCredentials();
  // Read once here, so that a missing file fails the start with its name
  // (the watcher below only logs).
  KVTIER_RETURN_IF_ERROR(ReadPemFile(tls.key_file, absl::StrCat(section, ".key_file")).status());
  KVTIER_RETURN_IF_ERROR(ReadPemFile(tls.cert_file, absl::StrCat(section, ".cert_file")).status());
  if (!tls.client_ca_file.empty()) {
    KVTIER_RETURN_IF_ERROR(
        ReadPemFile(tls.client_ca_file, absl::StrCat(section, ".client_ca_file")).status());
  }
  auto provider = std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
      tls.key_file, tls.cert_file, tls.client_ca_file, std::max(tls.reload_seconds, 1u));
  grpc::experimental::TlsServerCredentialsOptions opts(provider);
  opts.watch_identity_key_cert_pairs();
  if (!tls.client_ca_file.empty()) opts.watch_root_certs();
  opts.set_cert_request_type(tls.client_ca_file.empty()
                                 ? GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE
                                 : (tls.require_client_cert
                                        ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
                                        : GRPC_SSL_REQUEST_CLIENT_CERTIFICATE_AND_VERIFY));
  return grpc::experimental::TlsServerCredentials(opts);
}

absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> ChannelCredentials(
    const PemSource& ca, const PemSource& cert, const PemSource& key, uint32_t reload_seconds) {
  if (!ca.path.empty()) KVTIER_RETURN_IF_ERROR(ReadPemFile(ca.path, ca.field).status());
  if (!cert.path.empty()) {
    KVTIER_RETURN_IF_ERROR(ReadPemFile(cert.path, cert.field).status());
    KVTIER_RETURN_IF_ERROR(ReadPemFile(key.path, key.field).status());
  }
  grpc::experimental::TlsChannelCredentialsOptions opts;
  if (!ca.path.empty() || !cert.path.empty()) {
    opts.set_certificate_provider(
        std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
            cert.path.empty() ? std::string() : key.path, cert.path, ca.path,
            std::max(reload_seconds, 1u)));
    if (!ca.path.empty()) opts.watch_root_certs();
    if (!cert.path.empty()) opts.watch_identity_key_cert_pairs();
  }
  opts.set_verify_server_certs(true);
  opts.set_certificate_verifier(
      std::make_shared<grpc::experimental::HostNameCertificateVerifier>());
  return grpc::experimental::TlsCredentials(opts);
}

}  // namespace kvtier::server
