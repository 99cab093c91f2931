# Runs `spaattn bench` with valid options and --json JSON where it cannot time anything (a build
# without CUDA, or no CUDA device) and requires exit code 1, EXPECT in its output, and no JSON file
# left behind (the output is opened before the GPU part and removed when the run fails). Used by
# the cli_bench_unavailable test that tests/CMakeLists.txt adds.
file(REMOVE "${JSON}")
execute_process(COMMAND "${SPAATTN}" bench --seq 4096 --heads 2 --densities 0.5 --json "${JSON}"
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc STREQUAL "1")
  message(FATAL_ERROR "expected exit code 1, got '${rc}'\nstdout: ${out}\nstderr: ${err}")
endif()
string(FIND "${err}" "${EXPECT}" at)
if(at EQUAL -1)
  message(FATAL_ERROR "expected on stderr: ${EXPECT}\nstdout: ${out}\nstderr: ${err}")
endif()
if(EXISTS "${JSON}")
  message(FATAL_ERROR "${JSON} was left behind by a run that failed")
endif()
