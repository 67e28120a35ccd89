#include "common/config.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <sys/stat.h>
#include <toml++/toml.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <filesystem>
#include <set>

#include "common/hmac.h"
#include "common/tls_certs.h"

namespace atomdisk {
namespace fs = std::filesystem;

std::string NodeConfig::Address() const {
  if (host.find(':') != std::string::npos) return "[" + host + "]:" + std::to_string(port);
  return host + ":" + std::to_string(port);
}

Uuid ClusterConfig::ClusterId() const {
  Uuid id;
  if (!cluster_id_hex.empty()) {
    auto bytes = ParseHex(cluster_id_hex);
    ATOMDISK_CHECK(bytes.ok() && bytes->size() == id.bytes.size());
    std::copy(bytes->begin(), bytes->end(), id.bytes.begin());
    return id;
  }
  static constexpr char kLabel[] = "atomdisk cluster id";
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  ATOMDISK_CHECK(ctx != nullptr);
  ATOMDISK_CHECK(EVP_DigestInit_ex(ctx, EVP_sha256(), nullptr) == 1 &&
                 EVP_DigestUpdate(ctx, kLabel, sizeof(kLabel) - 1) == 1 &&
                 EVP_DigestUpdate(ctx, system_key.data(), system_key.size()) == 1 &&
                 EVP_DigestFinal_ex(ctx, digest, &len) == 1);
  EVP_MD_CTX_free(ctx);
  std::copy(digest, digest + id.bytes.size(), id.bytes.begin());
  return id;
}

const NodeConfig* ClusterConfig::FindNode(Rank rank) const {
  for (const auto& n : nodes) {
    if (n.rank == rank) return &n;
  }
  return nullptr;
}

Status ParseHostPort(const std::string& text, std::string* host, std::uint16_t* port) {
  std::string h, p;
  if (!text.empty() && text[0] == '[') {
    auto close = text.find(']');
    if (close == std::string::npos || close + 1 >= text.size() || text[close + 1] != ':') {
      return Status::InvalidArgument("address \"" + text + "\" is not [host]:port");
    }
    h = text.substr(1, close - 1);
    p = text.substr(close + 2);
  } else {
    auto colon = text.rfind(':');
    if (colon == std::string::npos || text.find(':') != colon) {
      return Status::InvalidArgument("address \"" + text + "\" is not host:port");
    }
    h = text.substr(0, colon);
    p = text.substr(colon + 1);
  }
  if (h.empty()) return Status::InvalidArgument("address \"" + text + "\" has no host");
  // Such a host is never valid, and WriteNewCluster could not quote it in TOML.
  if (std::any_of(h.begin(), h.end(),
                  [](unsigned char c) { return c <= ' ' || c == 0x7f || c == '"' || c == '\\'; })) {
    return Status::InvalidArgument("address \"" + text +
                                   "\": host has a space, quote, backslash or control character");
  }
  if (p.empty() || p.size() > 5 ||
      !std::all_of(p.begin(), p.end(), [](unsigned char c) { return c >= '0' && c <= '9'; })) {
    return Status::InvalidArgument("address \"" + text + "\" has no valid port");
  }
  unsigned long v = std::stoul(p);
  if (v == 0 || v > 65535) {
    return Status::InvalidArgument("address \"" + text + "\": port out of range 1-65535");
  }
  *host = h;
  *port = static_cast<std::uint16_t>(v);
  return Status::Ok();
}

namespace {

std::string Resolve(const fs::path& base, const std::string& p) {
  fs::path path(p);
  if (path.is_relative()) path = base / path;
  return path.lexically_normal().string();
}

std::string OctalMode(mode_t mode) {
  char buf[8];
  std::snprintf(buf, sizeof(buf), "%04o", static_cast<unsigned>(mode & 07777));
  return buf;
}

Status Err(const std::string& file, const std::string& what) {
  return Status::InvalidArgument(file + ": " + what);
}

// An optional top-level integer in [lo, hi]: left as it is when absent, an error naming the
// key, its unit and its range when it is not such an integer.
Status OptionalInt(const toml::table& table, const std::string& path, const char* key,
                   std::int64_t lo, std::int64_t hi, const char* unit, std::int64_t* out) {
  if (!table[key]) return Status::Ok();
  auto v = table[key].value_exact<std::int64_t>();
  if (!v || *v < lo || *v > hi) {
    // Appended piece by piece: GCC 12's -Wrestrict misfires at -O3 on `"literal" + string`
    // chains once this function is inlined (a known compiler bug; Release builds fail on it).
    std::string what = "\"";
    what += key;
    what += "\" must be an integer";
    what += unit;
    what += " in ";
    what += std::to_string(lo);
    what += "..";
    what += std::to_string(hi);
    return Err(path, what);
  }
  *out = *v;
  return Status::Ok();
}

Status LoadTlsSettings(const toml::table& table, const std::string& path, const fs::path& base,
                       ConfigUse use, ClusterConfig* cfg);

}  // namespace

// Who else may read or replace a secret. Anyone who can write a key can swap in their own and
// then pose as a node or a client: refused, and so is a key in a folder where anyone can
// replace files, or one another user owns (they can chmod it at will). Anyone who can read the
// system key or a node's TLS key can pose as a node: refused. A client key readable by every
// local user lets each of them read and write the disk: allowed (one-user hosts, key mounts
// that cannot be narrowed), with a warning. Group read is the admin's choice.
Status CheckSecretFile(const std::string& path, const std::string& what, bool readable_by_all,
                       std::vector<std::string>* warnings) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return Status::FromErrno("stat " + path, errno);
  const std::string name = what + " " + path;
  const std::string fix = "; chmod 600 " + path + " (or 640 for a group)";
  if (st.st_mode & (S_IWOTH | S_IWGRP)) {
    return Status::InvalidArgument(
        name + " is writable by " + ((st.st_mode & S_IWOTH) ? "every user" : "its group") +
        " (mode " + OctalMode(st.st_mode) + "): they could replace the key" + fix);
  }
  const uid_t me = ::geteuid();
  if (st.st_uid != me && st.st_uid != 0) {
    return Status::InvalidArgument(name + " is owned by uid " + std::to_string(st.st_uid) +
                                   ", neither this user (uid " + std::to_string(me) +
                                   ") nor root: its owner could change it at will; chown " +
                                   std::to_string(me) + " " + path);
  }
  const std::string folder = fs::path(path).parent_path().string();
  struct stat dst;
  if (::stat(folder.empty() ? "." : folder.c_str(), &dst) == 0 && (dst.st_mode & S_IWOTH) &&
      !(dst.st_mode & S_ISVTX)) {
    return Status::InvalidArgument(
        name + " is in " + folder + ", a folder every user may write (mode " +
        OctalMode(dst.st_mode) + "): anyone could replace the file; chmod o-w " + folder +
        " or move the key");
  }
  if (st.st_mode & S_IROTH) {
    if (!readable_by_all) {
      return Status::InvalidArgument(name + " is readable by every user (mode " +
                                     OctalMode(st.st_mode) + "): anyone could pose as a node" +
                                     fix);
    }
    warnings->push_back(name + " is readable by every user (mode " + OctalMode(st.st_mode) +
                        "): any local user can read and write the disk" + fix);
  }
  return Status::Ok();
}

