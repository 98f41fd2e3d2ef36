# Fuzzing (tests/fuzz/): one harness per input parser, fuzz_<target>.c. The normal build
# links each with replay.c, and ctest replays its committed corpus (tests/fuzz/corpus/
# <target>/) as fuzz_replay_<target>, so an input that once broke a parser stays a test.
# With -DDROVER_FUZZ=ON (clang; `make fuzz` configures build-fuzz/ so) the libraries are
# instrumented for libFuzzer, AddressSanitizer and UndefinedBehaviorSanitizer, and each
# harness is also built as the libFuzzer binary fuzz_<target>.
option(DROVER_FUZZ "Build the libFuzzer harnesses (clang; instruments the libraries)" OFF)

set(DROVER_FUZZ_DIR ${CMAKE_CURRENT_SOURCE_DIR}/fuzz)
set(DROVER_FUZZ_TARGETS proto jobspec dataset checkpoint safetensors)
set(DROVER_FUZZ_LIBS_proto drover_common)
set(DROVER_FUZZ_LIBS_jobspec drover_common)
set(DROVER_FUZZ_LIBS_dataset drover_train)
set(DROVER_FUZZ_LIBS_checkpoint drover_train ZLIB::ZLIB)
set(DROVER_FUZZ_LIBS_safetensors drover_train)

if(DROVER_FUZZ)
  if(NOT CMAKE_C_COMPILER_ID MATCHES "Clang")
    message(FATAL_ERROR "DROVER_FUZZ=ON needs clang (libFuzzer), not ${CMAKE_C_COMPILER_ID}: "
                        "configure with -DCMAKE_C_COMPILER=clang, or run `make fuzz`")
  endif()
  # UB is a crash, not a line in the log; frame pointers for the sanitizers' stacks.
  set(DROVER_FUZZ_SANITIZE -fsanitize=address,undefined -fno-sanitize-recover=undefined
                           -fno-omit-frame-pointer)
  foreach(lib drover_common drover_kernels drover_train)
    target_compile_options(${lib} PRIVATE -fsanitize=fuzzer-no-link ${DROVER_FUZZ_SANITIZE})
    # Whatever links an instrumented library needs the sanitizers' runtime.
    target_link_options(${lib} INTERFACE ${DROVER_FUZZ_SANITIZE})
  endforeach()
endif()

foreach(t ${DROVER_FUZZ_TARGETS})
  add_executable(fuzz_replay_${t} ${DROVER_FUZZ_DIR}/replay.c ${DROVER_FUZZ_DIR}/fuzz_${t}.c)
  drover_target(fuzz_replay_${t})
  target_link_libraries(fuzz_replay_${t} PRIVATE ${DROVER_FUZZ_LIBS_${t}})
  add_test(NAME fuzz_replay_${t} COMMAND fuzz_replay_${t} ${DROVER_FUZZ_DIR}/corpus/${t})
  set_tests_properties(fuzz_replay_${t} PROPERTIES LABELS unit TIMEOUT 60)
  if(DROVER_FUZZ)
    add_executable(fuzz_${t} ${DROVER_FUZZ_DIR}/fuzz_${t}.c)
    drover_target(fuzz_${t})
    target_compile_options(fuzz_${t} PRIVATE -fsanitize=fuzzer ${DROVER_FUZZ_SANITIZE})
    target_link_options(fuzz_${t} PRIVATE -fsanitize=fuzzer ${DROVER_FUZZ_SANITIZE})
    target_link_libraries(fuzz_${t} PRIVATE ${DROVER_FUZZ_LIBS_${t}})
  endif()
endforeach()

# Writes the seed inputs (seed-*) of tests/fuzz/corpus/ from the code: fuzz_seeds SOURCE_DIR.
add_executable(fuzz_seeds ${DROVER_FUZZ_DIR}/seeds.c)
drover_target(fuzz_seeds)
target_link_libraries(fuzz_seeds PRIVATE drover_train ZLIB::ZLIB)
