// pyagg engine — LossyMPI: authenticated, unreliable datagram transport for
// gradients (shared/spec/lossympi.md; after AggregaThor, SysML'19: "unreliable
// communication can be viewed as a Byzantine fault").
//
// A worker's gradient (d elements of one dtype) is cut into chunks that each fit
// one datagram of at most `max_datagram` bytes (1472 = one Ethernet frame by
// default), every datagram carries a fixed header and a MAC, and the server
// reassembles every worker's gradient of a step concurrently into preallocated
// rows with a bitmap of received chunks. A step ends when every chunk arrived,
// or every sender's end marker (or its final chunk: chunks go out in index
// order, then END) arrived plus a short grace (chosen from the measured
// arrival spread, ReceiverConfig::adaptive_grace), or at the deadline;
// missing chunks are then filled by policy. Nothing is retransmitted.
//
// Tail behaviour (issue 10): a sender sends its END marker end_copies times
// (3), end_spacing_s (1 ms) apart, so one tail drop at a full queue cannot take
// every copy; a send is cancellable (abandon(step), or a per-send deadline) and
// then stops between batches without END; pacing keeps bounded credit for time
// lost to oversleeping (SenderConfig::credit).
//
// Wire format (version 1). All integers big-endian (network byte order):
//
//   off size field
//    0   4   magic            0x4C4D5049 ("LMPI")
//    4   1   version          1
//    5   1   kind             1 = DATA, 2 = END (end-of-gradient marker), 3 = REGISTER (source proof)
//    6   1   mac algorithm    0 = none, 1 = AES-256-GCM (GMAC), 2 = ChaCha20-Poly1305-IETF
//    7   1   dtype            0 = float32, 1 = float64
//    8   4   job id
//   12   4   sender rank
//   16   8   step             < 2^48; REGISTER: registration sequence number (>= 1)
//   24   2   tensor id
//   26   2   header length    48 (reserved for extensions; anything else is rejected)
//   28   4   chunk index      DATA: 0..count-1 (<= 0xFFFFFFFD); END: 0xFFFFFFFF; REGISTER: 0xFFFFFFFE
//   32   4   chunk count      ceil(d * elem / chunk_bytes); REGISTER: 0
//   36   4   payload length   bytes after the header
//   40   8   total elements   d; REGISTER: 0 (and dtype 0)
//   48   L   payload          DATA: elements [i*chunk_elems, ...) little-endian IEEE-754;
//                             END: u32 data datagrams sent for this step, u32 zero; REGISTER: none (L = 0)
//   48+L 16  tag              MAC over bytes [0, 48+L) (zeros when mac = none)
//
// chunk_bytes = floor((max_datagram - 64) / elem) * elem (1408 bytes = 352 float32
// with the default 1472); every chunk has exactly chunk_bytes except the last.
//
// MAC: authenticate-only AEAD (empty plaintext, the datagram as associated
// data) with the worker's own 32-byte key, so a worker cannot forge another's
// datagrams. Nonce (12 bytes) = step (low 48 bits, BE) || tensor id (BE) ||
// chunk index (BE): unique per key because a sender refuses to send a step that
// is not larger than the last one it sent, the copies of an END marker
// are bit-identical, and the chunk index field keeps the kinds apart (DATA
// <= 0xFFFFFFFD, REGISTER 0xFFFFFFFE, END 0xFFFFFFFF); REGISTER's step field is
// a sequence number that strictly increases per sender (seeded from the wall
// clock in ms, so a restarted worker does not reuse one). Keys are per job and
// rank, from key agreement (kx_*, below) or fresh random keys at start-up.
// libsodium provides the primitives; nothing here is hand-written crypto.
//
// Registration and isolation (ReceiverConfig::isolate; off by default): a
// worker proves its UDP source address with REGISTER datagrams. The freshest
// authentic REGISTER (a sequence number above every one accepted from that
// rank) from an address no other rank holds registers the address; the UDP
// receiver then gives the rank its own socket, connect()ed to that address on
// the same port, so the kernel routes that source's datagrams to it alone
// (verified on Linux loopback: a connected UDP socket outscores the unconnected
// catch-all bound to the same address and port). Only REGISTER datagrams are
// processed from the catch-all; anything else there is unknown_source.
//
// Validation (receiver), before any write, in this order. Unauthenticated
// checks, rejections counted in StepResult::unattributed (never blamed on a
// rank): length (>= 64, <= max_datagram, not truncated), magic/version,
// isolation (only REGISTER from the catch-all: unknown_source), known sender
// (unknown_sender), the socket's rank == the claimed rank (source_mismatch),
// the MAC under the claimed rank's key (bad_mac). Then, authentic, charged to
// that rank's WorkerStats::rejected: payload length field, mac/header
// length/job/tensor, kind, dtype/total elements/chunk count, chunk index range
// and exact payload length for that index, then the step (open step only;
// the previous step's DATA is `late`, older or repeated END is `end_replays`),
// then the test-only loss injection, then the duplicate bitmap. Only then is
// the payload copied, to offset index*chunk_bytes of that sender's row, which
// the checks above bound to the row.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "pyagg/status.h"
#include "pyagg/types.h"

