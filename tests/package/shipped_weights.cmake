# SHIPPED_SEG, SHIPPED_CLS and SHIPPED_REFINE: the paths of the shipped models under SOURCE_DIR,
# named by models/weights/shipped.env (which the shell scripts source).
file(STRINGS ${SOURCE_DIR}/models/weights/shipped.env shipped_lines REGEX "^SONO_(SEG|CLS|REFINE)_WEIGHTS=")
foreach(line IN LISTS shipped_lines)
  string(REGEX MATCH "^SONO_(SEG|CLS|REFINE)_WEIGHTS=(.+)$" matched "${line}")
  set(SHIPPED_${CMAKE_MATCH_1} ${SOURCE_DIR}/models/weights/${CMAKE_MATCH_2})
endforeach()
if(NOT SHIPPED_SEG OR NOT SHIPPED_CLS OR NOT SHIPPED_REFINE)
  message(FATAL_ERROR "${SOURCE_DIR}/models/weights/shipped.env names no SONO_SEG_WEIGHTS, SONO_CLS_WEIGHTS "
                      "or SONO_REFINE_WEIGHTS")
endif()
