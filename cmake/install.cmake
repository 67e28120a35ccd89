# Install rules: `cmake --install BUILD [--prefix P]` (scripts/install.sh wraps it) puts
#
#   P/bin/atomdiskd, P/bin/atomdisk, P/bin/atomdisk-fuse, P/bin/atomdisk-lincheck
#   P/lib/systemd/system/atomdiskd@.service, atomdisk-fuse@.service, atomdisk.target
#   P/lib/sysusers.d/atomdisk.conf                   the `atomdisk` system user
#   P/share/doc/atomdisk/README.md, *.md, cluster.toml.example
#
# DESTDIR is honoured (staged installs, packaging). The unit files in scripts/systemd/ name
# their binaries as @bindir@/... and their docs as @docdir@; both are replaced at install
# time, so `cmake --install --prefix P` yields units that run P/bin/atomdiskd whatever
# prefix the build was configured with.
#
# Included from the top-level CMakeLists.txt after add_subdirectory(client) and
# add_subdirectory(fuse), so that the targets exist.
include(GNUInstallDirs)

set(ATOMDISK_SYSTEMD_UNITDIR "lib/systemd/system" CACHE STRING
    "Where systemd units go, relative to the install prefix (or absolute)")
set(ATOMDISK_SYSUSERSDIR "lib/sysusers.d" CACHE STRING
    "Where the sysusers.d snippet goes, relative to the install prefix (or absolute)")

# Binaries. daemon/ and fuse/ may install theirs too; installing a file twice is harmless.
foreach(_atomdisk_target IN ITEMS atomdiskd atomdisk atomdisk-fuse atomdisk-lincheck)
  if(TARGET ${_atomdisk_target})
    install(TARGETS ${_atomdisk_target} RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
  else()
    message(STATUS "install: target ${_atomdisk_target} does not exist (yet); not installed")
  endif()
endforeach()

# Documentation and the example configuration.
install(FILES ${CMAKE_SOURCE_DIR}/README.md ${CMAKE_SOURCE_DIR}/scripts/systemd/cluster.toml.example
        DESTINATION ${CMAKE_INSTALL_DOCDIR})
install(DIRECTORY ${CMAKE_SOURCE_DIR}/docs/ DESTINATION ${CMAKE_INSTALL_DOCDIR}
        FILES_MATCHING PATTERN "*.md" PATTERN "*.json" PATTERN "*.yml")  # monitoring/ too
install(FILES ${CMAKE_SOURCE_DIR}/scripts/systemd/atomdisk.sysusers
        DESTINATION ${ATOMDISK_SYSUSERSDIR} RENAME atomdisk.conf)

# systemd units, with @bindir@ and @docdir@ filled in at install time. The first block
# hands configure-time values to the second, which runs inside `cmake --install` where
# CMAKE_INSTALL_PREFIX is the prefix actually installed to.
install(CODE "
set(_atomdisk_unit_sources
    \"${CMAKE_SOURCE_DIR}/scripts/systemd/atomdiskd@.service\"
    \"${CMAKE_SOURCE_DIR}/scripts/systemd/atomdisk-fuse@.service\"
    \"${CMAKE_SOURCE_DIR}/scripts/systemd/atomdisk.target\")
set(_atomdisk_bindir \"${CMAKE_INSTALL_BINDIR}\")
set(_atomdisk_docdir \"${CMAKE_INSTALL_DOCDIR}\")
set(_atomdisk_unitdir \"${ATOMDISK_SYSTEMD_UNITDIR}\")
")
install(CODE [[
foreach(_var IN ITEMS _atomdisk_bindir _atomdisk_docdir _atomdisk_unitdir)
  if(NOT IS_ABSOLUTE "${${_var}}")
    set(${_var} "${CMAKE_INSTALL_PREFIX}/${${_var}}")
  endif()
endforeach()
foreach(_src IN LISTS _atomdisk_unit_sources)
  get_filename_component(_name "${_src}" NAME)
  file(READ "${_src}" _text)
  string(REPLACE "@bindir@" "${_atomdisk_bindir}" _text "${_text}")
  string(REPLACE "@docdir@" "${_atomdisk_docdir}" _text "${_text}")
  set(_dest "$ENV{DESTDIR}${_atomdisk_unitdir}/${_name}")
  message(STATUS "Installing: ${_dest}")
  file(WRITE "${_dest}" "${_text}")
  file(CHMOD "${_dest}" PERMISSIONS OWNER_READ OWNER_WRITE GROUP_READ WORLD_READ)
  list(APPEND CMAKE_INSTALL_MANIFEST_FILES "${_dest}")
endforeach()
]])
