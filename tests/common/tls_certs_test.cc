// Tests for the TLS certificate module (common/tls_certs.h): identity URIs and their hostile
// spellings, a CA and its leaves checked by OpenSSL's own verifier (X509_verify_cert), the
// files of a cluster and of one more certificate, and describing a certificate file.
#include "common/tls_certs.h"

#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace atomdisk {

// For gtest's messages: "node 3" instead of a byte dump.
void PrintTo(const TlsIdentity& id, std::ostream* os) { *os << IdentityUri(id); }

namespace {

namespace fs = std::filesystem;
using Role = TlsIdentity::Role;

constexpr char kClusterId[] = "00112233445566778899aabbccddeeff";

TlsIdentity Node(Rank r) { return TlsIdentity{.role = Role::kNode, .rank = r, .name = {}}; }
TlsIdentity Client(std::string name) {
  return TlsIdentity{.role = Role::kClient, .rank = 0, .name = std::move(name)};
}

X509Ptr Load(const std::string& pem) {
  Result<X509Ptr> cert = ParseCertificatePem(pem);
  EXPECT_TRUE(cert.ok()) << cert.status().ToString();
  return cert.ok() ? std::move(cert).value() : X509Ptr();
}

// X509_verify_cert of `leaf` against a store holding only `ca`, for `purpose` (0: any):
// X509_V_OK or the verifier's error.
int VerifyError(const std::string& ca_pem, const std::string& leaf_pem, int purpose = 0) {
  X509Ptr ca = Load(ca_pem), leaf = Load(leaf_pem);
  if (!ca || !leaf) return -1;
  std::unique_ptr<X509_STORE, decltype(&X509_STORE_free)> store(X509_STORE_new(), &X509_STORE_free);
  std::unique_ptr<X509_STORE_CTX, decltype(&X509_STORE_CTX_free)> ctx(X509_STORE_CTX_new(),
                                                                      &X509_STORE_CTX_free);
  EXPECT_EQ(X509_STORE_add_cert(store.get(), ca.get()), 1);
  EXPECT_EQ(X509_STORE_CTX_init(ctx.get(), store.get(), leaf.get(), nullptr), 1);
  if (purpose != 0) {
    EXPECT_EQ(X509_STORE_CTX_set_purpose(ctx.get(), purpose), 1);
  }
  int ok = X509_verify_cert(ctx.get());
  int err = X509_STORE_CTX_get_error(ctx.get());
  EXPECT_EQ(ok == 1, err == X509_V_OK) << X509_verify_cert_error_string(err);
  return err;
}

PemPair MakeCa() {
  Result<PemPair> ca = MakeClusterCa(kClusterId, kCaCertDays);
  EXPECT_TRUE(ca.ok()) << ca.status().ToString();
  return ca.ok() ? ca.value() : PemPair{};
}

PemPair Issue(const PemPair& ca, const TlsIdentity& id) {
  Result<PemPair> leaf = IssueCertificate(ca, id, kLeafCertDays);
  EXPECT_TRUE(leaf.ok()) << id.ToString() << ": " << leaf.status().ToString();
  return leaf.ok() ? leaf.value() : PemPair{};
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

bool Contains(const std::string& hay, const std::string& needle) {
  return hay.find(needle) != std::string::npos;
}

// ---- Identity URIs ----

TEST(TlsIdentityTest, UrisRoundTrip) {
  for (const TlsIdentity& id :
       {Node(1), Node(3), Node(254), Client("client"), Client("laptop-7"), Client("a.b_c-D9"),
        Client("9"), Client(std::string(kMaxClientNameLength, 'x'))}) {
    std::optional<TlsIdentity> back = ParseIdentityUri(IdentityUri(id));
    ASSERT_TRUE(back.has_value()) << IdentityUri(id);
    EXPECT_EQ(*back, id) << IdentityUri(id);
  }
  EXPECT_EQ(IdentityUri(Node(3)), "atomdisk:node:3");
  EXPECT_EQ(IdentityUri(Client("laptop-7")), "atomdisk:client:laptop-7");
  EXPECT_EQ(Node(3).ToString(), "node 3");
  EXPECT_EQ(Client("laptop-7").ToString(), "client laptop-7");
}

TEST(TlsIdentityTest, ParseRefusesEverythingElse) {
  for (const std::string& uri :
       std::vector<std::string>{"",
                                "atomdisk:",
                                "atomdisk:node:",
                                "atomdisk:node:0",
                                "atomdisk:node:255",
                                "atomdisk:node:256",
                                "atomdisk:node:1x",
                                "atomdisk:node:x1",
                                "atomdisk:node:-1",
                                "atomdisk:node:+1",
                                "atomdisk:node: 1",
                                "atomdisk:node:1 ",
                                "atomdisk:node:01",
                                "atomdisk:node:00001",
                                "atomdisk:node:4294967297",
                                "atomdisk:node:99999999999999999999",
                                "ATOMDISK:node:1",
                                "atomdisk:NODE:1",
                                "atomdisk:nodes:1",
                                "atomdisk:node:1:2",
                                "xatomdisk:node:1",
                                "atomdisk:client:",
                                "atomdisk:client:../x",
                                "atomdisk:client:a/b",
                                "atomdisk:client:/etc",
                                "atomdisk:client:.",
                                "atomdisk:client:..",
                                "atomdisk:client:-rf",
                                "atomdisk:client:_x",
                                "atomdisk:client:a b",
                                "atomdisk:client:a,URI:atomdisk:node:1",
                                "atomdisk:client:caf\xc3\xa9",
                                "atomdisk:client:a\nb",
                                std::string("atomdisk:client:a\0b", 19),
                                "atomdisk:client:" + std::string(kMaxClientNameLength + 1, 'x'),
                                "atomdisk:client:" + std::string(100000, 'x'),
                                "atomdisk:admin:root",
                                "https://atomdisk/node/1"}) {
    EXPECT_FALSE(ParseIdentityUri(uri).has_value()) << "\"" << uri << "\"";
  }
}

// ---- A CA and its leaves ----

TEST(TlsCertsTest, LeavesVerifyAgainstTheirCaAndCarryTheirIdentity) {
  PemPair ca = MakeCa();
  EXPECT_TRUE(Contains(ca.cert_pem, "-----BEGIN CERTIFICATE-----"));
  EXPECT_TRUE(Contains(ca.key_pem, "-----BEGIN PRIVATE KEY-----"));
  X509Ptr ca_cert = Load(ca.cert_pem);
  ASSERT_TRUE(ca_cert);
  EXPECT_EQ(X509_check_ca(ca_cert.get()), 1);
  EXPECT_FALSE(IdentityOfCertificate(ca_cert.get()).has_value());  // no SAN at all

  for (const TlsIdentity& id : {Node(3), Client("laptop-7")}) {
    PemPair leaf = Issue(ca, id);
    EXPECT_EQ(VerifyError(ca.cert_pem, leaf.cert_pem), X509_V_OK) << id.ToString();
    // Both ends of a connection present theirs: each certificate serves either way.
    EXPECT_EQ(VerifyError(ca.cert_pem, leaf.cert_pem, X509_PURPOSE_SSL_SERVER), X509_V_OK);
    EXPECT_EQ(VerifyError(ca.cert_pem, leaf.cert_pem, X509_PURPOSE_SSL_CLIENT), X509_V_OK);
    X509Ptr cert = Load(leaf.cert_pem);
    ASSERT_TRUE(cert);
    std::optional<TlsIdentity> back = IdentityOfCertificate(cert.get());
    ASSERT_TRUE(back.has_value()) << id.ToString();
    EXPECT_EQ(*back, id);
    EXPECT_EQ(X509_check_ca(cert.get()), 0);
    // The SAN holds the one URI, nothing else.
    GENERAL_NAMES* names = static_cast<GENERAL_NAMES*>(
        X509_get_ext_d2i(cert.get(), NID_subject_alt_name, nullptr, nullptr));
    ASSERT_NE(names, nullptr);
    EXPECT_EQ(sk_GENERAL_NAME_num(names), 1);
    GENERAL_NAMES_free(names);
    char cn[128] = {};
    X509_NAME_get_text_by_NID(X509_get_subject_name(cert.get()), NID_commonName, cn, sizeof cn);
    EXPECT_EQ(std::string(cn), id.ToString());
    const std::string fp = CertificateFingerprint(cert.get());
    EXPECT_EQ(fp.size(), 64u);
    EXPECT_EQ(fp.find_first_not_of("0123456789abcdef"), std::string::npos) << fp;
    EXPECT_NE(fp, CertificateFingerprint(ca_cert.get()));
  }
  // Two certificates for one identity differ (new key, new serial), and so do their prints.
  X509Ptr a = Load(Issue(ca, Node(3)).cert_pem), b = Load(Issue(ca, Node(3)).cert_pem);
  EXPECT_NE(CertificateFingerprint(a.get()), CertificateFingerprint(b.get()));
  EXPECT_NE(ASN1_INTEGER_cmp(X509_get0_serialNumber(a.get()), X509_get0_serialNumber(b.get())), 0);
}

TEST(TlsCertsTest, ALeafOfAnotherCaDoesNotVerify) {
  PemPair ours = MakeCa(), theirs = MakeCa();  // the same cluster id, even
  PemPair leaf = Issue(theirs, Node(1));
  EXPECT_EQ(VerifyError(ours.cert_pem, leaf.cert_pem),
            X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY);
  EXPECT_EQ(VerifyError(theirs.cert_pem, leaf.cert_pem), X509_V_OK);
}

TEST(TlsCertsTest, AnExpiredLeafDoesNotVerify) {
  PemPair ca = MakeCa();
  Result<PemPair> old = IssueCertificate(ca, Node(2), 1, -10 * 86400);
  ASSERT_TRUE(old.ok()) << old.status().ToString();
  EXPECT_EQ(VerifyError(ca.cert_pem, old->cert_pem), X509_V_ERR_CERT_HAS_EXPIRED);
}

TEST(TlsCertsTest, IssuingRefusesBadIdentitiesAndBadCas) {
  PemPair ca = MakeCa();
  for (const TlsIdentity& id : {Node(0), Node(255), Client(""), Client("../x"), Client("a,b"),
                                Client(std::string(kMaxClientNameLength + 1, 'y'))}) {
    Result<PemPair> r = IssueCertificate(ca, id, kLeafCertDays);
    ASSERT_FALSE(r.ok()) << IdentityUri(id);
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << r.status().ToString();
  }
  // A node identity with a stray name is not a node identity: what would its URI mean?
  TlsIdentity odd = Node(1);
  odd.name = "x";
  EXPECT_FALSE(IssueCertificate(ca, odd, kLeafCertDays).ok());
  for (int days : {0, -1, kMaxCertDays + 1}) {
    EXPECT_FALSE(IssueCertificate(ca, Node(1), days).ok()) << days;
    EXPECT_FALSE(MakeClusterCa(kClusterId, days).ok()) << days;
  }
  for (const char* id : {"", "xyz", "00112233445566778899aabbccddeefg", "0011"}) {
    Result<PemPair> r = MakeClusterCa(id, kCaCertDays);
    ASSERT_FALSE(r.ok()) << id;
    EXPECT_TRUE(Contains(r.status().message(), "32 hex digits")) << r.status().message();
  }

  // The key of another CA, a leaf posing as a CA, and PEM that is not PEM.
  PemPair other = MakeCa();
  Result<PemPair> mixed = IssueCertificate({ca.cert_pem, other.key_pem}, Node(1), 30);
  ASSERT_FALSE(mixed.ok());
  EXPECT_TRUE(Contains(mixed.status().message(), "does not belong")) << mixed.status().message();
  Result<PemPair> by_leaf = IssueCertificate(Issue(ca, Node(1)), Node(2), 30);
  ASSERT_FALSE(by_leaf.ok());
  EXPECT_TRUE(Contains(by_leaf.status().message(), "not a CA")) << by_leaf.status().message();
  Result<PemPair> garbage = IssueCertificate({"hello", "world"}, Node(1), 30);
  ASSERT_FALSE(garbage.ok());
  EXPECT_TRUE(Contains(garbage.status().message(), "no PEM certificate"))
      << garbage.status().message();
  Result<PemPair> no_key = IssueCertificate({ca.cert_pem, ""}, Node(1), 30);
  ASSERT_FALSE(no_key.ok());
  EXPECT_TRUE(Contains(no_key.status().message(), "private key")) << no_key.status().message();
}

// A certificate made here with OpenSSL directly, self-signed, carrying `san` (config syntax).
std::string SelfSignedWithSan(const std::string& san) {
  std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)> key(EVP_EC_gen("P-256"), &EVP_PKEY_free);
  X509Ptr cert(X509_new());
  EXPECT_EQ(X509_set_version(cert.get(), X509_VERSION_3), 1);
  ASN1_INTEGER_set(X509_get_serialNumber(cert.get()), 7);
  X509_gmtime_adj(X509_getm_notBefore(cert.get()), 0);
  X509_gmtime_adj(X509_getm_notAfter(cert.get()), 3600);
  X509_set_pubkey(cert.get(), key.get());
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, cert.get(), cert.get(), nullptr, nullptr, 0);
  X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, NID_subject_alt_name, san.c_str());
  EXPECT_NE(ext, nullptr) << san;
  X509_add_ext(cert.get(), ext, -1);
  X509_EXTENSION_free(ext);
  EXPECT_NE(X509_sign(cert.get(), key.get(), EVP_sha256()), 0);
  std::unique_ptr<BIO, decltype(&BIO_free)> bio(BIO_new(BIO_s_mem()), &BIO_free);
  PEM_write_bio_X509(bio.get(), cert.get());
  char* data = nullptr;
  long len = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<std::size_t>(len));
}

