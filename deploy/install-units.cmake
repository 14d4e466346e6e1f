# install-units.cmake - runs at install time (install(CODE)): writes the systemd units, the
# config helper and the default configuration for the prefix being installed to, so that
# `cmake --install --prefix P` and CPack (prefix /usr) both get units naming their real paths.
# Inputs: NF_DEPLOY_SRC, NF_DEPLOY_BIN, NF_BINDIR_REL, NF_SBINDIR_REL, NF_DOCDIR_REL.
set(prefix "${CMAKE_INSTALL_PREFIX}")
string(REGEX REPLACE "/+$" "" prefix "${prefix}")
# Relative GNUInstallDirs paths are under the prefix; absolute ones are kept.
foreach(d BINDIR SBINDIR DOCDIR)
  if(IS_ABSOLUTE "${NF_${d}_REL}")
    set(NF_${d} "${NF_${d}_REL}")
  else()
    set(NF_${d} "${prefix}/${NF_${d}_REL}")
  endif()
endforeach()
# As GNUInstallDirs does: the prefix /usr (or /) keeps its configuration in /etc, state in /var.
if(prefix STREQUAL "/usr" OR prefix STREQUAL "")
  set(NF_SYSCONFDIR "/etc")
  set(NF_STATEDIR "/var/lib/nanoflow")
else()
  set(NF_SYSCONFDIR "${prefix}/etc")
  set(NF_STATEDIR "${prefix}/var/lib/nanoflow")
endif()
set(NF_SYSTEMD_ETCDIR "${NF_SYSCONFDIR}/systemd/system")
set(NF_UNITDIR "${prefix}/lib/systemd/system")

# One staging directory per destination, so concurrent installs (tests, cpack) do not collide.
string(MD5 stage_id "$ENV{DESTDIR}|${prefix}")
set(stage "${NF_DEPLOY_BIN}/stage-${stage_id}")
file(REMOVE_RECURSE "${stage}")
set(units nanoflow.target nanoflow.slice nanoflow-fetcher.service nanoflow-predictor.service
  nanoflow-compute.service nanoflow-gateway.service)
set(unit_files "")
foreach(u ${units})
  configure_file("${NF_DEPLOY_SRC}/systemd/${u}.in" "${stage}/${u}" @ONLY)
  list(APPEND unit_files "${stage}/${u}")
endforeach()
file(INSTALL DESTINATION "${NF_UNITDIR}" TYPE FILE FILES ${unit_files})
configure_file("${NF_DEPLOY_SRC}/nanoflow-config.in" "${stage}/nanoflow-config" @ONLY)
file(INSTALL DESTINATION "${NF_SBINDIR}" TYPE PROGRAM FILES "${stage}/nanoflow-config")

# The default configuration never replaces an existing one (a reinstall keeps the user's
# settings); it is then installed beside it as nanoflow.conf.default.
set(conf_dir "${NF_SYSCONFDIR}/nanoflow")
if(EXISTS "$ENV{DESTDIR}${conf_dir}/nanoflow.conf")
  configure_file("${NF_DEPLOY_SRC}/nanoflow.conf" "${stage}/nanoflow.conf.default" COPYONLY)
  file(INSTALL DESTINATION "${conf_dir}" TYPE FILE FILES "${stage}/nanoflow.conf.default")
  message(STATUS "Kept $ENV{DESTDIR}${conf_dir}/nanoflow.conf (the default is nanoflow.conf.default)")
else()
  file(INSTALL DESTINATION "${conf_dir}" TYPE FILE FILES "${NF_DEPLOY_SRC}/nanoflow.conf")
endif()
