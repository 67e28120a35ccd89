#include "common/tls_certs.h"

#include <fcntl.h>
#include <openssl/asn1.h>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <ctime>
#include <filesystem>
#include <set>
#include <span>

#include "common/hmac.h"

namespace atomdisk {
namespace fs = std::filesystem;

void X509Free::operator()(X509* cert) const { X509_free(cert); }

namespace {

constexpr std::string_view kUriPrefix = "atomdisk:";
constexpr std::string_view kNodeUriPrefix = "atomdisk:node:";
constexpr std::string_view kClientUriPrefix = "atomdisk:client:";
// More than any certificate or key file of ours (about 1 KiB): refuses /dev/zero and
// mistaken large files without reading them whole.
constexpr std::size_t kMaxPemFileBytes = 1 << 20;

template <auto Free>
struct Deleter {
  template <typename T>
  void operator()(T* p) const {
    Free(p);
  }
};
using BioPtr = std::unique_ptr<BIO, Deleter<BIO_free_all>>;
using PkeyPtr = std::unique_ptr<EVP_PKEY, Deleter<EVP_PKEY_free>>;
using BignumPtr = std::unique_ptr<BIGNUM, Deleter<BN_free>>;
using Asn1IntegerPtr = std::unique_ptr<ASN1_INTEGER, Deleter<ASN1_INTEGER_free>>;
using ExtensionPtr = std::unique_ptr<X509_EXTENSION, Deleter<X509_EXTENSION_free>>;
using NamePtr = std::unique_ptr<X509_NAME, Deleter<X509_NAME_free>>;
using GeneralNamesPtr = std::unique_ptr<GENERAL_NAMES, Deleter<GENERAL_NAMES_free>>;

// `what` failed in OpenSSL: the status carries every reason on this thread's error queue
// and empties it, so a later, unrelated failure is not blamed on these.
Status OpensslError(StatusCode code, const std::string& what) {
  std::string reasons;
  while (unsigned long e = ERR_get_error()) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof buf);
    reasons += (reasons.empty() ? "" : "; ") + std::string(buf);
  }
  if (reasons.empty()) reasons = "no reason given by OpenSSL";
  return Status(code, what + ": " + reasons);
}

// Failures of making keys, certificates or PEM text in memory: a broken or exhausted
// OpenSSL, not anything a user gave. They count as the operation failing (exit code 1).
Status Internal(const std::string& what) { return OpensslError(StatusCode::kIOError, what); }

bool IsNameChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
         c == '_' || c == '-';
}

bool IsAlnum(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

bool IsHex(std::string_view s) {
  for (char c : s) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'))) {
      return false;
    }
  }
  return true;
}

Status CheckDays(int days) {
  if (days < 1 || days > kMaxCertDays) {
    return Status::InvalidArgument("certificate lifetime of " + std::to_string(days) +
                                   " days is outside 1.." + std::to_string(kMaxCertDays));
  }
  return Status::Ok();
}

Result<PkeyPtr> NewKey() {
  PkeyPtr key(EVP_EC_gen("P-256"));
  if (!key) return Internal("generating an EC P-256 key");
  return key;
}

// 128 random bits as a positive serial: unpredictable serials keep a CA safe from
// chosen-prefix collisions, and serials never repeat without a counter to store.
Status SetRandomSerial(X509* cert) {
  unsigned char bytes[16];
  if (RAND_bytes(bytes, sizeof bytes) != 1) return Internal("drawing a random serial number");
  bytes[sizeof bytes - 1] |= 1;  // never 0, which RFC 5280 forbids
  BignumPtr bn(BN_bin2bn(bytes, sizeof bytes, nullptr));
  if (!bn) return Internal("making a serial number");
  Asn1IntegerPtr serial(BN_to_ASN1_INTEGER(bn.get(), nullptr));
  if (!serial || X509_set_serialNumber(cert, serial.get()) != 1) {
    return Internal("setting a serial number");
  }
  return Status::Ok();
}

