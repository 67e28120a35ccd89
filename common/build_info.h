// Which atomdisk this is: the version (the CMake project's) and the git revision of the
// source it was built from, taken at build time by cmake/build_revision.cmake: 12 hex digits,
// "-dirty" when tracked files differed from that commit, "unknown" when built outside a git
// checkout (a release tarball) unless the packager passed -DATOMDISK_REVISION=....
//
// `--version` of atomdiskd, atomdisk-fuse and atomdisk prints VersionLine; the build_info
// metrics and atomdiskd's Info answer carry both. Only common/build_info.cc sees the
// generated header, so a new revision recompiles one file. Thread-safe (constants).
#pragma once

#include <string>
#include <string_view>

namespace atomdisk {

const char* BuildVersion();
const char* BuildRevision();
// "PROGRAM VERSION (revision REVISION)", e.g. "atomdiskd 0.1.0 (revision 383103e0f1a2)".
std::string VersionLine(std::string_view program);

}  // namespace atomdisk
