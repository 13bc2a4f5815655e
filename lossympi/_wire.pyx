# cython: language_level=3, boundscheck=False, wraparound=False, embedsignature=True
# distutils: language = c++
"""Cython bindings of the engine's LossyMPI transport (engine/include/pyagg/transport.h).

Thin conversions only: Python values <-> engine structs, engine Status ->
:mod:`lossympi.errors` exceptions, the GIL released while the engine works.
This module links the engine library but imports nothing from :mod:`pyagg`
(the dependency runs one way: pyagg's cluster uses lossympi, never back).
The Python API is :mod:`lossympi.datagram` (data plane) and the control plane.
"""
import threading

from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t, uintptr_t
from libc.string cimport memcpy, memset
from libcpp cimport bool as cbool
from libcpp.memory cimport unique_ptr
from libcpp.string cimport string
from libcpp.vector cimport vector
from cpython.buffer cimport PyBUF_WRITABLE

from lossympi.errors import InvalidArgumentError, LossyMPIError, STATUS_EXCEPTIONS, TransportError


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


cdef int raise_status(const CStatus& st) except -1:
    """Engine Status -> lossympi exception (the transport's one conversion)."""
    if st.ok():
        return 0
    cls = STATUS_EXCEPTIONS.get(st.code_int(), LossyMPIError)
    raise cls(st.message().decode("utf-8", "replace"))


cdef CDType to_dtype(int code) except *:
    if code == 0:
        return CDType.kFloat32
    if code == 1:
        return CDType.kFloat64
    raise InvalidArgumentError(f"dtype code must be 0 (float32) or 1 (float64), got {code}")


