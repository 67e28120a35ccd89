#include "common/tls_context.h"

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <algorithm>

namespace atomdisk {

namespace ssl = boost::asio::ssl;

namespace {
std::string OpenSslError() {
  unsigned long e = ERR_get_error();
  if (e == 0) return "unknown OpenSSL error";
  char buf[256];
  ERR_error_string_n(e, buf, sizeof(buf));
  ERR_clear_error();
  return buf;
}
}  // namespace

TlsContext::TlsContext() : context_(ssl::context::tls) {}

Status TlsContext::Load(const std::string& ca, const std::string& cert, const std::string& key,
                        const std::vector<std::string>& revoked) {
  SSL_CTX* ctx = context_.native_handle();
  // TLS 1.3 only: its handshake is encrypted and forward secret, and its record layer has no
  // CBC or compression to configure wrongly. AES-GCM only (AES-NI makes it the cheapest here:
  // docs/BENCHMARKS.md measures it against HMAC-SHA256).
  if (SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION) != 1 ||
      SSL_CTX_set_ciphersuites(ctx, "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384") != 1) {
    return Status::InvalidArgument("TLS: cannot restrict to TLS 1.3 with AES-GCM: " +
                                   OpenSslError());
  }
  // Connections live long and reconnect rarely: session tickets would only cost a round of
  // crypto per handshake and a secret to keep.
  SSL_CTX_set_num_tickets(ctx, 0);
  // The server's order decides: AES-128-GCM first, the cheaper of the two on this hardware.
  SSL_CTX_set_options(ctx,
                      SSL_OP_NO_TICKET | SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE);
  if (SSL_CTX_load_verify_locations(ctx, ca.c_str(), nullptr) != 1) {
    return Status::InvalidArgument("TLS CA file " + ca + ": " + OpenSslError());
  }
  if (SSL_CTX_use_certificate_chain_file(ctx, cert.c_str()) != 1) {
    return Status::InvalidArgument("TLS certificate " + cert + ": " + OpenSslError());
  }
  if (SSL_CTX_use_PrivateKey_file(ctx, key.c_str(), SSL_FILETYPE_PEM) != 1) {
    return Status::InvalidArgument("TLS key file " + key + ": " + OpenSslError());
  }
  if (SSL_CTX_check_private_key(ctx) != 1) {
    return Status::InvalidArgument("TLS key file " + key + " does not match certificate " + cert);
  }
  // Both sides must show a certificate from the cluster CA.
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
  SSL_CTX_set_verify_depth(ctx, 2);
  revoked_ = revoked;
  return Status::Ok();
}

Result<std::shared_ptr<TlsContext>> TlsContext::ForNode(const ClusterConfig& config, Rank rank) {
  std::vector<std::string> warnings;
  const std::string key = config.NodeKeyFile(rank);
  if (Status s = CheckSecretFile(key, "TLS key file", false, &warnings); !s.ok()) return s;
  std::shared_ptr<TlsContext> tls(new TlsContext());
  if (Status s = tls->Load(config.tls_ca_file, config.NodeCertFile(rank), key, config.tls_revoked);
      !s.ok()) {
    return s;
  }
  return tls;
}

Result<std::shared_ptr<TlsContext>> TlsContext::ForClient(const ClusterConfig& config) {
  std::shared_ptr<TlsContext> tls(new TlsContext());
  if (Status s = tls->Load(config.tls_ca_file, config.tls_client_cert_file,
                           config.tls_client_key_file, config.tls_revoked);
      !s.ok()) {
    return s;
  }
  return tls;
}

Result<TlsPeer> TlsContext::PeerOf(SSL* ssl) const {
  X509* cert = SSL_get0_peer_certificate(ssl);
  if (cert == nullptr) return Status::AuthFailure("no TLS certificate");
  if (SSL_get_verify_result(ssl) != X509_V_OK) {
    return Status::AuthFailure(std::string("TLS certificate not verified: ") +
                               X509_verify_cert_error_string(SSL_get_verify_result(ssl)));
  }
  TlsPeer peer;
  peer.fingerprint = CertificateFingerprint(cert);
  if (std::find(revoked_.begin(), revoked_.end(), peer.fingerprint) != revoked_.end()) {
    return Status::AuthFailure("TLS certificate " + peer.fingerprint + " is revoked (tls_revoked)");
  }
  auto id = IdentityOfCertificate(cert);
  if (!id) {
    return Status::AuthFailure("TLS certificate " + peer.fingerprint +
                               " names no atomdisk identity (a subjectAltName URI "
                               "atomdisk:node:N or atomdisk:client:NAME)");
  }
  peer.identity = *id;
  return peer;
}

std::string TlsErrorText(const boost::system::error_code& ec, SSL* ssl) {
  std::string text = ec.message();
  if (ssl != nullptr) {
    const long verify = SSL_get_verify_result(ssl);
    if (verify != X509_V_OK) {
      text += std::string(" (") + X509_verify_cert_error_string(verify) + ")";
    }
  }
  return text;
}

}  // namespace atomdisk
