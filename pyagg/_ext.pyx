# cython: language_level=3, boundscheck=False, wraparound=False, embedsignature=True
# distutils: language = c++
"""Thin Cython bindings of the pyagg engine.

This module only converts: Python values <-> engine structs, array addresses
-> pointers, engine Status -> exception. Array inspection (dtype, shape,
contiguity, device) happens in :mod:`pyagg.api`; everything about rules
(names, parameters, bounds) is validated by the engine itself. The GIL is
released while the engine runs.
"""

from libc.stdint cimport int64_t, uint64_t, uintptr_t
from libcpp.string cimport string
from libcpp.vector cimport vector
from cpython.buffer cimport (
    PyBUF_ANY_CONTIGUOUS, PyBUF_C_CONTIGUOUS, PyBUF_FORMAT, PyBUF_WRITABLE, PyBuffer_Release, PyObject_GetBuffer,
)

from pyagg._engine cimport (
    CBuildInfo, CDevice, CDType, CGradView, CNamedParam, CParamSpec, CPreConfig,
    CPreInfo, CRuleConfig, CRuleInfo, CStatus, aggregate, aggregate_chain, build_info, check_pre_input,
    check_rule_input, copy_device_to_host, copy_host_to_device, cuda_device_count,
    device_free, device_malloc, device_synchronize, make_pre, make_rule, pre_output_rows,
    pre_table, preaggregate, rule_history, rule_table, set_rule_history,
)

from pyagg.errors import AggregationError, STATUS_EXCEPTIONS


cdef int raise_status(const CStatus& st) except -1:
    """The single Status -> exception conversion."""
    if st.ok():
        return 0
    cls = STATUS_EXCEPTIONS.get(st.code_int(), AggregationError)
    raise cls(st.message().decode("utf-8", "replace"))


def _numeric_text(str value):
    """True for a string that reads as a number other than "inf": refused as a parameter
    value (numbers are passed as numbers; strings name choices)."""
    if value.strip().lower() == "inf":
        return False
    try:
        float(value)
    except ValueError:
        return False
    return True


def address(obj):
    """The address of the first element of a contiguous buffer (a numpy array that pyagg.api has
    validated), read through the buffer protocol: ~0.1 us where numpy's ``.ctypes.data`` costs ~1 us
    (it builds a ctypes object), which was a fifth of a small call's overhead."""
    cdef Py_buffer view
    PyObject_GetBuffer(obj, &view, PyBUF_ANY_CONTIGUOUS)
    cdef uintptr_t a = <uintptr_t>view.buf
    PyBuffer_Release(&view)
    return a


cdef vector[CNamedParam] to_params(params) except *:
    cdef vector[CNamedParam] out
    cdef CNamedParam p
    for name, value in params:
        if not isinstance(name, str):
            raise TypeError(f"parameter names must be str, got {name!r}")
        p.text = b""
        if isinstance(value, str) and not _numeric_text(value):
            # A named choice (linkage="single", norm_order="inf"): the engine checks it.
            p.name = name.encode("utf-8")
            p.value = float("nan")
            p.text = value.encode("utf-8")
            out.push_back(p)
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            try:
                import numpy as _np
                ok = isinstance(value, (_np.integer, _np.floating))
            except ImportError:  # pragma: no cover
                ok = False
            if not ok:
                from pyagg.errors import InvalidArgumentError
                raise InvalidArgumentError(
                    f"parameter {name} must be a real number or a name, got {value!r} ({type(value).__name__})")
        p.name = name.encode("utf-8")
        p.value = float(value)
        if isinstance(value, int) and abs(value) > 2 ** 53:
            p.text = str(value).encode("utf-8")  # exact 64-bit integers (seed)
        out.push_back(p)
    return out


cdef CDType to_dtype(int code) except *:
    if code == 0:
        return CDType.kFloat32
    if code == 1:
        return CDType.kFloat64
    raise ValueError(f"dtype code must be 0 (float32) or 1 (float64), got {code}")


cdef CDevice to_device(int code) except *:
    if code == 0:
        return CDevice.kCpu
    if code == 1:
        return CDevice.kCuda
    raise ValueError(f"device code must be 0 (cpu) or 1 (cuda), got {code}")


cdef CGradView make_view(uintptr_t data, uintptr_t rows, size_t n, size_t d, int dtype, int device,
                         int device_id) except *:
    """The engine's view of n gradients at `data` (n*d block) or `rows` (n row addresses)."""
    cdef CGradView g
    g.data = <const void*>data
    g.rows = <const void* const*>rows
    g.n = n
    g.d = d
    g.dtype = to_dtype(dtype)
    g.device = to_device(device)
    g.device_id = device_id
    return g


cdef int64_t check_f(f) except? -1:
    """f as an integer (bools and non-integers refused; the engine checks the range)."""
    if isinstance(f, bool) or not hasattr(f, "__index__"):
        from pyagg.errors import InvalidArgumentError
        raise InvalidArgumentError(f"f must be an integer, got {f!r}")
    return int(f)