Status SetValidity(X509* cert, std::int64_t not_before_offset_s, int days) {
  // One "now" for both ends, so the lifetime is exactly `days` days.
  std::time_t now = std::time(nullptr);
  if (!X509_time_adj_ex(X509_getm_notBefore(cert), 0, static_cast<long>(not_before_offset_s),
                        &now) ||
      !X509_time_adj_ex(X509_getm_notAfter(cert), days, static_cast<long>(not_before_offset_s),
                        &now)) {
    return Internal("setting the validity period");
  }
  return Status::Ok();
}

Status SetCommonName(X509* cert, const std::string& cn, bool also_issuer) {
  NamePtr name(X509_NAME_new());
  if (!name ||
      X509_NAME_add_entry_by_txt(name.get(), "CN", MBSTRING_UTF8,
                                 reinterpret_cast<const unsigned char*>(cn.data()),
                                 static_cast<int>(cn.size()), -1, 0) != 1 ||
      X509_set_subject_name(cert, name.get()) != 1 ||
      (also_issuer && X509_set_issuer_name(cert, name.get()) != 1)) {
    return Internal("setting the subject name \"" + cn + "\"");
  }
  return Status::Ok();
}

// Adds one extension in OpenSSL's config syntax ("critical,CA:TRUE"). `ctx` names the
// subject and the issuer, which subjectKeyIdentifier and authorityKeyIdentifier read.
Status AddExtension(X509* cert, X509V3_CTX* ctx, int nid, const std::string& value) {
  ExtensionPtr ext(X509V3_EXT_conf_nid(nullptr, ctx, nid, value.c_str()));
  if (!ext || X509_add_ext(cert, ext.get(), -1) != 1) {
    return Internal(std::string("adding the ") + OBJ_nid2sn(nid) + " extension \"" + value + "\"");
  }
  return Status::Ok();
}

Result<std::string> CertToPem(X509* cert) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (!bio || PEM_write_bio_X509(bio.get(), cert) != 1)
    return Internal("writing a certificate as PEM");
  char* data = nullptr;
  long len = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<std::size_t>(len));
}

Result<std::string> KeyToPem(EVP_PKEY* key) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (!bio ||
      PEM_write_bio_PrivateKey(bio.get(), key, nullptr, nullptr, 0, nullptr, nullptr) != 1) {
    return Internal("writing a private key as PEM");
  }
  char* data = nullptr;
  long len = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<std::size_t>(len));
}

Result<PemPair> ToPem(X509* cert, EVP_PKEY* key) {
  Result<std::string> cert_pem = CertToPem(cert);
  if (!cert_pem.ok()) return cert_pem.status();
  Result<std::string> key_pem = KeyToPem(key);
  if (!key_pem.ok()) return key_pem.status();
  return PemPair{std::move(cert_pem).value(), std::move(key_pem).value()};
}

Result<PkeyPtr> ParseKeyPem(std::string_view pem) {
  ERR_clear_error();
  BioPtr bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  if (!bio) return Internal("reading a private key");
  // An empty passphrase instead of OpenSSL's default callback: our keys are unencrypted, and
  // OpenSSL must never prompt on a terminal for one (an encrypted key just fails to load).
  PkeyPtr key(PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, const_cast<char*>("")));
  if (!key) return OpensslError(StatusCode::kInvalidArgument, "no unencrypted PEM private key");
  return key;
}

// `ca` is a CA certificate with its key: the key matches and the certificate may sign.
Status CheckCa(X509* ca_cert, EVP_PKEY* ca_key) {
  if (X509_check_private_key(ca_cert, ca_key) != 1) {
    ERR_clear_error();
    return Status::InvalidArgument("the CA's private key does not belong to its certificate");
  }
  if (X509_check_ca(ca_cert) == 0) {
    return Status::InvalidArgument("the CA certificate is not a CA (no basicConstraints CA:TRUE)");
  }
  return Status::Ok();
}

