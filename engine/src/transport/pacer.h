// pyagg engine — LossyMPI sender pacing (internal): a token bucket kept as a
// virtual schedule, with bounded credit for time lost to oversleeping.
//
// No clock reads: the caller passes `now` (seconds on any monotonic clock), so
// tests drive it with a synthetic clock. The sender calls start() at the
// beginning of every send (idle time between sends earns nothing beyond a full
// bucket) and take() before handing each batch to the sink.
//
//   schedule  `next_`: the time at which everything accounted so far would have
//             left at exactly `rate` bytes/s.
//   burst     how far AHEAD of the schedule a batch may go (the bucket depth,
//             bytes): take() asks to wait until next_ - burst/rate. A send
//             starts on schedule, so at most `burst` bytes leave at once.
//   credit    how far BEHIND the schedule the sender may fall and still catch
//             up (bytes, >= burst): a sender that overslept (a coarse timer, a
//             descheduled thread on a loaded machine) sends the missed bytes
//             back to back until it is on schedule again, instead of losing
//             that time for good. Lag beyond `credit` is forgiven (the schedule
//             jumps forward), so a catch-up burst never exceeds credit + burst
//             bytes above the rate line.
#pragma once

#include <algorithm>
#include <cstddef>

namespace pyagg {
namespace transport {

class Pacer {
 public:
  // rate > 0 bytes/s; burst > 0 bytes; credit >= burst (smaller is raised to burst).
  void configure(double rate, double burst, double credit) {
    rate_ = rate;
    burst_ = burst;
    credit_ = std::max(credit, burst);
  }
  bool enabled() const { return rate_ > 0.0; }
  double rate() const { return rate_; }
  double burst() const { return burst_; }
  double credit() const { return credit_; }

  // Beginning of a send at `now`: at most a full bucket (burst bytes may leave
  // at once), no credit from idle time.
  void start(double now) {
    if (!started_ || next_ < now) next_ = now;
    started_ = true;
  }

  // Accounts `bytes` about to be sent at `now`; returns the seconds to wait
  // before sending them (0: send now).
  double take(double now, std::size_t bytes) {
    if (!started_) start(now);
    const double floor = now - credit_ / rate_;
    if (next_ < floor) {
      forgiven_s_ += floor - next_;
      next_ = floor;
    }
    next_ += double(bytes) / rate_;
    const double wait = next_ - burst_ / rate_ - now;
    return wait > 0.0 ? wait : 0.0;
  }

  // Schedule time lost for good (lag beyond the credit), seconds, since configure().
  double forgiven_s() const { return forgiven_s_; }

 private:
  double rate_ = 0.0;
  double burst_ = 0.0;
  double credit_ = 0.0;
  double next_ = 0.0;
  double forgiven_s_ = 0.0;
  bool started_ = false;
};

}  // namespace transport
}  // namespace pyagg