cdef extern from "pyagg/transport.h" namespace "pyagg::transport" nogil:
    size_t kHeaderSize "pyagg::transport::kHeaderSize"
    size_t kTagSize "pyagg::transport::kTagSize"
    size_t kDefaultMaxDatagram "pyagg::transport::kDefaultMaxDatagram"
    uint32_t kEndChunkIndex "pyagg::transport::kEndChunkIndex"
    uint32_t kMagic "pyagg::transport::kMagic"

    cdef enum class CKind "pyagg::transport::Kind":
        kData "pyagg::transport::Kind::kData"
        kEnd "pyagg::transport::Kind::kEnd"

    cdef enum class CMacAlgo "pyagg::transport::MacAlgo":
        kNone "pyagg::transport::MacAlgo::kNone"
        kAes256Gcm "pyagg::transport::MacAlgo::kAes256Gcm"
        kChaCha20Poly1305 "pyagg::transport::MacAlgo::kChaCha20Poly1305"

    cdef enum class CFillPolicy "pyagg::transport::FillPolicy":
        kNan "pyagg::transport::FillPolicy::kNan"

    cdef enum class CEndReason "pyagg::transport::EndReason":
        kComplete "pyagg::transport::EndReason::kComplete"

    const char* mac_name(CMacAlgo m)
    const char* end_reason_name(CEndReason r)
    CStatus parse_mac(const string& name, CMacAlgo* out)
    CStatus parse_fill(const string& name, CFillPolicy* out)
    cbool mac_available(CMacAlgo m)

    cdef cppclass CHeader "pyagg::transport::Header":
        CKind kind
        CMacAlgo mac
        uint8_t dtype
        uint32_t job_id
        uint32_t rank
        uint64_t step
        uint16_t tensor_id
        uint16_t header_len
        uint32_t chunk_index
        uint32_t chunk_count
        uint32_t payload_len
        uint64_t total_elems

    CStatus seal_datagram(const CHeader& h, const void* payload, size_t payload_len, const uint8_t* key,
                          vector[uint8_t]* out)

    cdef cppclass CGeometry "pyagg::transport::Geometry":
        size_t d
        size_t elem_size
        size_t chunk_elems
        size_t chunk_bytes
        size_t chunk_count
        size_t total_bytes

    CStatus make_geometry(size_t d, CDType dtype, size_t max_datagram, CGeometry* out)

    cdef cppclass CUdpSourceOptions "pyagg::transport::UdpSourceOptions":
        string host
        int port
        size_t rcvbuf
        cbool gro
        int batch
        cbool isolate
        size_t worker_rcvbuf
        size_t catchall_rcvbuf

    cdef cppclass CUdpSourceInfo "pyagg::transport::UdpSourceInfo":
        string host
        int port
        int family
        size_t rcvbuf_requested
        size_t rcvbuf_granted
        cbool gro

    cdef cppclass CUdpSinkOptions "pyagg::transport::UdpSinkOptions":
        string host
        int port
        size_t sndbuf
        cbool gso

    cdef cppclass CReceiverConfig "pyagg::transport::ReceiverConfig":
        uint32_t job_id
        uint16_t tensor_id
        vector[uint32_t] ranks
        vector[uint8_t] keys
        CMacAlgo mac
        size_t d
        CDType dtype
        size_t max_datagram
        CFillPolicy fill
        double grace_s
        cbool adaptive_grace
        double grace_min_s
        double drop_rate
        uint64_t seed
        cbool isolate
        int verify_threads

    cdef cppclass CRegistration "pyagg::transport::Registration":
        uint32_t rank
        size_t row
        string address
        uint64_t seq
        cbool ready

    cdef cppclass CRejectCounts "pyagg::transport::RejectCounts":
        uint64_t bad_length
        uint64_t bad_header
        uint64_t out_of_range
        uint64_t bad_mac
        uint64_t wrong_step
        uint64_t unknown_sender
        uint64_t unknown_source
        uint64_t source_mismatch
        uint64_t total()

    cdef cppclass CWorkerStats "pyagg::transport::WorkerStats":
        uint32_t rank
        uint64_t chunks_expected
        uint64_t chunks_received
        uint64_t chunks_filled
        uint64_t duplicates
        uint64_t late
        uint64_t dropped
        uint64_t end_markers
        uint64_t end_replays
        uint64_t kernel_dropped
        uint64_t registers
        uint64_t register_refused
        int64_t chunks_sent
        uint64_t bytes_received
        CRejectCounts rejected
        double first_s
        double last_s
        double end_s
        cbool complete
        cbool waited

    cdef cppclass CStepResult "pyagg::transport::StepResult":
        uint64_t step
        CEndReason reason
        double elapsed_s
        double grace_s
        double spread_s
        double wait_s
        vector[CWorkerStats] workers
        CRejectCounts unattributed
        uint64_t datagrams
        uint64_t kernel_dropped
        uint64_t unattributed_kernel_dropped

    cdef cppclass CGradientReceiver "pyagg::transport::GradientReceiver":
        CStatus expect(uint64_t step)
        CStatus collect(uint64_t step, double deadline_s, const uint8_t* wait, CStepResult* out)
        void shutdown()
        CStatus registrations(vector[CRegistration]* out)
        const void* buffer()
        const CGeometry& geometry()
        size_t rows()
        string describe()

    CStatus make_udp_receiver(const CReceiverConfig& cfg, const CUdpSourceOptions& o,
                              unique_ptr[CGradientReceiver]* out, CUdpSourceInfo* info)

    cdef cppclass CSenderConfig "pyagg::transport::SenderConfig":
        uint32_t job_id
        uint32_t rank
        uint16_t tensor_id
        CMacAlgo mac
        vector[uint8_t] key
        size_t max_datagram
        double rate
        size_t burst
        size_t credit
        int end_copies
        double end_spacing_s
        size_t batch

    cdef enum class CAbandon "pyagg::transport::Abandon":
        kNone "pyagg::transport::Abandon::kNone"
        kNewerStep "pyagg::transport::Abandon::kNewerStep"
        kDeadline "pyagg::transport::Abandon::kDeadline"
    const char* abandon_name(CAbandon a)

    cdef cppclass CSendStats "pyagg::transport::SendStats":
        uint64_t step
        uint64_t chunks
        uint64_t datagrams
        uint64_t bytes
        uint64_t syscalls
        uint64_t refused
        uint64_t retries
        uint64_t dropped
        double seconds
        double paced_s
        cbool gso
        uint64_t chunks_sent
        uint64_t end_sent
        CAbandon abandoned
        double data_s
        double target_rate
        double achieved_rate
        double forgiven_s

    cdef cppclass CGradientSender "pyagg::transport::GradientSender":
        CStatus send(uint64_t step, const void* data, size_t d, CDType dtype, double deadline_s, CSendStats* st)
        void abandon(uint64_t step)
        CStatus send_register()
        string describe()

    CStatus make_udp_sender(const CSenderConfig& cfg, const CUdpSinkOptions& o, unique_ptr[CGradientSender]* out)

    CStatus c_fill_chunks "pyagg::transport::fill_chunks"(void* row, const CGeometry& g, CDType dtype, CFillPolicy policy, const uint8_t* received,
                        uint64_t seed, uint64_t step, uint32_t rank)
    CStatus c_kx_keypair "pyagg::transport::kx_keypair"(uint8_t* pk32, uint8_t* sk32)
    CStatus c_kx_server_key "pyagg::transport::kx_server_key"(const uint8_t* server_pk, const uint8_t* server_sk, const uint8_t* worker_pk,
                          uint32_t job_id, uint32_t rank, uint8_t* out32)
    CStatus c_kx_worker_key "pyagg::transport::kx_worker_key"(const uint8_t* worker_pk, const uint8_t* worker_sk, const uint8_t* server_pk,
                          uint32_t job_id, uint32_t rank, uint8_t* out32)


