# SHIPPED_SEG and SHIPPED_CLS: the paths of the shipped pair under SOURCE_DIR, named by
# models/weights/shipped.env (which the shell scripts source).
file(STRINGS ${SOURCE_DIR}/models/weights/shipped.env shipped_lines REGEX "^SONO_(SEG|CLS)_WEIGHTS=")
foreach(line IN LISTS shipped_lines)
  string(REGEX MATCH "^SONO_(SEG|CLS)_WEIGHTS=(.+)$" matched "${line}")
  set(SHIPPED_${CMAKE_MATCH_1} ${SOURCE_DIR}/models/weights/${CMAKE_MATCH_2})
endforeach()
if(NOT SHIPPED_SEG OR NOT SHIPPED_CLS)
  message(FATAL_ERROR "${SOURCE_DIR}/models/weights/shipped.env names no SONO_SEG_WEIGHTS or SONO_CLS_WEIGHTS")
endif()
