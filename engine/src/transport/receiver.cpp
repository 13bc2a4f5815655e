// pyagg engine — LossyMPI receiver: one thread receives every worker's
// datagrams (batched, non-blocking source), validates each one completely
// before touching memory, and reassembles all workers' gradients of the open
// step concurrently into preallocated rows with received-chunk bitmaps.
// collect() ends the step by the spec's rules and fills what is missing.
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "transport/mac.h"
#include "pyagg/transport.h"

namespace pyagg {
namespace transport {

namespace {

using Clock = std::chrono::steady_clock;

inline uint64_t splitmix64(uint64_t* s) {
  uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
inline double uniform01(uint64_t* s) { return double(splitmix64(s) >> 11) * 0x1.0p-53; }

double seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

struct Row {
  uint32_t rank = 0;
  Mac mac;
  std::vector<uint64_t> bitmap;
  uint64_t received = 0;
  bool end_seen = false;
  Clock::time_point end_time{};
  bool waited = true;
  uint64_t rng = 0;
  WorkerStats st;
};

class ReceiverImpl final : public GradientReceiver {
 public:
  ReceiverImpl(const ReceiverConfig& cfg, const Geometry& g, std::unique_ptr<DatagramSource> src)
      : cfg_(cfg), geo_(g), src_(std::move(src)) {}

  ~ReceiverImpl() override {
    shutdown();
    std::free(buf_);
  }

  void shutdown() override {
    stop_.store(true);
    if (src_) src_->wake();
    if (thr_.joinable()) thr_.join();
    src_.reset();
    std::lock_guard<std::mutex> lk(mu_);
    if (!thread_failed_) {
      thread_failed_ = true;
      thread_status_ = Status::Io("the receiver is closed");
    }
  }

  Status init() {
    const std::size_t n = cfg_.ranks.size();
    if (geo_.total_bytes != 0 && n > std::numeric_limits<std::size_t>::max() / geo_.total_bytes) {
      return Status::Invalid("n*d overflows");
    }
    buf_ = static_cast<uint8_t*>(std::calloc(n * geo_.total_bytes, 1));
    if (buf_ == nullptr) {
      return Status::OutOfMemory("cannot allocate the receive buffer of " + std::to_string(n) + " x " +
                                 std::to_string(geo_.total_bytes) + " bytes");
    }
    rows_.reset(new Row[n]);
    const std::size_t words = (geo_.chunk_count + 63) / 64;
    for (std::size_t i = 0; i < n; ++i) {
      Row& r = rows_[i];
      r.rank = cfg_.ranks[i];
      r.st.rank = r.rank;
      r.bitmap.assign(words, 0);
      PYAGG_RETURN_IF_ERROR(
          r.mac.init(cfg_.mac, cfg_.mac == MacAlgo::kNone ? nullptr : cfg_.keys.data() + i * kKeySize));
      index_[r.rank] = i;
    }
    thr_ = std::thread([this] { run(); });
    return Status::Ok();
  }

  Status expect(uint64_t step) override {
    if (step > kMaxStep) return Status::Invalid("step must be < 2^48, got " + std::to_string(step));
    std::lock_guard<std::mutex> lk(mu_);
    if (thread_failed_) return thread_status_;
    if (have_step_ && step <= step_) {
      return Status::Invalid("expect(step=" + std::to_string(step) + "): steps must increase (last opened: " +
                             std::to_string(step_) + "); an old step would accept replayed datagrams");
    }
    if (open_) reset_rows();  // the previous step was never collected: abandon it
    prev_step_ = step_;
    have_prev_ = have_step_;
    step_ = step;
    have_step_ = true;
    open_ = true;
    t_open_ = Clock::now();
    for (std::size_t i = 0; i < rows(); ++i) {
      rows_[i].rng = cfg_.seed ^ (uint64_t(rows_[i].rank) * 0xD1B54A32D192ED03ull) ^ (step * 0x8CB92BA72F3D8DD7ull);
    }
    return Status::Ok();
  }

  Status collect(uint64_t step, double deadline_s, const uint8_t* wait, StepResult* out) override {
    if (!(deadline_s >= 0.0) || !std::isfinite(deadline_s)) {
      return Status::Invalid("deadline must be a finite number of seconds >= 0, got " + std::to_string(deadline_s));
    }
    const Clock::time_point t_call = Clock::now();
    const Clock::time_point t_deadline =
        t_call + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(deadline_s));
    const auto grace = std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(cfg_.grace_s));
    std::unique_lock<std::mutex> lk(mu_);
    if (!open_ || step != step_) {
      return Status::Invalid("collect(step=" + std::to_string(step) + ") but " +
                             (open_ ? "the open step is " + std::to_string(step_) : std::string("no step is open")) +
                             "; call expect(step) first");
    }
    const std::size_t n = rows();
    for (std::size_t i = 0; i < n; ++i) rows_[i].waited = wait == nullptr || wait[i] != 0;
    EndReason reason = EndReason::kDeadline;
    while (true) {
      if (thread_failed_) {
        reset_rows();
        open_ = false;
        return thread_status_;
      }
      std::size_t n_wait = 0, n_done = 0, n_marked = 0;
      Clock::time_point latest_end{};
      for (std::size_t i = 0; i < n; ++i) {
        const Row& r = rows_[i];
        if (!r.waited) continue;
        ++n_wait;
        if (r.received == geo_.chunk_count) {
          ++n_done;
          ++n_marked;
        } else if (r.end_seen) {
          ++n_marked;
          if (r.end_time > latest_end) latest_end = r.end_time;
        }
      }
      if (n_wait == 0) {
        reason = EndReason::kNobody;
        break;
      }
      if (n_done == n_wait) {
        reason = EndReason::kComplete;
        break;
      }
      const Clock::time_point now = Clock::now();
      if (n_marked == n_wait) {
        const Clock::time_point t_grace = latest_end + grace;
        const Clock::time_point t_end = t_grace < t_deadline ? t_grace : t_deadline;
        if (now >= t_end) {
          reason = t_grace <= t_deadline ? EndReason::kMarkers : EndReason::kDeadline;
          break;
        }
        cv_.wait_until(lk, t_end);
        continue;
      }
      if (now >= t_deadline) {
        reason = EndReason::kDeadline;
        break;
      }
      cv_.wait_until(lk, t_deadline);
    }
    open_ = false;
    const Clock::time_point t_end = Clock::now();

    StepResult res;
    res.step = step;
    res.reason = reason;
    res.elapsed_s = seconds(t_end - t_open_);
    res.wait_s = seconds(t_end - t_call);
    res.unattributed = unattributed_;
    res.datagrams = datagrams_;
    if (src_) kernel_drops_ = src_->kernel_drops();
    res.kernel_dropped = kernel_drops_ - kernel_drops_mark_;
    res.workers.resize(n);
    for (std::size_t i = 0; i < n; ++i) {
      Row& r = rows_[i];
      fill_row(i, step);
      WorkerStats& w = res.workers[i];
      w = r.st;
      w.rank = r.rank;
      w.chunks_expected = geo_.chunk_count;
      w.chunks_received = r.received;
      w.chunks_filled = geo_.chunk_count - r.received;
      w.complete = r.received == geo_.chunk_count;
      w.waited = r.waited;
    }
    reset_rows();
    *out = std::move(res);
    return Status::Ok();
  }

