# moeforge_warnings(target): the project's own code builds warning-free. Option tables use designated
# initializers that leave fields at their defaults, hence no missing-field-initializers.
function(moeforge_warnings target)
  target_compile_options(${target} PRIVATE
    $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Werror -Wno-missing-field-initializers>
    $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wall,-Wextra -Werror=all-warnings>)
endfunction()

# moeforge_module(name SOURCES ... [CUDA_SOURCES ...] [DEPS ...]): one static library per folder of
# src/, named moeforge_<name>. CUDA_SOURCES are compiled only in CUDA builds.
function(moeforge_module name)
  cmake_parse_arguments(M "" "" "SOURCES;CUDA_SOURCES;DEPS;CUDA_DEPS" ${ARGN})
  set(sources ${M_SOURCES})
  if(MOEFORGE_WITH_CUDA)
    list(APPEND sources ${M_CUDA_SOURCES})
  endif()
  add_library(moeforge_${name} STATIC ${sources})
  target_include_directories(moeforge_${name} PUBLIC ${PROJECT_SOURCE_DIR}/src
                                                     ${PROJECT_SOURCE_DIR}/include)
  target_link_libraries(moeforge_${name} PUBLIC ${M_DEPS})
  if(MOEFORGE_WITH_CUDA)
    target_link_libraries(moeforge_${name} PUBLIC ${M_CUDA_DEPS})
    target_compile_definitions(moeforge_${name} PUBLIC MOEFORGE_WITH_CUDA=1)
  endif()
  moeforge_warnings(moeforge_${name})
endfunction()
