# Runs the spaattn tool with the arguments ARGS ('|'-separated) and requires exit code RC (default
# 2, an invalid argument) and EXPECT, literally, in its output (stdout and stderr). Used by the
# cli_* tests that tests/CMakeLists.txt adds.
if(NOT DEFINED RC)
  set(RC 2)
endif()
string(REPLACE "|" ";" args "${ARGS}")
execute_process(COMMAND "${SPAATTN}" ${args} RESULT_VARIABLE rc OUTPUT_VARIABLE out
                ERROR_VARIABLE err)
if(NOT rc STREQUAL RC)
  message(FATAL_ERROR "expected exit code ${RC}, got '${rc}'\nstdout: ${out}\nstderr: ${err}")
endif()
string(FIND "${out}${err}" "${EXPECT}" at)
if(at EQUAL -1)
  message(FATAL_ERROR "expected in the output: ${EXPECT}\nstdout: ${out}\nstderr: ${err}")
endif()
