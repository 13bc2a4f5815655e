// pyagg engine — LossyMPI receiver: one thread receives every worker's
// datagrams (batched, non-blocking source) and feeds them to the Reassembler
// (reassembler.h), which validates each one completely before touching memory
// and reassembles all workers' gradients of the open step into preallocated
// rows. collect() ends the step by the spec's rules and fills what is missing.
// With an isolating source, the thread also gives every rank whose REGISTER
// verified its own connected socket.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "pyagg/transport.h"
#include "transport/reassembler.h"

namespace pyagg {
namespace transport {

namespace {

using Clock = std::chrono::steady_clock;

double seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

class ReceiverImpl final : public GradientReceiver {
 public:
  ReceiverImpl(std::unique_ptr<Reassembler> re, std::unique_ptr<DatagramSource> src)
      : re_(std::move(re)), src_(std::move(src)) {
    attached_.assign(re_->rows(), std::vector<uint8_t>());
    attached_ok_.assign(re_->rows(), false);
  }

  ~ReceiverImpl() override { shutdown(); }

  void start(int verify_threads) {
    const int helpers = std::max(0, verify_threads - 1);
    for (int i = 0; i < helpers; ++i) helpers_.emplace_back(new Helper);
    for (auto& h : helpers_) {
      Helper* hp = h.get();
      hp->thr = std::thread([this, hp] { helper_loop(hp); });
    }
    thr_ = std::thread([this] { run(); });
  }

  // Lock discipline: mu_ guards the Reassembler, the failure state and the
  // src_ pointer (collect() and describe() read the source under it); the
  // receive thread uses the source without the lock until it is joined.
  void shutdown() override {
    std::lock_guard<std::mutex> once(shutdown_mu_);
    {
      std::lock_guard<std::mutex> lk(mu_);
      stop_.store(true);
      if (!thread_failed_) {
        thread_failed_ = true;
        thread_status_ = Status::Io("the receiver is closed");
      }
      if (src_) src_->wake();
    }
    cv_.notify_all();  // a blocked collect() returns now with Status::Io
    if (thr_.joinable()) thr_.join();
    for (auto& h : helpers_) {  // the receive thread is gone: no job is pending
      {
        std::lock_guard<std::mutex> hl(h->mu);
        h->quit = true;
      }
      h->cv.notify_all();
      if (h->thr.joinable()) h->thr.join();
    }
    std::lock_guard<std::mutex> lk(mu_);
    src_.reset();
  }

  Status expect(uint64_t step) override {
    std::lock_guard<std::mutex> lk(mu_);
    if (thread_failed_) return thread_status_;
    return re_->open(step, Clock::now());
  }

  Status collect(uint64_t step, double deadline_s, const uint8_t* wait, StepResult* out) override {
    if (!(deadline_s >= 0.0) || !std::isfinite(deadline_s)) {
      return Status::Invalid("deadline must be a finite number of seconds >= 0, got " + std::to_string(deadline_s));
    }
    if (out == nullptr) return Status::Invalid("collect: result pointer is null");
    const Clock::time_point t_call = Clock::now();
    const Clock::time_point t_deadline =
        t_call + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(deadline_s));
    std::unique_lock<std::mutex> lk(mu_);
    if (!re_->is_open() || step != re_->open_step()) {
      return Status::Invalid("collect(step=" + std::to_string(step) + ") but " +
                             (re_->is_open() ? "the open step is " + std::to_string(re_->open_step())
                                             : std::string("no step is open")) +
                             "; call expect(step) first");
    }
    re_->set_wait(wait);
    EndReason reason = EndReason::kDeadline;
    while (true) {
      if (thread_failed_) {
        re_->abandon();
        return thread_status_;
      }
      Clock::time_point wake_at;
      if (re_->check_end(t_deadline, Clock::now(), &reason, &wake_at)) break;
      cv_.wait_until(lk, wake_at);
    }
    if (src_) {
      re_->set_kernel_drops(kOriginAny, src_->kernel_drops());
      if (src_->isolating()) {
        for (std::size_t i = 0; i < re_->rows(); ++i) re_->set_kernel_drops(int(i), src_->row_kernel_drops(i));
      }
    }
    const Clock::time_point t_end = Clock::now();
    PYAGG_RETURN_IF_ERROR(re_->close(step, wait, reason, t_end, out));
    out->wait_s = seconds(t_end - t_call);
    return Status::Ok();
  }

