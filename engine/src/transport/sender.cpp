// pyagg engine — LossyMPI sender: chunks a gradient into MTU-sized datagrams,
// MACs each one, paces with a token bucket and sends in batches (GSO or
// sendmmsg through the sink), then sends the END marker.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#ifdef __linux__
#include <sys/prctl.h>
#endif

#include "transport/mac.h"
#include "transport/pacer.h"
#include "pyagg/transport.h"

namespace pyagg {
namespace transport {

namespace {

using Clock = std::chrono::steady_clock;

class SenderImpl final : public GradientSender {
 public:
  using GradientSender::send;

  SenderImpl(const SenderConfig& cfg, std::unique_ptr<DatagramSink> sink) : cfg_(cfg), sink_(std::move(sink)) {}

  Status init() {
    PYAGG_RETURN_IF_ERROR(mac_.init(cfg_.mac, cfg_.mac == MacAlgo::kNone ? nullptr : cfg_.key.data()));
    std::size_t per_batch = std::max<std::size_t>(1, cfg_.batch);
    if (cfg_.rate > 0.0) {
      const double dg = double(cfg_.max_datagram);
      double burst = cfg_.burst > 0 ? double(cfg_.burst) : std::clamp(cfg_.rate * 200e-6, 2.0 * dg, 44.0 * dg);
      per_batch = std::min(per_batch, std::max<std::size_t>(1, std::size_t(burst / dg)));
      burst = std::max(burst, dg);
      // 0.5 ms of this sender's rate: when every sender of a bottleneck catches up at once, their
      // bursts add up to 0.5 ms of the bottleneck's rate, half of a 1 ms queue (netlab: 128 KB at 1 Gbit/s)
      const double credit =
          cfg_.credit > 0 ? double(cfg_.credit) : std::clamp(cfg_.rate * 500e-6, burst, std::max(burst, 32.0 * dg));
      pacer_.configure(cfg_.rate, burst, credit);
    }
    batch_ = per_batch;
    staging_.assign(batch_ * cfg_.max_datagram, 0);
    return Status::Ok();
  }

  void abandon(uint64_t step) override {
    // Kept as "every step below this one": 0 = nothing abandoned (step 0 is a valid step).
    const uint64_t below = step >= kMaxStep ? kMaxStep + 1 : step + 1;
    uint64_t cur = abandon_below_.load(std::memory_order_relaxed);
    while (below > cur && !abandon_below_.compare_exchange_weak(cur, below, std::memory_order_release,
                                                                 std::memory_order_relaxed)) {
    }
    // A newer step known only after abandon_below_ was read by the sending
    // thread is seen at its next check (between batches, or within 1 ms of a wait).
  }

  Status send(uint64_t step, const void* data, std::size_t d, DType dtype, double deadline_s,
              SendStats* out) override {
    if (step > kMaxStep) return Status::Invalid("step must be < 2^48, got " + std::to_string(step));
    if (sent_any_ && step <= last_step_) {
      return Status::Invalid("send(step=" + std::to_string(step) + "): steps must increase (last sent: " +
                             std::to_string(last_step_) + "); resending a step would reuse MAC nonces");
    }
    if (!(deadline_s >= 0.0) || !std::isfinite(deadline_s)) {
      return Status::Invalid("send deadline must be a finite number of seconds >= 0 (0 = none), got " +
                             std::to_string(deadline_s));
    }
    if (data == nullptr && d > 0) return Status::Invalid("gradient pointer is null");
    Geometry g;
    PYAGG_RETURN_IF_ERROR(make_geometry(d, dtype, cfg_.max_datagram, &g));
    sent_any_ = true;
    last_step_ = step;
    tune_timer_slack();

    const SinkCounters c0 = sink_->counters();
    const Clock::time_point t0 = Clock::now();
    has_deadline_ = deadline_s > 0.0;
    t_deadline_ = t0 + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(deadline_s));
    step_ = step;
    paced_s_ = 0.0;
    const double forgiven0 = pacer_.forgiven_s();
    if (pacer_.enabled()) pacer_.start(now_s());
    SendStats s;
    s.step = step;
    s.chunks = g.chunk_count;
    s.target_rate = cfg_.rate;

