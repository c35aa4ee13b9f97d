# Checks that every pooling-kernel object of the engine library contains
# prefetch instructions. GCC 12 once deleted every call of the kernels'
# prefetch helper (it judged __builtin_prefetch free of side effects), and
# nothing else would notice: results stay correct, only slower.
#
#   cmake -DOBJDUMP=/usr/bin/objdump -DLIB=libembstore_engine.a -P check_prefetch_emitted.cmake
execute_process(COMMAND ${OBJDUMP} -d --no-show-raw-insn ${LIB}
                OUTPUT_VARIABLE asm RESULT_VARIABLE rc ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "objdump failed on ${LIB}: ${err}")
endif()
# objdump prints "<member>.o:     file format ..." before each archive member.
set(checked 0)
foreach(kernel kernels_generic kernels_avx2 kernels_avx512)
  string(FIND "${asm}" "${kernel}.cc.o:" begin)
  if(begin EQUAL -1)
    continue()  # not built for this processor
  endif()
  string(SUBSTRING "${asm}" ${begin} -1 rest)
  string(LENGTH "${kernel}.cc.o:" skip)
  string(SUBSTRING "${rest}" ${skip} -1 rest)
  string(REGEX MATCH "[A-Za-z0-9_.]+\\.o:[ \t]+file format" next "${rest}")
  if(next)
    string(FIND "${rest}" "${next}" end)
    string(SUBSTRING "${rest}" 0 ${end} rest)
  endif()
  string(REGEX MATCHALL "prefetch" found "${rest}")
  list(LENGTH found count)
  message(STATUS "${kernel}: ${count} prefetch instructions")
  if(count EQUAL 0)
    message(FATAL_ERROR "${kernel}.cc.o has no prefetch instruction: the compiler dropped "
                        "the kernels' row prefetches (see EMBSTORE_PREFETCH_T0 in engine/kernels.h)")
  endif()
  math(EXPR checked "${checked} + 1")
endforeach()
if(checked EQUAL 0)
  message(FATAL_ERROR "no kernel object found in ${LIB}")
endif()