// ---- Files ----

Result<std::string> ReadSmallFile(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY);
  if (fd < 0) {
    int err = errno;
    if (err == ENOENT) return Status::NotFound(path + ": no such file");
    return Status::FromErrno("cannot open " + path, err);
  }
  std::string out;
  char buf[16384];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      int err = errno;
      ::close(fd);
      return Status::FromErrno("cannot read " + path, err);
    }
    if (n == 0) break;
    out.append(buf, static_cast<std::size_t>(n));
    if (out.size() > kMaxPemFileBytes) {
      ::close(fd);
      return Status::InvalidArgument(path + ": larger than " +
                                     std::to_string(kMaxPemFileBytes >> 20) +
                                     " MiB, not a certificate or key file");
    }
  }
  ::close(fd);
  return out;
}

// Refuses an existing name, a dangling symlink included (O_EXCL would refuse it later).
Status CheckAbsent(const std::string& path) {
  struct stat st;
  if (::lstat(path.c_str(), &st) == 0) {
    return Status::InvalidArgument(path + " already exists; not overwriting");
  }
  if (errno != ENOENT) return Status::FromErrno("cannot check " + path, errno);
  return Status::Ok();
}

// `*created` says whether the file now exists because of this call, so a caller undoing a
// failed batch removes only its own files.
Status WriteNewFile(const std::string& path, const std::string& contents, bool* created) {
  *created = false;
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) {
    if (errno == EEXIST) return Status::InvalidArgument(path + " already exists; not overwriting");
    return Status::FromErrno("cannot create " + path, errno);
  }
  *created = true;
  Status s;
  // A umask such as 0277 would leave 0400: the mode is the documented one whatever the umask
  // (it can only have removed bits, never added any for others).
  if (::fchmod(fd, 0600) != 0) s = Status::FromErrno("cannot chmod " + path, errno);
  std::size_t off = 0;
  while (s.ok() && off < contents.size()) {
    ssize_t n = ::write(fd, contents.data() + off, contents.size() - off);
    if (n < 0) {
      if (errno == EINTR) continue;
      s = Status::FromErrno("cannot write " + path, errno);
      break;
    }
    off += static_cast<std::size_t>(n);
  }
  if (s.ok() && ::fsync(fd) != 0) s = Status::FromErrno("cannot sync " + path, errno);
  if (::close(fd) != 0 && s.ok()) s = Status::FromErrno("cannot close " + path, errno);
  return s;
}

// The new names are durable only once their folder is synced.
Status SyncDir(const std::string& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return Status::FromErrno("cannot open " + dir, errno);
  Status s;
  if (::fsync(fd) != 0) s = Status::FromErrno("cannot sync " + dir, errno);
  ::close(fd);
  return s;
}

// Writes every (path, contents) as a new 0600 file, or none: each name is checked first,
// and the files already written are removed when a later one fails.
Status WriteAllNew(const std::string& dir,
                   const std::vector<std::pair<std::string, std::string>>& files) {
  for (const auto& [path, contents] : files) {
    if (Status s = CheckAbsent(path); !s.ok()) return s;
  }
  for (std::size_t i = 0; i < files.size(); ++i) {
    bool created = false;
    Status s = WriteNewFile(files[i].first, files[i].second, &created);
    if (!s.ok()) {
      for (std::size_t j = 0; j < i + (created ? 1 : 0); ++j) ::unlink(files[j].first.c_str());
      return s;
    }
  }
  return SyncDir(dir);
}

std::string Join(const std::string& dir, const std::string& name) {
  return (fs::path(dir) / name).string();
}

}  // namespace

// ---- Identities ----

std::string TlsIdentity::ToString() const {
  return role == Role::kNode ? "node " + std::to_string(rank) : "client " + name;
}

std::string IdentityUri(const TlsIdentity& id) {
  return id.role == TlsIdentity::Role::kNode ? std::string(kNodeUriPrefix) + std::to_string(id.rank)
                                             : std::string(kClientUriPrefix) + id.name;
}

