# mmfree-hw-generate (through the Verilog core) and mmfree-cli (CPU) print the same greedy ids.
execute_process(COMMAND ${HW} --model ${MODEL} --ids ${IDS} -n ${N} --print-ids
  OUTPUT_VARIABLE hw_ids ERROR_VARIABLE hw_err RESULT_VARIABLE hw_rc OUTPUT_STRIP_TRAILING_WHITESPACE)
execute_process(COMMAND ${CLI} generate --model ${MODEL} --ids ${IDS} -n ${N} --print-ids --temperature 0 --no-stats
  OUTPUT_VARIABLE cli_ids ERROR_VARIABLE cli_err RESULT_VARIABLE cli_rc OUTPUT_STRIP_TRAILING_WHITESPACE)
message("mmfree-hw-generate: ${hw_ids}\n${hw_err}mmfree-cli:         ${cli_ids}")
if(NOT hw_rc EQUAL 0 OR NOT cli_rc EQUAL 0)
  message(FATAL_ERROR "a program failed: ${hw_err} ${cli_err}")
endif()
string(REGEX MATCHALL "[0-9]+" n_ids "${hw_ids}")
list(LENGTH n_ids count)
if(NOT hw_ids STREQUAL cli_ids OR count LESS 11)
  message(FATAL_ERROR "the ids differ (or too few)")
endif()