  const void* buffer() const override { return buf_; }
  const Geometry& geometry() const override { return geo_; }
  std::size_t rows() const override { return cfg_.ranks.size(); }
  std::string describe() const override {
    return "GradientReceiver(n=" + std::to_string(rows()) + ", d=" + std::to_string(geo_.d) + ", " +
           dtype_name(cfg_.dtype) + ", chunks=" + std::to_string(geo_.chunk_count) + "x" +
           std::to_string(geo_.chunk_bytes) + "B, mac=" + mac_name(cfg_.mac) + ", fill=" + fill_name(cfg_.fill) +
           ", source=" + (src_ ? src_->describe() : std::string("closed")) + ")";
  }

 private:
  // Clears bitmaps and the statistics window (the row contents stay).
  void reset_rows() {
    for (std::size_t i = 0; i < rows(); ++i) {
      Row& r = rows_[i];
      std::fill(r.bitmap.begin(), r.bitmap.end(), 0);
      r.received = 0;
      r.end_seen = false;
      r.st = WorkerStats();
      r.st.rank = r.rank;
    }
    unattributed_ = RejectCounts();
    datagrams_ = 0;
    kernel_drops_mark_ = kernel_drops_;
  }

  void fill_row(std::size_t i, uint64_t step) {
    Row& r = rows_[i];
    if (r.received == geo_.chunk_count || cfg_.fill == FillPolicy::kLast) return;  // last: keep what is there
    uint8_t* row = buf_ + i * geo_.total_bytes;
    const bool f32 = cfg_.dtype == DType::kFloat32;
    for (std::size_t w = 0; w < r.bitmap.size(); ++w) {
      if (r.bitmap[w] == ~uint64_t{0}) continue;
      for (std::size_t b = 0; b < 64; ++b) {
        const std::size_t c = w * 64 + b;
        if (c >= geo_.chunk_count) break;
        if (r.bitmap[w] & (uint64_t{1} << b)) continue;
        uint8_t* p = row + c * geo_.chunk_bytes;
        const std::size_t ne = geo_.chunk_len(c) / geo_.elem_size;
        switch (cfg_.fill) {
          case FillPolicy::kZero:
            std::memset(p, 0, ne * geo_.elem_size);
            break;
          case FillPolicy::kNan:
            if (f32) {
              const float v = std::numeric_limits<float>::quiet_NaN();
              for (std::size_t k = 0; k < ne; ++k) std::memcpy(p + 4 * k, &v, 4);
            } else {
              const double v = std::numeric_limits<double>::quiet_NaN();
              for (std::size_t k = 0; k < ne; ++k) std::memcpy(p + 8 * k, &v, 8);
            }
            break;
          case FillPolicy::kRandom: {
            // Standard normal values (Box-Muller), reproducible from (seed, step, rank, chunk).
            uint64_t s = cfg_.seed ^ (step * 0x9E3779B97F4A7C15ull) ^ (uint64_t(r.rank) << 32) ^ c;
            splitmix64(&s);
            for (std::size_t k = 0; k < ne; k += 2) {
              const double u1 = 1.0 - uniform01(&s), u2 = uniform01(&s);
              const double rad = std::sqrt(-2.0 * std::log(u1));
              const double z[2] = {rad * std::cos(2 * M_PI * u2), rad * std::sin(2 * M_PI * u2)};
              for (std::size_t j = 0; j < 2 && k + j < ne; ++j) {
                if (f32) {
                  const float v = static_cast<float>(z[j]);
                  std::memcpy(p + 4 * (k + j), &v, 4);
                } else {
                  std::memcpy(p + 8 * (k + j), &z[j], 8);
                }
              }
            }
            break;
          }
          case FillPolicy::kLast:
            break;
        }
      }
    }
  }

