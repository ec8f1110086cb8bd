# Make the ROS 2 PyPI wheels usable as a CMake prefix (tools/build_msgs.sh passes this file
# with -DCMAKE_PROJECT_INCLUDE; a normal ROS install does not need it).
#
# The message wheels export their *__rosidl_generator_py targets with the include directories
# of the machine that built the wheels (/opt/python/...), which do not exist here, so CMake
# refuses to generate. At the end of the top-level CMakeLists.txt this re-points every such
# imported target at this interpreter's Python and NumPy headers.
function(_mdflow_ros_fix_wheel_py_targets)
  find_package(Python3 REQUIRED COMPONENTS Interpreter Development.Module NumPy)
  get_directory_property(_targets DIRECTORY "${CMAKE_SOURCE_DIR}" IMPORTED_TARGETS)
  foreach(_target IN LISTS _targets)
    if(_target MATCHES "__rosidl_generator_py$")
      set_target_properties(${_target} PROPERTIES
        INTERFACE_INCLUDE_DIRECTORIES "${Python3_INCLUDE_DIRS};${Python3_NumPy_INCLUDE_DIRS}")
    endif()
  endforeach()
endfunction()
cmake_language(DEFER DIRECTORY "${CMAKE_SOURCE_DIR}" CALL _mdflow_ros_fix_wheel_py_targets)