std::optional<TlsIdentity> ParseIdentityUri(std::string_view uri) {
  TlsIdentity id;
  if (uri.substr(0, kNodeUriPrefix.size()) == kNodeUriPrefix) {
    std::string_view digits = uri.substr(kNodeUriPrefix.size());
    if (digits.empty() || digits.size() > 3 || digits[0] == '0') return std::nullopt;
    int rank = 0;
    for (char c : digits) {
      if (c < '0' || c > '9') return std::nullopt;
      rank = rank * 10 + (c - '0');
    }
    if (rank < 1 || rank > kMaxRank) return std::nullopt;
    id.role = TlsIdentity::Role::kNode;
    id.rank = static_cast<Rank>(rank);
    return id;
  }
  if (uri.substr(0, kClientUriPrefix.size()) == kClientUriPrefix) {
    std::string_view name = uri.substr(kClientUriPrefix.size());
    if (name.empty() || name.size() > kMaxClientNameLength || !IsAlnum(name[0])) {
      return std::nullopt;
    }
    for (char c : name) {
      if (!IsNameChar(c)) return std::nullopt;
    }
    id.role = TlsIdentity::Role::kClient;
    id.name = std::string(name);
    return id;
  }
  return std::nullopt;
}

std::optional<TlsIdentity> IdentityOfCertificate(X509* cert) {
  ATOMDISK_CHECK(cert != nullptr);
  int critical = 0;
  // Null as well when the certificate has two subjectAltName extensions (critical == -2):
  // which of them to believe would be a guess.
  GeneralNamesPtr names(static_cast<GENERAL_NAMES*>(
      X509_get_ext_d2i(cert, NID_subject_alt_name, &critical, nullptr)));
  if (!names) {
    ERR_clear_error();
    return std::nullopt;
  }
  std::optional<TlsIdentity> found;
  int ours = 0;
  for (int i = 0; i < sk_GENERAL_NAME_num(names.get()); ++i) {
    const GENERAL_NAME* gn = sk_GENERAL_NAME_value(names.get(), i);
    if (gn->type != GEN_URI) continue;
    const ASN1_IA5STRING* s = gn->d.uniformResourceIdentifier;
    std::string_view uri(reinterpret_cast<const char*>(ASN1_STRING_get0_data(s)),
                         static_cast<std::size_t>(ASN1_STRING_length(s)));
    // URI schemes ignore case: "ATOMDISK:..." counts as a second claim, never as none.
    if (uri.size() < kUriPrefix.size()) continue;
    bool is_ours = true;
    for (std::size_t k = 0; k < kUriPrefix.size(); ++k) {
      char c = uri[k];
      if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
      is_ours &= c == kUriPrefix[k];
    }
    if (!is_ours) continue;
    ++ours;
    found = ParseIdentityUri(uri);
  }
  if (ours != 1) return std::nullopt;
  return found;
}

std::string CertificateFingerprint(X509* cert) {
  ATOMDISK_CHECK(cert != nullptr);
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  // Fails only without SHA-256 or memory: a broken installation, as in hmac.cc.
  ATOMDISK_CHECK(X509_digest(cert, EVP_sha256(), md, &len) == 1 && len == 32);
  return ToHex(std::span<const std::uint8_t>(md, len));
}