  // Validates one datagram completely, then (only then) writes it. Returns
  // whether a waiting collect() should re-check its end condition.
  bool process(const DatagramView& v, Clock::time_point now) {
    ++datagrams_;
    const uint8_t* p = v.data;
    const std::size_t len = v.len;
    Header h;
    if (len < kHeaderSize || !decode_header(p, &h)) {
      if (len < kOverhead) {
        ++unattributed_.bad_length;
      } else {
        ++unattributed_.bad_header;
      }
      return false;
    }
    auto it = index_.find(h.rank);
    if (it == index_.end()) {
      ++unattributed_.unknown_sender;
      return false;
    }
    Row& r = rows_[it->second];
    if (cfg_.drop_rate > 0.0 && uniform01(&r.rng) < cfg_.drop_rate) {  // injected loss
      ++r.st.dropped;
      return false;
    }
    RejectCounts& rej = r.st.rejected;
    if (v.truncated || len < kOverhead || len > cfg_.max_datagram) {
      ++rej.bad_length;
      return false;
    }
    if ((h.kind != Kind::kData && h.kind != Kind::kEnd) || h.mac != cfg_.mac ||
        h.dtype != static_cast<uint8_t>(cfg_.dtype) || h.job_id != cfg_.job_id || h.tensor_id != cfg_.tensor_id ||
        h.header_len != kHeaderSize || h.total_elems != geo_.d || h.chunk_count != geo_.chunk_count ||
        h.step > kMaxStep) {
      ++rej.bad_header;
      return false;
    }
    if (h.payload_len != len - kOverhead) {
      ++rej.bad_length;
      return false;
    }
    if (h.kind == Kind::kData) {
      if (h.chunk_index >= geo_.chunk_count) {
        ++rej.out_of_range;
        return false;
      }
      if (h.payload_len != geo_.chunk_len(h.chunk_index)) {
        ++rej.bad_length;
        return false;
      }
    } else {
      if (h.chunk_index != kEndChunkIndex) {
        ++rej.out_of_range;
        return false;
      }
      if (h.payload_len != kEndPayloadSize) {
        ++rej.bad_length;
        return false;
      }
    }
    uint8_t nonce[12];
    make_nonce(h, nonce);
    if (!r.mac.verify(p, kHeaderSize + h.payload_len, nonce, p + kHeaderSize + h.payload_len)) {
      ++rej.bad_mac;
      return false;
    }
    // Authentic. Only the open step is written.
    if (!(open_ && h.step == step_)) {
      const bool late = (open_ && have_prev_ && h.step == prev_step_) || (!open_ && have_step_ && h.step == step_);
      if (late) {
        if (h.kind == Kind::kData) ++r.st.late;  // END copies arriving after their step closed: harmless, ignored
      } else {
        ++rej.wrong_step;
      }
      return false;
    }
    const double t = seconds(now - t_open_);
    if (h.kind == Kind::kEnd) {
      ++r.st.end_markers;
      if (!r.end_seen) {
        r.end_seen = true;
        r.end_time = now;
        r.st.end_s = t;
        uint32_t sent;
        std::memcpy(&sent, p + kHeaderSize, 4);
        r.st.chunks_sent = int64_t(__builtin_bswap32(sent));
        return r.waited;
      }
      return false;
    }
    uint64_t& word = r.bitmap[h.chunk_index >> 6];
    const uint64_t bit = uint64_t{1} << (h.chunk_index & 63);
    if (word & bit) {
      ++r.st.duplicates;
      return false;
    }
    // Bounds: chunk_index < chunk_count and payload_len == chunk_len(chunk_index), so
    // [off, off + payload_len) lies inside this row.
    const std::size_t off = std::size_t(h.chunk_index) * geo_.chunk_bytes;
    std::memcpy(buf_ + (&r - rows_.get()) * geo_.total_bytes + off, p + kHeaderSize, h.payload_len);
    word |= bit;
    ++r.received;
    r.st.bytes_received += h.payload_len;
    if (r.st.first_s < 0) r.st.first_s = t;
    r.st.last_s = t;
    return r.received == geo_.chunk_count && r.waited;
  }

