// The IDENTITY file: TOML parsed with toml++, written atomically (docs/RESYNC.md).

#include "daemon/sync/identity.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <toml++/toml.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <set>

namespace atomdisk {
namespace {

constexpr char kIdentityFileName[] = "IDENTITY";
constexpr std::int64_t kFormat = 1;
// A real IDENTITY is a few hundred bytes; anything much larger is not one.
constexpr std::size_t kMaxIdentityBytes = 64 * 1024;

Status Bad(const std::string& path, const std::string& what) {
  return Status::Corruption(path + ": " + what);
}

// Reads the whole file. nullopt if it does not exist.
Result<std::optional<std::string>> ReadSmallFile(const std::string& path) {
  int fd;
  do {
    fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  } while (fd < 0 && errno == EINTR);
  if (fd < 0) {
    if (errno == ENOENT) return std::optional<std::string>();
    return Status::FromErrno("open " + path, errno);
  }
  std::string contents;
  char buf[4096];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof(buf));
    if (n < 0) {
      if (errno == EINTR) continue;
      Status s = Status::FromErrno("read " + path, errno);
      ::close(fd);
      return s;
    }
    if (n == 0) break;
    contents.append(buf, static_cast<std::size_t>(n));
    if (contents.size() > kMaxIdentityBytes) {
      ::close(fd);
      return Bad(path, "larger than " + std::to_string(kMaxIdentityBytes) + " bytes");
    }
  }
  ::close(fd);
  return std::optional<std::string>(std::move(contents));
}

Status WriteAll(int fd, const std::string& path, const std::string& contents) {
  std::size_t off = 0;
  while (off < contents.size()) {
    ssize_t n = ::write(fd, contents.data() + off, contents.size() - off);
    if (n < 0) {
      if (errno == EINTR) continue;
      return Status::FromErrno("write " + path, errno);
    }
    off += static_cast<std::size_t>(n);
  }
  return Status::Ok();
}

Status FsyncDir(const std::string& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return Status::FromErrno("open " + dir, errno);
  int r = ::fsync(fd);
  int err = errno;
  ::close(fd);
  if (r != 0) return Status::FromErrno("fsync " + dir, err);
  return Status::Ok();
}

bool ValidRank(std::int64_t r) { return r >= 1 && r <= kMaxRank; }

std::string Serialize(const Identity& id) {
  std::string voters;
  for (Rank r : id.voters) {
    if (!voters.empty()) voters += ", ";
    voters += std::to_string(r);
  }
  auto b = [](bool v) { return v ? std::string("true") : std::string("false"); };
  return "# atomdisk node identity (docs/RESYNC.md). Written by the node; do not edit.\n"
         "format = " +
         std::to_string(kFormat) + "\ncluster_id = \"" + id.cluster_id.ToString() +
         "\"\nrank = " + std::to_string(id.rank) + "\nvoting = " + b(id.voting) + "\nvoters = [" +
         voters + "]\nwrite_ts_floor = " + std::to_string(id.write_ts_floor) +
         "\nwrite_ts_lease = " + std::to_string(id.write_ts_lease) +
         "\nresync_active = " + b(id.resync_active) + "\nresync_join = " + b(id.resync_join) +
         "\nresync_next_window = " + std::to_string(id.resync_next_window) + "\n" +
         // Only while true, so an older binary reads every other IDENTITY.
         (id.genesis ? "genesis = true\n" : "") + (id.registering ? "registering = true\n" : "");
}

Result<Identity> Parse(const std::string& path, const std::string& contents) {
  toml::table table;
  try {
    table = toml::parse(contents, path);
  } catch (const toml::parse_error& e) {
    return Bad(path, "line " + std::to_string(e.source().begin.line) + ": " +
                         std::string(e.description()));
  }
  // Unknown keys are refused rather than dropped: a newer version's field may matter, and a
  // rewrite by this version would lose it.
  static const std::set<std::string> kKeys = {
      "format",         "cluster_id",     "rank",        "voting",
      "voters",         "resync_active",  "resync_join", "resync_next_window",
      "write_ts_floor", "write_ts_lease", "genesis",     "registering"};
  for (const auto& [k, v] : table) {
    if (!kKeys.count(std::string(k.str()))) {
      return Bad(path, "unknown key \"" + std::string(k.str()) + "\"");
    }
  }
  auto format = table["format"].value_exact<std::int64_t>();  // value<> takes true as 1
  if (!format) return Bad(path, "\"format\" is missing or not an integer");
  if (*format != kFormat) {
    return Bad(path, "format " + std::to_string(*format) + " is not supported (expected " +
                         std::to_string(kFormat) + ")");
  }
  Identity id;
  auto cluster_id = table["cluster_id"].value_exact<std::string>();
  if (!cluster_id) return Bad(path, "\"cluster_id\" is missing or not a string");
  Result<Uuid> uuid = ParseUuid(*cluster_id);
  if (!uuid.ok()) return Bad(path, "cluster_id: " + uuid.status().message());
  id.cluster_id = *uuid;

  auto rank = table["rank"].value_exact<std::int64_t>();
  if (!rank) return Bad(path, "\"rank\" is missing or not an integer");
  if (!ValidRank(*rank)) {
    return Bad(path, "rank " + std::to_string(*rank) + " is outside 1..254");
  }
  id.rank = static_cast<Rank>(*rank);

  for (auto [key, field] :
       {std::pair{"voting", &id.voting}, std::pair{"resync_active", &id.resync_active},
        std::pair{"resync_join", &id.resync_join}}) {
    auto v = table[key].value_exact<bool>();
    if (!v) return Bad(path, "\"" + std::string(key) + "\" is missing or not a boolean");
    *field = *v;
  }

  const toml::array* voters = table["voters"].as_array();
  if (!voters) return Bad(path, "\"voters\" is missing or not an array");
  for (std::size_t i = 0; i < voters->size(); ++i) {
    auto r = (*voters)[i].value_exact<std::int64_t>();
    if (!r) return Bad(path, "voters[" + std::to_string(i) + "] is not an integer");
    if (!ValidRank(*r)) {
      return Bad(path, "voter " + std::to_string(*r) + " is outside 1..254");
    }
    id.AddVoter(static_cast<Rank>(*r));  // sorted, unique whatever the file's order
  }

  auto window = table["resync_next_window"].value_exact<std::int64_t>();
  if (!window) return Bad(path, "\"resync_next_window\" is missing or not an integer");
  if (*window < 0) {
    return Bad(path, "resync_next_window " + std::to_string(*window) + " is negative");
  }
  id.resync_next_window = static_cast<std::uint64_t>(*window);

  // Optional: files written before they existed have none, which means no floor / no lease.
  for (auto [key, field] : {std::pair{"write_ts_floor", &id.write_ts_floor},
                            std::pair{"write_ts_lease", &id.write_ts_lease}}) {
    if (!table.contains(key)) continue;
    auto v = table[key].value_exact<std::int64_t>();
    if (!v) return Bad(path, "\"" + std::string(key) + "\" is not an integer");
    if (*v < 0) return Bad(path, std::string(key) + " " + std::to_string(*v) + " is negative");
    *field = static_cast<std::uint64_t>(*v);
  }
  // Optional, written only while true.
  for (auto [key, field] :
       {std::pair{"genesis", &id.genesis}, std::pair{"registering", &id.registering}}) {
    if (!table.contains(key)) continue;
    auto v = table[key].value_exact<bool>();
    if (!v) return Bad(path, "\"" + std::string(key) + "\" is not a boolean");
    *field = *v;
    if (*v && id.voting) return Bad(path, std::string(key) + " is set on a voting identity");
  }
  return id;
}

