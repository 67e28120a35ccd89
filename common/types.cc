#include "common/types.h"

#include <cstdio>

namespace atomdisk {

SectorPtr ZeroSector() {
  static const SectorPtr kZero = std::make_shared<const SectorData>();
  return kZero;
}

SectorPtr MakeSector(const std::uint8_t* bytes) {
  auto s = std::make_shared<SectorData>();
  std::memcpy(s->data(), bytes, kSectorSize);
  return s;
}

std::string Tag::ToString() const {
  return "(ts=" + std::to_string(ts) + ", wr=" + std::to_string(static_cast<int>(wr)) + ")";
}

std::string Uuid::ToString() const {
  static const char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(32);
  for (auto b : bytes) {
    out.push_back(kHex[b >> 4]);
    out.push_back(kHex[b & 15]);
  }
  return out;
}

}  // namespace atomdisk