  void run() {
    std::vector<DatagramView> batch;
    batch.reserve(4096);
    while (!stop_.load(std::memory_order_relaxed)) {
      Status st = src_->recv_batch(100, &batch);
      if (!st.ok()) {
        {
          std::lock_guard<std::mutex> lk(mu_);
          thread_failed_ = true;
          thread_status_ = st;
        }
        cv_.notify_all();
        return;
      }
      if (batch.empty()) continue;
      const Clock::time_point now = Clock::now();
      bool notify = false;
      {
        std::lock_guard<std::mutex> lk(mu_);
        for (const DatagramView& v : batch) notify |= process(v, now);
        kernel_drops_ = src_->kernel_drops();
      }
      if (notify) cv_.notify_all();
    }
  }

  ReceiverConfig cfg_;
  Geometry geo_;
  std::unique_ptr<DatagramSource> src_;
  uint8_t* buf_ = nullptr;
  std::unique_ptr<Row[]> rows_;
  std::unordered_map<uint32_t, std::size_t> index_;

  std::mutex mu_;
  std::condition_variable cv_;
  bool open_ = false;
  bool have_step_ = false;
  bool have_prev_ = false;
  uint64_t step_ = 0;
  uint64_t prev_step_ = 0;
  Clock::time_point t_open_{};
  RejectCounts unattributed_;
  uint64_t datagrams_ = 0;
  uint64_t kernel_drops_ = 0;       // as of the last batch
  uint64_t kernel_drops_mark_ = 0;  // at the start of the statistics window
  bool thread_failed_ = false;
  Status thread_status_;