TEST(TlsCertsTest, IdentityWantsExactlyOneValidAtomdiskUri) {
  auto identity = [](const std::string& san) {
    X509Ptr cert = Load(SelfSignedWithSan(san));
    return cert ? IdentityOfCertificate(cert.get()) : std::nullopt;
  };
  EXPECT_EQ(identity("URI:atomdisk:node:5"), Node(5));
  // Other names beside ours are someone else's business.
  EXPECT_EQ(identity("DNS:node5.example,URI:https://example,URI:atomdisk:client:ops"),
            Client("ops"));
  EXPECT_FALSE(identity("DNS:node5.example"));
  EXPECT_FALSE(identity("URI:atomdisk:node:5,URI:atomdisk:node:6"));
  EXPECT_FALSE(identity("URI:atomdisk:node:5,URI:atomdisk:node:5"));
  EXPECT_FALSE(identity("URI:atomdisk:node:5,URI:ATOMDISK:client:x"));
  EXPECT_FALSE(identity("URI:atomdisk:node:0"));
  EXPECT_FALSE(identity("URI:atomdisk:client:../x"));
}

// ---- Files ----

class TlsFilesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/atomdisk-tls-test-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  std::string Path(const std::string& name) const { return (fs::path(dir_) / name).string(); }
  static unsigned Mode(const std::string& path) {
    struct stat st;
    EXPECT_EQ(::stat(path.c_str(), &st), 0) << path;
    return st.st_mode & 07777;
  }
  std::size_t FileCount() const {
    std::size_t n = 0;
    for ([[maybe_unused]] const auto& e : fs::directory_iterator(dir_)) ++n;
    return n;
  }

  std::string dir_;
};

