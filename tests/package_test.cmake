# Install mmfree to a temporary prefix, build a consumer project with find_package(mmfree),
# and run it. Invoked by CTest with -DSOURCE_DIR -DWORK_DIR -DCONSUMER_DIR -DMODEL_DIR.
include(${CMAKE_CURRENT_LIST_DIR}/package_run.cmake)
run(${CMAKE_COMMAND} -S ${SOURCE_DIR} -B ${WORK_DIR}/lib -DMMFREE_BUILD_TESTS=OFF -DMMFREE_BUILD_EXAMPLES=OFF
    -DCMAKE_INSTALL_PREFIX=${WORK_DIR}/prefix)
run(${CMAKE_COMMAND} --install ${WORK_DIR}/lib)
# Unoptimised (no build type, -O0 below): the test is about finding and using the package, and
# optimising the whole library for one step of a tiny model cost 60 of the test's 87 s.
run(${CMAKE_COMMAND} -S ${CONSUMER_DIR} -B ${WORK_DIR}/consumer -DCMAKE_PREFIX_PATH=${WORK_DIR}/prefix
    -DCMAKE_BUILD_TYPE=)
run(${CMAKE_COMMAND} --build ${WORK_DIR}/consumer)
run(${WORK_DIR}/consumer/consumer ${MODEL_DIR})
message(STATUS "installed package consumed through find_package(mmfree)")

# The same consumer built without CMake, with the flags pkg-config gives.
find_program(PKG_CONFIG NAMES pkg-config pkgconf REQUIRED)
set(ENV{PKG_CONFIG_PATH} "${WORK_DIR}/prefix/share/pkgconfig")
execute_process(COMMAND ${PKG_CONFIG} --cflags --libs mmfree RESULT_VARIABLE rc OUTPUT_VARIABLE flags
                ERROR_VARIABLE err OUTPUT_STRIP_TRAILING_WHITESPACE)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "pkg-config --cflags --libs mmfree failed: ${err}")
endif()
separate_arguments(flags UNIX_COMMAND "${flags}")
run(${CXX} -O0 ${CONSUMER_DIR}/main.cpp ${flags} -o ${WORK_DIR}/consumer-pkgconfig)
run(${WORK_DIR}/consumer-pkgconfig ${MODEL_DIR})
message(STATUS "installed package consumed through pkg-config (${flags})")
