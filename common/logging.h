// Logging set-up: spdlog to stderr, one line per event, no colours when not a terminal so
// journald and files get plain lines. Call once at start-up, before any thread starts.
#pragma once

#include <string>

#include "common/status.h"

namespace atomdisk {

// level: trace, debug, info, warn, error, critical, off. InvalidArgument for anything else.
Status SetupLogging(const std::string& level, const std::string& name);

}  // namespace atomdisk
