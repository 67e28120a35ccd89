// Logging set-up: spdlog to stderr, one line per event, `TIME LEVEL PROGRAM: MESSAGE`.
// Call once at start-up, before any thread starts. Three forms, chosen by where stderr goes:
//
// - the journal (systemd connected stderr to it: JOURNAL_STREAM names stderr's device and
//   inode, systemd.exec(5)): each line starts with the sd-daemon(3) priority of its level,
//   `<3>` error, `<4>` warning, `<6>` info, `<7>` debug and trace, `<2>` critical, which
//   journald strips and stores as the entry's priority (so `journalctl -p warning` filters);
// - a terminal: `HH:MM:SS.mmm LEVEL PROGRAM: MESSAGE`, the level in colour;
// - anything else (a file, a pipe): `YYYY-MM-DDTHH:MM:SS.mmm LEVEL PROGRAM: MESSAGE`, plain.
//
// LEVEL is spdlog's name: trace, debug, info, warning, error, critical.
#pragma once

#include <string>

#include "common/status.h"

namespace atomdisk {

// level: trace, debug, info, warn, error, critical, off. Installs `name` as the default
// logger in every case; InvalidArgument for an unknown level, with the logger then at info
// so that the caller can log that error like any other.
Status SetupLogging(const std::string& level, const std::string& name);

// True if JOURNAL_STREAM is set and names the device and inode of the current stderr (a
// child whose stderr was redirected inherits the variable, but not the match).
bool StderrIsJournal();

}  // namespace atomdisk