cdef void _assign(vector[uint8_t]& dst, bytes src):
    """dst <- the bytes of src (key material for the engine's config structs)."""
    dst.resize(len(src))
    if len(src):
        memcpy(dst.data(), <const char*>src, len(src))


cdef CMacAlgo _to_mac(str name) except *:
    cdef CMacAlgo m = CMacAlgo.kNone
    raise_status(parse_mac(name.encode("utf-8"), &m))
    return m


cdef CFillPolicy _to_fill(str name) except *:
    cdef CFillPolicy f = CFillPolicy.kNan
    raise_status(parse_fill(name.encode("utf-8"), &f))
    return f


cdef dict _rejects(const CRejectCounts& r):
    return {"bad_length": r.bad_length, "bad_header": r.bad_header, "out_of_range": r.out_of_range,
            "bad_mac": r.bad_mac, "wrong_step": r.wrong_step, "unknown_sender": r.unknown_sender,
            "unknown_source": r.unknown_source, "source_mismatch": r.source_mismatch}


_UNATTRIBUTED_ONLY = ("unknown_sender", "unknown_source", "source_mismatch")


cdef dict _worker_stats(const CWorkerStats& w, uint64_t step):
    rej = _rejects(w.rejected)
    for k in _UNATTRIBUTED_ONLY:
        del rej[k]
    out = {
        "rank": w.rank,
        "step": step,
        "expected": w.chunks_expected,
        "received": w.chunks_received,
        "filled": w.chunks_filled,
        "duplicates": w.duplicates,
        "late": w.late,
        "dropped": w.dropped,
        "end_markers": w.end_markers,
        "end_replays": w.end_replays,
        "kernel_dropped": w.kernel_dropped,
        "registers": w.registers,
        "register_refused": w.register_refused,
        "sent": None if w.chunks_sent < 0 else w.chunks_sent,
        "bytes": w.bytes_received,
        "rejected": sum(rej.values()),
        "first_s": None if w.first_s < 0 else w.first_s,
        "last_s": None if w.last_s < 0 else w.last_s,
        "end_s": None if w.end_s < 0 else w.end_s,
        "complete": bool(w.complete),
        "waited": bool(w.waited),
    }
    for k, v in rej.items():
        out["rejected_" + k] = v
    return out


