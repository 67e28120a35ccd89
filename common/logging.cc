#include "common/logging.h"

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

namespace atomdisk {

Status SetupLogging(const std::string& level, const std::string& name) {
  auto lvl = spdlog::level::from_str(level);
  if (lvl == spdlog::level::off && level != "off") {
    return Status::InvalidArgument("unknown log level \"" + level +
                                   "\" (trace, debug, info, warn, error, critical, off)");
  }
  auto logger = spdlog::stderr_color_mt(name);
  if (!::isatty(STDERR_FILENO)) {
    // Under systemd, journald adds its own timestamp; keep a compact line either way.
    logger->set_pattern("%Y-%m-%dT%H:%M:%S.%e %l %n: %v");
  } else {
    logger->set_pattern("%H:%M:%S.%e %^%l%$ %n: %v");
  }
  logger->set_level(lvl);
  logger->flush_on(spdlog::level::warn);
  spdlog::set_default_logger(logger);
  return Status::Ok();
}

}  // namespace atomdisk
