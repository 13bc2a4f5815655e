// pyagg engine — LossyMPI in-process loopback channel: the transport interface
// without sockets, for tests (bounded FIFO, drops when full like a socket
// buffer, raw injection of forged datagrams).
#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <string>
#include <vector>

#include "pyagg/transport.h"

namespace pyagg {
namespace transport {

namespace {

class Channel : public LoopbackChannel, public std::enable_shared_from_this<Channel> {
 public:
  explicit Channel(std::size_t capacity) : capacity_(capacity) {}

  std::unique_ptr<DatagramSink> make_sink() override;
  std::unique_ptr<DatagramSource> make_source() override;

  void inject(const uint8_t* data, std::size_t len) override { push(data, len); }

  uint64_t dropped() const override {
    std::lock_guard<std::mutex> lk(mu_);
    return dropped_;
  }

  bool push(const uint8_t* data, std::size_t len) {
    {
      std::lock_guard<std::mutex> lk(mu_);
      if (q_.size() >= capacity_) {
        ++dropped_;
        return false;
      }
      q_.emplace_back(data, data + len);
      idle_ = false;
    }
    cv_.notify_one();
    return true;
  }

  // Moves up to max datagrams into out; waits up to timeout_ms for the first.
  // The caller processes a batch before it calls pop again, so a pop that finds
  // the queue empty proves everything queued before it has been processed.
  void pop(int timeout_ms, std::size_t max, std::vector<std::vector<uint8_t>>* out) {
    std::unique_lock<std::mutex> lk(mu_);
    if (q_.empty()) {
      idle_ = true;
      drained_cv_.notify_all();
    }
    if (q_.empty() && !woken_) {
      cv_.wait_for(lk, std::chrono::milliseconds(timeout_ms), [&] { return !q_.empty() || woken_; });
    }
    idle_ = false;
    woken_ = false;
    while (!q_.empty() && out->size() < max) {
      out->push_back(std::move(q_.front()));
      q_.pop_front();
    }
  }

  bool wait_drained(int timeout_ms) override {
    std::unique_lock<std::mutex> lk(mu_);
    return drained_cv_.wait_for(lk, std::chrono::milliseconds(timeout_ms), [&] { return idle_ && q_.empty(); });
  }

  void wake() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      woken_ = true;
    }
    cv_.notify_all();
  }

 private:
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::condition_variable drained_cv_;  // signalled when the source finds the queue empty
  bool idle_ = false;                   // the source is in pop() with nothing queued
  std::deque<std::vector<uint8_t>> q_;
  std::size_t capacity_;
  uint64_t dropped_ = 0;
  bool woken_ = false;
};

class LoopSink final : public DatagramSink {
 public:
  explicit LoopSink(std::shared_ptr<Channel> ch) : ch_(std::move(ch)) {}
  Status send(const uint8_t* buf, std::size_t seg, std::size_t total) override {
    if (seg == 0) return Status::Ok();
    ++c_.syscalls;
    for (std::size_t off = 0; off < total; off += seg) {
      const std::size_t len = std::min(seg, total - off);
      if (ch_->push(buf + off, len)) {
        ++c_.datagrams;
        c_.bytes += len;
      } else {
        ++c_.dropped;
      }
    }
    return Status::Ok();
  }
  SinkCounters counters() const override { return c_; }
  std::string describe() const override { return "loopback"; }

 private:
  std::shared_ptr<Channel> ch_;
  SinkCounters c_;
};

class LoopSource final : public DatagramSource {
 public:
  explicit LoopSource(std::shared_ptr<Channel> ch) : ch_(std::move(ch)) {}
  Status recv_batch(int timeout_ms, std::vector<DatagramView>* out) override {
    out->clear();
    held_.clear();
    ch_->pop(timeout_ms, 64, &held_);
    for (auto& d : held_) out->push_back({d.data(), d.size(), false});
    return Status::Ok();
  }
  void wake() override { ch_->wake(); }
  std::string describe() const override { return "loopback"; }

 private:
  std::shared_ptr<Channel> ch_;
  std::vector<std::vector<uint8_t>> held_;
};

std::unique_ptr<DatagramSink> Channel::make_sink() {
  return std::unique_ptr<DatagramSink>(new LoopSink(shared_from_this()));
}
std::unique_ptr<DatagramSource> Channel::make_source() {
  return std::unique_ptr<DatagramSource>(new LoopSource(shared_from_this()));
}

}  // namespace

std::shared_ptr<LoopbackChannel> LoopbackChannel::create(std::size_t capacity) {
  return std::make_shared<Channel>(capacity == 0 ? 1 : capacity);
}

}  // namespace transport
}  // namespace pyagg
