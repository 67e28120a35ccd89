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

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
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
// Fills `buf` with the `n` bytes of sector index i of the source (called in order).
using SourceFn = std::function<Status(std::uint64_t i, std::uint8_t* buf, std::size_t n)>;

TransferResult WriteRange(Client& client, SectorIdx first, std::uint64_t length,
                          const SourceFn& source, Tail tail, Progress* progress) {
  TransferResult out;
  auto t0 = std::chrono::steady_clock::now();
  const std::uint64_t count = (length + kSectorSize - 1) / kSectorSize;
  OrderedWindow window(kWindow);
  Sha256 sha;
  window.Run(
      count,
      [&](std::uint64_t i) {
        auto fail = [&](Status s) {
          OpResult r;
          r.status = std::move(s);
          window.Complete(i, std::move(r));
        };
        std::size_t n = static_cast<std::size_t>(
            std::min<std::uint64_t>(kSectorSize, length - i * kSectorSize));
        auto buf = std::make_shared<SectorData>();
        buf->fill(0);
        if (Status s = source(i, buf->data(), n); !s.ok()) return fail(std::move(s));
        sha.Update(buf->data(), n);
        if (n < kSectorSize && tail == Tail::kReadModifyWrite) {
          Result<SectorPtr> old = client.ReadSync(first + i);
          if (!old.ok()) {
            return fail(Status(old.status().code(), "reading the last sector to keep its tail: " +
                                                        old.status().message()));
          }
          std::memcpy(buf->data() + n, (*old)->data() + n, kSectorSize - n);
        }
        client.WriteWith(first + i, std::move(buf), OpOptions{},
                         [&window, i](OpResult r) { window.Complete(i, std::move(r)); });
      },
      [&](std::uint64_t i, OpResult& r) {
        if (!r.status.ok()) {
          out.status = r.status;
          out.failed_sector = first + i;
          return false;
        }
        out.bytes += std::min<std::uint64_t>(kSectorSize, length - i * kSectorSize);
        if (progress) progress->Update(out.bytes);
        return true;
      });
  out.sha256 = sha.HexDigest();
  out.seconds = SecondsSince(t0);
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
  // A SourceFn reading the file in order; a file that shrank meanwhile is an error.
  SourceFn Source() {
    return [this](std::uint64_t, std::uint8_t* buf, std::size_t n) -> Status {
      Result<std::size_t> got = ReadFull(fd, buf, n, path);
      if (!got.ok()) return got.status();
      if (*got != n) return Status::IOError(path + " became shorter while being read");
      return Status::Ok();
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

std::string Rate(std::uint64_t bytes, double seconds) {
  return seconds > 0 ? HumanBytes(static_cast<double>(bytes) / seconds) + "/s" : "-";
}

int TransferFailed(const std::string& what, const TransferResult& r, const std::string& tail) {
  return Fail(ExitCodeFor(r.status), what + " failed at sector " + std::to_string(r.failed_sector) +
                                         ": " + r.status.message() + tail);
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
  cmd->add_option("sector", a->sector, "first sector to read")->required()->type_name("SECTOR");
  cmd->add_option("--count", a->count, "number of consecutive sectors")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
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
    if (!r.status.ok()) return TransferFailed("read", r, "");
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
  cmd->add_option("sector", a->sector, "first sector to write")->required()->type_name("SECTOR");
  auto* in = cmd->add_option("--in", a->in, "take the data from FILE")->type_name("FILE");
  auto* fill = cmd->add_option("--fill", a->fill, "fill the sectors with this byte (0xNN or 0-255)")
                   ->type_name("BYTE");
  in->excludes(fill);
  cmd->add_option("--count", a->count, "with --fill: number of consecutive sectors")
      ->capture_default_str()
      ->check(CLI::PositiveNumber)
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
    SourceFn source = a->in.empty()
                          ? SourceFn([byte](std::uint64_t, std::uint8_t* buf, std::size_t n) {
                              std::memset(buf, byte, n);
                              return Status::Ok();
                            })
                          : file.Source();
    TransferResult r = WriteRange(*client, a->sector, length, source, Tail::kZeroPad, nullptr);
    client->Close();
    if (!r.status.ok()) {
      return TransferFailed("write", r,
                            " (" + SectorRange(a->sector, count) +
                                " may now be partly written; the write did not complete)");
    }
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
      "Writes FILE at a 4096-aligned byte offset with 256 sectors in flight and prints its\n"
      "SHA-256. A partial last sector is read-modify-written (device bytes after the file's\n"
      "end are kept). A file that does not fit is refused before anything is written.\n"
      "Example: atomdisk upload disk.img --offset 1M --verify");
  cmd->add_option("file", a->file, "the file to upload")->required()->type_name("FILE");
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
    InputFile file;
    if (auto err = InputFile::Open(a->file, &file)) return Fail(err->exit_code, err->message);
    ClusterConfig config;
    std::unique_ptr<Client> client;
    if (auto err = MakeClient(g, &config, &client, 512)) return Fail(err->exit_code, err->message);
    const std::uint64_t device = config.sectors * kSectorSize;
    if (*offset > device || file.size > device - *offset) {
      return Fail(kExitUsage,
                  "upload: " + a->file + " (" + HumanBytes(static_cast<double>(file.size)) + ", " +
                      HumanCount(file.size) + " bytes) does not fit: the device holds " +
                      HumanBytes(static_cast<double>(device)) +
                      (*offset > 0 ? " and the upload starts at byte " + HumanCount(*offset)
                                   : std::string()) +
                      "; nothing was written");
    }
    const SectorIdx first = *offset / kSectorSize;
    const std::uint64_t count = (file.size + kSectorSize - 1) / kSectorSize;
    TransferResult r;
    {
      Progress progress("upload", file.size);
      r = WriteRange(*client, first, file.size, file.Source(), Tail::kReadModifyWrite, &progress);
    }
    if (!r.status.ok()) {
      client->Close();
      return TransferFailed("upload", r,
                            ". The device holds a partial upload: " + SectorRange(first, count) +
                                " may be partly written");
    }
    std::string verified;
    if (a->verify && file.size > 0) {
      TransferResult v;
      {
        Progress progress("verify", file.size);
        v = ReadRange(
            *client, first, file.size,
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
      json j = {{"file", a->file},       {"bytes", file.size},   {"offset", *offset},
                {"first_sector", first}, {"sectors", count},     {"sha256", r.sha256},
                {"seconds", r.seconds},  {"verified", a->verify}};
      std::printf("%s\n", j.dump(2).c_str());
    } else {
      std::printf("uploaded %s (%s bytes) to %s in %.2f s (%s)\nsha256 %s  %s\n",
                  HumanBytes(static_cast<double>(file.size)).c_str(), HumanCount(file.size).c_str(),
                  SectorRange(first, std::max<std::uint64_t>(count, 1)).c_str(), r.seconds,
                  Rate(file.size, r.seconds).c_str(), r.sha256.c_str(), a->file.c_str());
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
      return TransferFailed(
          "download", r,
          a->file == "-" ? "; the output is incomplete" : "; " + a->file + " was not written");
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
    if (!a->expect.empty() && a->expect != r.sha256) {
      return Fail(kExitMismatch,
                  "download: MISMATCH: read sha256 " + r.sha256 + ", expected " + a->expect);
    }
    return kExitOk;
  };
}

}  // namespace atomdisk::client::cli
