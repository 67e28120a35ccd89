// Data commands: read, write, upload, download. Each keeps many sector operations in flight
// (OrderedWindow) and handles results in sector order, so output streams and the SHA-256 of
// what was written or read are computed in order with bounded memory.
//
// Offsets of upload and download must be multiples of 4096. A file whose size is not a
// multiple of 4096 ends in a partial sector: upload read-modify-writes that last sector (the
// bytes after the file's end keep their old contents), and download writes exactly --length
// bytes. The read-modify-write is not atomic with respect to another writer of that sector.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <map>
#include <nlohmann/json.hpp>
#include <string>

#include "client/cli/commands.h"
#include "common/types.h"

namespace atomdisk::client::cli {
namespace {

using nlohmann::json;
constexpr std::size_t kWindow = 256;  // sector operations in flight for bulk transfers

std::string SectorRange(SectorIdx first, std::uint64_t count) {
  if (count == 1) return "sector " + std::to_string(first);
  return "sectors " + std::to_string(first) + ".." + std::to_string(first + count - 1);
}

// Checks that `count` sectors from `first` lie on the device.
std::optional<CliError> CheckRange(const ClusterConfig& c, SectorIdx first, std::uint64_t count) {
  std::string device = " (the device has sectors 0.." + std::to_string(c.sectors - 1) + ", " +
                       HumanBytes(static_cast<double>(c.sectors) * kSectorSize) + ")";
  if (first >= c.sectors) {
    return CliError{kExitUsage,
                    "sector " + std::to_string(first) + " is outside the device" + device};
  }
  if (count > c.sectors - first) {
    return CliError{kExitUsage,
                    SectorRange(first, count) + " run past the end of the device" + device};
  }
  return std::nullopt;
}

double SecondsSince(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

struct TransferResult {
  Status status;
  SectorIdx failed_sector = 0;
  std::uint64_t bytes = 0;  // bytes handled in order before any failure
  std::string sha256;       // of those bytes
  double seconds = 0;
};

// Reads `length` bytes starting at sector `first`, handing each sector's bytes (the last one
// cut to length) to `emit` in order.
using EmitFn = std::function<Status(SectorIdx sector, const std::uint8_t* data, std::size_t n)>;
TransferResult ReadRange(Client& client, SectorIdx first, std::uint64_t length, const EmitFn& emit,
                         Progress* progress) {
  TransferResult out;
  auto t0 = std::chrono::steady_clock::now();
  const std::uint64_t count = (length + kSectorSize - 1) / kSectorSize;
  OrderedWindow window(kWindow);
  Sha256 sha;
  window.Run(
      count,
      [&](std::uint64_t i) {
        client.ReadWith(first + i, OpOptions{},
                        [&window, i](OpResult r) { window.Complete(i, std::move(r)); });
      },
      [&](std::uint64_t i, OpResult& r) {
        if (!r.status.ok()) {
          out.status = r.status;
          out.failed_sector = first + i;
          return false;
        }
        std::size_t n = static_cast<std::size_t>(
            std::min<std::uint64_t>(kSectorSize, length - i * kSectorSize));
        Status s = emit(first + i, r.data->data(), n);
        if (!s.ok()) {
          out.status = s;
          out.failed_sector = first + i;
          return false;
        }
        sha.Update(r.data->data(), n);
        out.bytes += n;
        if (progress) progress->Update(out.bytes);
        return true;
      });
  out.sha256 = sha.HexDigest();
  out.seconds = SecondsSince(t0);
  return out;
}

// How the last, partial sector of a write is completed.
enum class Tail { kReadModifyWrite, kZeroPad };
// Fills `buf` with up to 4096 bytes of sector index i of the source (called in order) and
// returns how many; fewer than 4096 only for the last sector, 0 at the end of the input.
using SourceFn = std::function<Result<std::size_t>(std::uint64_t i, std::uint8_t* buf)>;

// Writes the source's bytes to sectors first.. (at most `max_sectors` of them: a source with
// more is an InvalidArgument error at sector first + max_sectors, and the sectors before it
// are written). `writes_ok` counts the sector writes the cluster acknowledged, in any order:
// 0 after a failure means nothing was written.
struct WriteResult : TransferResult {
  std::uint64_t writes_ok = 0;
};
WriteResult WriteRange(Client& client, SectorIdx first, std::uint64_t max_sectors,
                       const SourceFn& source, Tail tail, Progress* progress) {
  WriteResult out;
  auto t0 = std::chrono::steady_clock::now();
  OrderedWindow window(kWindow);
  Sha256 sha;
  std::atomic<std::uint64_t> writes_ok{0};
  // Issue and handle both run on this thread (OrderedWindow::Run).
  std::map<std::uint64_t, std::size_t> sizes;
  std::uint64_t end = ~std::uint64_t{0};  // the index at which the source ended
  window.Run(
      max_sectors + 1,
      [&](std::uint64_t i) {
        auto complete = [&](Status s) {
          OpResult r;
          r.status = std::move(s);
          window.Complete(i, std::move(r));
        };
        if (i > end) return complete(Status::Ok());
        auto buf = std::make_shared<SectorData>();
        buf->fill(0);
        Result<std::size_t> n = source(i, buf->data());
        if (!n.ok()) return complete(n.status());
        if (*n == 0) {
          end = i;
          return complete(Status::Ok());
        }
        if (i == max_sectors) {
          return complete(Status::InvalidArgument(
              "the input is longer than the " + HumanCount(max_sectors * kSectorSize) +
              " bytes from the offset to the end of the device"));
        }
        sizes[i] = *n;
        sha.Update(buf->data(), *n);
        if (*n < kSectorSize && tail == Tail::kReadModifyWrite) {
          Result<SectorPtr> old = client.ReadSync(first + i);
          if (!old.ok()) {
            return complete(
                Status(old.status().code(),
                       "reading the last sector to keep its tail: " + old.status().message()));
          }
          std::memcpy(buf->data() + *n, (*old)->data() + *n, kSectorSize - *n);
        }
        if (*n < kSectorSize) end = i + 1;  // a short sector is the last one
        client.WriteWith(first + i, std::move(buf), OpOptions{},
                         [&window, &writes_ok, i](OpResult r) {
                           if (r.status.ok()) ++writes_ok;
                           window.Complete(i, std::move(r));
                         });
      },
      [&](std::uint64_t i, OpResult& r) {
        if (!r.status.ok()) {
          out.status = r.status;
          out.failed_sector = first + i;
          return false;
        }
        if (i >= end) return false;  // the end of the input
        out.bytes += sizes[i];
        sizes.erase(i);
        if (progress) progress->Update(out.bytes);
        return true;
      });
  out.sha256 = sha.HexDigest();
  out.seconds = SecondsSince(t0);
  out.writes_ok = writes_ok.load();
  return out;
}

// An input file opened for sequential reading, with its size.
struct InputFile {
  int fd = -1;
  std::uint64_t size = 0;
  std::string path;
  ~InputFile() {
    if (fd >= 0) ::close(fd);
  }
  static std::optional<CliError> Open(const std::string& path, InputFile* f) {
    f->path = path;
    f->fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (f->fd < 0) {
      return CliError{kExitUsage, "cannot open " + path + ": " + std::strerror(errno)};
    }
    struct stat st;
    if (::fstat(f->fd, &st) != 0 || !S_ISREG(st.st_mode)) {
      return CliError{kExitUsage, path + " is not a regular file"};
    }
    f->size = static_cast<std::uint64_t>(st.st_size);
    return std::nullopt;
  }
  // A SourceFn reading the file's `size` bytes in order; a file that shrank meanwhile is an
  // error, bytes added after its end are not read.
  SourceFn Source() {
    return [this](std::uint64_t i, std::uint8_t* buf) -> Result<std::size_t> {
      if (i * kSectorSize >= size) return std::size_t{0};
      auto n =
          static_cast<std::size_t>(std::min<std::uint64_t>(kSectorSize, size - i * kSectorSize));
      Result<std::size_t> got = ReadFull(fd, buf, n, path);
      if (!got.ok()) return got.status();
      if (*got != n) return Status::IOError(path + " became shorter while being read");
      return n;
    };
  }
  // A SourceFn reading a stream (standard input) to its end.
  static SourceFn Stream(int fd, const std::string& what) {
    return [fd, what](std::uint64_t, std::uint8_t* buf) -> Result<std::size_t> {
      return ReadFull(fd, buf, kSectorSize, what);
    };
  }
};

// Where read data goes: a file (written as FILE.partial, renamed when complete), standard
// output, or an existing non-regular file (a device, a FIFO) written directly.
struct OutputFile {
  int fd = -1;
  std::string path, tmp_path;
  ~OutputFile() {
    if (fd >= 0 && fd != STDOUT_FILENO) ::close(fd);
    if (!tmp_path.empty()) ::unlink(tmp_path.c_str());  // not committed
  }
  static std::optional<CliError> Open(const std::string& path, OutputFile* f) {
    f->path = path;
    if (path == "-") {
      f->fd = STDOUT_FILENO;
      return std::nullopt;
    }
    struct stat st;
    std::string target = path;
    if (::stat(path.c_str(), &st) != 0 || S_ISREG(st.st_mode)) {
      f->tmp_path = path + ".partial";
      target = f->tmp_path;
    }
    f->fd = ::open(target.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (f->fd < 0) {
      std::string err = std::strerror(errno);
      f->tmp_path.clear();
      return CliError{kExitUsage, "cannot create " + target + ": " + err};
    }
    return std::nullopt;
  }
  EmitFn Emit() {
    return [this](SectorIdx, const std::uint8_t* data, std::size_t n) {
      return WriteAll(fd, data, n, path == "-" ? "standard output" : path);
    };
  }
  Status Commit() {
    if (fd != STDOUT_FILENO && ::fsync(fd) != 0 && errno != EINVAL) {
      return Status::FromErrno("cannot sync " + path, errno);
    }
    if (!tmp_path.empty()) {
      if (::rename(tmp_path.c_str(), path.c_str()) != 0) {
        return Status::FromErrno("cannot rename " + tmp_path + " to " + path, errno);
      }
      tmp_path.clear();
    }
    return Status::Ok();
  }
};

// What a failed download leaves behind: a regular FILE is removed (its .partial is never
// renamed), standard output or a device has had the bytes already.
std::string NotWritten(const std::string& file, const OutputFile& out) {
  if (file == "-") return "; the bytes went to standard output already";
  if (out.tmp_path.empty()) return "; " + file + " (not a regular file) was written to directly";
  return "; " + file + " was not written";
}

std::string Rate(std::uint64_t bytes, double seconds) {
  return seconds > 0 ? HumanBytes(static_cast<double>(bytes) / seconds) + "/s" : "-";
}

int TransferFailed(const std::string& what, const TransferResult& r, const std::string& tail) {
  return Fail(ExitCodeFor(r.status), what + " failed at sector " + std::to_string(r.failed_sector) +
                                         ": " + r.status.message() + tail);
}

// A failed write or upload: a rejected client key, when no sector write was acknowledged,
// changed nothing (the nodes refuse a request whose tag does not verify before executing it);
// anything else may have left `range` partly written.
int WriteFailed(const std::string& what, const WriteResult& r, const std::string& range,
                const GlobalOptions& g) {
  if (r.status.code() == StatusCode::kAuthFailure && r.writes_ok == 0) {
    return Fail(kExitUsage, what + ": the client key does not match the cluster's (" +
                                r.status.message() + "); nothing was written. Use the cluster's " +
                                "client.key (the config " + ConfigPath(g) + " names it)");
  }
  return TransferFailed(
      what, r, " (" + range + " may now be partly written; the " + what + " did not complete)");
}

}  // namespace

// ---- read ----

CommandFn AddReadCommand(CLI::App& app, GlobalOptions& g) {
  struct Args {
    SectorIdx sector = 0;
    std::uint64_t count = 1;
    std::string out;
    bool hex = false;
  };
  auto a = std::make_shared<Args>();
  CLI::App* cmd = app.add_subcommand("read", "Read sectors (hexdump on a terminal, raw otherwise)");
  cmd->footer(
      "To a terminal: a hexdump; to a pipe or --out FILE: the raw bytes.\n"
      "Example: atomdisk read 0 --count 8 --out first-32k.bin");
  cmd->add_option("sector", a->sector, "first sector to read")
      ->required()
      ->type_name("SECTOR")
      ->check(WholeNumber(0, kMaxSectors - 1));
  cmd->add_option("--count", a->count, "number of consecutive sectors")
      ->capture_default_str()
      ->check(WholeNumber(1, kMaxSectors));
  cmd->add_option("--out", a->out, "write the raw bytes to FILE (replaced when complete)")
      ->type_name("FILE");
  cmd->add_flag("--hex", a->hex, "hexdump even when standard output is not a terminal");
  return [a, &g] {
    ClusterConfig config;
    std::unique_ptr<Client> client;
    if (auto err = MakeClient(g, &config, &client, 512)) return Fail(err->exit_code, err->message);
    if (auto err = CheckRange(config, a->sector, a->count)) {
      return Fail(err->exit_code, err->message);
    }
    const bool hex = a->out.empty() && (a->hex || IsTerminal(stdout));
    OutputFile out;
    EmitFn emit;
    if (hex) {
      emit = [](SectorIdx s, const std::uint8_t* d, std::size_t n) {
        std::printf("sector %llu:\n", static_cast<unsigned long long>(s));
        HexDump(stdout, d, n, s * kSectorSize);
        return Status::Ok();
      };
    } else {
      if (auto err = OutputFile::Open(a->out.empty() ? "-" : a->out, &out)) {
        return Fail(err->exit_code, err->message);
      }
      emit = out.Emit();
    }
    TransferResult r = ReadRange(*client, a->sector, a->count * kSectorSize, emit, nullptr);
    client->Close();
    if (!r.status.ok()) {
      if (r.status.code() == StatusCode::kAuthFailure) {
        return Fail(kExitUsage, "read: the client key does not match the cluster's (" +
                                    r.status.message() + ")");
      }
      return TransferFailed("read", r, "");
    }
    if (!hex) {
      if (Status s = out.Commit(); !s.ok()) return Fail(kExitFailed, "read: " + s.message());
    }
    return kExitOk;
  };
}

// ---- write ----

CommandFn AddWriteCommand(CLI::App& app, GlobalOptions& g) {
  struct Args {
    SectorIdx sector = 0;
    std::string in;
    std::string fill;
    std::uint64_t count = 1;
    bool pad = false;
    bool json = false;
  };
  auto a = std::make_shared<Args>();
  CLI::App* cmd = app.add_subcommand("write", "Write sectors from a file or filled with a byte");
  cmd->footer(
      "--in FILE writes consecutive sectors; its size must be a multiple of 4096 (or give\n"
      "--pad). Nothing is written if the range does not fit the device.\n"
      "Example: atomdisk write 100 --fill 0xab --count 4");
  cmd->add_option("sector", a->sector, "first sector to write")
      ->required()
      ->type_name("SECTOR")
      ->check(WholeNumber(0, kMaxSectors - 1));
  auto* in = cmd->add_option("--in", a->in, "take the data from FILE")->type_name("FILE");
  auto* fill = cmd->add_option("--fill", a->fill, "fill the sectors with this byte (0xNN or 0-255)")
                   ->type_name("BYTE");
  in->excludes(fill);
  cmd->add_option("--count", a->count, "with --fill: number of consecutive sectors")
      ->capture_default_str()
      ->check(WholeNumber(1, kMaxSectors))
      ->excludes(in);
  cmd->add_flag("--pad", a->pad,
                "with --in: zero-pad a short last block instead of refusing the file");
  cmd->add_flag("--json", a->json, "print the result as JSON");
  return [a, &g] {
    if (a->in.empty() && a->fill.empty()) {
      return Fail(kExitUsage, "write: give --in FILE or --fill BYTE");
    }
    InputFile file;
    std::uint8_t byte = 0;
    std::uint64_t length = 0;
    if (!a->in.empty()) {
      if (auto err = InputFile::Open(a->in, &file)) return Fail(err->exit_code, err->message);
      if (file.size == 0) return Fail(kExitUsage, "write: " + a->in + " is empty");
      if (file.size % kSectorSize != 0 && !a->pad) {
        return Fail(kExitUsage, "write: " + a->in + " is " + HumanCount(file.size) +
                                    " bytes, not a multiple of 4096 (its last block is " +
                                    std::to_string(file.size % kSectorSize) +
                                    " bytes); give --pad to zero-pad it, or use upload");
      }
      length = file.size;
    } else {
      Result<std::uint8_t> b = ParseByte(a->fill);
      if (!b.ok()) return Fail(kExitUsage, "write: --fill: " + b.status().message());
      byte = *b;
      length = a->count * kSectorSize;
    }
    const std::uint64_t count = (length + kSectorSize - 1) / kSectorSize;
    ClusterConfig config;
    std::unique_ptr<Client> client;
    if (auto err = MakeClient(g, &config, &client, 512)) return Fail(err->exit_code, err->message);
    if (auto err = CheckRange(config, a->sector, count)) return Fail(err->exit_code, err->message);
    SourceFn source = a->in.empty() ? SourceFn([byte, count](std::uint64_t i, std::uint8_t* buf) {
      if (i >= count) return Result<std::size_t>(std::size_t{0});
      std::memset(buf, byte, kSectorSize);
      return Result<std::size_t>(kSectorSize);
    })
                                    : file.Source();
    WriteResult r = WriteRange(*client, a->sector, count, source, Tail::kZeroPad, nullptr);
    client->Close();
    if (!r.status.ok()) return WriteFailed("write", r, SectorRange(a->sector, count), g);
    if (a->json) {
      json j = {{"first_sector", a->sector},
                {"sectors", count},
                {"bytes", r.bytes},
                {"sha256", r.sha256},
                {"seconds", r.seconds}};
      std::printf("%s\n", j.dump(2).c_str());
    } else {
      std::printf("wrote %s (%s)\n", SectorRange(a->sector, count).c_str(),
                  HumanBytes(static_cast<double>(count * kSectorSize)).c_str());
    }
    return kExitOk;
  };
}

// ---- upload ----

CommandFn AddUploadCommand(CLI::App& app, GlobalOptions& g) {
  struct Args {
    std::string file;
    std::string offset = "0";
    bool verify = false;
    bool json = false;
  };
  auto a = std::make_shared<Args>();
  CLI::App* cmd = app.add_subcommand("upload", "Write a file of any size to the device");
  cmd->footer(
      "Writes FILE (- = standard input) at a 4096-aligned byte offset with 256 sectors in\n"
      "flight and prints its SHA-256. A partial last sector is read-modify-written (device\n"
      "bytes after the file's end are kept). A file that does not fit is refused before\n"
      "anything is written; standard input that does not fit fails once it passes the end.\n"
      "Example: atomdisk upload disk.img --offset 1M --verify");
  cmd->add_option("file", a->file, "the file to upload (- = standard input)")
      ->required()
      ->type_name("FILE");
  cmd->add_option("--offset", a->offset,
                  "byte offset on the device, a multiple of 4096 (suffixes K, M, G allowed)")
      ->capture_default_str()
      ->type_name("BYTES");
  cmd->add_flag("--verify", a->verify,
                "read the range back afterwards and compare SHA-256 (exit code 3 on mismatch)");
  cmd->add_flag("--json", a->json, "print the summary as JSON");
  return [a, &g] {
    Result<std::uint64_t> offset = ParseSize(a->offset);
    if (!offset.ok()) return Fail(kExitUsage, "upload: --offset: " + offset.status().message());
    if (*offset % kSectorSize != 0) {
      return Fail(kExitUsage, "upload: --offset " + a->offset + " is not a multiple of 4096");
    }
    const bool from_stdin = a->file == "-";
    const std::string name = from_stdin ? "standard input" : a->file;
    InputFile file;
    if (!from_stdin) {
      if (auto err = InputFile::Open(a->file, &file)) return Fail(err->exit_code, err->message);
    }
    ClusterConfig config;
    std::unique_ptr<Client> client;
    if (auto err = MakeClient(g, &config, &client, 512)) return Fail(err->exit_code, err->message);
    const std::uint64_t device = config.sectors * kSectorSize;
    if (from_stdin && *offset >= device) {
      return Fail(kExitUsage, "upload: standard input does not fit: --offset " + a->offset +
                                  " is at or past the end of the device (" +
                                  HumanBytes(static_cast<double>(device)) +
                                  "); nothing was written");
    }
    if (!from_stdin && (*offset > device || file.size > device - *offset)) {
      return Fail(kExitUsage,
                  "upload: " + a->file + " (" + HumanBytes(static_cast<double>(file.size)) + ", " +
                      HumanCount(file.size) + " bytes) does not fit: the device holds " +
                      HumanBytes(static_cast<double>(device)) +
                      (*offset > 0 ? " and the upload starts at byte " + HumanCount(*offset)
                                   : std::string()) +
                      "; nothing was written");
    }
    const SectorIdx first = *offset / kSectorSize;
    const std::uint64_t room = config.sectors - first;
    const std::uint64_t max_sectors =
        from_stdin ? room : (file.size + kSectorSize - 1) / kSectorSize;
    WriteResult r;
    {
      Progress progress("upload", from_stdin ? Progress::kUnknownTotal : file.size);
      r = WriteRange(*client, first, max_sectors,
                     from_stdin ? InputFile::Stream(STDIN_FILENO, name) : file.Source(),
                     Tail::kReadModifyWrite, &progress);
    }
    const std::uint64_t size = r.bytes;
    const std::uint64_t count = (size + kSectorSize - 1) / kSectorSize;
    if (!r.status.ok()) {
      client->Close();
      if (r.status.code() == StatusCode::kAuthFailure && r.writes_ok == 0) {
        return WriteFailed("upload", r, "", g);
      }
      const std::string range = from_stdin
                                    ? "the sectors from " + std::to_string(first) + " on"
                                    : SectorRange(first, std::max<std::uint64_t>(max_sectors, 1));
      return TransferFailed(
          "upload", r, ". The device holds a partial upload: " + range + " may be partly written");
    }
    std::string verified;
    if (a->verify && size > 0) {
      TransferResult v;
      {
        Progress progress("verify", size);
        v = ReadRange(
            *client, first, size,
            [](SectorIdx, const std::uint8_t*, std::size_t) { return Status::Ok(); }, &progress);
      }
      if (!v.status.ok()) {
        client->Close();
        return TransferFailed("upload --verify: reading back", v, "");
      }
      if (v.sha256 != r.sha256) {
        client->Close();
        return Fail(kExitMismatch, "upload --verify: MISMATCH: the device holds sha256 " +
                                       v.sha256 + ", the file has " + r.sha256);
      }
      verified = v.sha256;
    }
    client->Close();
    if (a->json) {
      json j = {{"file", a->file},       {"bytes", size},        {"offset", *offset},
                {"first_sector", first}, {"sectors", count},     {"sha256", r.sha256},
                {"seconds", r.seconds},  {"verified", a->verify}};
      std::printf("%s\n", j.dump(2).c_str());
    } else {
      std::printf("uploaded %s (%s bytes) to %s in %.2f s (%s)\nsha256 %s  %s\n",
                  HumanBytes(static_cast<double>(size)).c_str(), HumanCount(size).c_str(),
                  SectorRange(first, std::max<std::uint64_t>(count, 1)).c_str(), r.seconds,
                  Rate(size, r.seconds).c_str(), r.sha256.c_str(), a->file.c_str());
      if (a->verify) std::printf("verified: the device holds the same sha256\n");
    }
    return kExitOk;
  };
}

// ---- download ----

CommandFn AddDownloadCommand(CLI::App& app, GlobalOptions& g) {
  struct Args {
    std::string file;
    std::string offset = "0";
    std::string length;
    std::string expect;
    bool json = false;
  };
  auto a = std::make_shared<Args>();
  CLI::App* cmd = app.add_subcommand("download", "Read a byte range of the device into a file");
  cmd->footer(
      "Reads --length bytes from a 4096-aligned --offset with 256 sectors in flight into FILE\n"
      "(- = standard output) and prints their SHA-256. FILE is written as FILE.partial and\n"
      "renamed only when complete.\n"
      "Example: atomdisk download copy.img --offset 1M --length 20M --sha256 HEX");
  cmd->add_option("file", a->file, "where to write (- = standard output)")
      ->required()
      ->type_name("FILE");
  cmd->add_option("--offset", a->offset,
                  "byte offset on the device, a multiple of 4096 (suffixes K, M, G allowed)")
      ->capture_default_str()
      ->type_name("BYTES");
  cmd->add_option("--length", a->length, "how many bytes to read (suffixes K, M, G allowed)")
      ->required()
      ->type_name("BYTES");
  cmd->add_option("--sha256", a->expect,
                  "expected SHA-256 of the bytes read (exit code 3 if different)")
      ->type_name("HEX");
  cmd->add_flag("--json", a->json, "print the summary as JSON (on stderr when FILE is -)");
  return [a, &g] {
    Result<std::uint64_t> offset = ParseSize(a->offset);
    if (!offset.ok()) return Fail(kExitUsage, "download: --offset: " + offset.status().message());
    Result<std::uint64_t> length = ParseSize(a->length);
    if (!length.ok()) return Fail(kExitUsage, "download: --length: " + length.status().message());
    std::string expect = a->expect;
    std::transform(expect.begin(), expect.end(), expect.begin(), [](char c) {
      return static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    });
    if (!a->expect.empty() &&
        (expect.size() != 64 || !std::all_of(expect.begin(), expect.end(), [](char c) {
           return std::isxdigit(static_cast<unsigned char>(c)) != 0;
         }))) {
      return Fail(kExitUsage,
                  "download: --sha256 \"" + a->expect +
                      "\" is not a SHA-256 digest (64 hex characters); nothing was read");
    }
    if (*offset % kSectorSize != 0) {
      return Fail(kExitUsage, "download: --offset " + a->offset + " is not a multiple of 4096");
    }
    ClusterConfig config;
    std::unique_ptr<Client> client;
    if (auto err = MakeClient(g, &config, &client, 512)) return Fail(err->exit_code, err->message);
    const std::uint64_t device = config.sectors * kSectorSize;
    if (*offset > device || *length > device - *offset) {
      return Fail(kExitUsage, "download: bytes " + HumanCount(*offset) + ".." +
                                  HumanCount(*offset + *length) +
                                  " run past the end of the device (" +
                                  HumanBytes(static_cast<double>(device)) + ", " +
                                  HumanCount(device) + " bytes)");
    }
    OutputFile out;
    if (auto err = OutputFile::Open(a->file, &out)) return Fail(err->exit_code, err->message);
    const SectorIdx first = *offset / kSectorSize;
    TransferResult r;
    {
      Progress progress("download", *length);
      r = ReadRange(*client, first, *length, out.Emit(), &progress);
    }
    client->Close();
    if (!r.status.ok()) {
      return TransferFailed("download", r, NotWritten(a->file, out));
    }
    if (!expect.empty() && expect != r.sha256) {
      // Not committed: a regular FILE's .partial is removed with `out`.
      return Fail(kExitMismatch, "download: MISMATCH: read sha256 " + r.sha256 + ", expected " +
                                     expect + NotWritten(a->file, out));
    }
    if (Status s = out.Commit(); !s.ok()) return Fail(kExitFailed, "download: " + s.message());
    std::FILE* report = a->file == "-" ? stderr : stdout;
    if (a->json) {
      json j = {{"file", a->file},
                {"bytes", *length},
                {"offset", *offset},
                {"sha256", r.sha256},
                {"seconds", r.seconds}};
      std::fprintf(report, "%s\n", j.dump(2).c_str());
    } else {
      std::fprintf(report, "downloaded %s (%s bytes) in %.2f s (%s)\nsha256 %s  %s\n",
                   HumanBytes(static_cast<double>(*length)).c_str(), HumanCount(*length).c_str(),
                   r.seconds, Rate(*length, r.seconds).c_str(), r.sha256.c_str(), a->file.c_str());
    }
    return kExitOk;
  };
}

}  // namespace atomdisk::client::cli
