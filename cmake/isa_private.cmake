# Makes one ISA copy of the CPU kernels private (run by CMakeLists.txt with cmake -P).
#
# The per-ISA copies are compiled from the same sources with different -march
# flags. Their own functions live in namespace cpu_<isa>, but what they
# instantiate from headers (std::sort internals, std::vector members, the
# inline selection code of engine/src/common) is emitted as weak COMDAT symbols
# with the same names in every copy, and the linker keeps ONE of them for the
# whole library: an AVX-512 build of std::__introsort_loop or
# selection::nnm_select could then run on the portable path of a CPU without
# AVX-512 (SIGILL). This script partially links the copy into one relocatable
# object and renames each symbol it defines weakly to "<name>.pyagg_<isa>"
# (shown by demanglers as "[clone .pyagg_<isa>]"), so the copy uses only its
# own instantiations and exports nothing but its cpu_<isa> entry points.
#
# Inputs: LINKER, NM, OBJCOPY, READELF, ISA, OUT, OBJECTS (object files separated by "|").
foreach(v LINKER NM OBJCOPY READELF ISA OUT OBJECTS)
  if(NOT DEFINED ${v} OR "${${v}}" STREQUAL "")
    message(FATAL_ERROR "isa_private.cmake: ${v} is not set")
  endif()
endforeach()
string(REPLACE "|" ";" OBJECTS "${OBJECTS}")
list(LENGTH OBJECTS n_objects)
if(n_objects LESS 2)
  message(FATAL_ERROR "isa_private.cmake: expected the ${ISA} copy's object files, got '${OBJECTS}'")
endif()
set(combined "${OUT}.combined.o")
execute_process(COMMAND ${LINKER} -r -o ${combined} ${OBJECTS} RESULT_VARIABLE rc ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "isa_private.cmake: ${LINKER} -r failed for the ${ISA} copy: ${err}")
endif()
execute_process(COMMAND ${NM} --defined-only ${combined} OUTPUT_VARIABLE syms RESULT_VARIABLE rc ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "isa_private.cmake: ${NM} failed: ${err}")
endif()
# Symbols of the copy's own namespace pyagg::cpu_<isa> (its entry points, which are explicit template
# instantiations and hence weak too, and whatever else it defines there) are unique to this copy: kept.
set(ns "cpu_${ISA}")
string(LENGTH "${ns}" ns_len)
set(own_prefix "_ZN5pyagg${ns_len}${ns}")
string(REPLACE "\n" ";" lines "${syms}")
set(map "")
set(count 0)
foreach(line IN LISTS lines)
  # "<address> <type> <name>": W/V weak (functions/objects), u GNU unique (static locals of inline code)
  if(line MATCHES "^[0-9a-fA-F]+ ([WVu]) (.+)$")
    string(FIND "${CMAKE_MATCH_2}" "${own_prefix}" at)
    if(at EQUAL 0)
      continue()
    endif()
    string(APPEND map "${CMAKE_MATCH_2} ${CMAKE_MATCH_2}.pyagg_${ISA}\n")
    math(EXPR count "${count} + 1")
  endif()
endforeach()
# COMDAT groups whose signature is not one of the symbols above (GCC's C5/D5 constructor and
# destructor groups have a local signature symbol): renamed too, or the final link would keep
# another copy's group and leave this copy's references to it undefined (null calls).
execute_process(COMMAND ${READELF} -gW ${combined} OUTPUT_VARIABLE groups RESULT_VARIABLE rc ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "isa_private.cmake: ${READELF} -g failed: ${err}")
endif()
string(REPLACE "\n" ";" glines "${groups}")
foreach(line IN LISTS glines)
  if(line MATCHES "^COMDAT group section .* \\[([^]]+)\\] contains")
    set(sig "${CMAKE_MATCH_1}")
    string(FIND "${sig}" "${own_prefix}" at)
    string(FIND "${map}" "${sig} ${sig}.pyagg_${ISA}\n" known)
    if(NOT at EQUAL 0 AND known EQUAL -1)
      string(APPEND map "${sig} ${sig}.pyagg_${ISA}\n")
      math(EXPR count "${count} + 1")
    endif()
  endif()
endforeach()
file(WRITE "${OUT}.map" "${map}")
execute_process(COMMAND ${OBJCOPY} --redefine-syms=${OUT}.map ${combined} ${OUT}
                RESULT_VARIABLE rc ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "isa_private.cmake: ${OBJCOPY} failed for the ${ISA} copy: ${err}")
endif()
file(REMOVE ${combined})