const char* TlsModeName(TlsMode mode) {
  switch (mode) {
    case TlsMode::kOff:
      return "off";
    case TlsMode::kAccept:
      return "accept";
    case TlsMode::kRequire:
      return "require";
  }
  return "?";
}

namespace {
std::string ExpandRank(std::string path, Rank rank) {
  const std::string token = "{rank}";
  for (auto at = path.find(token); at != std::string::npos; at = path.find(token)) {
    path.replace(at, token.size(), std::to_string(rank));
  }
  return path;
}
}  // namespace

std::string ClusterConfig::NodeCertFile(Rank rank) const {
  return ExpandRank(tls_node_cert_file, rank);
}
std::string ClusterConfig::NodeKeyFile(Rank rank) const {
  return ExpandRank(tls_node_key_file, rank);
}

Result<ClusterConfig> LoadClusterConfig(const std::string& path, ConfigUse use) {
  toml::table table;
  try {
    table = toml::parse_file(path);
  } catch (const toml::parse_error& e) {
    std::error_code ec;  // the throwing fs::exists escapes on ENAMETOOLONG, EACCES, ...
    if (!fs::exists(path, ec)) {
      return Status::NotFound(path + ": " + (ec ? ec.message() : "no such file"));
    }
    return Err(path, "line " + std::to_string(e.source().begin.line) + ": " +
                         std::string(e.description()));
  }
  ClusterConfig cfg;
  cfg.path = path;
  fs::path base = fs::absolute(fs::path(path)).parent_path();

  static const std::set<std::string> kTopKeys = {"sectors",
                                                 "client_key_file",
                                                 "system_key_file",
                                                 "nodes",
                                                 "cluster_id",
                                                 "resync_rate_mb",
                                                 "sync_serve_rate_mb",
                                                 "resync_interval_s",
                                                 "scrub_interval_s",
                                                 "peer_timeout_ms",
                                                 "max_connections",
                                                 "max_connections_per_source",
                                                 "max_queued_response_mb",
                                                 "tls",
                                                 "plaintext_clients",
                                                 "tls_ca_file",
                                                 "tls_node_cert_file",
                                                 "tls_node_key_file",
                                                 "tls_client_cert_file",
                                                 "tls_client_key_file",
                                                 "tls_revoked"};
  for (const auto& [k, v] : table) {
    if (!kTopKeys.count(std::string(k.str()))) {
      return Err(path, "unknown key \"" + std::string(k.str()) + "\"");
    }
  }
  auto sectors = table["sectors"].value_exact<std::int64_t>();  // value<> takes true as 1
  if (!sectors) return Err(path, "\"sectors\" is missing or not an integer");
  if (*sectors <= 0 || static_cast<std::uint64_t>(*sectors) > kMaxSectors) {
    return Err(path, "\"sectors\" = " + std::to_string(*sectors) + " is outside 1.." +
                         std::to_string(kMaxSectors));
  }
  cfg.sectors = static_cast<std::uint64_t>(*sectors);

  if (table["cluster_id"]) {
    auto id = table["cluster_id"].value<std::string>();
    auto bytes =
        id ? ParseHex(*id) : Result<std::vector<std::uint8_t>>(Status::InvalidArgument(""));
    if (!id || !bytes.ok() || bytes->size() != 16) {
      return Err(path, "\"cluster_id\" must be a string of 32 hex digits");
    }
    cfg.cluster_id_hex = *id;
  }
  for (auto [key, field] : {std::pair{"resync_rate_mb", &cfg.resync_rate_mb},
                            std::pair{"sync_serve_rate_mb", &cfg.sync_serve_rate_mb}}) {
    if (!table[key]) continue;
    auto v = table[key].value<double>();  // integers convert too
    if (!v || !(*v >= 0) || *v > 1e6) {
      return Err(path,
                 "\"" + std::string(key) + "\" must be a number in 0..1000000 (0 = unlimited)");
    }
    *field = *v;
  }
  for (auto [key, field] : {std::pair{"resync_interval_s", &cfg.resync_interval_s},
                            std::pair{"scrub_interval_s", &cfg.scrub_interval_s}}) {
    if (!table[key]) continue;
    auto v = table[key].value_exact<std::int64_t>();
    if (!v || *v < 0 || *v > 365LL * 24 * 3600) {
      return Err(path, "\"" + std::string(key) +
                           "\" must be an integer number of seconds in 0..31536000 (0 = off)");
    }
    *field = *v;
  }

  for (Status s :
       {OptionalInt(table, path, "peer_timeout_ms", kMinPeerTimeoutMs, kMaxPeerTimeoutMs,
                    " number of milliseconds", &cfg.peer_timeout_ms),
        OptionalInt(table, path, "max_connections", kMinMaxConnections, kMaxMaxConnections, "",
                    &cfg.max_connections),
        OptionalInt(table, path, "max_connections_per_source", kMinMaxConnectionsPerSource,
                    kMaxMaxConnections, "", &cfg.max_connections_per_source),
        OptionalInt(table, path, "max_queued_response_mb", kMinQueuedResponseMb,
                    kMaxQueuedResponseMb, " number of MiB", &cfg.max_queued_response_mb)}) {
    if (!s.ok()) return s;
  }
  if (cfg.max_connections_per_source > cfg.max_connections) {
    // The default follows a lower max_connections; a value written in the file must fit.
    if (!table["max_connections_per_source"]) {
      cfg.max_connections_per_source = cfg.max_connections;
    } else {
      return Err(path, "\"max_connections_per_source\" (" +
                           std::to_string(cfg.max_connections_per_source) +
                           ") is above \"max_connections\" (" +
                           std::to_string(cfg.max_connections) + ")");
    }
  }

  auto ck = table["client_key_file"].value<std::string>();
  auto sk = table["system_key_file"].value<std::string>();
  if (!ck) return Err(path, "\"client_key_file\" is missing or not a string");
  if (!sk) return Err(path, "\"system_key_file\" is missing or not a string");

  const toml::array* nodes = table["nodes"].as_array();
  if (!nodes || nodes->empty()) return Err(path, "no [[nodes]] entries");
  if (nodes->size() > static_cast<std::size_t>(kMaxRank)) return Err(path, "too many nodes");
  std::set<int> ranks;
  std::set<std::string> addresses;
  for (std::size_t i = 0; i < nodes->size(); ++i) {
    std::string where = "nodes[" + std::to_string(i + 1) + "]";
    const toml::table* n = (*nodes)[i].as_table();
    if (!n) return Err(path, where + " is not a table");
    for (const auto& [k, v] : *n) {
      std::string key(k.str());
      if (key != "rank" && key != "address" && key != "data_dir" && key != "metrics_address") {
        return Err(path, where + ": unknown key \"" + key + "\"");
      }
    }
    NodeConfig node;
    auto rank = (*n)["rank"].value_exact<std::int64_t>();
    if (!rank) return Err(path, where + ": \"rank\" is missing or not an integer");
    if (*rank < 1 || *rank > kMaxRank) {
      return Err(path, where + ": rank " + std::to_string(*rank) + " is outside 1..254");
    }
    if (!ranks.insert(static_cast<int>(*rank)).second) {
      return Err(path, where + ": rank " + std::to_string(*rank) + " used twice");
    }
    node.rank = static_cast<Rank>(*rank);
    auto address = (*n)["address"].value<std::string>();
    if (!address) return Err(path, where + ": \"address\" is missing or not a string");
    Status s = ParseHostPort(*address, &node.host, &node.port);
    if (!s.ok()) return Err(path, where + ": " + s.message());
    if (!addresses.insert(node.Address()).second) {
      return Err(path, where + ": address " + *address + " used twice");
    }
    if (auto ma = (*n)["metrics_address"].value<std::string>()) {
      Status ms = ParseHostPort(*ma, &node.metrics_host, &node.metrics_port);
      if (!ms.ok()) return Err(path, where + ": metrics_address: " + ms.message());
    } else if ((*n)["metrics_address"]) {
      return Err(path, where + ": \"metrics_address\" is not a string");
    }
    if (auto dd = (*n)["data_dir"].value<std::string>()) {
      if (dd->empty()) return Err(path, where + ": \"data_dir\" is empty");
      node.data_dir = Resolve(base, *dd);
    } else if ((*n)["data_dir"]) {
      return Err(path, where + ": \"data_dir\" is not a string");
    }
    cfg.nodes.push_back(std::move(node));
  }
  // Nodes on different hosts may share a metrics_address ("127.0.0.1:9101" on each), but none
  // may be a node's address.
  for (const NodeConfig& node : cfg.nodes) {
    if (node.metrics_port == 0) continue;
    const std::string m =
        NodeConfig{.host = node.metrics_host, .port = node.metrics_port}.Address();
    if (addresses.count(m)) {
      return Err(path, "node " + std::to_string(node.rank) + ": metrics_address " + m +
                           " is also a node address");
    }
  }
  std::sort(cfg.nodes.begin(), cfg.nodes.end(),
            [](const NodeConfig& a, const NodeConfig& b) { return a.rank < b.rank; });

  const std::string client_key_path = Resolve(base, *ck);
  auto client_key = ReadKeyFile(client_key_path, kClientKeySize);
  if (!client_key.ok()) return Err(path, client_key.status().message());
  if (Status s = CheckSecretFile(client_key_path, "client key file", true, &cfg.warnings);
      !s.ok()) {
    return Err(path, s.message());
  }
  cfg.client_key = std::move(client_key).value();
  if (use == ConfigUse::kNode) {
    const std::string system_key_path = Resolve(base, *sk);
    auto system_key = ReadKeyFile(system_key_path, kSystemKeySize);
    if (!system_key.ok()) return Err(path, system_key.status().message());
    if (Status s = CheckSecretFile(system_key_path, "system key file", false, &cfg.warnings);
        !s.ok()) {
      return Err(path, s.message());
    }
    cfg.system_key = std::move(system_key).value();
  }
  if (Status s = LoadTlsSettings(table, path, base, use, &cfg); !s.ok()) return s;
  return cfg;
}

