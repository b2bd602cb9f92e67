# test_c_api (tests/test_c_api.c) gives, on a sample scan, what predict gives.
#   cmake -DTEST=.. -DSOURCE_DIR=.. -DWORK_DIR=.. -DPREDICT=.. -P test_c_api.cmake
include(${CMAKE_CURRENT_LIST_DIR}/prediction.cmake)
predict_sample(expected)
run(${TEST} ${SOURCE_DIR})
check_as_predict("${out}" "${expected}" ${TEST})