Result<X509Ptr> ParseCertificatePem(std::string_view pem) {
  ERR_clear_error();
  BioPtr bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  if (!bio) return Internal("reading a certificate");
  X509Ptr cert(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
  if (!cert) {
    return OpensslError(StatusCode::kCorruption,
                        "no PEM certificate (-----BEGIN CERTIFICATE-----) could be read");
  }
  return cert;
}

// ---- Making certificates ----

Result<PemPair> MakeClusterCa(const std::string& cluster_id_hex, int days) {
  if (cluster_id_hex.size() != 32 || !IsHex(cluster_id_hex)) {
    return Status::InvalidArgument("cluster id \"" + cluster_id_hex +
                                   "\" is not 32 hex digits (cluster.toml's cluster_id)");
  }
  if (Status s = CheckDays(days); !s.ok()) return s;
  ERR_clear_error();
  Result<PkeyPtr> key = NewKey();
  if (!key.ok()) return key.status();
  X509Ptr cert(X509_new());
  if (!cert || X509_set_version(cert.get(), X509_VERSION_3) != 1 ||
      X509_set_pubkey(cert.get(), key->get()) != 1) {
    return Internal("making the CA certificate");
  }
  for (Status s : {SetRandomSerial(cert.get()), SetValidity(cert.get(), -3600, days),
                   SetCommonName(cert.get(), "atomdisk cluster CA " + cluster_id_hex, true)}) {
    if (!s.ok()) return s;
  }
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, cert.get(), cert.get(), nullptr, nullptr, 0);
  // pathlen 0: the CA signs leaves only, so a stolen leaf key can never mint certificates.
  for (Status s :
       {AddExtension(cert.get(), &ctx, NID_basic_constraints, "critical,CA:TRUE,pathlen:0"),
        AddExtension(cert.get(), &ctx, NID_key_usage, "critical,keyCertSign,cRLSign"),
        AddExtension(cert.get(), &ctx, NID_subject_key_identifier, "hash")}) {
    if (!s.ok()) return s;
  }
  if (X509_sign(cert.get(), key->get(), EVP_sha256()) == 0) {
    return Internal("signing the CA certificate");
  }
  return ToPem(cert.get(), key->get());
}

Result<PemPair> IssueCertificate(const PemPair& ca, const TlsIdentity& id, int days,
                                 std::int64_t not_before_offset_s) {
  const std::string uri = IdentityUri(id);
  std::optional<TlsIdentity> parsed = ParseIdentityUri(uri);
  if (!parsed || !(*parsed == id)) {
    return Status::InvalidArgument(
        "cannot issue a certificate for \"" + uri + "\": a node's rank must be 1.." +
        std::to_string(kMaxRank) + ", a client's name 1.." + std::to_string(kMaxClientNameLength) +
        " letters, digits, '.', '_' or '-', starting with a letter or digit");
  }
  if (Status s = CheckDays(days); !s.ok()) return s;
  // Ten years either way is far beyond any clock skew; more is a mistaken argument.
  if (not_before_offset_s < -3650LL * 86400 || not_before_offset_s > 3650LL * 86400) {
    return Status::InvalidArgument("certificate start offset of " +
                                   std::to_string(not_before_offset_s) +
                                   " s is more than ten years away");
  }
  Result<X509Ptr> ca_cert = ParseCertificatePem(ca.cert_pem);
  if (!ca_cert.ok()) return Status(ca_cert.status().code(), "CA: " + ca_cert.status().message());
  Result<PkeyPtr> ca_key = ParseKeyPem(ca.key_pem);
  if (!ca_key.ok()) return Status(ca_key.status().code(), "CA: " + ca_key.status().message());
  if (Status s = CheckCa(ca_cert->get(), ca_key->get()); !s.ok()) return s;

  Result<PkeyPtr> key = NewKey();
  if (!key.ok()) return key.status();
  X509Ptr cert(X509_new());
  if (!cert || X509_set_version(cert.get(), X509_VERSION_3) != 1 ||
      X509_set_pubkey(cert.get(), key->get()) != 1 ||
      X509_set_issuer_name(cert.get(), X509_get_subject_name(ca_cert->get())) != 1) {
    return Internal("making the certificate of " + id.ToString());
  }
  for (Status s : {SetRandomSerial(cert.get()), SetValidity(cert.get(), not_before_offset_s, days),
                   SetCommonName(cert.get(), id.ToString(), false)}) {
    if (!s.ok()) return s;
  }
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, ca_cert->get(), cert.get(), nullptr, nullptr, 0);
  // The URI holds only [A-Za-z0-9._:-] (checked above), so the config syntax cannot be
  // broken out of with a comma.
  for (Status s : {AddExtension(cert.get(), &ctx, NID_basic_constraints, "critical,CA:FALSE"),
                   AddExtension(cert.get(), &ctx, NID_key_usage, "critical,digitalSignature"),
                   AddExtension(cert.get(), &ctx, NID_ext_key_usage, "serverAuth,clientAuth"),
                   AddExtension(cert.get(), &ctx, NID_subject_alt_name, "URI:" + uri),
                   AddExtension(cert.get(), &ctx, NID_subject_key_identifier, "hash"),
                   AddExtension(cert.get(), &ctx, NID_authority_key_identifier, "keyid:always")}) {
    if (!s.ok()) return s;
  }
  if (X509_sign(cert.get(), ca_key->get(), EVP_sha256()) == 0) {
    return Internal("signing the certificate of " + id.ToString());
  }
  return ToPem(cert.get(), key->get());
}