    Header h;
    h.kind = Kind::kData;
    h.mac = cfg_.mac;
    h.dtype = static_cast<uint8_t>(dtype);
    h.job_id = cfg_.job_id;
    h.rank = cfg_.rank;
    h.step = step;
    h.tensor_id = cfg_.tensor_id;
    h.chunk_count = static_cast<uint32_t>(g.chunk_count);
    h.total_elems = d;
    const uint8_t* src = static_cast<const uint8_t*>(data);
    const std::size_t full = kOverhead + g.chunk_bytes;
    uint8_t nonce[12];
    Abandon why = Abandon::kNone;
    Clock::time_point t_first{}, t_last{};
    uint64_t data_bytes = 0, first_bytes = 0;
    for (std::size_t c = 0; c < g.chunk_count;) {
      if ((why = should_stop()) != Abandon::kNone) break;
      const std::size_t nb = std::min(batch_, g.chunk_count - c);
      std::size_t total = 0;
      for (std::size_t k = 0; k < nb; ++k, ++c) {
        const std::size_t len = g.chunk_len(c);
        uint8_t* dg = staging_.data() + k * full;
        h.chunk_index = static_cast<uint32_t>(c);
        h.payload_len = static_cast<uint32_t>(len);
        encode_header(h, dg);
        std::memcpy(dg + kHeaderSize, src + c * g.chunk_bytes, len);
        make_nonce(h, nonce);
        mac_.sign(dg, kHeaderSize + len, nonce, dg + kHeaderSize + len);
        total += kOverhead + len;
      }
      if ((why = pace(total)) != Abandon::kNone) break;
      PYAGG_RETURN_IF_ERROR(sink_->send(staging_.data(), full, total));
      const Clock::time_point t = Clock::now();
      if (s.chunks_sent == 0) {
        t_first = t;
        first_bytes = total;
      }
      t_last = t;
      s.chunks_sent += nb;
      data_bytes += total;
    }
    // Forgiven schedule of the DATA only: the END copies' spacing waits below are
    // deliberate idle time, not time lost to oversleeping.
    const double forgiven_data = pacer_.forgiven_s() - forgiven0;
    if (why == Abandon::kNone) {
      // END marker: identical copies (same nonce, same bytes), end_spacing_s apart.
      h.kind = Kind::kEnd;
      h.chunk_index = kEndChunkIndex;
      uint8_t payload[kEndPayloadSize] = {0};
      const uint32_t sent_be = __builtin_bswap32(static_cast<uint32_t>(g.chunk_count));
      std::memcpy(payload, &sent_be, 4);
      h.payload_len = kEndPayloadSize;
      uint8_t end[kOverhead + kEndPayloadSize];
      encode_header(h, end);
      std::memcpy(end + kHeaderSize, payload, kEndPayloadSize);
      make_nonce(h, nonce);
      mac_.sign(end, kHeaderSize + kEndPayloadSize, nonce, end + kHeaderSize + kEndPayloadSize);
      for (int k = 0; k < cfg_.end_copies; ++k) {
        if (k > 0 && cfg_.end_spacing_s > 0.0) {
          if ((why = wait_for(cfg_.end_spacing_s)) != Abandon::kNone) break;
          // The spacing is idle time: the copy goes on a fresh schedule (no catch-up, nothing forgiven).
          if (pacer_.enabled()) pacer_.start(now_s());
        }
        if ((why = should_stop()) != Abandon::kNone) break;
        if ((why = pace(sizeof(end))) != Abandon::kNone) break;
        PYAGG_RETURN_IF_ERROR(sink_->send(end, sizeof(end), sizeof(end)));
        ++s.end_sent;
      }
      // Copies after the first are a courtesy: abandoning them does not make the send abandoned.
      if (s.end_sent > 0) why = Abandon::kNone;
    }
    const SinkCounters c1 = sink_->counters();
    if (out) {
      s.abandoned = why;
      s.datagrams = c1.datagrams - c0.datagrams;
      s.bytes = c1.bytes - c0.bytes;
      s.syscalls = c1.syscalls - c0.syscalls;
      s.refused = c1.refused - c0.refused;
      s.retries = c1.retries - c0.retries;
      s.dropped = c1.dropped - c0.dropped;
      s.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
      s.paced_s = paced_s_;
      s.gso = c1.gso;
      s.data_s = std::chrono::duration<double>(t_last - t_first).count();
      // The first batch leaves at once (a full bucket); the rate is what followed it.
      if (s.data_s > 0.0) s.achieved_rate = double(data_bytes - first_bytes) / s.data_s;
      s.forgiven_s = forgiven_data;
      *out = s;
    }
    return Status::Ok();
  }