cdef dict _geometry_dict(const CGeometry& g):
    return {"d": g.d, "elem_size": g.elem_size, "chunk_elems": g.chunk_elems, "chunk_bytes": g.chunk_bytes,
            "chunk_count": g.chunk_count, "total_bytes": g.total_bytes}


def transport_mac_resolve(str name):
    """Canonical MAC name for `name` ('auto' -> the fastest available); raises if unavailable."""
    cdef CMacAlgo m = _to_mac(name)
    return mac_name(m).decode()


def transport_mac_available(str name):
    """Whether this build and CPU provide the MAC `name` (without raising)."""
    if name == "none":
        return True
    if name == "aes256gcm":
        return bool(mac_available(CMacAlgo.kAes256Gcm))
    if name == "chacha20poly1305":
        return bool(mac_available(CMacAlgo.kChaCha20Poly1305))
    if name == "auto":
        return bool(mac_available(CMacAlgo.kChaCha20Poly1305))
    return False


def transport_geometry(size_t d, int dtype, size_t max_datagram=1472):
    """Chunking of d elements (dtype code 0 float32 / 1 float64) into datagrams."""
    cdef CGeometry g
    raise_status(make_geometry(d, to_dtype(dtype), max_datagram, &g))
    return _geometry_dict(g)


def transport_constants():
    return {"header_size": kHeaderSize, "tag_size": kTagSize, "max_datagram": kDefaultMaxDatagram,
            "end_chunk_index": kEndChunkIndex, "magic": kMagic}


def transport_seal(*, int kind, str mac, int dtype, uint32_t job_id, uint32_t rank, uint64_t step,
                   uint16_t tensor_id, uint32_t chunk_index, uint32_t chunk_count, uint64_t total_elems,
                   bytes payload, key=None, int header_len=48):
    """One complete datagram with these header fields and a valid MAC under `key`.

    For tests and tools that craft datagrams (honest or hostile); nothing is validated.
    """
    cdef CHeader h
    h.kind = <CKind>kind
    h.mac = _to_mac(mac) if mac != "none" else CMacAlgo.kNone
    h.dtype = <uint8_t>dtype
    h.job_id = job_id
    h.rank = rank
    h.step = step
    h.tensor_id = tensor_id
    h.header_len = <uint16_t>header_len
    h.chunk_index = chunk_index
    h.chunk_count = chunk_count
    h.total_elems = total_elems
    cdef const uint8_t* kp = NULL
    cdef bytes kb
    if key is not None:
        kb = bytes(key)
        if len(kb) != 32:
            raise InvalidArgumentError(f"key must be 32 bytes, got {len(kb)}")
        kp = <const uint8_t*>(<const char*>kb)
    cdef vector[uint8_t] out
    cdef const char* pp = payload
    raise_status(seal_datagram(h, <const void*>pp, len(payload), kp, &out))
    return (<const char*>out.data())[:out.size()] if out.size() else b""