  std::atomic<bool> stop_{false};
  std::thread thr_;
};

}  // namespace

Status GradientReceiver::create(const ReceiverConfig& cfg, std::unique_ptr<DatagramSource> src,
                                std::unique_ptr<GradientReceiver>* out) {
  if (!src) return Status::Invalid("receiver needs a datagram source");
  const std::size_t n = cfg.ranks.size();
  if (n == 0) return Status::Invalid("receiver needs at least one sender rank, got none");
  std::unordered_map<uint32_t, int> seen;
  for (uint32_t r : cfg.ranks) {
    if (seen[r]++) return Status::Invalid("rank " + std::to_string(r) + " is listed twice");
  }
  if (cfg.mac != MacAlgo::kNone) {
    if (cfg.keys.size() != n * kKeySize) {
      return Status::Invalid("keys must hold 32 bytes per rank: expected " + std::to_string(n * kKeySize) +
                             " bytes for " + std::to_string(n) + " ranks, got " + std::to_string(cfg.keys.size()));
    }
    if (!mac_available(cfg.mac)) {
      return Status::Unsupported(std::string("mac ") + mac_name(cfg.mac) + " is not available in this build/CPU");
    }
  }
  if (!(cfg.grace_s >= 0.0) || !std::isfinite(cfg.grace_s)) {
    return Status::Invalid("grace must be a finite number of seconds >= 0, got " + std::to_string(cfg.grace_s));
  }
  if (!(cfg.drop_rate >= 0.0 && cfg.drop_rate <= 1.0)) {
    return Status::Invalid("drop_rate must be in [0, 1], got " + std::to_string(cfg.drop_rate));
  }
  if (int(cfg.fill) < 0 || int(cfg.fill) > 3) return Status::Invalid("unknown fill policy code");
  Geometry g;
  PYAGG_RETURN_IF_ERROR(make_geometry(cfg.d, cfg.dtype, cfg.max_datagram, &g));
  std::unique_ptr<ReceiverImpl> r(new ReceiverImpl(cfg, g, std::move(src)));
  PYAGG_RETURN_IF_ERROR(r->init());
  *out = std::move(r);
  return Status::Ok();
}

Status make_udp_receiver(const ReceiverConfig& cfg, const UdpSourceOptions& o, std::unique_ptr<GradientReceiver>* out,
                         UdpSourceInfo* info) {
  std::unique_ptr<DatagramSource> src;
  PYAGG_RETURN_IF_ERROR(make_udp_source(o, &src, info));
  return GradientReceiver::create(cfg, std::move(src), out);
}

}  // namespace transport
}  // namespace pyagg
