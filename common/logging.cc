#include "common/logging.h"

#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <memory>

namespace atomdisk {
namespace {

// The pattern flag %*: the sd-daemon(3) priority prefix of the message's level.
class JournalPriorityFlag final : public spdlog::custom_flag_formatter {
 public:
  void format(const spdlog::details::log_msg& msg, const std::tm&,
              spdlog::memory_buf_t& dest) override {
    const char* prefix = "<6>";
    switch (msg.level) {
      case spdlog::level::trace:
      case spdlog::level::debug:
        prefix = "<7>";
        break;
      case spdlog::level::info:
        prefix = "<6>";
        break;
      case spdlog::level::warn:
        prefix = "<4>";
        break;
      case spdlog::level::err:
        prefix = "<3>";
        break;
      case spdlog::level::critical:
        prefix = "<2>";
        break;
      default:
        break;
    }
    dest.append(prefix, prefix + 3);
  }

  std::unique_ptr<custom_flag_formatter> clone() const override {
    return std::make_unique<JournalPriorityFlag>();
  }
};

constexpr char kPlainPattern[] = "%Y-%m-%dT%H:%M:%S.%e %l %n: %v";

}  // namespace

bool StderrIsJournal() {
  const char* value = std::getenv("JOURNAL_STREAM");
  if (value == nullptr) return false;
  unsigned long long dev = 0, ino = 0;
  char tail = 0;
  if (std::sscanf(value, "%llu:%llu%c", &dev, &ino, &tail) != 2) return false;
  struct stat st;
  if (::fstat(STDERR_FILENO, &st) != 0) return false;
  return static_cast<unsigned long long>(st.st_dev) == dev &&
         static_cast<unsigned long long>(st.st_ino) == ino;
}

Status SetupLogging(const std::string& level, const std::string& name) {
  auto lvl = spdlog::level::from_str(level);
  Status status = Status::Ok();
  if (lvl == spdlog::level::off && level != "off") {
    status = Status::InvalidArgument("unknown log level \"" + level +
                                     "\" (trace, debug, info, warn, error, critical, off)");
    lvl = spdlog::level::info;
  }
  // Called again (atomdisk-fuse retries with "info" after a bad --log-level): replace the
  // logger of that name instead of throwing that it exists.
  spdlog::drop(name);
  auto logger = spdlog::stderr_color_mt(name);
  if (StderrIsJournal()) {
    // journald adds its own timestamp; the line keeps ours so that it reads the same as in a
    // file, and the priority prefix sets the entry's PRIORITY=.
    auto formatter = std::make_unique<spdlog::pattern_formatter>();
    formatter->add_flag<JournalPriorityFlag>('*').set_pattern(std::string("%*") + kPlainPattern);
    logger->set_formatter(std::move(formatter));
  } else if (!::isatty(STDERR_FILENO)) {
    logger->set_pattern(kPlainPattern);
  } else {
    logger->set_pattern("%H:%M:%S.%e %^%l%$ %n: %v");
  }
  logger->set_level(lvl);
  logger->flush_on(spdlog::level::warn);
  spdlog::set_default_logger(logger);
  return status;
}

}  // namespace atomdisk
