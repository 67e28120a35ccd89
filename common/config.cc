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

enum class KeyKind { kClient, kSystem };

std::string OctalMode(mode_t mode) {
  char buf[8];
  std::snprintf(buf, sizeof(buf), "%04o", static_cast<unsigned>(mode & 07777));
  return buf;
}

// Who else may read or replace a key file. Anyone who can write either key can swap in their
// own and then pose as a node or a client: refused. Anyone who can read the system key can
// pose as a node (forge WriteProcs, Acks, resync replies): refused. A client key readable by
// every local user lets each of them read and write the disk: allowed (one-user hosts, key
// mounts that cannot be narrowed), with a warning. Group bits are the admin's choice.
Status CheckKeyFileMode(const std::string& key_path, KeyKind kind,
                        std::vector<std::string>* warnings) {
  struct stat st;
  if (::stat(key_path.c_str(), &st) != 0) return Status::FromErrno("stat " + key_path, errno);
  const std::string what =
      std::string(kind == KeyKind::kSystem ? "system" : "client") + " key file " + key_path;
  const std::string fix = "; chmod 600 " + key_path + " (or 640 for a group)";
  if (st.st_mode & S_IWOTH) {
    return Status::InvalidArgument(what + " is writable by every user (mode " +
                                   OctalMode(st.st_mode) + "): anyone could replace the key" + fix);
  }
  if (st.st_mode & S_IROTH) {
    if (kind == KeyKind::kSystem) {
      return Status::InvalidArgument(what + " is readable by every user (mode " +
                                     OctalMode(st.st_mode) + "): anyone could pose as a node" +
                                     fix);
    }
    warnings->push_back(what + " is readable by every user (mode " + OctalMode(st.st_mode) +
                        "): any local user can read and write the disk" + fix);
  }
  return Status::Ok();
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
    return Err(path, "\"" + std::string(key) + "\" must be an integer" + unit + " in " +
                         std::to_string(lo) + ".." + std::to_string(hi));
  }
  *out = *v;
  return Status::Ok();
}

}  // namespace

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
                                                 "max_queued_response_mb"};
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
  if (Status s = CheckKeyFileMode(client_key_path, KeyKind::kClient, &cfg.warnings); !s.ok()) {
    return Err(path, s.message());
  }
  cfg.client_key = std::move(client_key).value();
  if (use == ConfigUse::kNode) {
    const std::string system_key_path = Resolve(base, *sk);
    auto system_key = ReadKeyFile(system_key_path, kSystemKeySize);
    if (!system_key.ok()) return Err(path, system_key.status().message());
    if (Status s = CheckKeyFileMode(system_key_path, KeyKind::kSystem, &cfg.warnings); !s.ok()) {
      return Err(path, s.message());
    }
    cfg.system_key = std::move(system_key).value();
  }
  return cfg;
}

namespace {

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
                       std::uint64_t sectors) {
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
  toml += "cluster_id = \"" + ToHex(RandomBytes(16)) + "\"\n";
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
  if (s.ok()) s = WriteFileExclusive((d / "cluster.toml").string(), toml, 0644);
  if (!s.ok()) return s;
  // The parent of every data_dir above: atomdiskd creates a missing data_dir, never its parent.
  fs::create_directory(d / "data", ec);
  if (ec) return Status::IOError("cannot create " + (d / "data").string() + ": " + ec.message());
  return Status::Ok();
}

}  // namespace atomdisk