namespace {

Status LoadTlsSettings(const toml::table& table, const std::string& path, const fs::path& base,
                       ConfigUse use, ClusterConfig* cfg) {
  if (table["tls"]) {
    auto mode = table["tls"].value<std::string>();
    if (mode && *mode == "off") {
      cfg->tls = TlsMode::kOff;
    } else if (mode && *mode == "accept") {
      cfg->tls = TlsMode::kAccept;
    } else if (mode && *mode == "require") {
      cfg->tls = TlsMode::kRequire;
    } else {
      return Err(path, "\"tls\" must be \"off\", \"accept\" or \"require\"");
    }
  }
  if (table["plaintext_clients"]) {
    auto v = table["plaintext_clients"].value_exact<bool>();
    if (!v) return Err(path, "\"plaintext_clients\" must be true or false");
    cfg->plaintext_clients = *v;
  }
  struct File {
    const char* key;
    const char* fallback;
    std::string* out;
  };
  for (const File& f : {File{"tls_ca_file", "tls/ca.crt", &cfg->tls_ca_file},
                        File{"tls_node_cert_file", "tls/node-{rank}.crt", &cfg->tls_node_cert_file},
                        File{"tls_node_key_file", "tls/node-{rank}.key", &cfg->tls_node_key_file},
                        File{"tls_client_cert_file", "tls/client.crt", &cfg->tls_client_cert_file},
                        File{"tls_client_key_file", "tls/client.key", &cfg->tls_client_key_file}}) {
    std::string value = f.fallback;
    if (table[f.key]) {
      auto v = table[f.key].value<std::string>();
      if (!v || v->empty()) return Err(path, "\"" + std::string(f.key) + "\" must be a file name");
      value = *v;
    }
    *f.out = Resolve(base, value);
  }
  if (table["tls_revoked"]) {
    const toml::array* list = table["tls_revoked"].as_array();
    if (!list) return Err(path, "\"tls_revoked\" must be a list of certificate fingerprints");
    for (const auto& item : *list) {
      auto fp = item.value<std::string>();
      std::string lower;
      if (fp) {
        for (char c : *fp) {
          if (c == ':') continue;  // "AB:CD:..." as openssl x509 -fingerprint prints it
          lower.push_back(static_cast<char>(std::tolower(static_cast<unsigned char>(c))));
        }
      }
      auto bytes = fp ? ParseHex(lower) : Result<std::vector<std::uint8_t>>(Status::NotFound(""));
      if (!bytes.ok() || bytes->size() != 32) {
        return Err(path,
                   "\"tls_revoked\": each entry must be a SHA-256 fingerprint (64 hex "
                   "digits, as `atomdisk tls show FILE` prints it)");
      }
      cfg->tls_revoked.push_back(lower);
    }
  }
  if (!cfg->tls_revoked.empty() && cfg->plaintext_clients) {
    // A revoked client still holds client.key: in clear, that is all a node asks for.
    cfg->warnings.push_back(
        path + ": tls_revoked lists certificates, but clients in clear are served " +
        (cfg->tls == TlsMode::kRequire ? "(plaintext_clients = true)"
                                       : "(tls is not \"require\")") +
        ": a revoked client that holds client.key can still read and write in clear; set "
        "plaintext_clients = false under tls = \"require\", or replace client.key (docs/TLS.md, "
        "\"Revoking a credential\")");
  }
  if (cfg->tls == TlsMode::kOff) {
    cfg->warnings.push_back(
        path +
        ": tls = \"off\": data and keys' signatures cross the network in clear, and a "
        "recorded client write can be replayed (README, \"Security model\"; docs/TLS.md "
        "says how to switch TLS on one node at a time)");
    return Status::Ok();
  }
  // The files this program will use must be there and, for keys, private.
  std::vector<std::pair<std::string, std::string>> certs = {{cfg->tls_ca_file, "TLS CA file"}};
  std::vector<std::string> keys;
  if (use == ConfigUse::kClient) {
    certs.emplace_back(cfg->tls_client_cert_file, "TLS client certificate");
    keys.push_back(cfg->tls_client_key_file);
  }
  for (const auto& [file, what] : certs) {
    std::error_code ec;
    if (!fs::exists(file, ec)) {
      return Err(path, what + " " + file + " does not exist (tls = \"" + TlsModeName(cfg->tls) +
                           "\"; `atomdisk tls issue` makes certificates, docs/TLS.md)");
    }
  }
  for (const std::string& key : keys) {
    if (Status s = CheckSecretFile(key, "TLS key file", false, &cfg->warnings); !s.ok()) {
      return Err(path, s.message());
    }
  }
  return Status::Ok();
}

Status WriteFileExclusive(const std::string& path, const std::string& contents, mode_t mode) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
  if (fd < 0) {
    if (errno == EEXIST) return Status::InvalidArgument(path + " already exists; not overwriting");
    return Status::FromErrno("cannot create " + path, errno);
  }
  std::size_t off = 0;
  while (off < contents.size()) {
    ssize_t n = ::write(fd, contents.data() + off, contents.size() - off);
    if (n < 0) {
      if (errno == EINTR) continue;
      int err = errno;
      ::close(fd);
      return Status::FromErrno("cannot write " + path, err);
    }
    off += static_cast<std::size_t>(n);
  }
  if (::fsync(fd) != 0) {
    int err = errno;
    ::close(fd);
    return Status::FromErrno("cannot sync " + path, err);
  }
  ::close(fd);
  return Status::Ok();
}

}  // namespace

