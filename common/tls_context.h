// TLS contexts for atomdisk's own connections (docs/TLS.md): mutual TLS 1.3 only, AES-GCM
// suites, every certificate checked against the cluster CA, and the peer's identity (node N or
// a client) read from its certificate after the handshake.
//
// A node uses one context for the connections it accepts and the links it dials: its own
// certificate proves its rank either way. A client uses the client certificate. Contexts are
// built once at start-up and shared (Asio's ssl::context is safe to use from the io thread of
// every stream made from it).
#pragma once

#include <boost/asio/ssl.hpp>
#include <memory>
#include <optional>
#include <string>

#include "common/config.h"
#include "common/status.h"
#include "common/tls_certs.h"

namespace atomdisk {

// What a TLS connection's far end proved, and what it may do (checked by the node server).
struct TlsPeer {
  TlsIdentity identity;
  std::string fingerprint;
};

class TlsContext {
 public:
  // For node `rank` of `config` (config.tls must not be kOff): loads the CA, the node's
  // certificate and key (the key checked like every secret: CheckSecretFile).
  static Result<std::shared_ptr<TlsContext>> ForNode(const ClusterConfig& config, Rank rank);
  // For a client (the CLI, the FUSE mount, the client library).
  static Result<std::shared_ptr<TlsContext>> ForClient(const ClusterConfig& config);

  boost::asio::ssl::context& context() { return context_; }

  // After a completed handshake on `ssl`: the peer's identity, or why it is refused (no
  // certificate, a revoked one, no atomdisk identity in it). The chain itself was verified
  // by OpenSSL during the handshake.
  Result<TlsPeer> PeerOf(SSL* ssl) const;

 private:
  TlsContext();
  Status Load(const std::string& ca, const std::string& cert, const std::string& key,
              const std::vector<std::string>& revoked);

  boost::asio::ssl::context context_;
  std::vector<std::string> revoked_;
};

// Why a handshake failed, in words an operator can act on: OpenSSL's reason ("certificate
// verify failed: certificate has expired") rather than Asio's category text.
std::string TlsErrorText(const boost::system::error_code& ec, SSL* ssl);

}  // namespace atomdisk