TEST_F(TlsFilesTest, WriteClusterTlsWritesPrivateFilesOnce) {
  ASSERT_TRUE(WriteClusterTls(dir_, kClusterId, {1, 2, 3}).ok());
  const std::vector<std::string> names = {"ca.crt",     "ca.key",     "node-1.crt", "node-1.key",
                                          "node-2.crt", "node-2.key", "node-3.crt", "node-3.key",
                                          "client.crt", "client.key"};
  for (const std::string& name : names) EXPECT_EQ(Mode(Path(name)), 0600u) << name;
  EXPECT_EQ(FileCount(), names.size());
  const std::string ca = ReadFile(Path("ca.crt"));
  for (const auto& [name, id] :
       {std::pair{"node-2.crt", Node(2)}, std::pair{"client.crt", Client("client")}}) {
    std::string pem = ReadFile(Path(name));
    EXPECT_EQ(VerifyError(ca, pem), X509_V_OK) << name;
    X509Ptr cert = Load(pem);
    ASSERT_TRUE(cert);
    EXPECT_EQ(IdentityOfCertificate(cert.get()), id) << name;
  }
  // The key beside each certificate is its own.
  for (const char* base : {"ca", "node-1", "client"}) {
    X509Ptr cert = Load(ReadFile(Path(std::string(base) + ".crt")));
    std::string key_pem = ReadFile(Path(std::string(base) + ".key"));
    std::unique_ptr<BIO, decltype(&BIO_free)> bio(
        BIO_new_mem_buf(key_pem.data(), static_cast<int>(key_pem.size())), &BIO_free);
    std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)> key(
        PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr), &EVP_PKEY_free);
    ASSERT_TRUE(cert && key) << base;
    EXPECT_EQ(X509_check_private_key(cert.get(), key.get()), 1) << base;
  }

  // A second run in the same folder changes nothing and names a file in the way.
  const std::string before = ReadFile(Path("ca.key"));
  Status again = WriteClusterTls(dir_, kClusterId, {1, 2, 3});
  ASSERT_FALSE(again.ok());
  EXPECT_TRUE(Contains(again.message(), Path("ca.crt"))) << again.message();
  EXPECT_TRUE(Contains(again.message(), "already exists")) << again.message();
  EXPECT_EQ(ReadFile(Path("ca.key")), before);
  EXPECT_EQ(FileCount(), names.size());
}