Status WriteNewCluster(const std::string& dir, const std::vector<std::string>& addresses,
                       std::uint64_t sectors, bool tls) {
  if (addresses.empty()) return Status::InvalidArgument("no node addresses given");
  if (addresses.size() > static_cast<std::size_t>(kMaxRank)) {
    return Status::InvalidArgument("too many nodes");
  }
  if (sectors == 0 || sectors > kMaxSectors) {
    return Status::InvalidArgument("sectors must be in 1.." + std::to_string(kMaxSectors));
  }
  std::set<std::string> seen;
  std::string toml = "# atomdisk cluster configuration (see README: Configuration reference)\n";
  toml += "sectors = " + std::to_string(sectors) + "  # " +
          std::to_string(sectors * kSectorSize / (1024 * 1024)) + " MiB\n";
  toml += "client_key_file = \"client.key\"\nsystem_key_file = \"system.key\"\n";
  // Ties every node's data_dir to this cluster (docs/RESYNC.md).
  const std::string cluster_id = ToHex(RandomBytes(16));
  toml += "cluster_id = \"" + cluster_id + "\"\n";
  if (tls) {
    toml +=
        "# Mutual TLS 1.3 between nodes and atomdisk clients; certificates in tls/ (docs/TLS.md)\n"
        "tls = \"require\"\n"
        "# Serve clients of the atdd protocol (plaintext, HMAC-signed frames) too\n"
        "plaintext_clients = true\n";
  } else {
    toml += "tls = \"off\"\n";
  }
  for (std::size_t i = 0; i < addresses.size(); ++i) {
    std::string host;
    std::uint16_t port;
    Status s = ParseHostPort(addresses[i], &host, &port);
    if (!s.ok()) return s;
    // Compare as the loader does, so "h:7001" and "[h]:07001" count as the same node.
    if (!seen.insert(NodeConfig{.host = host, .port = port}.Address()).second) {
      return Status::InvalidArgument("address " + addresses[i] + " given twice");
    }
    toml += "\n[[nodes]]\nrank = " + std::to_string(i + 1) + "\naddress = \"" + addresses[i] +
            "\"\ndata_dir = \"data/" + std::to_string(i + 1) + "\"\n";
  }
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return Status::IOError("cannot create " + dir + ": " + ec.message());
  fs::path d(dir);
  for (const char* f : {"cluster.toml", "client.key", "system.key"}) {
    if (fs::exists(d / f)) {
      return Status::InvalidArgument((d / f).string() + " already exists; not overwriting");
    }
  }
  Status s = WriteFileExclusive((d / "client.key").string(),
                                ToHex(RandomBytes(kClientKeySize)) + "\n", 0600);
  if (s.ok()) {
    s = WriteFileExclusive((d / "system.key").string(), ToHex(RandomBytes(kSystemKeySize)) + "\n",
                           0600);
  }
  if (s.ok() && tls) {
    std::vector<Rank> ranks;
    for (std::size_t i = 0; i < addresses.size(); ++i) ranks.push_back(static_cast<Rank>(i + 1));
    fs::create_directory(d / "tls", ec);
    if (ec) return Status::IOError("cannot create " + (d / "tls").string() + ": " + ec.message());
    fs::permissions(d / "tls", fs::perms::owner_all, ec);
    s = WriteClusterTls((d / "tls").string(), cluster_id, ranks);
  }
  if (s.ok()) s = WriteFileExclusive((d / "cluster.toml").string(), toml, 0644);
  if (!s.ok()) return s;
  // The parent of every data_dir above: atomdiskd creates a missing data_dir, never its parent.
  fs::create_directory(d / "data", ec);
  if (ec) return Status::IOError("cannot create " + (d / "data").string() + ": " + ec.message());
  return Status::Ok();
}

}  // namespace atomdisk
