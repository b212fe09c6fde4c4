# Build a consumer project that pulls mmfree in with add_subdirectory, and run it. Invoked by
# CTest with -DSOURCE_DIR -DWORK_DIR -DCONSUMER_DIR -DMODEL_DIR.
include(${CMAKE_CURRENT_LIST_DIR}/package_run.cmake)
# Unoptimised, as package_test.cmake: the test is about the build wiring, not the speed.
run(${CMAKE_COMMAND} -S ${CONSUMER_DIR} -B ${WORK_DIR} -DMMFREE_SOURCE_DIR=${SOURCE_DIR} -DCMAKE_BUILD_TYPE=)
run(${CMAKE_COMMAND} --build ${WORK_DIR})
run(${WORK_DIR}/consumer ${MODEL_DIR})
message(STATUS "source tree consumed through add_subdirectory(mmfree)")