int HexDigit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

}  // namespace

bool Identity::AddVoter(Rank r) {
  auto it = std::lower_bound(voters.begin(), voters.end(), r);
  if (it != voters.end() && *it == r) return false;
  voters.insert(it, r);
  return true;
}

bool Identity::HasVoter(Rank r) const {
  return std::binary_search(voters.begin(), voters.end(), r);
}

std::string IdentityPath(const std::string& data_dir) { return data_dir + "/" + kIdentityFileName; }

Result<std::optional<Identity>> LoadIdentity(const std::string& data_dir) {
  const std::string path = IdentityPath(data_dir);
  Result<std::optional<std::string>> contents = ReadSmallFile(path);
  if (!contents.ok()) return contents.status();
  if (!contents->has_value()) return std::optional<Identity>();
  Result<Identity> id = Parse(path, **contents);
  if (!id.ok()) return id.status();
  return std::optional<Identity>(std::move(*id));
}

Status SaveIdentity(const std::string& data_dir, const Identity& identity) {
  // What the file could not represent, or Load would refuse, only a bug produces.
  ATOMDISK_CHECK(ValidRank(identity.rank));
  ATOMDISK_CHECK(identity.resync_next_window <=
                 static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()));
  ATOMDISK_CHECK(identity.write_ts_floor <=
                 static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()));
  ATOMDISK_CHECK(identity.write_ts_lease <=
                 static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()));
  for (Rank r : identity.voters) ATOMDISK_CHECK(ValidRank(r));
  Identity normalised = identity;
  std::sort(normalised.voters.begin(), normalised.voters.end());
  normalised.voters.erase(std::unique(normalised.voters.begin(), normalised.voters.end()),
                          normalised.voters.end());
  const std::string contents = Serialize(normalised);
  if (data_dir.empty()) return Status::IOError("cannot save the identity: empty data_dir");

  const std::string path = IdentityPath(data_dir);
  const std::string tmp = path + ".tmp";
  // A leftover temp file (a crash mid-save) may have another owner or mode: start afresh.
  if (::unlink(tmp.c_str()) != 0 && errno != ENOENT) {
    return Status::FromErrno("unlink " + tmp, errno);
  }
  int fd;
  do {
    fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  } while (fd < 0 && errno == EINTR);
  if (fd < 0) return Status::FromErrno("create " + tmp, errno);
  Status s = WriteAll(fd, tmp, contents);
  if (s.ok() && ::fdatasync(fd) != 0) s = Status::FromErrno("fdatasync " + tmp, errno);
  if (::close(fd) != 0 && s.ok()) s = Status::FromErrno("close " + tmp, errno);
  if (s.ok() && ::rename(tmp.c_str(), path.c_str()) != 0) {
    s = Status::FromErrno("rename " + tmp + " to " + path, errno);
  }
  if (!s.ok()) {
    ::unlink(tmp.c_str());  // best effort; the previous IDENTITY is untouched
    return s;
  }
  // The rename is durable only once the directory is. (If this fails the new file is in
  // place but may not survive a crash; the caller treats the save as failed.)
  return FsyncDir(data_dir);
}

Result<Uuid> ParseUuid(const std::string& hex) {
  auto bad = [&] {
    // Quote at most 40 characters of the input: it may be anything.
    std::string shown = hex.size() > 40 ? hex.substr(0, 40) + "..." : hex;
    return Status::InvalidArgument("\"" + shown + "\" is not 32 hex digits");
  };
  if (hex.size() != 32) return bad();
  Uuid u;
  for (std::size_t i = 0; i < 16; ++i) {
    const int hi = HexDigit(hex[2 * i]);
    const int lo = HexDigit(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) return bad();
    u.bytes[i] = static_cast<std::uint8_t>(hi * 16 + lo);
  }
  return u;
}

}  // namespace atomdisk
