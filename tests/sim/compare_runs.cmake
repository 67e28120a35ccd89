# Runs one seed of the simulator twice, full trace on, and requires byte-identical output.
# Usage: cmake -DSIM=path/to/atomdisk-sim -P compare_runs.cmake
foreach(run a b)
  execute_process(COMMAND ${SIM} --seed 4242 --nodes 3 --steps 1500 --trace
                  OUTPUT_VARIABLE out_${run} RESULT_VARIABLE rc_${run})
  if(NOT rc_${run} EQUAL 0)
    message(FATAL_ERROR "atomdisk-sim --seed 4242 exited with ${rc_${run}}:\n${out_${run}}")
  endif()
endforeach()
string(LENGTH "${out_a}" len)
if(len LESS 1000)
  message(FATAL_ERROR "the trace is suspiciously short (${len} bytes)")
endif()
if(NOT out_a STREQUAL out_b)
  message(FATAL_ERROR "two runs of seed 4242 printed different output")
endif()
string(SHA256 digest "${out_a}")
message(STATUS "two runs printed the same ${len} bytes (sha256 ${digest})")