cdef class UdpReceiver:
    """Engine UDP gradient receiver (see lossympi.GradientReceiver for the Python API).

    Exports its n x d buffer (read-only bytes) through the buffer protocol.
    """

    cdef unique_ptr[CGradientReceiver] impl
    cdef CUdpSourceInfo info
    cdef readonly size_t n
    cdef readonly size_t d
    cdef readonly int dtype
    cdef readonly size_t nbytes
    cdef readonly str mac
    cdef readonly str fill
    cdef readonly dict geometry
    cdef Py_ssize_t _shape[1]
    cdef Py_ssize_t _strides[1]
    cdef vector[uint8_t] _wait

    def __init__(self, ranks, bytes keys, size_t d, int dtype, str mac="auto", str fill="nan", *,
                 uint32_t job_id=0, uint16_t tensor_id=0, size_t max_datagram=1472, double grace=0.005,
                 double grace_min=0.0005, bint adaptive_grace=True, double drop_rate=0.0, uint64_t seed=0, str host="127.0.0.1", int port=0,
                 size_t rcvbuf=64 << 20, bint gro=True, int batch=32, bint isolate=False, int verify_threads=0):
        cdef CReceiverConfig cfg
        cdef CUdpSourceOptions opts
        cfg.job_id = job_id
        cfg.tensor_id = tensor_id
        for r in ranks:
            cfg.ranks.push_back(<uint32_t>r)
        cfg.mac = _to_mac(mac)
        if cfg.mac != CMacAlgo.kNone:
            _assign(cfg.keys, keys)
        cfg.d = d
        cfg.dtype = to_dtype(dtype)
        cfg.max_datagram = max_datagram
        cfg.fill = _to_fill(fill)
        cfg.grace_s = grace
        cfg.grace_min_s = grace_min
        cfg.adaptive_grace = adaptive_grace
        cfg.drop_rate = drop_rate
        cfg.seed = seed
        cfg.isolate = isolate
        cfg.verify_threads = verify_threads
        opts.host = host.encode("utf-8")
        opts.port = port
        opts.rcvbuf = rcvbuf
        opts.gro = gro
        opts.batch = batch
        cdef CStatus st
        with nogil:
            st = make_udp_receiver(cfg, opts, &self.impl, &self.info)
        raise_status(st)
        self.n = cfg.ranks.size()
        self.d = d
        self.dtype = dtype
        self.nbytes = self.n * self.impl.get().geometry().total_bytes
        self.mac = mac_name(cfg.mac).decode()
        self.fill = fill
        self.geometry = _geometry_dict(self.impl.get().geometry())
        self._wait.assign(self.n, 1)

    @property
    def address(self):
        return (self.info.host.decode(), self.info.port)

    @property
    def socket_info(self):
        return {"host": self.info.host.decode(), "port": self.info.port, "family": self.info.family,
                "rcvbuf_requested": self.info.rcvbuf_requested, "rcvbuf_granted": self.info.rcvbuf_granted,
                "gro": bool(self.info.gro)}

    def describe(self):
        self._check()
        return self.impl.get().describe().decode()

    cdef int _check(self) except -1:
        if not self.impl:
            raise TransportError("the receiver was released")
        return 0

    def expect(self, uint64_t step):
        self._check()
        raise_status(self.impl.get().expect(step))

    def collect(self, uint64_t step, double deadline, wait=None):
        """Ends `step`; returns (info dict, list of per-worker stats dicts)."""
        self._check()
        cdef size_t i
        cdef uint8_t flag
        if wait is None:
            for i in range(self.n):
                self._wait[i] = 1
        else:
            if <size_t>len(wait) != self.n:
                raise ValueError(f"wait must have {self.n} entries, got {len(wait)}")
            for i in range(self.n):
                flag = 1 if wait[i] else 0
                self._wait[i] = flag
        cdef CStepResult res
        cdef CStatus st
        with nogil:
            st = self.impl.get().collect(step, deadline, self._wait.data(), &res)
        raise_status(st)
        info = {"step": res.step, "reason": end_reason_name(res.reason).decode(), "elapsed_s": res.elapsed_s,
                "grace_s": res.grace_s, "spread_s": res.spread_s,
                "wait_s": res.wait_s, "datagrams": res.datagrams, "kernel_dropped": res.kernel_dropped,
                "unattributed_kernel_dropped": res.unattributed_kernel_dropped,
                "unattributed": _rejects(res.unattributed)}
        stats = [_worker_stats(res.workers[i], res.step) for i in range(res.workers.size())]
        return info, stats

    def registrations(self):
        """Ranks whose REGISTER datagram verified and whose socket is ready: [{'rank', 'address'}, ...]."""
        self._check()
        cdef vector[CRegistration] regs
        cdef CStatus st
        with nogil:
            st = self.impl.get().registrations(&regs)
        raise_status(st)
        return [{"rank": regs[i].rank, "address": regs[i].address.decode("utf-8", "replace")}
                for i in range(regs.size()) if regs[i].ready]

    def close(self):
        """Stops receiving and closes the socket (the buffer stays readable)."""
        if self.impl:
            with nogil:
                self.impl.get().shutdown()

    def __getbuffer__(self, Py_buffer* buf, int flags):
        self._check()
        if flags & PyBUF_WRITABLE:
            raise BufferError("the receiver buffer is read-only")
        self._shape[0] = <Py_ssize_t>self.nbytes
        self._strides[0] = 1
        buf.buf = <void*>self.impl.get().buffer()
        buf.obj = self
        buf.len = <Py_ssize_t>self.nbytes
        buf.readonly = 1
        buf.itemsize = 1
        buf.format = "B"
        buf.ndim = 1
        buf.shape = self._shape
        buf.strides = self._strides
        buf.suboffsets = NULL
        buf.internal = NULL

    def __releasebuffer__(self, Py_buffer* buf):
        pass