  Status send_register() override {
    // The sequence number is the REGISTER's step field (its nonce: step || tensor
    // id || 0xFFFFFFFE, disjoint from every DATA/END nonce): strictly increasing
    // within this sender, and seeded from the wall clock in milliseconds so a
    // restarted worker with the same key does not reuse one (unless it sent
    // more than 1000 per second before).
    const uint64_t now_ms = uint64_t(std::chrono::duration_cast<std::chrono::milliseconds>(
                                         std::chrono::system_clock::now().time_since_epoch())
                                         .count());
    uint64_t seq = std::max(reg_seq_ + 1, now_ms);
    if (seq > kMaxStep) return Status::Internal("registration sequence number exhausted");
    reg_seq_ = seq;
    Header h;
    h.kind = Kind::kRegister;
    h.mac = cfg_.mac;
    h.dtype = 0;
    h.job_id = cfg_.job_id;
    h.rank = cfg_.rank;
    h.step = seq;
    h.tensor_id = cfg_.tensor_id;
    h.chunk_index = kRegisterChunkIndex;
    h.chunk_count = 0;
    h.payload_len = 0;
    h.total_elems = 0;
    uint8_t dg[kOverhead];
    encode_header(h, dg);
    uint8_t nonce[12];
    make_nonce(h, nonce);
    mac_.sign(dg, kHeaderSize, nonce, dg + kHeaderSize);
    return sink_->send(dg, sizeof(dg), sizeof(dg));
  }

  std::string describe() const override {
    return "GradientSender(rank=" + std::to_string(cfg_.rank) + ", mac=" + mac_name(cfg_.mac) +
           ", rate=" + (cfg_.rate > 0 ? std::to_string(cfg_.rate) + " B/s" : std::string("unpaced")) +
           ", batch=" + std::to_string(batch_) + ", end_copies=" + std::to_string(cfg_.end_copies) +
           ", sink=" + sink_->describe() + ")";
  }

 private:
  static double now_s() { return std::chrono::duration<double>(Clock::now().time_since_epoch()).count(); }

  // Sleeps of the pacer end close to their target: the default timer slack
  // (50 us) alone is a quarter of a 200 us bucket.
  static void tune_timer_slack() {
#ifdef __linux__
    thread_local bool done = false;
    if (!done) {
      prctl(PR_SET_TIMERSLACK, 1UL, 0UL, 0UL, 0UL);
      done = true;
    }
#endif
  }

  Abandon should_stop() const {
    if (step_ < abandon_below_.load(std::memory_order_acquire)) return Abandon::kNewerStep;
    if (has_deadline_ && Clock::now() >= t_deadline_) return Abandon::kDeadline;
    return Abandon::kNone;
  }

