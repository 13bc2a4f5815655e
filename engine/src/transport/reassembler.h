// pyagg engine — LossyMPI reassembler (internal): the receiver's thread-free
// state machine. It validates every datagram completely before any write,
// reassembles every configured sender's gradient of the open step into
// preallocated rows with received-chunk bitmaps, keeps the per-step
// statistics and the registration table (rank -> verified source address).
//
// No locks, no threads, no sockets, no clock reads except in the overloads
// that say so: the caller serialises every call (GradientReceiver holds its
// mutex around each one) and passes the arrival time in. A libFuzzer target
// drives it directly with ingest().
//
// Accounting: a rejection is charged to a rank (WorkerStats.rejected) only
// after that rank's MAC verified over the datagram; everything rejected before
// (length, magic/version, unknown sender, unknown source, source mismatch,
// MAC algorithm or payload length field inconsistent with the datagram, bad
// MAC) goes to StepResult.unattributed by reason. The test-only loss
// injection (drop_rate) runs after verification.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "pyagg/status.h"
#include "pyagg/transport.h"

namespace pyagg {
namespace transport {

// `origin` values of ingest() that are not a row index.
inline constexpr int kOriginUnregistered = -1;  // the catch-all socket (isolation on)
inline constexpr int kOriginAny = -2;           // sources not isolated (one socket, loopback channel, tests)

class Reassembler {
 public:
  using Clock = std::chrono::steady_clock;

  // Validates cfg (the same checks and messages as GradientReceiver::create)
  // and allocates the rows x d buffer (zeroed).
  static Status create(const ReceiverConfig& cfg, std::unique_ptr<Reassembler>* out);
  ~Reassembler();
  Reassembler(const Reassembler&) = delete;
  Reassembler& operator=(const Reassembler&) = delete;

  // Opens `step` (> every step opened before, < 2^48). An open step that was
  // never closed is abandoned (its window statistics are discarded).
  Status open(uint64_t step);
  Status open(uint64_t step, Clock::time_point now);

  // One datagram. origin: row index (0..rows-1) of the per-worker socket the
  // kernel delivered it on; kOriginUnregistered (-1) for the catch-all socket;
  // kOriginAny (-2) when sources are not isolated. With cfg.isolate, kOriginAny
  // is treated like kOriginUnregistered. src/src_len: the sender's socket
  // address bytes (a sockaddr_in/sockaddr_in6 for UDP; any bytes elsewhere;
  // may be null/0: then REGISTER records an empty address). Returns true when
  // a waiting collect should re-check its end condition.
  bool ingest(const uint8_t* data, std::size_t len, bool truncated, int origin, const void* src,
              std::size_t src_len, Clock::time_point now);

  // --- MAC verification ahead of ingest (several threads) ---
  // preverify() runs the unauthenticated checks of ingest() and, when they
  // pass, the MAC check of the datagram for the row it names; it changes
  // nothing (no counters) and reads only what create() fixed (the rank table,
  // the rows' keys), so any number of threads may call it at once, also while
  // another thread calls ingest(). Returns kMacOk or kMacBad, or kMacUnchecked
  // when a check before the MAC fails (ingest counts that rejection itself).
  static constexpr uint8_t kMacUnchecked = 0, kMacOk = 1, kMacBad = 2;
  uint8_t preverify(const uint8_t* data, std::size_t len, bool truncated, int origin) const;
  // ingest() with the verdict preverify() returned for exactly these bytes
  // and this origin (the caller must not let the bytes change in between):
  // kMacOk/kMacBad stand for the MAC check, kMacUnchecked = check it here.
  bool ingest(const uint8_t* data, std::size_t len, bool truncated, int origin, const void* src,
              std::size_t src_len, Clock::time_point now, uint8_t mac_verdict);