cdef class Rule:
    """A parsed rule: name, f and parameters checked by the engine once."""

    cdef CRuleConfig cfg
    cdef readonly str name
    cdef readonly int64_t f
    cdef readonly tuple params

    def __init__(self, str name, f, params=()):
        self.f = check_f(f)
        cdef vector[CNamedParam] cparams = to_params(params)
        raise_status(make_rule(name.encode("utf-8"), self.f, cparams, &self.cfg))
        self.name = name
        self.params = tuple(params)

    def check(self, size_t n, size_t d):
        """Raise if (n, d) is not admissible for this rule."""
        raise_status(check_rule_input(self.cfg, n, d))

    def run(self, uintptr_t data, uintptr_t rows, size_t n, size_t d, int dtype, int device,
            int device_id, uintptr_t out, uintptr_t state):
        """Aggregate n rows at address `data` (n*d block) or `rows` (n row addresses) into `out`."""
        cdef CGradView g = make_view(data, rows, n, d, dtype, device, device_id)
        cdef CStatus st
        with nogil:
            st = aggregate(self.cfg, g, <void*>out, <const void*>state)
        raise_status(st)

    def history(self):
        """The norms kept across calls (clipped-clustering, norm_history=all) as a list, else None."""
        cdef vector[double] norms
        if not rule_history(self.cfg, &norms):
            return None
        return [norms[i] for i in range(norms.size())]

    def set_history(self, norms):
        cdef vector[double] v
        for x in norms:
            v.push_back(float(x))
        raise_status(set_rule_history(self.cfg, v))

    def __repr__(self):
        return f"Rule({self.name!r}, f={self.f}, params={dict(self.params)!r})"


def run_plain(Rule rule, object a, object empty):
    """pyagg.aggregate's fast path for the common call: `a` a plain (n, d) numpy array, n, d >= 1,
    float32 or float64 in native byte order, C-contiguous and aligned, on the CPU, no state.
    Returns the (d,) result (allocated with ``empty(d, dtype)``), or None when any of that does
    not hold: the caller then takes the general path, which validates the input and names what is
    wrong. Same engine call as the general path; the input is read through the buffer protocol
    (no numpy attribute lookups: ~2.5 us per call less at small d)."""
    cdef Py_buffer view
    try:
        PyObject_GetBuffer(a, &view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT)
    except (BufferError, TypeError, ValueError):
        return None
    cdef int code = -1
    cdef size_t n = 0, d = 0, item = 0
    try:
        if view.ndim == 2 and view.format != NULL and view.format[0] != 0 and view.format[1] == 0:
            if view.format[0] == b'f' and view.itemsize == 4:
                code = 0
            elif view.format[0] == b'd' and view.itemsize == 8:
                code = 1
        if code < 0:
            return None
        n = <size_t>view.shape[0]
        d = <size_t>view.shape[1]
        item = <size_t>view.itemsize
        if n == 0 or d == 0 or (<uintptr_t>view.buf) % item != 0:
            return None
        out = empty(d, "float32" if code == 0 else "float64")
        run_into(rule, <uintptr_t>view.buf, n, d, code, out)
        return out
    finally:
        PyBuffer_Release(&view)


cdef int run_into(Rule rule, uintptr_t data, size_t n, size_t d, int code, object out) except -1:
    cdef Py_buffer ov
    PyObject_GetBuffer(out, &ov, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE)
    cdef CGradView g = make_view(data, 0, n, d, code, 0, 0)
    cdef CStatus st
    try:
        with nogil:
            st = aggregate(rule.cfg, g, ov.buf, NULL)
    finally:
        PyBuffer_Release(&ov)
    raise_status(st)
    return 0


cdef class Pre:
    """A parsed pre-aggregator."""

    cdef CPreConfig cfg
    cdef readonly str name
    cdef readonly int64_t f
    cdef readonly tuple params

    def __init__(self, str name, f, params=()):
        self.f = check_f(f)
        cdef vector[CNamedParam] cparams = to_params(params)
        raise_status(make_pre(name.encode("utf-8"), self.f, cparams, &self.cfg))
        self.name = name
        self.params = tuple(params)

    @property
    def seed(self):
        return self.cfg.seed

    def output_rows(self, size_t n):
        return pre_output_rows(self.cfg, n)

    def check(self, size_t n, size_t d):
        raise_status(check_pre_input(self.cfg, n, d))

    def run(self, uintptr_t data, uintptr_t rows, size_t n, size_t d, int dtype, int device,
            int device_id, uintptr_t out, seed=None):
        """Pre-aggregate into `out` (output_rows(n) x d); `seed` overrides the bucketing seed."""
        cdef CGradView g = make_view(data, rows, n, d, dtype, device, device_id)
        cdef CPreConfig cfg = self.cfg
        if seed is not None:
            cfg.seed = <uint64_t>seed
        cdef CStatus st
        with nogil:
            st = preaggregate(cfg, g, <void*>out)
        raise_status(st)

    def __repr__(self):
        return f"Pre({self.name!r}, f={self.f}, params={dict(self.params)!r})"