TEST_F(TlsFilesTest, WriteClusterTlsRefusesBadInputAndLeavesNothing) {
  EXPECT_FALSE(WriteClusterTls(dir_, kClusterId, {1, 0}).ok());
  EXPECT_FALSE(WriteClusterTls(dir_, kClusterId, {1, 255}).ok());
  Status twice = WriteClusterTls(dir_, kClusterId, {1, 2, 1});
  EXPECT_FALSE(twice.ok());
  EXPECT_TRUE(Contains(twice.message(), "twice")) << twice.message();
  EXPECT_FALSE(WriteClusterTls(dir_, "not-hex", {1}).ok());
  EXPECT_EQ(FileCount(), 0u);
  // One file in the way: refused before any other is written.
  std::ofstream(Path("node-2.key")) << "mine";
  Status s = WriteClusterTls(dir_, kClusterId, {1, 2});
  ASSERT_FALSE(s.ok());
  EXPECT_TRUE(Contains(s.message(), Path("node-2.key"))) << s.message();
  EXPECT_EQ(FileCount(), 1u);
  EXPECT_EQ(ReadFile(Path("node-2.key")), "mine");
}

TEST_F(TlsFilesTest, IssueFromClusterCaAddsANodeAndAClient) {
  ASSERT_TRUE(WriteClusterTls(dir_, kClusterId, {1, 2, 3}).ok());
  const std::string ca = ReadFile(Path("ca.crt"));
  for (const auto& [id, base] : {std::pair{Node(4), std::string("node-4")},
                                 std::pair{Client("laptop"), std::string("client-laptop")}}) {
    Result<std::string> fp = IssueFromClusterCa(dir_, id, 30);
    ASSERT_TRUE(fp.ok()) << fp.status().ToString();
    EXPECT_EQ(Mode(Path(base + ".crt")), 0600u);
    EXPECT_EQ(Mode(Path(base + ".key")), 0600u);
    X509Ptr cert = Load(ReadFile(Path(base + ".crt")));
    ASSERT_TRUE(cert);
    EXPECT_EQ(*fp, CertificateFingerprint(cert.get()));
    EXPECT_EQ(IdentityOfCertificate(cert.get()), id);
    EXPECT_EQ(VerifyError(ca, ReadFile(Path(base + ".crt"))), X509_V_OK);
    std::pair<std::string, std::string> paths = IssuedFilePaths(dir_, id);
    EXPECT_EQ(paths.first, Path(base + ".crt"));
    EXPECT_EQ(paths.second, Path(base + ".key"));
    // Never over an existing certificate.
    Result<std::string> again = IssueFromClusterCa(dir_, id, 30);
    ASSERT_FALSE(again.ok());
    EXPECT_TRUE(Contains(again.status().message(), Path(base + ".crt")))
        << again.status().message();
    EXPECT_EQ(*fp, CertificateFingerprint(Load(ReadFile(Path(base + ".crt"))).get()));
  }
  // Hostile names write nothing anywhere.
  const std::size_t files = FileCount();
  for (const TlsIdentity& id : {Client("../x"), Client("a/b"), Client(""), Node(0)}) {
    Result<std::string> r = IssueFromClusterCa(dir_, id, 30);
    ASSERT_FALSE(r.ok()) << IdentityUri(id);
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  }
  EXPECT_EQ(FileCount(), files);
  EXPECT_FALSE(fs::exists(fs::path(dir_).parent_path() / "x.crt"));
}