namespace pyagg {
namespace transport {

// ---------------------------------------------------------------- wire ------
inline constexpr uint32_t kMagic = 0x4C4D5049u;  // "LMPI"
inline constexpr uint8_t kVersion = 1;
inline constexpr std::size_t kHeaderSize = 48;
inline constexpr std::size_t kTagSize = 16;
inline constexpr std::size_t kOverhead = kHeaderSize + kTagSize;  // 64
inline constexpr std::size_t kDefaultMaxDatagram = 1472;          // 1500 - IPv4 20 - UDP 8
inline constexpr std::size_t kMinMaxDatagram = 128;
inline constexpr std::size_t kMaxMaxDatagram = 65507;             // largest IPv4 UDP payload
inline constexpr uint32_t kEndChunkIndex = 0xFFFFFFFFu;
inline constexpr uint32_t kRegisterChunkIndex = 0xFFFFFFFEu;
inline constexpr std::size_t kEndPayloadSize = 8;
inline constexpr uint64_t kMaxStep = (uint64_t{1} << 48) - 1;
inline constexpr std::size_t kKeySize = 32;

enum class Kind : uint8_t { kData = 1, kEnd = 2, kRegister = 3 };
enum class MacAlgo : uint8_t { kNone = 0, kAes256Gcm = 1, kChaCha20Poly1305 = 2 };
enum class FillPolicy : int { kNan = 0, kRandom = 1, kZero = 2, kLast = 3 };

const char* mac_name(MacAlgo m);
const char* fill_name(FillPolicy f);
// Parses "none" | "aes256gcm" | "chacha20poly1305" | "auto" (the fastest one this
// CPU and build provide: AES-256-GCM with AES-NI, else ChaCha20-Poly1305).
Status parse_mac(const std::string& name, MacAlgo* out);
Status parse_fill(const std::string& name, FillPolicy* out);
// Whether this build (libsodium compiled in) and this CPU provide `m`; kNone always.
bool mac_available(MacAlgo m);

// The decoded fixed header.
struct Header {
  Kind kind = Kind::kData;
  MacAlgo mac = MacAlgo::kNone;
  uint8_t dtype = 0;  // 0 float32, 1 float64 (pyagg::DType values)
  uint32_t job_id = 0;
  uint32_t rank = 0;
  uint64_t step = 0;
  uint16_t tensor_id = 0;
  uint16_t header_len = kHeaderSize;
  uint32_t chunk_index = 0;
  uint32_t chunk_count = 0;
  uint32_t payload_len = 0;
  uint64_t total_elems = 0;
};

void encode_header(const Header& h, uint8_t* out48);
// Decodes the 48 header bytes; false if magic or version do not match (nothing else checked).
bool decode_header(const uint8_t* in48, Header* h);
// The 12-byte AEAD nonce of a datagram with this header.
void make_nonce(const Header& h, uint8_t* out12);

// Builds one complete datagram (header + payload + tag) with the given fields,
// the header's payload_len set to `payload_len`, MAC'd with `key` (32 bytes)
// under h.mac. For tests and tools that craft datagrams (honest or not); the
// fields are NOT validated. key may be null when h.mac == kNone.
Status seal_datagram(const Header& h, const void* payload, std::size_t payload_len, const uint8_t* key,
                     std::vector<uint8_t>* out);

// Chunking of d elements of one dtype into datagrams of at most max_datagram bytes.
struct Geometry {
  std::size_t d = 0;
  std::size_t elem_size = 0;
  std::size_t chunk_elems = 0;
  std::size_t chunk_bytes = 0;   // payload bytes of every chunk but the last
  std::size_t chunk_count = 0;
  std::size_t total_bytes = 0;   // d * elem_size
  std::size_t chunk_len(std::size_t i) const {
    return i + 1 < chunk_count ? chunk_bytes : total_bytes - (chunk_count - 1) * chunk_bytes;
  }
};
// d >= 1; max_datagram in [128, 65507]; at most 2^32-2 chunks.
Status make_geometry(std::size_t d, DType dtype, std::size_t max_datagram, Geometry* out);

// ------------------------------------------------------------ channels ------
// A received datagram (or a GRO-coalesced run of them, already split): a view
// valid until the next recv_batch() of the same source.
struct DatagramView {
  const uint8_t* data = nullptr;
  std::size_t len = 0;
  bool truncated = false;  // the kernel cut it (it was larger than the receive buffer)
  int origin = -2;         // isolating sources: the row whose connected socket delivered it, or -1 (catch-all);
                           // -2 (kOriginAny): the source does not isolate senders
  const void* src = nullptr;  // the sender's socket address (sockaddr bytes), valid like data; may be null
  std::size_t src_len = 0;
};

// Receiving end of a datagram channel (one socket, or an in-process queue).
class DatagramSource {
 public:
  virtual ~DatagramSource() = default;
  // Waits up to timeout_ms for datagrams and returns those available (possibly
  // none: timeout or wake()). Errors are Status::Io.
  virtual Status recv_batch(int timeout_ms, std::vector<DatagramView>* out) = 0;
  // Makes a blocked recv_batch return early (thread-safe).
  virtual void wake() = 0;
  virtual std::string describe() const = 0;
  // Datagrams the kernel dropped because the socket buffer was full, since the
  // source was opened (SO_RXQ_OVFL); 0 where unknown.
  virtual uint64_t kernel_drops() const { return 0; }
  // Isolating sources only (others: Unsupported / no-op): gives row `row` its
  // own socket that receives only the datagrams from source address
  // addr[0, len) (a sockaddr); replaces the row's previous one. Thread-safe
  // with respect to recv_batch() only if called from the receiving thread.
  virtual Status attach(std::size_t row, const void* addr, std::size_t len) {
    return Status::Unsupported("this datagram source does not isolate senders");
  }
  virtual bool isolating() const { return false; }
  // Cumulative kernel drops of row `row`'s own socket (0 if none).
  virtual uint64_t row_kernel_drops(std::size_t row) const { return 0; }
};

struct SinkCounters {
  uint64_t syscalls = 0;
  uint64_t datagrams = 0;
  uint64_t bytes = 0;
  uint64_t refused = 0;     // ECONNREFUSED (nobody listening yet): datagram lost, sending goes on
  uint64_t retries = 0;     // ENOBUFS / EAGAIN / EINTR retries
  uint64_t dropped = 0;     // datagrams given up after retries, refused by a local firewall (EPERM), or queue full
  bool gso = false;         // UDP generic segmentation offload in use
};

// Sending end: one destination.
class DatagramSink {
 public:
  virtual ~DatagramSink() = default;
  // Sends the datagrams packed back to back in buf[0, total): each `seg` bytes
  // long except possibly the last (shorter). One call = one batch (sendmmsg or
  // one GSO send per <= 64 segments).
  virtual Status send(const uint8_t* buf, std::size_t seg, std::size_t total) = 0;
  virtual SinkCounters counters() const = 0;
  virtual std::string describe() const = 0;
};

// In-process loopback channel (for tests): any number of sinks feed one source
// through a bounded FIFO; datagrams beyond `capacity` queued are dropped (like
// a full socket buffer) and counted.
class LoopbackChannel {
 public:
  static std::shared_ptr<LoopbackChannel> create(std::size_t capacity);
  virtual ~LoopbackChannel() = default;
  virtual std::unique_ptr<DatagramSink> make_sink() = 0;
  virtual std::unique_ptr<DatagramSource> make_source() = 0;
  // Puts raw bytes on the channel as one datagram (forged or garbage datagrams in tests).
  virtual void inject(const uint8_t* data, std::size_t len) = 0;
  virtual uint64_t dropped() const = 0;
  // Waits until every datagram put on the channel so far has been handed to
  // the source AND the source has come back for more (its previous batch is
  // processed). False after timeout_ms. Lets tests assert counters without sleeps.
  virtual bool wait_drained(int timeout_ms) = 0;
};

// UDP receive socket: bound to host:port (port 0 = ephemeral), non-blocking,
// batched receive (recvmmsg), optional UDP GRO, large SO_RCVBUF.
struct UdpSourceOptions {
  std::string host = "127.0.0.1";
  int port = 0;
  std::size_t rcvbuf = std::size_t{64} << 20;  // requested; SO_RCVBUFFORCE first (root), then SO_RCVBUF (capped
                                               // by net.core.rmem_max); the kernel reports double the request
  bool gro = true;
  int batch = 32;                              // messages per recvmmsg
  // Per-worker isolation (make_udp_receiver; make_udp_source ignores it): one
  // advertised port; a small unconnected catch-all socket that only REGISTER
  // datagrams get past, plus, per registered rank, a socket bound to the same
  // port (SO_REUSEADDR) and connect()ed to the rank's registered source address,
  // so the kernel delivers that source's datagrams to that socket only. The
  // receive thread serves the sockets round-robin, one recvmmsg each per round,
  // the catch-all last.
  bool isolate = false;
  std::size_t worker_rcvbuf = 0;               // per-worker socket buffer; 0 = auto: 2 steps of that worker's
                                               // datagrams, at least 1 MiB, at most `rcvbuf`
  std::size_t catchall_rcvbuf = std::size_t{256} << 10;  // the catch-all's (isolation on)
};
struct UdpSourceInfo {
  std::string host;           // numeric address bound
  int port = 0;
  int family = 0;             // AF_INET / AF_INET6
  std::size_t rcvbuf_requested = 0;
  std::size_t rcvbuf_granted = 0;  // what getsockopt(SO_RCVBUF) reports
  bool gro = false;
};
Status make_udp_source(const UdpSourceOptions& o, std::unique_ptr<DatagramSource>* out, UdpSourceInfo* info);

struct UdpSinkOptions {
  std::string host = "127.0.0.1";
  int port = 0;
  std::size_t sndbuf = std::size_t{4} << 20;
  bool gso = true;  // UDP_SEGMENT when the kernel accepts it; falls back to sendmmsg otherwise
};
Status make_udp_sink(const UdpSinkOptions& o, std::unique_ptr<DatagramSink>* out);

// ------------------------------------------------------------ receiver ------
struct ReceiverConfig {
  uint32_t job_id = 0;
  uint16_t tensor_id = 0;
  std::vector<uint32_t> ranks;   // expected senders; row i of the buffer is ranks[i]
  std::vector<uint8_t> keys;     // ranks.size() * 32 bytes (key of ranks[i] at i*32); unused when mac == kNone
  MacAlgo mac = MacAlgo::kNone;  // what every datagram must carry (no downgrade)
  std::size_t d = 0;
  DType dtype = DType::kFloat32;
  std::size_t max_datagram = kDefaultMaxDatagram;
  FillPolicy fill = FillPolicy::kNan;
  double grace_s = 0.005;        // after the last expected end signal (END marker or final chunk): the constant
                                 // (adaptive_grace off), or the upper bound and the first steps' value (adaptive_grace on)
  // Adaptive grace (on by default): the grace is chosen from the measured
  // arrival spread, i.e. how long after a sender's first end signal (its
  // first END marker or its final chunk, whichever came first) that sender's
  // DATA still arrived (chunks of the open step after it, and chunks that
  // arrived `late`, after their step closed, measured from that step's
  // signal). grace = clamp(2 * (largest spread of the last 16 steps) +
  // grace_min_s, grace_min_s, grace_s). Until a step has closed with END
  // markers it is grace_s.
  bool adaptive_grace = true;
  double grace_min_s = 0.0005;
  double drop_rate = 0.0;        // test-only loss injection of authentic DATA/END datagrams of the open step
                                 // (applied after verification), in [0, 1]
  uint64_t seed = 0;             // loss injection and `random` fill
  // Per-worker source isolation (off by default). On: a datagram is accepted
  // only from the source address its rank registered with an authentic
  // REGISTER datagram; anything but REGISTER from elsewhere (origin
  // kOriginUnregistered, or a source that cannot tell origins apart) is
  // counted unattributed.unknown_source without MAC work. make_udp_receiver
  // turns it on when either this or UdpSourceOptions::isolate is set.
  bool isolate = false;
  // Threads that verify MACs of a received batch (the receive thread + helpers):
  // 1 = the receive thread alone; 0 = auto (2 when the machine has >= 4 cores
  // and there are >= 2 senders, else 1); at most 16. Verification is the
  // receiver's largest CPU cost per byte (AES-GCM GMAC); it runs outside the
  // receiver's lock and every other check stays on the receive thread.
  int verify_threads = 0;
};

// A rank whose REGISTER datagram verified (GradientReceiver::registrations()).
struct Registration {
  uint32_t rank = 0;
  std::size_t row = 0;       // index in ReceiverConfig::ranks
  std::string address;       // the registered source, "host:port" ("[v6]:port"); "" if the source gave none
  uint64_t seq = 0;          // the freshest registration sequence number accepted
  bool ready = false;        // the receiver accepts this rank's data now (isolation: its socket exists);
                             // tell the worker it is registered only when ready
};

// Datagrams rejected, by reason.
struct RejectCounts {
  uint64_t bad_length = 0;    // shorter than header+tag, longer than max_datagram, or payload length wrong
  uint64_t bad_header = 0;    // magic/version/kind/mac/dtype/job/tensor/header length/d/chunk count
  uint64_t out_of_range = 0;  // chunk index >= chunk count
  uint64_t bad_mac = 0;
  uint64_t wrong_step = 0;    // authentic, but for a step other than the open one or the one before
  uint64_t unknown_sender = 0;   // (unattributed only) rank field names no configured sender
  uint64_t unknown_source = 0;   // (unattributed only, isolation on) DATA/END (or garbage) on the catch-all socket:
                                 // from a source address no rank registered; dropped without MAC work
  uint64_t source_mismatch = 0;  // (unattributed only, isolation on) arrived on rank A's socket, claims rank B
  uint64_t total() const {
    return bad_length + bad_header + out_of_range + bad_mac + wrong_step + unknown_sender + unknown_source +
           source_mismatch;
  }
};

// One worker, one step. Counters cover everything that arrived from the end of
// the previous collect() to the end of this one (so a chunk of step s arriving
// after step s closed is counted `late` in step s+1's statistics). A rejection
// is charged to a rank (`rejected`) only after the datagram's MAC verified
// under that rank's key (authentic, but malformed or for the wrong step);
// everything rejected before that is in StepResult::unattributed.
struct WorkerStats {
  uint32_t rank = 0;
  uint64_t chunks_expected = 0;
  uint64_t chunks_received = 0;  // distinct authentic chunks of this step written
  uint64_t chunks_filled = 0;    // chunks_expected - chunks_received
  uint64_t duplicates = 0;       // authentic chunks of this step already received
  uint64_t late = 0;             // authentic DATA datagrams of the previous step (late END copies are ignored)
  uint64_t dropped = 0;          // discarded by the receiver's loss injection
  uint64_t end_markers = 0;      // authentic END datagrams of this step received (copies included)
  uint64_t end_replays = 0;      // authentic END datagrams beyond the first of this step (an honest sender's extra
                                 // end_copies land here too) and authentic END datagrams of any earlier step
  uint64_t kernel_dropped = 0;   // isolation: datagrams the kernel dropped on this worker's socket (buffer full)
  uint64_t registers = 0;        // authentic REGISTER datagrams accepted (repeats included)
  uint64_t register_refused = 0; // authentic REGISTER datagrams refused: stale sequence number from a new address,
                                 // or an address another rank already holds
  int64_t chunks_sent = -1;      // from the END marker; -1 when none arrived
  uint64_t bytes_received = 0;   // payload bytes written
  RejectCounts rejected;
  double first_s = -1.0;         // arrival of the first / last chunk, seconds after expect(); -1 if none
  double last_s = -1.0;
  double end_s = -1.0;           // arrival of the first END marker
  bool complete = false;
  bool waited = false;           // whether collect() waited for this sender
};

enum class EndReason : int { kComplete = 0, kMarkers = 1, kDeadline = 2, kNobody = 3 };
const char* end_reason_name(EndReason r);

struct StepResult {
  uint64_t step = 0;
  EndReason reason = EndReason::kDeadline;
  double elapsed_s = 0.0;        // from expect() to the end of the step
  double grace_s = 0.0;          // the END-marker grace this step used
  double spread_s = 0.0;         // arrival spread measured in this window (see ReceiverConfig::adaptive_grace)
  double wait_s = 0.0;           // time spent inside collect()
  std::vector<WorkerStats> workers;
  RejectCounts unattributed;     // datagrams rejected before any MAC verified, by reason
  uint64_t datagrams = 0;        // datagrams seen in this window, all kinds
  uint64_t kernel_dropped = 0;   // datagrams (or GRO runs) the kernel dropped in this window, all sockets
  uint64_t unattributed_kernel_dropped = 0;  // of those, on the shared socket (isolation: the catch-all)
};

// Reassembles every configured sender's gradient of one step at a time.
// Thread-safety: expect()/collect()/buffer() from one thread (the caller); a
// private thread receives and validates concurrently.
class GradientReceiver {
 public:
  // Starts the receive thread on `src`.
  static Status create(const ReceiverConfig& cfg, std::unique_ptr<DatagramSource> src,
                       std::unique_ptr<GradientReceiver>* out);
  virtual ~GradientReceiver() = default;

