#!/usr/bin/env python3
"""Checks that the sum kernels keep their accumulators in registers.

Twice a small, correct change made GCC 12 give the accumulator array of every
sum kernel a home on the stack: a load and a store per vector and row in the
hot loop (an "m" operand in the L2 prefetch's inline assembly), or a zeroing
of the array per tile and stores staged through it (loops over the
accumulators indexed by a variable). Both kept the results bit for bit and
cost 10-30% in cache, and no test can see them. This script disassembles the
engine (objdump) and, for each sum kernel of each ISA copy, reports:

- loops: the innermost loops that convert or add vectors (the row loops), and
  how many of their vector instructions touch the stack (%rsp): must be 0;
- rep stos: block zeroing in the kernel (a stack copy of the accumulators).

Usage: python bench/asm_check.py [path/to/libpyagg_engine.so]
Exit status 1 when an AVX-512 or AVX2 kernel fails either check (or its row
loop is not recognised, so that it cannot be checked). Not a test: the
shape of compiled code depends on the compiler; run it after touching
engine/src/cpu/coordinate.cpp or reduce.h's prefetch helpers.
"""
import re
import shutil
import subprocess
import sys
from pathlib import Path

ISAS = ("cpu_avx512", "cpu_avx2")


def functions(lib: Path):
    """(name, [(address, instruction text)]) for every function of the library."""
    out = subprocess.run(["objdump", "-d", "--no-show-raw-insn", "-C", str(lib)], capture_output=True,
                         text=True, check=True).stdout
    for blk in out.split("\n\n"):
        lines = blk.strip().split("\n")
        m = re.match(r"[0-9a-f]+ <(.*)>:$", lines[0])
        if not m:
            continue
        ins = []
        for line in lines[1:]:
            mm = re.match(r"\s*([0-9a-f]+):\s+(.*)", line)
            if mm:
                ins.append((int(mm.group(1), 16), mm.group(2)))
        yield m.group(1), ins


def row_loops(ins):
    """The loops that add or convert vectors, as (start, end, instructions): the
    regions of backward jumps holding vcvtps2pd / vaddpd / vfmadd*pd, neither
    returning nor calling (a jump back into a shared epilogue is no loop), and
    holding no smaller such region."""
    lo = ins[0][0] if ins else 0
    cand = []
    for addr, text in ins:
        m = re.match(r"j\w+\s+([0-9a-f]+)", text)
        if not m or not lo <= int(m.group(1), 16) < addr:
            continue
        s = int(m.group(1), 16)
        body = [t for a, t in ins if s <= a <= addr]
        if any(re.match(r"(ret|call)\b", t) for t in body):
            continue
        if any(re.match(r"v(cvtps2pd|addpd|fmadd\w*pd)\b", t) for t in body):
            cand.append((s, addr, body))
    return [(s, e, b) for s, e, b in cand
            if not any(s <= s2 and e2 <= e and (s2, e2) != (s, e) for s2, e2, _ in cand)]


def main() -> int:
    if not shutil.which("objdump"):
        print("asm_check: objdump not found (binutils)")
        return 2
    lib = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "pyagg" / "libpyagg_engine.so"
    if not lib.exists():
        print(f"asm_check: {lib} not found (build first)")
        return 2
    found = {}  # (isa, kernel instance) -> [loops, max stack ops in one, rep stos]
    for name, ins in functions(lib):
        isa = next((i for i in ISAS if f"pyagg::{i}::" in name), None)
        m = re.search(r"\b(average_tiles|weighted_sum|average_nan|bucket_means)<([^<>]*)>", name)
        if not isa or not m or "parallel_tiles" in name:
            continue
        hot = [sum(1 for t in body if "(%rsp)" in t and re.search(r"%[xyz]mm", t)) for _, _, body in row_loops(ins)]
        stos = sum(1 for _, t in ins if t.startswith("rep stos"))
        r = found.setdefault((isa, f"{m.group(1)}<{m.group(2)}>"), [0, 0, 0])
        r[0] += len(hot)
        r[1] = max([r[1]] + hot)
        r[2] += stos
    bad = 0
    print(f"{'isa':11s} {'kernel':30s} {'loops':>5s} {'stack ops':>9s} {'rep stos':>8s}")
    for (isa, k), (nl, st, stos) in sorted(found.items()):
        # a kernel whose row loop is not recognised cannot be checked: a failure too
        fail = st > 0 or stos > 0 or nl == 0
        bad += fail
        verdict = "ok" if not fail else ("FAIL" if nl else "FAIL: no row loop recognised")
        print(f"{isa:11s} {k:30s} {nl:5d} {st:9d} {stos:8d}  {verdict}")
    if not found:
        print("asm_check: no sum kernel found (symbols renamed?)")
        return 2
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