TEST_F(TlsFilesTest, IssueFromClusterCaNeedsTheCaKey) {
  ASSERT_TRUE(WriteClusterTls(dir_, kClusterId, {1}).ok());
  fs::remove(Path("ca.key"));
  Result<std::string> r = IssueFromClusterCa(dir_, Node(2), 30);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kNotFound);
  EXPECT_TRUE(Contains(r.status().message(), Path("ca.key"))) << r.status().message();
  EXPECT_FALSE(fs::exists(Path("node-2.crt")));
  // A key that is not the CA's is named with the files.
  std::ofstream(Path("ca.key")) << ReadFile(Path("node-1.key"));
  r = IssueFromClusterCa(dir_, Node(2), 30);
  ASSERT_FALSE(r.ok());
  EXPECT_TRUE(Contains(r.status().message(), "does not belong")) << r.status().message();
  EXPECT_TRUE(Contains(r.status().message(), Path("ca.key"))) << r.status().message();
  EXPECT_FALSE(fs::exists(Path("node-2.crt")));
}

TEST_F(TlsFilesTest, DescribeCertificateFile) {
  ASSERT_TRUE(WriteClusterTls(dir_, kClusterId, {7}).ok());
  auto node = DescribeCertificateFile(Path("node-7.crt"));
  ASSERT_TRUE(node.ok()) << node.status().ToString();
  EXPECT_EQ(node->first, CertificateFingerprint(Load(ReadFile(Path("node-7.crt"))).get()));
  EXPECT_EQ(node->second, Node(7));
  auto ca = DescribeCertificateFile(Path("ca.crt"));
  ASSERT_TRUE(ca.ok()) << ca.status().ToString();
  EXPECT_FALSE(ca->second.has_value());

  Result<CertificateDetails> d = ReadCertificateDetails(Path("ca.crt"));
  ASSERT_TRUE(d.ok());
  EXPECT_TRUE(d->is_ca);
  EXPECT_EQ(d->subject, std::string("CN=atomdisk cluster CA ") + kClusterId);
  EXPECT_EQ(d->not_after - d->not_before, std::int64_t{kCaCertDays} * 86400);
  d = ReadCertificateDetails(Path("node-7.crt"));
  ASSERT_TRUE(d.ok());
  EXPECT_FALSE(d->is_ca);
  EXPECT_EQ(d->subject, "CN=node 7");
  EXPECT_EQ(d->not_after - d->not_before, std::int64_t{kLeafCertDays} * 86400);
  EXPECT_EQ(FormatUtcTime(0), "1970-01-01 00:00:00 UTC");

  // Not a certificate: the error names the file and says so, in one line.
  std::ofstream(Path("notes.txt")) << "hello, not a certificate\n";
  for (const char* name : {"notes.txt", "node-7.key"}) {
    auto r = DescribeCertificateFile(Path(name));
    ASSERT_FALSE(r.ok()) << name;
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
    EXPECT_TRUE(Contains(r.status().message(), Path(name))) << r.status().message();
    EXPECT_TRUE(Contains(r.status().message(), "not a certificate")) << r.status().message();
    EXPECT_FALSE(Contains(r.status().message(), "\n")) << r.status().message();
  }
  auto missing = DescribeCertificateFile(Path("nope.crt"));
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_TRUE(Contains(missing.status().message(), Path("nope.crt")));
  EXPECT_FALSE(DescribeCertificateFile(dir_).ok());  // a folder
}

}  // namespace
}  // namespace atomdisk
