"""Run-time ISA dispatch of the CPU kernels (CMakeLists.txt "CPU ISA dispatch").

Every ISA level compiled in that this CPU runs is forced in turn with
PYAGG_CPU_ISA (a fresh process each: the choice is made once per process),
and each rule's output is checked against the numpy reference; levels must
agree with each other (selections bit for bit). A level that is not compiled
in, or that the CPU lacks, is an error of every call, never a fallback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import pyagg

import reference as ref

INFO = pyagg.build_info()
RULES = sorted(pyagg.rules())
N, F, D = 15, 3, 2000

SCRIPT = r"""
import json, sys
import numpy as np
import pyagg
G = np.load(sys.argv[1])
out = {"isa": pyagg.build_info()["cpu_isa"], "rules": {}}
params = json.loads(sys.argv[2])
for rule in params:
    out["rules"][rule] = pyagg.aggregate(G, rule, %d, **params[rule]).tolist()
print(json.dumps(out))
""" % F


def _cpu_runs(isa: str) -> bool:
    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    need = {"base": [], "native": [], "avx2": ["avx2", "fma", "bmi2"],
            "avx512": ["avx2", "fma", "avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"]}[isa]
    return all(f" {w}" in flags for w in need)


def _run(isa: str, *args, script: str = SCRIPT) -> dict:
    """`script` with argv args in a fresh process forced to level `isa`; its JSON output."""
    env = dict(os.environ, PYAGG_CPU_ISA=isa)
    r = subprocess.run([sys.executable, "-c", script, *map(str, args)],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _levels() -> list:
    """The compiled-in levels this CPU runs, lowest first."""
    return [isa for isa in INFO["cpu_isas"] if _cpu_runs(isa)]


def test_build_info_reports_levels():
    assert INFO["cpu_isa"] in INFO["cpu_isas"]
    if INFO["native_arch"]:
        assert INFO["cpu_isas"] == ["native"]
    else:
        assert "-march=native" not in " ".join(INFO["cpu_isas"])
        assert INFO["cpu_isas"][0] == "base"


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_every_level_matches_the_reference_and_the_others(tmp_path, dtype):
    rng = np.random.default_rng(11)
    G = rng.standard_normal((N, D)).astype(dtype)
    G[0] *= 50.0  # an outlier, so selections matter
    path = tmp_path / "G.npy"
    np.save(path, G)
    params = {r: ref.req(r) for r in RULES if pyagg.rules()[r]["min_n"](F) <= N}
    levels = _levels()
    assert levels, INFO
    results = {isa: _run(isa, path, json.dumps(params)) for isa in levels}
    for isa, res in results.items():
        assert res["isa"] == isa
    tol = dict(rtol=2e-5, atol=2e-5) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-10)
    exact = {"median", "krum", "multi-krum", "bulyan"}
    for rule in params:
        outs = {isa: np.asarray(res["rules"][rule], dtype=dtype) for isa, res in results.items()}
        base = outs[levels[0]]
        for isa, o in outs.items():
            if rule in exact:
                np.testing.assert_array_equal(o, base, err_msg=f"{rule}: {isa} vs {levels[0]}")
            else:
                np.testing.assert_allclose(o, base, err_msg=f"{rule}: {isa} vs {levels[0]}", **tol)
        fn = getattr(ref, rule.replace("-", "_"), None)
        if rule in ("average", "median", "krum"):
            np.testing.assert_allclose(base, fn(G.astype(np.float64), F).astype(dtype), **tol)


GRAM_SCRIPT = r"""
import json, sys
import numpy as np
import pyagg
G = np.load(sys.argv[1])
f = int(sys.argv[2])
out = {"isa": pyagg.build_info()["cpu_isa"]}
for rule in ("krum", "multi-krum", "bulyan", "bulyan-multikrum", "mda"):
    out[rule] = pyagg.aggregate(G, rule, f).tolist()
