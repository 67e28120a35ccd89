#include "common/hmac.h"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <openssl/rand.h>

#include <algorithm>
#include <cctype>
#include <fstream>
#include <sstream>

namespace atomdisk {

struct Hmac::Impl {
  EVP_MAC* mac = nullptr;
  EVP_MAC_CTX* ctx = nullptr;
  ~Impl() {
    EVP_MAC_CTX_free(ctx);
    EVP_MAC_free(mac);
  }
};

Hmac::Hmac(std::span<const std::uint8_t> key)
    : key_(key.begin(), key.end()), impl_(std::make_unique<Impl>()) {
  impl_->mac = EVP_MAC_fetch(nullptr, OSSL_MAC_NAME_HMAC, nullptr);
  ATOMDISK_CHECK(impl_->mac != nullptr);
  impl_->ctx = EVP_MAC_CTX_new(impl_->mac);
  ATOMDISK_CHECK(impl_->ctx != nullptr);
  char digest[] = "SHA256";
  OSSL_PARAM params[] = {
      OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0),
      OSSL_PARAM_construct_end(),
  };
  // An empty key is legal HMAC; OpenSSL wants a non-null pointer for it.
  static const std::uint8_t kEmpty = 0;
  ATOMDISK_CHECK(
      EVP_MAC_init(impl_->ctx, key_.empty() ? &kEmpty : key_.data(), key_.size(), params) == 1);
}

Hmac::~Hmac() = default;

std::unique_ptr<Hmac> Hmac::Clone() const {
  ATOMDISK_CHECK(!zero_tag());
  return std::make_unique<Hmac>(key_);
}

Hmac::Hmac(ZeroTagKind) {}

Hmac& Hmac::ZeroTag() {
  static Hmac zero{ZeroTagKind{}};
  return zero;
}

MacTag Hmac::Compute(std::span<const std::uint8_t> data) {
  MacTag out{};
  if (zero_tag()) return out;
  // Re-initialising with a null key keeps the key and digest set in the constructor, which
  // avoids re-deriving the padded key blocks for every message.
  ATOMDISK_CHECK(EVP_MAC_init(impl_->ctx, nullptr, 0, nullptr) == 1);
  ATOMDISK_CHECK(EVP_MAC_update(impl_->ctx, data.data(), data.size()) == 1);
  std::size_t out_len = 0;
  ATOMDISK_CHECK(EVP_MAC_final(impl_->ctx, out.data(), &out_len, out.size()) == 1);
  ATOMDISK_CHECK(out_len == out.size());
  return out;
}

bool Hmac::Verify(std::span<const std::uint8_t> data, std::span<const std::uint8_t> tag) {
  if (tag.size() != 32) return false;
  if (zero_tag()) {
    // Not a secret comparison: the expected tag is public.
    return std::all_of(tag.begin(), tag.end(), [](std::uint8_t b) { return b == 0; });
  }
  MacTag expected = Compute(data);
  return CRYPTO_memcmp(expected.data(), tag.data(), expected.size()) == 0;
}

std::string ToHex(std::span<const std::uint8_t> bytes) {
  static const char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(bytes.size() * 2);
  for (auto b : bytes) {
    out.push_back(kHex[b >> 4]);
    out.push_back(kHex[b & 15]);
  }
  return out;
}

static int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

Result<std::vector<std::uint8_t>> ParseHex(std::string_view hex) {
  if (hex.size() % 2 != 0) {
    return Status::InvalidArgument("odd number of hex digits (" + std::to_string(hex.size()) + ")");
  }
  std::vector<std::uint8_t> out(hex.size() / 2);
  for (std::size_t i = 0; i < out.size(); ++i) {
    int hi = HexValue(hex[2 * i]), lo = HexValue(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) {
      return Status::InvalidArgument("non-hex character at position " + std::to_string(2 * i));
    }
    out[i] = static_cast<std::uint8_t>(hi << 4 | lo);
  }
  return out;
}

Result<std::vector<std::uint8_t>> ReadKeyFile(const std::string& path, std::size_t expected_bytes) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Status::NotFound("key file " + path + ": cannot open for reading");
  std::ostringstream ss;
  ss << in.rdbuf();
  std::string text = ss.str();
  if (text.size() > 4096) return Status::InvalidArgument("key file " + path + ": too large");
  std::size_t b = 0, e = text.size();
  while (b < e && std::isspace(static_cast<unsigned char>(text[b]))) ++b;
  while (e > b && std::isspace(static_cast<unsigned char>(text[e - 1]))) --e;
  std::string_view hex(text.data() + b, e - b);
  if (hex.size() != expected_bytes * 2) {
    return Status::InvalidArgument("key file " + path + ": expected " +
                                   std::to_string(expected_bytes * 2) + " hex characters (" +
                                   std::to_string(expected_bytes) + " bytes), found " +
                                   std::to_string(hex.size()));
  }
  auto key = ParseHex(hex);
  if (!key.ok()) return Status::InvalidArgument("key file " + path + ": " + key.status().message());
  return key;
}

std::vector<std::uint8_t> RandomBytes(std::size_t n) {
  std::vector<std::uint8_t> out(n);
  ATOMDISK_CHECK(RAND_bytes(out.data(), static_cast<int>(n)) == 1);
  return out;
}

std::uint64_t RandomU64() {
  std::uint64_t v = 0;
  ATOMDISK_CHECK(RAND_bytes(reinterpret_cast<unsigned char*>(&v), sizeof v) == 1);
  return v;
}

}  // namespace atomdisk