def run_chain(Rule rule, list pres, list seeds, uintptr_t data, uintptr_t rows, size_t n, size_t d, int dtype,
              int device, int device_id, uintptr_t out, uintptr_t state):
    """Pre-aggregators `pres` (Pre objects, in order) then `rule`, in one engine call (fused where the engine
    can: pyagg::aggregate_chain); seeds[k] (or None) overrides the bucketing seed of pres[k]."""
    if len(seeds) != len(pres):
        raise ValueError(f"run_chain: {len(pres)} pre-aggregators but {len(seeds)} seeds")
    cdef vector[CPreConfig] cp
    cdef Pre p
    cdef CPreConfig c
    for k in range(len(pres)):
        p = pres[k]
        c = p.cfg
        if seeds[k] is not None:
            c.seed = <uint64_t>seeds[k]
        cp.push_back(c)
    cdef CGradView g = make_view(data, rows, n, d, dtype, device, device_id)
    cdef CStatus st
    with nogil:
        st = aggregate_chain(rule.cfg, cp, g, <void*>out, <const void*>state)
    raise_status(st)


cdef dict _param_dict(const vector[CParamSpec]& specs):
    cdef dict out = {}
    cdef object default
    cdef double v
    for i in range(specs.size()):
        v = specs[i].default_value
        choices = specs[i].choices.decode().split("|") if specs[i].choices != NULL else None
        if v != v:  # NaN: derived from n and f (or required)
            default = None
        elif choices is not None:
            default = choices[int(v)]
        elif specs[i].integer:
            default = int(v)
        else:
            default = float(v)
        if choices is not None or specs[i].lo == float("-inf"):
            rng = None  # a choice or a seed: no numeric range
        elif specs[i].range != NULL:
            rng = specs[i].range.decode()
        else:
            rng = (">" if specs[i].lo_open else ">=") + f" {specs[i].lo:g}"
        out[specs[i].name.decode()] = {"default": default, "integer": bool(specs[i].integer),
                                        "doc": specs[i].doc.decode(), "choices": choices,
                                        "required": bool(specs[i].required), "lo": specs[i].lo,
                                        "lo_open": bool(specs[i].lo_open), "allow_inf": bool(specs[i].allow_inf),
                                        "range": rng}
    return out


def rule_infos():
    """The engine's rule table: list of dicts (min_n given as a list for f = 0..63)."""
    cdef const vector[CRuleInfo]* table = &rule_table()
    cdef const CRuleInfo* info
    out = []
    for i in range(table.size()):
        info = &table.at(i)
        out.append({
            "name": info.name.decode(),
            "bound": info.bound.decode(),
            "min_n_table": [info.min_n(f) for f in range(64)],
            "robust": bool(info.robust),
            "paper": info.paper.decode(),
            "summary": info.summary.decode(),
            "params": _param_dict(info.params),
        })
    return out


def rule_min_n(str name, size_t f):
    cdef const vector[CRuleInfo]* table = &rule_table()
    for i in range(table.size()):
        if table.at(i).name.decode() == name:
            return table.at(i).min_n(f)
    raise KeyError(name)


def pre_infos():
    cdef const vector[CPreInfo]* table = &pre_table()
    cdef const CPreInfo* info
    out = []
    for i in range(table.size()):
        info = &table.at(i)
        out.append({
            "name": info.name.decode(),
            "paper": info.paper.decode(),
            "summary": info.summary.decode(),
            "params": _param_dict(info.params),
        })
    return out


def engine_build_info():
    cdef CBuildInfo b = build_info()
    return {
        "version": b.version.decode(),
        "openmp": bool(b.openmp),
        "threads": int(b.max_threads),
        "cuda": bool(b.cuda),
        "cuda_archs": b.cuda_archs.decode(),
        "compiler": b.compiler.decode(),
        "build_type": b.build_type.decode(),
        "native_arch": bool(b.native_arch),
        "cpu_isas": b.cpu_isas.decode().split(),
        "cpu_isa": b.cpu_isa.decode(),
    }


def cuda_devices():
    """Number of usable CUDA devices; raises DeviceError saying why there are none."""
    cdef int count = 0
    raise_status(cuda_device_count(&count))
    return count


# ---- device memory (CUDA backend) ---------------------------------------------
def device_alloc(int device_id, size_t nbytes):
    cdef void* p = NULL
    raise_status(device_malloc(device_id, nbytes, &p))
    return <uintptr_t>p


def device_release(int device_id, uintptr_t ptr):
    raise_status(device_free(device_id, <void*>ptr))


def copy_h2d(int device_id, uintptr_t dst, uintptr_t src, size_t nbytes):
    cdef CStatus st
    with nogil:
        st = copy_host_to_device(device_id, <void*>dst, <const void*>src, nbytes)
    raise_status(st)


def copy_d2h(int device_id, uintptr_t dst, uintptr_t src, size_t nbytes):
    cdef CStatus st
    with nogil:
        st = copy_device_to_host(device_id, <void*>dst, <const void*>src, nbytes)
    raise_status(st)


def device_sync(int device_id):
    raise_status(device_synchronize(device_id))



