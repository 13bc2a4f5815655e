# Cython declarations of the engine's public C++ API (engine/include/pyagg/*.h).
# Declarations only: the conversions live in _ext.pyx.
from libc.stdint cimport int64_t, uint64_t
from libcpp cimport bool as cbool
from libcpp.string cimport string
from libcpp.vector cimport vector


cdef extern from "pyagg/status.h" namespace "pyagg" nogil:
    cdef cppclass CStatus "pyagg::Status":
        CStatus()
        cbool ok()
        int code_int()
        const string& message()


cdef extern from "pyagg/types.h" namespace "pyagg" nogil:
    cdef enum class CDType "pyagg::DType":
        kFloat32 "pyagg::DType::kFloat32"
        kFloat64 "pyagg::DType::kFloat64"

    cdef enum class CDevice "pyagg::Device":
        kCpu "pyagg::Device::kCpu"
        kCuda "pyagg::Device::kCuda"

    cdef cppclass CGradView "pyagg::GradView":
        const void* data
        const void* const* rows
        size_t n
        size_t d
        CDType dtype
        CDevice device
        int device_id


cdef extern from "pyagg/rules.h" namespace "pyagg" nogil:
    cdef cppclass CParamSpec "pyagg::ParamSpec":
        const char* name
        double default_value
        cbool integer
        const char* doc
        const char* choices
        cbool allow_inf
        cbool required
        double lo
        cbool lo_open
        const char* range

    cdef cppclass CRuleInfo "pyagg::RuleInfo":
        const char* name
        const char* bound
        size_t (*min_n)(size_t f)
        cbool robust
        const char* paper
        const char* summary
        vector[CParamSpec] params

    cdef cppclass CPreInfo "pyagg::PreInfo":
        const char* name
        const char* paper
        const char* summary
        vector[CParamSpec] params

    cdef cppclass CNamedParam "pyagg::NamedParam":
        string name
        double value
        string text

    cdef cppclass CRuleConfig "pyagg::RuleConfig":
        size_t f

    cdef cppclass CPreConfig "pyagg::PreConfig":
        size_t f
        uint64_t seed

    cdef cppclass CBuildInfo "pyagg::BuildInfo":
        const char* version
        cbool openmp
        int max_threads
        cbool cuda
        const char* cuda_archs
        const char* compiler
        const char* build_type
        cbool native_arch
        const char* cpu_isas
        const char* cpu_isa

    const vector[CRuleInfo]& rule_table()
    const vector[CPreInfo]& pre_table()
    CStatus make_rule(const string& name, int64_t f, const vector[CNamedParam]& params, CRuleConfig* out)
    CStatus make_pre(const string& name, int64_t f, const vector[CNamedParam]& params, CPreConfig* out)
    CStatus check_rule_input(const CRuleConfig& cfg, size_t n, size_t d)
    cbool rule_history(const CRuleConfig& cfg, vector[double]* norms)
    CStatus set_rule_history(const CRuleConfig& cfg, const vector[double]& norms)
    CStatus check_pre_input(const CPreConfig& cfg, size_t n, size_t d)
    size_t pre_output_rows(const CPreConfig& cfg, size_t n)
    CStatus aggregate(const CRuleConfig& cfg, const CGradView& g, void* out, const void* state)
    CStatus preaggregate(const CPreConfig& cfg, const CGradView& g, void* out)
    CStatus aggregate_chain(const CRuleConfig& cfg, const vector[CPreConfig]& pres, const CGradView& g, void* out,
                            const void* state)
    CBuildInfo build_info()
    CStatus cuda_device_count(int* count)


cdef extern from "pyagg/device.h" namespace "pyagg" nogil:
    CStatus device_malloc(int device_id, size_t nbytes, void** ptr)
    CStatus device_free(int device_id, void* ptr)
    CStatus copy_host_to_device(int device_id, void* dst, const void* src, size_t nbytes)
    CStatus copy_device_to_host(int device_id, void* dst, const void* src, size_t nbytes)
    CStatus device_synchronize(int device_id)