cdef class UdpSender:
    """Engine UDP gradient sender (see lossympi.GradientSender for the Python API).

    send() runs without the GIL; close() takes the same lock as send(), so it
    waits for a send in progress instead of freeing the sender under it.
    abandon() does not wait for that lock (it must reach a send in progress);
    it and close() share a second lock that only guards the pointer's lifetime.
    """

    cdef unique_ptr[CGradientSender] impl
    cdef readonly str mac
    cdef readonly uint32_t rank
    cdef object _lock
    cdef object _life

    def __init__(self, str host, int port, uint32_t rank, key, str mac="auto", *, uint32_t job_id=0,
                 uint16_t tensor_id=0, size_t max_datagram=1472, double rate=0.0, size_t burst=0,
                 bint gso=True, size_t sndbuf=4 << 20, int end_copies=3, double end_spacing=0.001,
                 size_t credit=0, size_t batch=44):
        self._lock = threading.Lock()
        self._life = threading.Lock()
        cdef CSenderConfig cfg
        cdef CUdpSinkOptions opts
        cfg.job_id = job_id
        cfg.rank = rank
        cfg.tensor_id = tensor_id
        cfg.mac = _to_mac(mac)
        if cfg.mac != CMacAlgo.kNone:
            _assign(cfg.key, bytes(key) if key is not None else b"")
        cfg.max_datagram = max_datagram
        cfg.rate = rate
        cfg.burst = burst
        cfg.end_copies = end_copies
        cfg.end_spacing_s = end_spacing
        cfg.credit = credit
        cfg.batch = batch
        opts.host = host.encode("utf-8")
        opts.port = port
        opts.sndbuf = sndbuf
        opts.gso = gso
        cdef CStatus st
        with nogil:
            st = make_udp_sender(cfg, opts, &self.impl)
        raise_status(st)
        self.mac = mac_name(cfg.mac).decode()
        self.rank = rank

    def describe(self):
        with self._lock:
            if not self.impl:
                return "UdpSender(closed)"
            return self.impl.get().describe().decode()

    def send(self, uint64_t step, uintptr_t data, size_t d, int dtype, double deadline=0.0):
        """Sends d elements at address `data` (abandoned after `deadline` s; 0 = none); returns the statistics."""
        cdef CSendStats s
        cdef CStatus st
        cdef CDType dt = to_dtype(dtype)
        cdef CGradientSender* tx
        with self._lock:
            if not self.impl:
                raise TransportError("the sender is closed")
            tx = self.impl.get()
            with nogil:
                st = tx.send(step, <const void*>data, d, dt, deadline, &s)
        raise_status(st)
        ab = abandon_name(s.abandoned).decode()
        return {"step": s.step, "chunks": s.chunks, "datagrams": s.datagrams, "bytes": s.bytes,
                "syscalls": s.syscalls, "refused": s.refused, "retries": s.retries, "dropped": s.dropped,
                "seconds": s.seconds, "paced_s": s.paced_s, "gso": bool(s.gso), "chunks_sent": s.chunks_sent,
                "end_sent": s.end_sent, "abandoned": None if ab == "none" else ab, "data_s": s.data_s,
                "target_rate": s.target_rate, "achieved_rate": s.achieved_rate, "forgiven_s": s.forgiven_s}

    def abandon(self, uint64_t step):
        """Abandons the send of every step <= `step` (the one in progress and later ones); never blocks on send."""
        with self._life:
            if self.impl:
                self.impl.get().abandon(step)

    def register(self):
        """Sends one REGISTER datagram (proof of this sender's source address)."""
        cdef CStatus st
        cdef CGradientSender* tx
        with self._lock:
            if not self.impl:
                raise TransportError("the sender is closed")
            tx = self.impl.get()
            with nogil:
                st = tx.send_register()
        raise_status(st)

    def close(self):
        """Frees the sender (waits for a send() in progress on another thread)."""
        with self._lock:
            with self._life:
                self.impl.reset()


