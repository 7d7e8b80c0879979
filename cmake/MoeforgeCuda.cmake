# CUDA detection. Found: the CUDA backend is built for sm_90a (Hopper: wgmma, TMA). Not found: a
# CPU-only build, unless MOEFORGE_REQUIRE_CUDA makes that an error so broken detection cannot pass.
set(MOEFORGE_WITH_CUDA OFF)
if(MOEFORGE_CUDA)
  if(NOT CMAKE_CUDA_COMPILER AND NOT DEFINED ENV{CUDACXX} AND EXISTS /usr/local/cuda/bin/nvcc)
    set(CMAKE_CUDA_COMPILER /usr/local/cuda/bin/nvcc)
  endif()
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
      set(CMAKE_CUDA_ARCHITECTURES 90a)
    endif()
    enable_language(CUDA)
    # CMake 3.25 does not know nvcc's C++20 dialect flag (nvcc has had it since CUDA 12): name it.
    set(CMAKE_CUDA20_STANDARD_COMPILE_OPTION "-std=c++20")
    set(CMAKE_CUDA20_EXTENSION_COMPILE_OPTION "-std=c++20")
    set(CMAKE_CUDA_STANDARD 20)
    set(CMAKE_CUDA_STANDARD_REQUIRED ON)
    string(APPEND CMAKE_CUDA_FLAGS " --expt-relaxed-constexpr")
    find_package(CUDAToolkit REQUIRED)
    set(MOEFORGE_WITH_CUDA ON)
  endif()
endif()
if(MOEFORGE_REQUIRE_CUDA AND NOT MOEFORGE_WITH_CUDA)
  message(FATAL_ERROR "MOEFORGE_REQUIRE_CUDA is set but no CUDA compiler was found "
                      "(looked for nvcc on PATH, CUDACXX and /usr/local/cuda/bin/nvcc)")
endif()
message(STATUS "moeforge: CUDA backend ${MOEFORGE_WITH_CUDA}")

# Header-only CUTLASS and cuDNN frontend: from CUTLASS_DIR / CUDNN_FRONTEND_DIR, else the project venv
# that scripts/bootstrap prepares (pip packages nvidia-cutlass and nvidia-cudnn-frontend).
if(MOEFORGE_WITH_CUDA)
  file(GLOB _venv_site ${PROJECT_SOURCE_DIR}/.venv/lib/python3*/site-packages)
  find_path(CUTLASS_INCLUDE_DIR cutlass/cutlass.h
            HINTS $ENV{CUTLASS_DIR}/include ${CUTLASS_DIR}/include
                  ${_venv_site}/cutlass_library/source/include)
  find_path(CUTLASS_UTIL_INCLUDE_DIR cutlass/util/device_memory.h
            HINTS $ENV{CUTLASS_DIR}/tools/util/include ${CUTLASS_DIR}/tools/util/include
                  ${_venv_site}/cutlass_library/source/tools/util/include)
  find_path(CUDNN_FRONTEND_INCLUDE_DIR cudnn_frontend.h
            HINTS $ENV{CUDNN_FRONTEND_DIR}/include ${CUDNN_FRONTEND_DIR}/include
                  ${_venv_site}/include ${_venv_site}/cudnn_frontend/include)
  message(STATUS "moeforge: CUTLASS ${CUTLASS_INCLUDE_DIR}; cuDNN frontend ${CUDNN_FRONTEND_INCLUDE_DIR}")
endif()