  // --- end condition (the threaded receiver's collect loop) ---
  // Marks which rows a collect waits for (wait[i] != 0; nullptr = all).
  void set_wait(const uint8_t* wait);
  // Evaluates the end condition of the open step at `now` against `deadline`:
  // true (and *reason) when the step should end now; otherwise *wake_at is the
  // latest time to evaluate it again (deadline or END-marker grace expiry),
  // earlier if ingest() returns true.
  bool check_end(Clock::time_point deadline, Clock::time_point now, EndReason* reason,
                 Clock::time_point* wake_at) const;

  // Closes `step` (must be the open one): fills the chunks not received by
  // cfg.fill (fill_chunks), reports the window's statistics in *out (elapsed_s
  // measured from open() to `now`; wait_s left 0 for the caller), and starts a
  // new statistics window. wait as in set_wait().
  Status close(uint64_t step, const uint8_t* wait, EndReason reason, Clock::time_point now, StepResult* out);

  // Abandons the open step (no fill, no report) and starts a new statistics
  // window; the next open() must still use a larger step.
  void abandon();

  // Cumulative kernel drop counter of a source (origin as in ingest():
  // kOriginAny / kOriginUnregistered = unattributed, else a row). Deltas over
  // the statistics window are reported by close().
  void set_kernel_drops(int origin, uint64_t cumulative);

  bool is_open() const { return open_; }
  uint64_t open_step() const { return step_; }
  const uint8_t* buffer() const { return buf_; }
  std::size_t rows() const { return cfg_.ranks.size(); }
  const Geometry& geometry() const { return geo_; }
  const ReceiverConfig& config() const { return cfg_; }

  // --- registration (REGISTER datagrams whose MAC verified) ---
  // Ranks registered so far with their source address (text from src bytes).
  void registrations(std::vector<Registration>* out) const;
  // Incremented whenever a row's registered address changes (a new
  // registration or a re-registration from a new address).
  uint64_t registration_epoch() const { return reg_epoch_; }
  // The raw source address bytes registered for `row`; false if none.
  bool registered_address(std::size_t row, std::vector<uint8_t>* addr) const;

  struct Row;  // per-sender state (reassembler.cpp)

 private:
  Reassembler(const ReceiverConfig& cfg, const Geometry& g);
  Status init();
  void reset_window();
  // The unauthenticated checks of a datagram (ingest's stage 1, MAC excluded):
  // the row it claims, or -1 with *why set to the unattributed counter to charge.
  enum class PreReject { kNone, kBadLength, kBadHeader, kUnknownSource, kUnknownSender, kSourceMismatch };
  long locate(const uint8_t* data, std::size_t len, bool truncated, int origin, Header* h, int* o,
              PreReject* why) const;
  bool ingest_register(Row& r, std::size_t row, const Header& h, int origin, const void* src,
                       std::size_t src_len, Clock::time_point now);

  ReceiverConfig cfg_;
  Geometry geo_;
  uint8_t* buf_ = nullptr;
  std::unique_ptr<Row[]> rows_;
  std::vector<uint32_t> sorted_ranks_;  // binary search rank -> row
  std::vector<uint32_t> sorted_rows_;

  bool open_ = false;
  bool have_step_ = false;
  bool have_prev_ = false;
  uint64_t step_ = 0;
  uint64_t prev_step_ = 0;
  Clock::time_point t_open_{};
  RejectCounts unattributed_;
  uint64_t datagrams_ = 0;
  uint64_t unattr_drops_ = 0;       // cumulative, as last reported
  uint64_t unattr_drops_mark_ = 0;  // at the start of the window
  uint64_t reg_epoch_ = 0;
  // Adaptive grace (ReceiverConfig::adaptive_grace).
  double grace_cur_s_ = 0.0;        // the grace check_end() uses now
  double spread_win_s_ = 0.0;       // largest arrival spread seen in this window
  bool spread_measured_ = false;    // this window had END markers to measure against
  double spread_hist_[16] = {0};    // per closed step
  std::size_t spread_n_ = 0;        // samples in spread_hist_ (<= 16), ring position = spread_i_
  std::size_t spread_i_ = 0;

 public:
  // The grace check_end() applies now (seconds).
  double grace() const { return grace_cur_s_; }
};

}  // namespace transport
}  // namespace pyagg