  Status registrations(std::vector<Registration>* out) override {
    if (out == nullptr) return Status::Invalid("registrations: output pointer is null");
    std::lock_guard<std::mutex> lk(mu_);
    re_->registrations(out);
    if (isolating_) {
      for (Registration& r : *out) {
        std::vector<uint8_t> a;
        r.ready = attached_ok_[r.row] && re_->registered_address(r.row, &a) && a == attached_[r.row];
      }
    }
    return Status::Ok();
  }

  const void* buffer() const override { return re_->buffer(); }
  const Geometry& geometry() const override { return re_->geometry(); }
  std::size_t rows() const override { return re_->rows(); }
  std::string describe() const override {
    const ReceiverConfig& c = re_->config();
    const Geometry& g = re_->geometry();
    std::string source;
    {
      std::lock_guard<std::mutex> lk(mu_);
      source = src_ ? src_->describe() : std::string("closed");
    }
    return "GradientReceiver(n=" + std::to_string(rows()) + ", d=" + std::to_string(g.d) + ", " +
           dtype_name(c.dtype) + ", chunks=" + std::to_string(g.chunk_count) + "x" + std::to_string(g.chunk_bytes) +
           "B, mac=" + mac_name(c.mac) + ", fill=" + fill_name(c.fill) + (c.isolate ? ", isolated" : "") +
           ", source=" + source + ")";
  }

  bool isolating_ = false;

 private:
  // Gives every row whose registered address changed its own socket (called
  // by the receive thread with mu_ held).
  void sync_registrations() {
    if (!isolating_ || re_->registration_epoch() == synced_epoch_) return;
    synced_epoch_ = re_->registration_epoch();
    std::vector<uint8_t> a;
    for (std::size_t i = 0; i < re_->rows(); ++i) {
      if (!re_->registered_address(i, &a) || a.empty()) continue;
      if (attached_ok_[i] && a == attached_[i]) continue;
      Status st = src_->attach(i, a.data(), a.size());
      attached_[i] = a;
      attached_ok_[i] = st.ok();
      if (!st.ok()) attach_error_ = st;  // that rank stays not ready; reported by describe()
    }
  }

  // A helper thread verifying one slice of the receive thread's batch.
  struct Helper {
    std::mutex mu;
    std::condition_variable cv;
    const std::vector<DatagramView>* batch = nullptr;
    uint8_t* verdicts = nullptr;
    std::size_t begin = 0, end = 0;
    uint64_t posted = 0, done = 0;
    bool quit = false;
    std::thread thr;
  };

  void verify_range(const std::vector<DatagramView>& b, std::size_t begin, std::size_t end, uint8_t* out) const {
    for (std::size_t i = begin; i < end; ++i) out[i] = re_->preverify(b[i].data, b[i].len, b[i].truncated, b[i].origin);
  }

  void helper_loop(Helper* h) {
    std::unique_lock<std::mutex> lk(h->mu);
    while (true) {
      h->cv.wait(lk, [&] { return h->quit || h->posted != h->done; });
      if (h->quit) return;
      const std::vector<DatagramView>* b = h->batch;
      uint8_t* out = h->verdicts;
      const std::size_t begin = h->begin, end = h->end;
      lk.unlock();
      verify_range(*b, begin, end, out);  // preverify is const and thread-safe (reassembler.h)
      lk.lock();
      h->done = h->posted;
      h->cv.notify_all();
    }
  }

