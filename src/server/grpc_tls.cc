#include "src/server/grpc_tls.h"

#include <unistd.h>

#include <fstream>
#include <sstream>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
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

absl::Status ValidateTls(const TlsConfig& tls, absl::string_view section) {
  if (tls.enabled() != !tls.key_file.empty()) {
    return Invalid(section, tls.enabled() ? "key_file" : "cert_file",
                   absl::StrCat(section, ".cert_file and ", section, ".key_file go together"));
  }
  if (!tls.client_ca_file.empty() && !tls.enabled()) {
    return Invalid(section, "client_ca_file",
                   absl::StrCat("needs ", section, ".cert_file and ", section, ".key_file"));
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
  grpc::SslServerCredentialsOptions opts(
      tls.client_ca_file.empty()
          ? GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE
          : (tls.require_client_cert ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
                                     : GRPC_SSL_REQUEST_CLIENT_CERTIFICATE_AND_VERIFY));
  grpc::SslServerCredentialsOptions::PemKeyCertPair pair;
  KVTIER_ASSIGN_OR_RETURN(pair.private_key,
                          ReadPemFile(tls.key_file, absl::StrCat(section, ".key_file")));
  KVTIER_ASSIGN_OR_RETURN(pair.cert_chain,
                          ReadPemFile(tls.cert_file, absl::StrCat(section, ".cert_file")));
  opts.pem_key_cert_pairs.push_back(std::move(pair));
  if (!tls.client_ca_file.empty()) {
    KVTIER_ASSIGN_OR_RETURN(
        opts.pem_root_certs,
        ReadPemFile(tls.client_ca_file, absl::StrCat(section, ".client_ca_file")));
  }
  return grpc::SslServerCredentials(opts);
}

absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> ChannelCredentials(const PemSource& ca,
                                                                             const PemSource& cert,
                                                                             const PemSource& key) {
  grpc::SslCredentialsOptions ssl;
  if (!ca.path.empty()) {
    KVTIER_ASSIGN_OR_RETURN(ssl.pem_root_certs, ReadPemFile(ca.path, ca.field));
  }
  if (!cert.path.empty()) {
    KVTIER_ASSIGN_OR_RETURN(ssl.pem_cert_chain, ReadPemFile(cert.path, cert.field));
    KVTIER_ASSIGN_OR_RETURN(ssl.pem_private_key, ReadPemFile(key.path, key.field));
  }
  return grpc::SslCredentials(ssl);
}

}  // namespace kvtier::server
