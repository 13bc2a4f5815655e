// pyagg engine — LossyMPI sender: chunks a gradient into MTU-sized datagrams,
// MACs each one, paces with a token bucket and sends in batches (GSO or
// sendmmsg through the sink), then sends the END marker.
#include <algorithm>
#include <chrono>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "transport/mac.h"
#include "pyagg/transport.h"

namespace pyagg {
namespace transport {

namespace {

using Clock = std::chrono::steady_clock;

class SenderImpl final : public GradientSender {
 public:
  SenderImpl(const SenderConfig& cfg, std::unique_ptr<DatagramSink> sink) : cfg_(cfg), sink_(std::move(sink)) {}

  Status init() {
    PYAGG_RETURN_IF_ERROR(mac_.init(cfg_.mac, cfg_.mac == MacAlgo::kNone ? nullptr : cfg_.key.data()));
    std::size_t per_batch = std::max<std::size_t>(1, cfg_.batch);
    if (cfg_.rate > 0.0) {
      burst_ = cfg_.burst > 0 ? double(cfg_.burst)
                              : std::clamp(cfg_.rate * 200e-6, 2.0 * double(cfg_.max_datagram),
                                           44.0 * double(cfg_.max_datagram));
      per_batch = std::min(per_batch, std::max<std::size_t>(1, std::size_t(burst_ / double(cfg_.max_datagram))));
      burst_ = std::max(burst_, double(cfg_.max_datagram));
    }
    batch_ = per_batch;
    staging_.assign(batch_ * cfg_.max_datagram, 0);
    return Status::Ok();
  }

  Status send(uint64_t step, const void* data, std::size_t d, DType dtype, SendStats* out) override {
    if (step > kMaxStep) return Status::Invalid("step must be < 2^48, got " + std::to_string(step));
    if (sent_any_ && step <= last_step_) {
      return Status::Invalid("send(step=" + std::to_string(step) + "): steps must increase (last sent: " +
                             std::to_string(last_step_) + "); resending a step would reuse MAC nonces");
    }
    if (data == nullptr && d > 0) return Status::Invalid("gradient pointer is null");
    Geometry g;
    PYAGG_RETURN_IF_ERROR(make_geometry(d, dtype, cfg_.max_datagram, &g));
    sent_any_ = true;
    last_step_ = step;

    const SinkCounters c0 = sink_->counters();
    const Clock::time_point t0 = Clock::now();
    paced_s_ = 0.0;
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
    for (std::size_t c = 0; c < g.chunk_count;) {
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
      pace(total);
      PYAGG_RETURN_IF_ERROR(sink_->send(staging_.data(), full, total));
    }
    // END marker: identical copies (same nonce, same bytes).
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
    for (int k = 0; k < std::max(1, cfg_.end_copies); ++k) {
      pace(sizeof(end));
      PYAGG_RETURN_IF_ERROR(sink_->send(end, sizeof(end), sizeof(end)));
    }
    const SinkCounters c1 = sink_->counters();
    if (out) {
      SendStats s;
      s.step = step;
      s.chunks = g.chunk_count;
      s.datagrams = c1.datagrams - c0.datagrams;
      s.bytes = c1.bytes - c0.bytes;
      s.syscalls = c1.syscalls - c0.syscalls;
      s.refused = c1.refused - c0.refused;
      s.retries = c1.retries - c0.retries;
      s.dropped = c1.dropped - c0.dropped;
      s.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
      s.paced_s = paced_s_;
      s.gso = c1.gso;
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
           ", batch=" + std::to_string(batch_) + ", sink=" + sink_->describe() + ")";
  }

 private:
  // Token bucket of depth burst_ filled at cfg_.rate bytes/s, kept as the
  // virtual time `next_` at which the bucket would hold `bytes` again.
  void pace(std::size_t bytes) {
    if (cfg_.rate <= 0.0) return;
    const double now = std::chrono::duration<double>(Clock::now().time_since_epoch()).count();
    const double depth = burst_ / cfg_.rate;
    if (next_ < now - depth) next_ = now - depth;  // a full bucket, no more
    next_ += double(bytes) / cfg_.rate;
    const double wait = next_ - now - depth;
    if (wait > 0) {
      const auto t_wait = Clock::now();
      if (wait > 50e-6) {
        std::this_thread::sleep_for(std::chrono::duration<double>(wait));
      } else {
        const double until = now + wait;
        while (std::chrono::duration<double>(Clock::now().time_since_epoch()).count() < until) {
          std::this_thread::yield();
        }
      }
      paced_s_ += std::chrono::duration<double>(Clock::now() - t_wait).count();
    }
  }

  SenderConfig cfg_;
  std::unique_ptr<DatagramSink> sink_;
  Mac mac_;
  std::size_t batch_ = 1;
  double burst_ = 0.0;
  double next_ = 0.0;
  double paced_s_ = 0.0;
  std::vector<uint8_t> staging_;
  bool sent_any_ = false;
  uint64_t last_step_ = 0;
  uint64_t reg_seq_ = 0;
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
  if (cfg.batch == 0 || cfg.batch > 1024) {
    return Status::Invalid("batch must be in [1, 1024], got " + std::to_string(cfg.batch));
  }
  std::unique_ptr<SenderImpl> s(new SenderImpl(cfg, std::move(sink)));
  PYAGG_RETURN_IF_ERROR(s->init());
  *out = std::move(s);
  return Status::Ok();
}

Status make_udp_sender(const SenderConfig& cfg, const UdpSinkOptions& o, std::unique_ptr<GradientSender>* out) {
  std::unique_ptr<DatagramSink> sink;
  PYAGG_RETURN_IF_ERROR(make_udp_sink(o, &sink));
  return GradientSender::create(cfg, std::move(sink), out);
}

}  // namespace transport
}  // namespace pyagg