  // MAC verdicts of a batch, outside mu_: slices on the helpers and this thread.
  // Without helpers, or for a small batch, ingest() verifies (kMacUnchecked).
  void verify(const std::vector<DatagramView>& b, std::vector<uint8_t>* verdicts) {
    verdicts->assign(b.size(), Reassembler::kMacUnchecked);
    constexpr std::size_t kMinPerThread = 8;
    const std::size_t threads = std::min<std::size_t>(helpers_.size() + 1, b.size() / kMinPerThread);
    if (threads <= 1) return;
    const std::size_t per = (b.size() + threads - 1) / threads;
    std::size_t posted = 0;
    for (std::size_t k = 1; k < threads; ++k) {
      Helper* h = helpers_[k - 1].get();
      const std::size_t begin = k * per, end = std::min(b.size(), begin + per);
      if (begin >= end) break;
      {
        std::lock_guard<std::mutex> hl(h->mu);
        h->batch = &b;
        h->verdicts = verdicts->data();
        h->begin = begin;
        h->end = end;
        ++h->posted;
      }
      h->cv.notify_one();
      ++posted;
    }
    verify_range(b, 0, std::min(b.size(), per), verdicts->data());
    for (std::size_t k = 0; k < posted; ++k) {  // the batch's bytes must not change before every slice is done
      Helper* h = helpers_[k].get();
      std::unique_lock<std::mutex> hl(h->mu);
      h->cv.wait(hl, [&] { return h->done == h->posted; });
    }
  }

  void run() {
    std::vector<DatagramView> batch;
    std::vector<uint8_t> verdicts;
    batch.reserve(4096);
    while (!stop_.load(std::memory_order_relaxed)) {
      Status st = src_->recv_batch(100, &batch);
      if (!st.ok()) {
        {
          std::lock_guard<std::mutex> lk(mu_);
          if (!thread_failed_) {
            thread_failed_ = true;
            thread_status_ = st;
          }
        }
        cv_.notify_all();
        return;
      }
      if (batch.empty()) continue;
      verify(batch, &verdicts);
      const Clock::time_point now = Clock::now();
      bool notify = false;
      {
        std::lock_guard<std::mutex> lk(mu_);
        for (std::size_t i = 0; i < batch.size(); ++i) {
          const DatagramView& v = batch[i];
          notify |= re_->ingest(v.data, v.len, v.truncated, v.origin, v.src, v.src_len, now, verdicts[i]);
        }
        sync_registrations();
      }
      if (notify) cv_.notify_all();
    }
  }

  std::unique_ptr<Reassembler> re_;
  std::unique_ptr<DatagramSource> src_;
  std::vector<std::vector<uint8_t>> attached_;  // address each row's socket is connected to
  std::vector<bool> attached_ok_;
  uint64_t synced_epoch_ = 0;
  Status attach_error_;

  mutable std::mutex mu_;
  std::mutex shutdown_mu_;
  std::condition_variable cv_;
  bool thread_failed_ = false;
  Status thread_status_;

  std::atomic<bool> stop_{false};
  std::thread thr_;
  std::vector<std::unique_ptr<Helper>> helpers_;
};

}  // namespace

Status GradientReceiver::create(const ReceiverConfig& cfg, std::unique_ptr<DatagramSource> src,
                                std::unique_ptr<GradientReceiver>* out) {
  if (!src) return Status::Invalid("receiver needs a datagram source");
  if (out == nullptr) return Status::Invalid("receiver output pointer is null");
  if (cfg.isolate != src->isolating()) {
    return Status::Invalid(cfg.isolate ? "isolate=true needs an isolating datagram source (make_udp_receiver with "
                                         "isolation), got " + src->describe()
                                       : "an isolating datagram source needs isolate=true in the receiver config");
  }
  std::unique_ptr<Reassembler> re;
  PYAGG_RETURN_IF_ERROR(Reassembler::create(cfg, &re));
  std::unique_ptr<ReceiverImpl> r(new ReceiverImpl(std::move(re), std::move(src)));
  r->isolating_ = cfg.isolate;
  int vt = cfg.verify_threads;
  // auto: a helper only where cores are to spare (on 2 cores the senders and the trainer need the other one)
  if (vt == 0) vt = (std::thread::hardware_concurrency() >= 4 && cfg.ranks.size() >= 2) ? 2 : 1;
  r->start(vt);
  *out = std::move(r);
  return Status::Ok();
}

}  // namespace transport
}  // namespace pyagg