  // Waits `wait` seconds, in slices of at most 1 ms so that an abandon() or the
  // deadline stops it early; short waits spin (yielding) instead of sleeping.
  Abandon wait_for(double wait) {
    if (wait <= 0.0) return Abandon::kNone;
    const Clock::time_point t_wait = Clock::now();
    const Clock::time_point until =
        t_wait + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(wait));
    Abandon why = Abandon::kNone;
    while (true) {
      if ((why = should_stop()) != Abandon::kNone) break;
      const Clock::time_point now = Clock::now();
      if (now >= until) break;
      const auto left = until - now;
      if (left > std::chrono::microseconds(50)) {
        std::this_thread::sleep_for(std::min<Clock::duration>(left, std::chrono::milliseconds(1)));
      } else {
        std::this_thread::yield();
      }
    }
    paced_s_ += std::chrono::duration<double>(Clock::now() - t_wait).count();
    return why;
  }

  Abandon pace(std::size_t bytes) {
    if (!pacer_.enabled()) return Abandon::kNone;
    return wait_for(pacer_.take(now_s(), bytes));
  }

  SenderConfig cfg_;
  std::unique_ptr<DatagramSink> sink_;
  Mac mac_;
  std::size_t batch_ = 1;
  Pacer pacer_;
  double paced_s_ = 0.0;
  std::vector<uint8_t> staging_;
  bool sent_any_ = false;
  uint64_t last_step_ = 0;
  uint64_t reg_seq_ = 0;
  uint64_t step_ = 0;  // the send in progress
  bool has_deadline_ = false;
  Clock::time_point t_deadline_{};
  std::atomic<uint64_t> abandon_below_{0};
};

}  // namespace

Status GradientSender::create(const SenderConfig& cfg, std::unique_ptr<DatagramSink> sink,
                              std::unique_ptr<GradientSender>* out) {
  if (!sink) return Status::Invalid("sender needs a datagram sink");
  if (cfg.mac != MacAlgo::kNone && cfg.key.size() != kKeySize) {
    return Status::Invalid("key must be 32 bytes, got " + std::to_string(cfg.key.size()));
  }
  if (cfg.max_datagram < kMinMaxDatagram || cfg.max_datagram > kMaxMaxDatagram) {
    return Status::Invalid("max_datagram must be in [" + std::to_string(kMinMaxDatagram) + ", " +
                           std::to_string(kMaxMaxDatagram) + "], got " + std::to_string(cfg.max_datagram));
  }
  if (!(cfg.rate >= 0.0) || cfg.rate > 1e15) {
    return Status::Invalid("rate must be >= 0 bytes/s (0 = unpaced), got " + std::to_string(cfg.rate));
  }
  if (cfg.end_copies < 1 || cfg.end_copies > 16) {
    return Status::Invalid("end_copies must be in [1, 16], got " + std::to_string(cfg.end_copies));
  }
  if (!(cfg.end_spacing_s >= 0.0) || cfg.end_spacing_s > 1.0) {
    return Status::Invalid("end_spacing must be in [0, 1] seconds, got " + std::to_string(cfg.end_spacing_s));
  }
  if (cfg.rate > 0.0 && cfg.credit > 0 && cfg.burst > 0 && cfg.credit < cfg.burst) {
    return Status::Invalid("credit (" + std::to_string(cfg.credit) + " bytes) must be >= burst (" +
                           std::to_string(cfg.burst) + " bytes)");
  }
  if (cfg.batch == 0 || cfg.batch > 1024) {
    return Status::Invalid("batch must be in [1, 1024], got " + std::to_string(cfg.batch));
  }
  std::unique_ptr<SenderImpl> s(new SenderImpl(cfg, std::move(sink)));
  PYAGG_RETURN_IF_ERROR(s->init());
  *out = std::move(s);
  return Status::Ok();
}

const char* abandon_name(Abandon a) {
  switch (a) {
    case Abandon::kNone: return "none";
    case Abandon::kNewerStep: return "newer_step";
    case Abandon::kDeadline: return "deadline";
  }
  return "?";
}

Status make_udp_sender(const SenderConfig& cfg, const UdpSinkOptions& o, std::unique_ptr<GradientSender>* out) {
  std::unique_ptr<DatagramSink> sink;
  PYAGG_RETURN_IF_ERROR(make_udp_sink(o, &sink));
  return GradientSender::create(cfg, std::move(sink), out);
}

}  // namespace transport
}  // namespace pyagg
