// Certificates for mutual TLS 1.3 between atomdisk's programs, through OpenSSL 3.
//
// Every cluster has its own CA (made by `atomdisk init`, kept next to cluster.toml as
// ca.crt/ca.key). It signs one leaf certificate per node and per client; a leaf says who
// holds it in exactly one subjectAltName URI, "atomdisk:node:3" or "atomdisk:client:NAME",
// and that URI, not the CN, is what a peer checks: a CN is free text, the URI is parsed
// strictly here and only this module writes it. A leaf is identified for revocation by
// the SHA-256 of its DER (CertificateFingerprint), which `tls_revoked` lists.
//
// Keys are EC P-256 (small, fast to make, supported by every TLS 1.3 peer). Private keys
// are written unencrypted (PKCS#8 PEM) with mode 0600: a daemon must start unattended.
// Every function here is safe to call from any thread; errors come back as Status values
// that name the file or the step and carry OpenSSL's own error text.
#pragma once

#include <openssl/types.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/status.h"
#include "common/types.h"

namespace atomdisk {

// A CA outlives many leaf rotations; a leaf's 825 days are the longest lifetime TLS clients
// commonly accept and leave room to rotate before a cluster's second birthday.
inline constexpr int kCaCertDays = 3650;
inline constexpr int kLeafCertDays = 825;
// The longest lifetime asked for (a century): longer only overflows dates, it protects nothing.
inline constexpr int kMaxCertDays = 36500;
// A client name's limit: "client NAME" is the certificate's CN, and X.509 caps a CN at 64
// characters; 48 leaves a round margin.
inline constexpr std::size_t kMaxClientNameLength = 48;

// PEM text of a certificate and its private key.
struct PemPair {
  std::string cert_pem;
  std::string key_pem;
};

// Who a certificate says its holder is (its subjectAltName URI).
struct TlsIdentity {
  enum class Role { kNode, kClient } role = Role::kClient;
  Rank rank = 0;                 // kNode: 1..254
  std::string name;              // kClient: the name it was issued for ("client", "laptop-7")
  std::string ToString() const;  // "node 3" / "client laptop-7"
  friend bool operator==(const TlsIdentity&, const TlsIdentity&) = default;
};

// The URI an identity is written as: "atomdisk:node:3", "atomdisk:client:laptop-7".
std::string IdentityUri(const TlsIdentity& id);
// Parses such a URI; nullopt for anything else: another prefix, a rank of 0, above 254, with
// a leading zero or with non-digits, an empty name or one over kMaxClientNameLength, a name
// with characters outside [A-Za-z0-9._-] or not starting with a letter or digit (so no name
// reads as ".", ".." or a flag). Only the canonical spelling parses, so a URI compared as text
// (in a log, an allow list) means one identity.
std::optional<TlsIdentity> ParseIdentityUri(std::string_view uri);
// The identity in a (verified) certificate: exactly one atomdisk: URI in its SAN, and it
// parses, else nullopt (two such URIs could each be read as the holder).
std::optional<TlsIdentity> IdentityOfCertificate(X509* cert);
// SHA-256 of the certificate's DER as 64 lowercase hex digits (what `tls_revoked` lists).
std::string CertificateFingerprint(X509* cert);

// Owns an X509 (X509_free).
struct X509Free {
  void operator()(X509* cert) const;
};
using X509Ptr = std::unique_ptr<X509, X509Free>;
// The first certificate in PEM text; Corruption with OpenSSL's reason when there is none.
Result<X509Ptr> ParseCertificatePem(std::string_view pem);

// A new cluster CA: EC P-256 key, self-signed, basicConstraints critical CA:TRUE pathlen 0,
// keyUsage critical keyCertSign+cRLSign, subject CN "atomdisk cluster CA <cluster_id_hex>",
// random 128-bit positive serial, valid from now-1h for `days` days. cluster_id_hex must be
// the config's 32 hex digits; days 1..kMaxCertDays.
Result<PemPair> MakeClusterCa(const std::string& cluster_id_hex, int days);
// A leaf certificate signed by `ca`: new EC P-256 key, SAN URI IdentityUri(id) and nothing
// else, basicConstraints critical CA:FALSE, keyUsage critical digitalSignature,
// extendedKeyUsage serverAuth+clientAuth, subject CN = id.ToString(), random serial,
// subjectKeyIdentifier/authorityKeyIdentifier, valid from now + not_before_offset_s to
// now + not_before_offset_s + days*86400. The backdating by default absorbs clock skew
// between the issuing host and the nodes. Refuses an identity ParseIdentityUri would refuse,
// a CA key that does not match its certificate, and a CA certificate that is no CA.
Result<PemPair> IssueCertificate(const PemPair& ca, const TlsIdentity& id, int days,
                                 std::int64_t not_before_offset_s = -3600);

// Writes the TLS material of a new cluster into `dir` (created if missing): ca.crt, ca.key,
// node-R.crt and node-R.key for every rank, client.crt and client.key (identity client
// "client"). Every file mode 0600, created with O_EXCL (refuses to overwrite: the error names
// the file), written whole and fsynced, then the folder fsynced. Checks every name first and
// removes what it wrote when a later file fails, so a failed run can simply be repeated.
// kCaCertDays for the CA, kLeafCertDays for the leaves.
Status WriteClusterTls(const std::string& dir, const std::string& cluster_id_hex,
                       const std::vector<Rank>& ranks);
// Issues one more certificate from the CA in `dir` (ca.crt + ca.key): for a node, writes
// node-R.crt/.key; for a client, client-NAME.crt/.key. Same file rules. Returns the new
// certificate's fingerprint. (For adding a node and rotating credentials.)
Result<std::string> IssueFromClusterCa(const std::string& dir, const TlsIdentity& id, int days);
// The files IssueFromClusterCa writes for `id` in `dir`: {certificate, key}.
std::pair<std::string, std::string> IssuedFilePaths(const std::string& dir, const TlsIdentity& id);

// What `atomdisk tls show` prints about a certificate file.
struct CertificateDetails {
  std::string fingerprint;
  std::optional<TlsIdentity> identity;
  std::string subject;          // RFC 2253: "CN=node 3"
  std::string issuer;           // RFC 2253
  std::int64_t not_before = 0;  // Unix seconds
  std::int64_t not_after = 0;   // Unix seconds
  bool is_ca = false;
};
// Loads the first certificate of a PEM file. NotFound when the file is missing,
// InvalidArgument (naming the file) when it holds no PEM certificate.
Result<CertificateDetails> ReadCertificateDetails(const std::string& path);
// Loads a PEM certificate file and returns its fingerprint and identity (for `atomdisk tls show`).
Result<std::pair<std::string, std::optional<TlsIdentity>>> DescribeCertificateFile(
    const std::string& path);
// "2025-03-01 12:00:00 UTC".
std::string FormatUtcTime(std::int64_t unix_seconds);

}  // namespace atomdisk