// ---- Files of a cluster ----

Status WriteClusterTls(const std::string& dir, const std::string& cluster_id_hex,
                       const std::vector<Rank>& ranks) {
  std::set<int> seen;
  for (Rank r : ranks) {
    if (r < 1 || r > kMaxRank) {
      return Status::InvalidArgument("rank " + std::to_string(r) + " is outside 1..254");
    }
    if (!seen.insert(r).second) {
      return Status::InvalidArgument("rank " + std::to_string(r) + " given twice");
    }
  }
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return Status::IOError("cannot create " + dir + ": " + ec.message());
  // Every name is checked before the first key is made: a refusal costs nothing.
  std::vector<std::pair<std::string, std::string>> files;
  std::vector<std::pair<std::string, TlsIdentity>> leaves;
  for (Rank r : ranks) {
    leaves.push_back({"node-" + std::to_string(r),
                      TlsIdentity{.role = TlsIdentity::Role::kNode, .rank = r, .name = {}}});
  }
  leaves.push_back({"client", TlsIdentity{.role = TlsIdentity::Role::kClient, .name = "client"}});
  files.push_back({Join(dir, "ca.crt"), ""});
  files.push_back({Join(dir, "ca.key"), ""});
  for (const auto& [base, id] : leaves) {
    files.push_back({Join(dir, base + ".crt"), ""});
    files.push_back({Join(dir, base + ".key"), ""});
  }
  for (const auto& [path, contents] : files) {
    if (Status s = CheckAbsent(path); !s.ok()) return s;
  }

  Result<PemPair> ca = MakeClusterCa(cluster_id_hex, kCaCertDays);
  if (!ca.ok()) return ca.status();
  files[0].second = ca->cert_pem;
  files[1].second = ca->key_pem;
  for (std::size_t i = 0; i < leaves.size(); ++i) {
    Result<PemPair> leaf = IssueCertificate(*ca, leaves[i].second, kLeafCertDays);
    if (!leaf.ok()) return leaf.status();
    files[2 + 2 * i].second = std::move(leaf->cert_pem);
    files[3 + 2 * i].second = std::move(leaf->key_pem);
  }
  return WriteAllNew(dir, files);
}

std::pair<std::string, std::string> IssuedFilePaths(const std::string& dir, const TlsIdentity& id) {
  const std::string base =
      id.role == TlsIdentity::Role::kNode ? "node-" + std::to_string(id.rank) : "client-" + id.name;
  return {Join(dir, base + ".crt"), Join(dir, base + ".key")};
}

