// pyagg engine — run-time ISA dispatch of the CPU backend (cpu_dispatch.cpp).
//
// The CPU kernels are compiled once per ISA level (CMakeLists.txt, "CPU ISA
// dispatch"); the pyagg::cpu:: functions of cpu/cpu_backend.h are defined in
// cpu_dispatch.cpp as forwarders to the level chosen once per process: the
// best one this CPU supports, or the one named by PYAGG_CPU_ISA.
#pragma once

#include <string>

#include "pyagg/status.h"

namespace pyagg {
namespace cpu {

// Ok, or why the CPU backend cannot run (PYAGG_CPU_ISA names a level that is
// not compiled in or that this CPU lacks). Checked at the engine's door
// before any CPU kernel runs.
Status isa_status();
// The level in use ("base", "avx2", "avx512" or "native").
const char* isa_in_use();
// The levels compiled in, space-separated, lowest first.
const char* isas_compiled();

}  // namespace cpu
}  // namespace pyagg
