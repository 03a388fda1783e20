// TLS for kvtier's gRPC listeners and channels, built from PEM files:
// kvtierd's TCP listener and its calls to peers and to the cluster index,
// kvtier-index's listener, and the client library.
//
// Thread-safety: functions only; they read files and nothing else.
#ifndef KVTIER_SRC_SERVER_GRPC_TLS_H_
#define KVTIER_SRC_SERVER_GRPC_TLS_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/security/server_credentials.h"

namespace kvtier::server {

// A listener's `tls:` section (kvtierd and kvtier-index use the same keys).
struct TlsConfig {
  std::string cert_file;             // PEM server certificate chain
  std::string key_file;              // PEM private key
  std::string client_ca_file;        // PEM CA bundle that signs client certificates
  bool require_client_cert = false;  // mTLS: refuse clients without a valid certificate
  uint32_t reload_seconds = 60;      // how often the files are read again (1..86400)

  bool enabled() const { return !cert_file.empty(); }
};

// "host" of "host:port"; brackets of an IPv6 literal are removed.
std::string HostOf(const std::string& host_port);
// localhost, ::1 or 127.x.y.z.
bool IsLoopbackHost(const std::string& host);

// Whether a failed call's message tells of a failed TLS handshake (a
// certificate from an unknown CA or without the expected name, TLS against a
// plaintext listener). gRPC reports those as UNAVAILABLE, as it does a peer
// that is down; the message is the only difference.
bool IsTlsHandshakeFailure(absl::string_view message);

// InvalidArgument naming "<section>.<key>" when the settings cannot work
// together (a certificate without its key, a client CA without TLS,
// require_client_cert without a CA) or a named file cannot be read.
absl::Status ValidateTls(const TlsConfig& tls, absl::string_view section);

// The contents of a PEM file; InvalidArgument "<field>: cannot read '<path>'".
absl::StatusOr<std::string> ReadPemFile(const std::string& path, absl::string_view field);

// A listener's credentials: insecure when TLS is off, else TLS with the
// client-certificate policy of `tls`. The files are read again every
// `tls.reload_seconds`: a renewed certificate (or CA bundle) written in
// place, or swapped in as Kubernetes does with a Secret, serves new
// handshakes without a restart. InvalidArgument naming "<section>.<key>"
// when a file cannot be read at start.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> ServerCredentials(
    const TlsConfig& tls, absl::string_view section);

// A PEM file and the setting that named it (for error messages).
struct PemSource {
  std::string path;   // "" = not used
  std::string field;  // e.g. "cluster.index_ca_file"
};

// TLS channel credentials: the server is verified against `ca` (no path:
// the system's roots) and its name checked, and, when `cert` has a path,
// `cert` / `key` are presented as the client certificate. The files are
// read again every `reload_seconds`, for the channel's next handshakes.
// REQUIRES: `key` has a path when `cert` has one. InvalidArgument naming
// the field of a file that cannot be read at start.
absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> ChannelCredentials(
    const PemSource& ca, const PemSource& cert, const PemSource& key, uint32_t reload_seconds = 60);

}  // namespace kvtier::server

#endif  // KVTIER_SRC_SERVER_GRPC_TLS_H_