Result<std::string> IssueFromClusterCa(const std::string& dir, const TlsIdentity& id, int days) {
  // The identity is checked before any file is read: a client name becomes part of a file
  // name, and only a valid one ("../x" is not) may.
  std::optional<TlsIdentity> parsed = ParseIdentityUri(IdentityUri(id));
  if (!parsed || !(*parsed == id)) {
    return Status::InvalidArgument("\"" + IdentityUri(id) +
                                   "\" is no valid identity: a node's rank must be 1..254, a "
                                   "client's name 1.." +
                                   std::to_string(kMaxClientNameLength) +
                                   " letters, digits, '.', '_' or '-', starting with a letter or "
                                   "digit");
  }
  if (Status s = CheckDays(days); !s.ok()) return s;
  const auto [cert_path, key_path] = IssuedFilePaths(dir, id);
  for (const std::string& p : {cert_path, key_path}) {
    if (Status s = CheckAbsent(p); !s.ok()) return s;
  }
  PemPair ca;
  for (auto [name, out] : {std::pair{"ca.crt", &ca.cert_pem}, std::pair{"ca.key", &ca.key_pem}}) {
    Result<std::string> text = ReadSmallFile(Join(dir, name));
    if (!text.ok()) return text.status();
    *out = std::move(text).value();
  }
  Result<PemPair> leaf = IssueCertificate(ca, id, days);
  if (!leaf.ok()) {
    // Name the files: the CA's problems are in them.
    return Status(leaf.status().code(), Join(dir, "ca.crt") + " + " + Join(dir, "ca.key") + ": " +
                                            leaf.status().message());
  }
  Result<X509Ptr> cert = ParseCertificatePem(leaf->cert_pem);
  if (!cert.ok()) return cert.status();
  if (Status s = WriteAllNew(dir, {{cert_path, leaf->cert_pem}, {key_path, leaf->key_pem}});
      !s.ok()) {
    return s;
  }
  return CertificateFingerprint(cert->get());
}

// ---- Describing ----

namespace {

std::string NameToString(const X509_NAME* name) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (!bio || X509_NAME_print_ex(bio.get(), name, 0, XN_FLAG_RFC2253) < 0) {
    ERR_clear_error();
    return "?";
  }
  char* data = nullptr;
  long len = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<std::size_t>(len));
}

std::optional<std::int64_t> UnixTime(const ASN1_TIME* t) {
  std::tm tm{};
  if (ASN1_TIME_to_tm(t, &tm) != 1) {
    ERR_clear_error();
    return std::nullopt;
  }
  return static_cast<std::int64_t>(::timegm(&tm));
}

}  // namespace

Result<CertificateDetails> ReadCertificateDetails(const std::string& path) {
  Result<std::string> text = ReadSmallFile(path);
  if (!text.ok()) return text.status();
  Result<X509Ptr> cert = ParseCertificatePem(*text);
  if (!cert.ok()) {
    return Status::InvalidArgument(path + ": not a certificate file: " + cert.status().message());
  }
  X509* x = cert->get();
  CertificateDetails d;
  d.fingerprint = CertificateFingerprint(x);
  d.identity = IdentityOfCertificate(x);
  d.subject = NameToString(X509_get_subject_name(x));
  d.issuer = NameToString(X509_get_issuer_name(x));
  std::optional<std::int64_t> nb = UnixTime(X509_get0_notBefore(x));
  std::optional<std::int64_t> na = UnixTime(X509_get0_notAfter(x));
  if (!nb || !na) {
    return Status::InvalidArgument(path + ": the certificate's validity dates cannot be read");
  }
  d.not_before = *nb;
  d.not_after = *na;
  d.is_ca = X509_check_ca(x) != 0;
  return d;
}

Result<std::pair<std::string, std::optional<TlsIdentity>>> DescribeCertificateFile(
    const std::string& path) {
  Result<CertificateDetails> d = ReadCertificateDetails(path);
  if (!d.ok()) return d.status();
  return std::pair{d->fingerprint, d->identity};
}

std::string FormatUtcTime(std::int64_t unix_seconds) {
  std::time_t t = static_cast<std::time_t>(unix_seconds);
  std::tm tm{};
  if (::gmtime_r(&t, &tm) == nullptr) return std::to_string(unix_seconds);
  char buf[64];
  std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S UTC", &tm);
  return buf;
}

}  // namespace atomdisk