out["nnm"] = pyagg.preaggregate(G, "nnm", f).tolist()
print(json.dumps(out))
"""


@pytest.mark.parametrize("n", [20, 40])
def test_selection_rules_on_the_float_gram_kernels_agree_across_levels(tmp_path, n):
    """float32: the selection rules' distances come from a float Gram kernel
    on the avx2 and avx512 levels (n = 20: the lane-wise one, n = 40: the
    packed one; FMA: one rounding, so the two levels agree bit for bit) and
    from the exact kernel (n = 20) or the double Gram kernel (n = 40) on
    base; on data without near-ties every level selects the same rows."""
    f, d = 3, 3001
    rng = np.random.default_rng(12 + n)
    G = (rng.standard_normal((n, d)) * rng.choice([0.5, 1.0, 3.0], size=(n, 1))).astype(np.float32)
    path = tmp_path / "G.npy"
    np.save(path, G)
    levels = _levels()
    res = {isa: _run(isa, path, f, script=GRAM_SCRIPT) for isa in levels}
    for isa in levels:
        assert res[isa]["isa"] == isa
    first = levels[0]
    for isa in levels[1:]:
        for rule, o in res[isa].items():
            if rule == "isa":
                continue
            got, want = np.asarray(o, np.float32), np.asarray(res[first][rule], np.float32)
            if rule == "krum":
                np.testing.assert_array_equal(got, want, err_msg=f"{rule}: {isa} vs {first}")
            else:  # the same selection; means may differ in the last bit between levels
                np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6, err_msg=f"{rule}: {isa} vs {first}")
    if "avx2" in res and "avx512" in res:
        assert res["avx2"] == {**res["avx512"], "isa": "avx2"}
    np.testing.assert_array_equal(np.asarray(res[first]["krum"], np.float32), G[ref.krum_index(G, f)])


@pytest.mark.parametrize("value,message", [
    ("sse9", "is not an ISA level of this build"),
])
def test_unknown_level_is_an_error_of_every_call(value, message):
    code = (
        "import numpy as np, pyagg\n"
        "try:\n"
        "    pyagg.aggregate(np.ones((3, 4)), 'average')\n"
        "except pyagg.InvalidArgumentError as e:\n"
        "    print('ERR', e)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env=dict(os.environ, PYAGG_CPU_ISA=value), timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("ERR") and message in r.stdout and f"PYAGG_CPU_ISA={value}" in r.stdout


def test_level_the_cpu_lacks_is_refused():
    missing = [isa for isa in INFO["cpu_isas"] if not _cpu_runs(isa)]
    if not missing:
        pytest.skip("this CPU runs every compiled-in level (nothing to refuse)")
    code = ("import numpy as np, pyagg\ntry:\n    pyagg.aggregate(np.ones((3, 4)), 'average')\n"
            "except pyagg.InvalidArgumentError as e:\n    print('ERR', e)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env=dict(os.environ, PYAGG_CPU_ISA=missing[-1]), timeout=120)
    assert "does not support" in r.stdout


def _engine_library() -> str:
    import pathlib

    libs = sorted(pathlib.Path(pyagg.__file__).parent.glob("libpyagg_engine*.so*"))
    assert libs, "the engine library is not next to the package"
    return str(libs[0])


@pytest.mark.skipif(INFO["native_arch"] or len(INFO["cpu_isas"]) < 2, reason="single-ISA build: nothing to mix up")
def test_no_higher_isa_code_behind_a_shared_symbol():
    """The linker keeps one copy of each weak symbol (std:: template instances, inline selection
    code) for the whole library. If that copy came from the AVX2 or AVX-512 kernels, the portable
    path would run AVX code on CPUs without it (SIGILL: seen before cmake/isa_private.cmake, in
    selection::nnm_select and std::__introsort_loop<float*>). Checked on the built library: no
    global function outside the higher-ISA copies contains a VEX/EVEX instruction."""
    import re
    import shutil

    nm, objdump = shutil.which("nm"), shutil.which("objdump")
    if not nm or not objdump:
        pytest.fail("binutils (nm, objdump) are needed to check the ISA dispatch; apt-get install binutils")
    lib = _engine_library()
    syms = subprocess.run([nm, "--defined-only", lib], capture_output=True, text=True, check=True).stdout
    shared = set()
    for line in syms.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] in ("T", "W", "i"):
            name = parts[2]
            own = re.search(r"cpu_avx(2|512)|\.pyagg_avx(2|512)$", name)
            if not own:
                shared.add(name)
    assert len(shared) > 100, "too few global functions found: is this the engine library?"
    dis = subprocess.run([objdump, "-d", "--no-show-raw-insn", lib], capture_output=True, text=True, check=True).stdout
    current, bad = None, {}
    for line in dis.splitlines():
        m = re.match(r"^[0-9a-f]+ <(.+)>:$", line)
        if m:
            current = m.group(1) if m.group(1) in shared else None
            continue
        if current and re.match(r"^\s+[0-9a-f]+:\s+v[a-z]", line):
            bad.setdefault(current, line.strip())
    assert not bad, f"{len(bad)} shared functions hold AVX instructions, e.g. {list(bad.items())[:3]}"
