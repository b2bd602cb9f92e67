# The packaging test (ctest test_package): installs the build tree, moves the installed tree
# elsewhere (nothing may point back into the build or source tree), builds examples/ against it
# with its own CMake project and again through pkg-config, and checks both programs give what
# predict gives on a sample scan.
#   cmake -DBUILD_DIR=.. -DSOURCE_DIR=.. -DWORK_DIR=.. -DPREDICT=.. -DCXX=.. -DLIBDIR=.. -DSTB_INCLUDE=..
#         -DWITH_CUDA=0|1 [-DCONSUMER_FLAGS=..] -P test_package.cmake
# CONSUMER_FLAGS: what a program linking this libsono must add (a sanitized one's runtimes).
include(${CMAKE_CURRENT_LIST_DIR}/prediction.cmake)

file(REMOVE_RECURSE ${WORK_DIR})
run(${CMAKE_COMMAND} --install ${BUILD_DIR} --prefix ${WORK_DIR}/staging)
file(RENAME ${WORK_DIR}/staging ${WORK_DIR}/prefix)
set(prefix ${WORK_DIR}/prefix)
file(GLOB_RECURSE installed ${prefix}/*.cmake ${prefix}/*.pc)
foreach(file ${installed})
  file(READ ${file} text)
  foreach(tree ${BUILD_DIR} ${SOURCE_DIR} ${WORK_DIR}/staging)
    string(FIND "${text}" "${tree}" at)
    if(NOT at EQUAL -1)
      message(FATAL_ERROR "${file} names ${tree}: the installed package is not relocatable")
    endif()
  endforeach()
endforeach()

predict_sample(expected)

run(${CMAKE_COMMAND} -S ${SOURCE_DIR}/examples -B ${WORK_DIR}/example -DCMAKE_PREFIX_PATH=${prefix}
    -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_COMPILER=${CXX} "-DCMAKE_CXX_FLAGS=${CONSUMER_FLAGS}")
run(${CMAKE_COMMAND} --build ${WORK_DIR}/example)

# The cuda component: found exactly when the installed library has the CUDA backend.
file(WRITE ${WORK_DIR}/cuda/CMakeLists.txt "cmake_minimum_required(VERSION 3.16)\nproject(c LANGUAGES NONE)\n"
                                           "find_package(sono REQUIRED COMPONENTS cuda)\n")
execute_process(COMMAND ${CMAKE_COMMAND} -S ${WORK_DIR}/cuda -B ${WORK_DIR}/cuda/build -DCMAKE_PREFIX_PATH=${prefix}
                RESULT_VARIABLE status OUTPUT_QUIET ERROR_QUIET)
if(WITH_CUDA AND NOT status EQUAL 0)
  message(FATAL_ERROR "find_package(sono COMPONENTS cuda) fails on a CUDA build")
elseif(NOT WITH_CUDA AND status EQUAL 0)
  message(FATAL_ERROR "find_package(sono COMPONENTS cuda) succeeds on a build without CUDA")
endif()

# CMake's build finds libsono.so through its RPATH; the pkg-config one as any -lsono program.
set(programs ${WORK_DIR}/example/classify_scan)
find_program(PKG_CONFIG pkg-config)
if(PKG_CONFIG)
  set(ENV{PKG_CONFIG_PATH} ${prefix}/${LIBDIR}/pkgconfig)
  run(${PKG_CONFIG} --cflags --libs sono)
  string(STRIP "${out}" flags)
  separate_arguments(flags UNIX_COMMAND "${flags} ${CONSUMER_FLAGS}")
  run(${CXX} -std=c++17 -O1 -I${STB_INCLUDE} ${SOURCE_DIR}/examples/classify_scan.cpp ${flags}
      -o ${WORK_DIR}/classify_scan_pc)
  list(APPEND programs ${WORK_DIR}/classify_scan_pc)
else()
  message(STATUS "skipped: the build through pkg-config (no pkg-config on this machine)")
endif()

set(ENV{LD_LIBRARY_PATH} "")
foreach(program ${programs})
  if(program MATCHES "_pc$")
    set(ENV{LD_LIBRARY_PATH} ${prefix}/${LIBDIR})
  endif()
  run(${program} ${seg} ${cls} ${scan})
  check_as_predict("${out}" "${expected}" ${program})
endforeach()
