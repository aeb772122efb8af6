# Passed to llama.cpp's configure as -DCMAKE_PROJECT_INCLUDE=<this file>.
# mesh-llm needs only two binaries; once the whole tree is configured, every
# other target is left out of the default build (their dependencies still build).
set(MESH_LLM_KEEP_TARGETS llama-server ggml-rpc-server)

function(mesh_llm_exclude_targets dir)
  get_property(targets DIRECTORY "${dir}" PROPERTY BUILDSYSTEM_TARGETS)
  foreach(target IN LISTS targets)
    get_target_property(kind ${target} TYPE)
    if(NOT target IN_LIST MESH_LLM_KEEP_TARGETS AND NOT kind STREQUAL "INTERFACE_LIBRARY")
      set_property(TARGET ${target} PROPERTY EXCLUDE_FROM_ALL TRUE)
    endif()
  endforeach()
  get_property(children DIRECTORY "${dir}" PROPERTY SUBDIRECTORIES)
  foreach(child IN LISTS children)
    mesh_llm_exclude_targets("${child}")
  endforeach()
endfunction()

if(CMAKE_SOURCE_DIR STREQUAL CMAKE_CURRENT_SOURCE_DIR AND NOT MESH_LLM_DEFERRED)
  set(MESH_LLM_DEFERRED TRUE)
  cmake_language(DEFER DIRECTORY "${CMAKE_SOURCE_DIR}" CALL mesh_llm_exclude_targets "${CMAKE_SOURCE_DIR}")
endif()
