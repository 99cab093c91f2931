# Runs a tiny `spaattn eval` (a 256-token synthetic layer, two steps, two sparsities) with --json
# and --plot into OUT_DIR and checks both files: the JSON records the version, every setting and
# the workload; the SVG has a polyline and a legend entry per method. --progress prints a line
# per row on stderr and --no-progress none. Used by the cli_eval_outputs test.
set(json "${OUT_DIR}/cli_eval_outputs.json")
set(plot "${OUT_DIR}/cli_eval_outputs.svg")
file(REMOVE "${json}" "${plot}")
set(tiny eval --workload=synthetic --grid=2x8x16 --text=8 --text-len=4 --heads=1 --steps=2
         --block=64 --sparsity=0.5,0.75 --methods=dense,sparse,rectified,rettention)
execute_process(COMMAND "${SPAATTN}" ${tiny} --json "${json}" --plot=${plot} --progress
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "exit code ${rc}\nstdout: ${out}\nstderr: ${err}")
endif()
foreach(f IN ITEMS "${json}" "${plot}")
  if(NOT EXISTS "${f}")
    message(FATAL_ERROR "not written: ${f}")
  endif()
endforeach()
string(REGEX MATCHALL "row [0-9]/7 [^\n]* elapsed, ~[^\n]* left" lines "${err}")
list(LENGTH lines n)
if(NOT n EQUAL 7)
  message(FATAL_ERROR "expected 7 progress lines on stderr, got ${n}:\n${err}")
endif()

file(READ "${json}" text)
foreach(expect IN ITEMS "\"version\": \"${VERSION}\"" "\"settings\": {\"workload\": \"synthetic\""
                        "\"block\": 64" "\"sparsity\": [0.5, 0.75]"
                        "\"methods\": [\"sparse\", \"rectified\", \"rettention\"]"
                        "\"json\": \"${json}\"" "\"plot\": \"${plot}\"" "\"progress\": \"on\""
                        "\"grid\": \"2x8x16\"" "\"seed\": 2026"
                        "\"workload\": {\"kind\": \"synthetic\", \"grid\": [2, 8, 16]"
                        "{\"method\": \"dense\""
                        "{\"method\": \"rettention\", \"sparsity\": 0.7500")
  string(FIND "${text}" "${expect}" at)
  if(at EQUAL -1)
    message(FATAL_ERROR "expected in ${json}: ${expect}\n${text}")
  endif()
endforeach()

file(READ "${plot}" svg)
string(REGEX MATCHALL "<polyline" polylines "${svg}")
list(LENGTH polylines lines)
# One group per method; dense is a single point (a marker, no line), the others one per sparsity.
string(REGEX MATCHALL "<g class=\"series\" data-method=\"[a-z_-]+\"" groups "${svg}")
list(LENGTH groups n)
if(NOT n EQUAL 4 OR NOT lines EQUAL 3 OR NOT svg MATCHES "^<svg "
   OR NOT svg MATCHES "</svg>\n$" OR NOT svg MATCHES "achieved density"
   OR NOT svg MATCHES "relative L2 error")
  message(FATAL_ERROR "unexpected SVG (${n} series, ${lines} lines):\n${svg}")
endif()

execute_process(COMMAND "${SPAATTN}" ${tiny} --no-progress RESULT_VARIABLE rc
                OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL 0 OR NOT err STREQUAL "")
  message(FATAL_ERROR "--no-progress: exit code ${rc}, stderr: ${err}")
endif()
