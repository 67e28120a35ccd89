#include "common/build_info.h"

#include "common/build_revision.h"  // generated in the build tree (common/CMakeLists.txt)

#ifndef ATOMDISK_BUILD_VERSION
#error "common/CMakeLists.txt defines ATOMDISK_BUILD_VERSION"
#endif

namespace atomdisk {

const char* BuildVersion() { return ATOMDISK_BUILD_VERSION; }

const char* BuildRevision() { return ATOMDISK_BUILD_REVISION; }

std::string VersionLine(std::string_view program) {
  std::string line(program);
  line += ' ';
  line += BuildVersion();
  line += " (revision ";
  line += BuildRevision();
  line += ')';
  return line;
}

}  // namespace atomdisk