def fill_chunks(uintptr_t row, size_t d, int dtype, str policy, uintptr_t received, uint64_t seed, uint64_t step,
                uint32_t rank, size_t max_datagram=1472):
    """Fills the chunks of the row at address `row` (d elements) not set in the bitmap at `received`
    (LSB-first bits, one per chunk; 0 = nothing received) exactly as the receiver does."""
    cdef CGeometry g
    cdef CDType dt = to_dtype(dtype)
    raise_status(make_geometry(d, dt, max_datagram, &g))
    cdef CFillPolicy pol = _to_fill(policy)
    cdef CStatus st
    with nogil:
        st = c_fill_chunks(<void*>row, g, dt, pol, <const uint8_t*>received, seed, step, rank)
    raise_status(st)


def kx_keypair():
    """(public key, secret key): a fresh X25519 pair (libsodium crypto_kx_keypair)."""
    cdef uint8_t pk[32]
    cdef uint8_t sk[32]
    raise_status(c_kx_keypair(pk, sk))
    out = ((<const char*>pk)[:32], (<const char*>sk)[:32])
    memset(sk, 0, 32)
    return out


cdef bytes _key32(k, str what):
    kb = bytes(k)
    if len(kb) != 32:
        raise InvalidArgumentError(f"{what} must be 32 bytes, got {len(kb)}")
    return kb


ctypedef CStatus (*derive_fn)(const uint8_t*, const uint8_t*, const uint8_t*, uint32_t, uint32_t, uint8_t*) nogil


cdef bytes _derive(derive_fn fn, own_pk, own_sk, peer_pk, uint32_t job_id, uint32_t rank, str own, str peer):
    cdef bytes a = _key32(own_pk, own + " public key")
    cdef bytes b = _key32(own_sk, own + " secret key")
    cdef bytes c = _key32(peer_pk, peer + " public key")
    cdef uint8_t out[32]
    raise_status(fn(<const uint8_t*>(<const char*>a), <const uint8_t*>(<const char*>b),
                    <const uint8_t*>(<const char*>c), job_id, rank, out))
    key = (<const char*>out)[:32]
    memset(out, 0, 32)
    return key


def kx_server_key(server_pk, server_sk, worker_pk, uint32_t job_id, uint32_t rank):
    """The server's copy of the datagram key of worker `rank` in job `job_id`."""
    return _derive(c_kx_server_key, server_pk, server_sk, worker_pk, job_id, rank, "server", "worker")


def kx_worker_key(worker_pk, worker_sk, server_pk, uint32_t job_id, uint32_t rank):
    """Worker `rank`'s datagram key in job `job_id`, from its key pair and the server's public key."""
    return _derive(c_kx_worker_key, worker_pk, worker_sk, server_pk, job_id, rank, "worker", "server")
