// pyagg engine — LossyMPI: authenticated, unreliable datagram transport for
// gradients (shared/spec/lossympi.md; after AggregaThor, SysML'19: "unreliable
// communication can be viewed as a Byzantine fault").
//
// A worker's gradient (d elements of one dtype) is cut into chunks that each fit
// one datagram of at most `max_datagram` bytes (1472 = one Ethernet frame by
// default), every datagram carries a fixed header and a MAC, and the server
// reassembles every worker's gradient of a step concurrently into preallocated
// rows with a bitmap of received chunks. A step ends when every chunk arrived,
// or every sender's end marker arrived plus a short grace, or at the deadline;
// missing chunks are then filled by policy. Nothing is retransmitted.
//
// Wire format (version 1). All integers big-endian (network byte order):
//
//   off size field
//    0   4   magic            0x4C4D5049 ("LMPI")
//    4   1   version          1
//    5   1   kind             1 = DATA, 2 = END (end-of-gradient marker)
//    6   1   mac algorithm    0 = none, 1 = AES-256-GCM (GMAC), 2 = ChaCha20-Poly1305-IETF
//    7   1   dtype            0 = float32, 1 = float64
//    8   4   job id
//   12   4   sender rank
//   16   8   step             < 2^48
//   24   2   tensor id
//   26   2   header length    48 (reserved for extensions; anything else is rejected)
//   28   4   chunk index      DATA: 0..count-1; END: 0xFFFFFFFF
//   32   4   chunk count      ceil(d * elem / chunk_bytes)
//   36   4   payload length   bytes after the header
//   40   8   total elements   d
//   48   L   payload          DATA: elements [i*chunk_elems, ...) little-endian IEEE-754;
//                             END: u32 data datagrams sent for this step, u32 zero
//   48+L 16  tag              MAC over bytes [0, 48+L) (zeros when mac = none)
//
// chunk_bytes = floor((max_datagram - 64) / elem) * elem (1408 bytes = 352 float32
// with the default 1472); every chunk has exactly chunk_bytes except the last.
//
// MAC: authenticate-only AEAD (empty plaintext, the datagram as associated
// data) with the worker's own 32-byte key, so a worker cannot forge another's
// datagrams. Nonce (12 bytes) = step (low 48 bits, BE) || tensor id (BE) ||
// chunk index (BE): unique per key because a sender refuses to send a step that
// is not larger than the last one it sent, and the two copies of an END marker
// are bit-identical. Keys are per job (fresh random keys at every start-up).
// libsodium provides the primitives; nothing here is hand-written crypto.
//
// Validation (receiver), before any write: length, magic/version, known sender,
// kind/mac/dtype/job/tensor/header length/total elements/chunk count, payload
// length (exact for that chunk index), chunk index range, MAC, then the step
// (open step only), then the duplicate bitmap. Only then is the payload copied,
// to offset index*chunk_bytes of that sender's row, which the checks above
// bound to the row.
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
inline constexpr std::size_t kEndPayloadSize = 8;
inline constexpr uint64_t kMaxStep = (uint64_t{1} << 48) - 1;
inline constexpr std::size_t kKeySize = 32;

enum class Kind : uint8_t { kData = 1, kEnd = 2 };
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
  double grace_s = 0.005;        // after the last expected END marker
  double drop_rate = 0.0;        // receiver-side loss injection, in [0, 1]
  uint64_t seed = 0;             // loss injection and `random` fill
};

// Datagrams rejected, by reason.
struct RejectCounts {
  uint64_t bad_length = 0;    // shorter than header+tag, longer than max_datagram, or payload length wrong
  uint64_t bad_header = 0;    // magic/version/kind/mac/dtype/job/tensor/header length/d/chunk count
  uint64_t out_of_range = 0;  // chunk index >= chunk count
  uint64_t bad_mac = 0;
  uint64_t wrong_step = 0;    // authentic, but for a step other than the open one or the one before
  uint64_t unknown_sender = 0;  // (unattributed counts only)
  uint64_t total() const {
    return bad_length + bad_header + out_of_range + bad_mac + wrong_step + unknown_sender;
  }
};

// One worker, one step. Counters cover everything that arrived from the end of
// the previous collect() to the end of this one (so a chunk of step s arriving
// after step s closed is counted `late` in step s+1's statistics). Rejections
// are attributed to the rank the datagram claims (the claim is unauthenticated
// when the reason is bad_mac or earlier).
struct WorkerStats {
  uint32_t rank = 0;
  uint64_t chunks_expected = 0;
  uint64_t chunks_received = 0;  // distinct authentic chunks of this step written
  uint64_t chunks_filled = 0;    // chunks_expected - chunks_received
  uint64_t duplicates = 0;       // authentic chunks of this step already received
  uint64_t late = 0;             // authentic DATA datagrams of the previous step (late END copies are ignored)
  uint64_t dropped = 0;          // discarded by the receiver's loss injection
  uint64_t end_markers = 0;      // authentic END datagrams of this step received (copies included)
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
  double wait_s = 0.0;           // time spent inside collect()
  std::vector<WorkerStats> workers;
  RejectCounts unattributed;     // datagrams naming no known sender (or too short to name one)
  uint64_t datagrams = 0;        // datagrams seen in this window, all kinds
  uint64_t kernel_dropped = 0;   // datagrams (or GSO runs) the kernel dropped in this window: socket buffer full
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
};

// Convenience: a UDP source + receiver.
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
  int end_copies = 2;        // END markers sent (identical bytes)
  std::size_t batch = 44;    // datagrams per send call (44 * 1472 fits one 64 KB GSO send)
};

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
  double paced_s = 0.0;        // time spent waiting for tokens
  bool gso = false;
};

class GradientSender {
 public:
  static Status create(const SenderConfig& cfg, std::unique_ptr<DatagramSink> sink,
                       std::unique_ptr<GradientSender>* out);
  virtual ~GradientSender() = default;
  // Sends d elements at `data` as step `step`: all chunks, then the END marker
  // (end_copies times). step must exceed every step sent before (nonce
  // uniqueness) and be < 2^48.
  virtual Status send(uint64_t step, const void* data, std::size_t d, DType dtype, SendStats* st) = 0;
  virtual std::string describe() const = 0;
};

Status make_udp_sender(const SenderConfig& cfg, const UdpSinkOptions& o, std::unique_ptr<GradientSender>* out);

}  // namespace transport
}  // namespace pyagg