  // Opens `step` (> every step opened before): from now on its chunks are
  // written into the rows. The rows keep their previous contents until
  // overwritten (the `last` policy relies on it).
  virtual Status expect(uint64_t step) = 0;
  // Waits until the step ends (all chunks of the waited senders; or all their
  // END markers + grace; or deadline_s after this call), closes it, fills what
  // is missing, and reports. wait[i] != 0: wait for ranks[i] (nullptr = all).
  virtual Status collect(uint64_t step, double deadline_s, const uint8_t* wait, StepResult* out) = 0;
  // Stops the receive thread and closes the source; the buffer stays valid
  // until destruction. expect()/collect() then return Status::Io.
  virtual void shutdown() = 0;
  // The n x d row-major buffer (rows in cfg.ranks order). Stable for the
  // receiver's lifetime; rows change only between expect() and collect().
  virtual const void* buffer() const = 0;
  virtual const Geometry& geometry() const = 0;
  virtual std::size_t rows() const = 0;
  virtual std::string describe() const = 0;
  // Non-blocking (thread-safe): the ranks registered so far (REGISTER verified),
  // in row order. A rank whose `ready` is true may send its gradients.
  virtual Status registrations(std::vector<Registration>* out) = 0;
};

// Convenience: a UDP source + receiver. Isolation (per-worker sockets) when
// cfg.isolate or o.isolate; then the per-worker socket buffers are sized from
// cfg (2 steps of datagrams, >= 1 MiB) unless o.worker_rcvbuf is set.
Status make_udp_receiver(const ReceiverConfig& cfg, const UdpSourceOptions& o, std::unique_ptr<GradientReceiver>* out,
                         UdpSourceInfo* info);

// -------------------------------------------------------------- sender ------
struct SenderConfig {
  uint32_t job_id = 0;
  uint32_t rank = 0;
  uint16_t tensor_id = 0;
  MacAlgo mac = MacAlgo::kNone;
  std::vector<uint8_t> key;  // 32 bytes unless mac == kNone
  std::size_t max_datagram = kDefaultMaxDatagram;
  double rate = 0.0;         // token bucket: UDP payload bytes per second; 0 = unpaced
  std::size_t burst = 0;     // bucket depth in bytes; 0 = auto (rate * 200 us, 2..44 datagrams)
  std::size_t credit = 0;    // catch-up credit in bytes (>= burst): time lost to oversleeping within a send is
                             // made up by sending up to this many bytes behind schedule back to back; lag beyond
                             // it is forgiven. 0 = auto (rate * 0.5 ms, at least burst, at most max(burst, 32
                             // datagrams)); set it to `burst` for a plain token bucket
  int end_copies = 3;        // END markers sent (identical bytes), 1..16
  double end_spacing_s = 0.001;  // time between END copies, so one tail drop (a full queue for ~1 ms) cannot
                                 // take them all; 0 = back to back. The copies are paced and cancellable like data.
  std::size_t batch = 44;    // datagrams per send call (44 * 1472 fits one 64 KB GSO send)
};

// Why a send stopped before its END markers (SendStats::abandoned).
enum class Abandon : int { kNone = 0, kNewerStep = 1, kDeadline = 2 };
const char* abandon_name(Abandon a);

struct SendStats {
  uint64_t step = 0;
  uint64_t chunks = 0;
  uint64_t datagrams = 0;      // chunks + END copies
  uint64_t bytes = 0;          // UDP payload bytes handed to the kernel
  uint64_t syscalls = 0;
  uint64_t refused = 0;
  uint64_t retries = 0;
  uint64_t dropped = 0;
  double seconds = 0.0;
  double paced_s = 0.0;        // time spent waiting for tokens (and between END copies)
  bool gso = false;
  uint64_t chunks_sent = 0;    // DATA datagrams handed to the sink (< chunks when abandoned)
  uint64_t end_sent = 0;       // END copies handed to the sink
  Abandon abandoned = Abandon::kNone;
  double data_s = 0.0;         // from the first DATA batch to the last one handed to the sink
  double target_rate = 0.0;    // cfg.rate (0 = unpaced)
  double achieved_rate = 0.0;  // DATA bytes / data_s, measured like the schedule (first batch's bytes excluded)
  double forgiven_s = 0.0;     // DATA schedule time lost for good in this send (lag beyond the credit); the END
                               // copies' spacing waits are idle time and never counted
};

class GradientSender {
 public:
  static Status create(const SenderConfig& cfg, std::unique_ptr<DatagramSink> sink,
                       std::unique_ptr<GradientSender>* out);
  virtual ~GradientSender() = default;
  // Sends d elements at `data` as step `step`: all chunks, then the END marker
  // (end_copies times, end_spacing_s apart). step must exceed every step sent
  // before (nonce uniqueness) and be < 2^48.
  //
  // Cancellable: the send stops between two batches (or during a pacing wait)
  // and returns Ok with st->abandoned set, without END markers, as soon as
  // abandon(s) was called with s >= step (the caller learned of a newer step,
  // or STOP: that step is closed at the server, the rest would only load the
  // network) or deadline_s seconds passed since the call (0 = no deadline).
  Status send(uint64_t step, const void* data, std::size_t d, DType dtype, SendStats* st) {
    return send(step, data, d, dtype, 0.0, st);
  }
  virtual Status send(uint64_t step, const void* data, std::size_t d, DType dtype, double deadline_s,
                      SendStats* st) = 0;
  // Thread-safe, non-blocking: abandons the send of every step <= `step`, the
  // one in progress on another thread and any started later. Monotonic (a
  // smaller value than before changes nothing).
  virtual void abandon(uint64_t step) = 0;
  // Sends one REGISTER datagram (proof of this sender's source address, MAC'd
  // under its key) with a fresh registration sequence number. Repeat it (e.g.
  // every 50 ms) until the server reports the rank registered and ready.
  virtual Status send_register() = 0;
  virtual std::string describe() const = 0;
};

Status make_udp_sender(const SenderConfig& cfg, const UdpSinkOptions& o, std::unique_ptr<GradientSender>* out);

// ---------------------------------------------------------------- fill ------
// Fills every chunk of `row` (g.d elements of `dtype`, laid out by g) that is
// not marked received, exactly as the receiver does at the end of a step:
//   nan    quiet NaN;  zero   0.0;
//   random standard normal values (Box-Muller over splitmix64), reproducible
//          from (seed, step, rank, chunk index): the receiver passes its
//          cfg.seed, the step and the sender's rank;
//   last   nothing (the chunk keeps whatever the row held).
// received: bitmap of g.chunk_count bits, bit c = byte c/8, bit c%8 (LSB
// first; numpy.packbits(mask, bitorder="little")), at least
// ceil(chunk_count/8) bytes; nullptr = nothing received (fill every chunk).
// g must be what make_geometry(g.d, dtype, ...) returns.
Status fill_chunks(void* row, const Geometry& g, DType dtype, FillPolicy policy, const uint8_t* received,
                   uint64_t seed, uint64_t step, uint32_t rank);

// --------------------------------------------------------- key agreement ----
// X25519 key agreement (libsodium crypto_kx) for the per-rank datagram keys,
// so no secret crosses the network: the server publishes its public key
// (through the trusted launcher), each worker sends its public key over the
// control plane, and both sides derive the same 32-byte key for (job, rank):
//   session = crypto_kx session key (worker = client, its tx key; server =
//             server, its rx key: the same 32 bytes)
//   key     = BLAKE2b-256 keyed with `session` over
//             "pyagg.lossympi.v1.datagram-key" || job_id (u32 BE) || rank (u32 BE)
//             || worker public key || server public key.
// A worker that presents another worker's public key for its rank gets a key
// the server computes from a Diffie-Hellman secret the presenter cannot
// compute. Public keys crypto_kx refuses (low-order points) are Invalid.
// Secrets are zeroed after use. Without libsodium: Status::Unsupported.
inline constexpr std::size_t kKxPublicKeySize = 32;
inline constexpr std::size_t kKxSecretKeySize = 32;
Status kx_keypair(uint8_t* pk32, uint8_t* sk32);
Status kx_server_key(const uint8_t* server_pk, const uint8_t* server_sk, const uint8_t* worker_pk, uint32_t job_id,
                     uint32_t rank, uint8_t* out32);
Status kx_worker_key(const uint8_t* worker_pk, const uint8_t* worker_sk, const uint8_t* server_pk, uint32_t job_id,
                     uint32_t rank, uint8_t* out32);

}  // namespace transport
}  // namespace pyagg
