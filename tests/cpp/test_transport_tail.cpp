// LossyMPI tail behaviour (issue 10): cancellable sends, END markers spaced in
// time, pacing that keeps bounded credit for oversleeping, and the receiver's
// grace chosen from the measured arrival spread. Deterministic: a controlled
// sink that records and can hold each send call, the pacer driven by a
// synthetic clock, the reassembler fed explicit arrival times. The only clock
// facts asserted are lower bounds a sleep guarantees (a wait never ends early).
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "check.h"
#include "transport_keys.h"
#include "pyagg/transport.h"
#include "transport/pacer.h"
#include "transport/reassembler.h"

using namespace pyagg;
using namespace pyagg::transport;
using namespace pyagg::transport::testing;
using Clock = std::chrono::steady_clock;

namespace {

// One send() call the sink saw: its datagrams (split by `seg`) and when.
struct Call {
  Clock::time_point t;
  std::vector<std::vector<uint8_t>> datagrams;
};

// A sink that records every call; it can hold call number `hold_at` (0-based)
// until release() (the test acts meanwhile), and sleep `stall` inside call
// number `stall_at`.
struct Recorder {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<Call> calls;
  long hold_at = -1;
  bool held = false, released = false;
  long stall_at = -1;
  std::chrono::milliseconds stall{0};

  void wait_held() {
    std::unique_lock<std::mutex> lk(mu);
    cv.wait(lk, [&] { return held; });
  }
  void release() {
    std::lock_guard<std::mutex> lk(mu);
    released = true;
    cv.notify_all();
  }
};

class RecordingSink final : public DatagramSink {
 public:
  explicit RecordingSink(std::shared_ptr<Recorder> r) : r_(std::move(r)) {}
  Status send(const uint8_t* buf, std::size_t seg, std::size_t total) override {
    long idx;
    {
      std::unique_lock<std::mutex> lk(r_->mu);
      idx = long(r_->calls.size());
      Call c;
      c.t = Clock::now();
      for (std::size_t off = 0; off < total; off += seg) {
        const std::size_t n = std::min(seg, total - off);
        c.datagrams.emplace_back(buf + off, buf + off + n);
      }
      c_.datagrams += c.datagrams.size();
      c_.bytes += total;
      ++c_.syscalls;
      r_->calls.push_back(std::move(c));
      if (idx == r_->hold_at) {
        r_->held = true;
        r_->cv.notify_all();
        r_->cv.wait(lk, [&] { return r_->released; });
      }
    }
    if (idx == r_->stall_at) std::this_thread::sleep_for(r_->stall);
    return Status::Ok();
  }
  SinkCounters counters() const override { return c_; }
  std::string describe() const override { return "recording"; }

 private:
  std::shared_ptr<Recorder> r_;
  SinkCounters c_;
};

SenderConfig sender_config(uint32_t rank) {
  SenderConfig sc;
  sc.job_id = 9;
  sc.rank = rank;
  sc.mac = best();
  sc.key = key_of(int(rank));
  return sc;
}

std::unique_ptr<GradientSender> make_sender(const SenderConfig& sc, std::shared_ptr<Recorder> rec) {
  std::unique_ptr<GradientSender> tx;
  Status st = GradientSender::create(sc, std::unique_ptr<DatagramSink>(new RecordingSink(rec)), &tx);
  CHECK_MSG(st.ok(), st.message());
  return tx;
}

Kind kind_of(const std::vector<uint8_t>& dg) {
  Header h;
  CHECK(decode_header(dg.data(), &h));
  return h.kind;
}

std::size_t count_kind(const Recorder& r, Kind k) {
  std::size_t n = 0;
  for (const Call& c : r.calls)
    for (const auto& d : c.datagrams) n += kind_of(d) == k;
  return n;
}

}  // namespace

// ----------------------------------------------------------- cancellation ----

TEST_CASE("cancel: abandon() from another thread stops the send at the next batch, with no END marker") {
  auto rec = std::make_shared<Recorder>();
  rec->hold_at = 2;  // the third batch is held until the test has called abandon()
  SenderConfig sc = sender_config(1);
  sc.batch = 4;
  auto tx = make_sender(sc, rec);
  const std::size_t d = 352 * 40;  // 40 chunks = 10 batches of 4
  std::vector<float> g(d, 1.5f);
  SendStats ss;
  Status st;
  std::thread th([&] { st = tx->send(7, g.data(), d, DType::kFloat32, &ss); });
  rec->wait_held();
  tx->abandon(7);  // the worker learned of step 8 (or STOP)
  rec->release();
  th.join();
  CHECK_MSG(st.ok(), st.message());
  CHECK(ss.abandoned == Abandon::kNewerStep);
  CHECK_MSG(ss.chunks_sent == 12, std::to_string(ss.chunks_sent));  // 3 batches went out, none after
  CHECK(ss.chunks == 40 && ss.end_sent == 0);
  CHECK(rec->calls.size() == 3);
  CHECK(count_kind(*rec, Kind::kEnd) == 0 && count_kind(*rec, Kind::kData) == 12);
  CHECK(std::string(abandon_name(ss.abandoned)) == "newer_step");
}

TEST_CASE("cancel: a step already abandoned sends nothing; an older abandon does not touch a newer step") {
  auto rec = std::make_shared<Recorder>();
  auto tx = make_sender(sender_config(2), rec);
  std::vector<float> g(1000, 2.0f);
  tx->abandon(5);
  SendStats ss;
  CHECK(tx->send(5, g.data(), g.size(), DType::kFloat32, &ss).ok());
  CHECK(ss.abandoned == Abandon::kNewerStep && ss.chunks_sent == 0 && ss.end_sent == 0);
  CHECK(rec->calls.empty());
  // step 5 counts as sent (its nonces may not be reused)
  CHECK(!tx->send(5, g.data(), g.size(), DType::kFloat32, &ss).ok());
  tx->abandon(3);  // smaller: no effect, abandon is monotonic
  CHECK(tx->send(6, g.data(), g.size(), DType::kFloat32, &ss).ok());
  CHECK(ss.abandoned == Abandon::kNone && ss.chunks_sent == 3 && ss.end_sent == 3);
  CHECK(count_kind(*rec, Kind::kData) == 3 && count_kind(*rec, Kind::kEnd) == 3);
}

TEST_CASE("cancel: step 0 is not abandoned by default; abandon(0) abandons it; abandon(max) saturates") {
  auto rec = std::make_shared<Recorder>();
  auto tx = make_sender(sender_config(6), rec);
  std::vector<float> g(500, 1.0f);
  SendStats ss;
  CHECK(tx->send(0, g.data(), g.size(), DType::kFloat32, &ss).ok());  // the cluster's first step is 0
  CHECK(ss.abandoned == Abandon::kNone && ss.chunks_sent == 2 && ss.end_sent == 3);
  auto tx2 = make_sender(sender_config(7), rec);
  tx2->abandon(0);
  CHECK(tx2->send(0, g.data(), g.size(), DType::kFloat32, &ss).ok());
  CHECK(ss.abandoned == Abandon::kNewerStep && ss.chunks_sent == 0);
  CHECK(tx2->send(1, g.data(), g.size(), DType::kFloat32, &ss).ok());
  CHECK(ss.abandoned == Abandon::kNone && ss.chunks_sent == 2);
  tx2->abandon(~uint64_t{0});  // every step, no overflow to "nothing"
  CHECK(tx2->send(2, g.data(), g.size(), DType::kFloat32, &ss).ok());
  CHECK(ss.abandoned == Abandon::kNewerStep);
}

TEST_CASE("cancel: a send past its deadline is abandoned at the next batch") {
  auto rec = std::make_shared<Recorder>();
  rec->stall_at = 1;                       // the worker is descheduled inside the second batch...
  rec->stall = std::chrono::milliseconds(30);  // ...for longer than its 10 ms deadline
  SenderConfig sc = sender_config(3);
  sc.batch = 2;
  auto tx = make_sender(sc, rec);
  std::vector<float> g(352 * 20, 0.25f);
  SendStats ss;
  CHECK(tx->send(1, g.data(), g.size(), DType::kFloat32, 0.010, &ss).ok());
  CHECK(ss.abandoned == Abandon::kDeadline);
  CHECK_MSG(ss.chunks_sent == 4, std::to_string(ss.chunks_sent));
  CHECK(ss.end_sent == 0 && count_kind(*rec, Kind::kEnd) == 0);
  // bad deadlines are refused at the door
  CHECK(tx->send(2, g.data(), g.size(), DType::kFloat32, -1.0, &ss).code() == StatusCode::kInvalidArgument);
  CHECK(tx->send(2, g.data(), g.size(), DType::kFloat32, std::nan(""), &ss).code() == StatusCode::kInvalidArgument);
}

TEST_CASE("cancel: the receiver of an abandoned send gets no END and ends the step at its deadline") {
  auto ch = LoopbackChannel::create(1 << 16);
  ReceiverConfig rc;
  rc.job_id = 9;
  rc.ranks = {1};
  rc.mac = best();
  rc.keys = key_of(1);
  rc.d = 352 * 10;
  std::unique_ptr<GradientReceiver> rx;
  CHECK(GradientReceiver::create(rc, ch->make_source(), &rx).ok());
  SenderConfig sc = sender_config(1);
  sc.batch = 1;
  std::unique_ptr<GradientSender> tx;
  CHECK(GradientSender::create(sc, ch->make_sink(), &tx).ok());
  std::vector<float> g(rc.d, 3.0f);
  CHECK(rx->expect(1).ok());
  tx->abandon(1);
  SendStats ss;
  CHECK(tx->send(1, g.data(), g.size(), DType::kFloat32, &ss).ok());
  CHECK(ss.abandoned == Abandon::kNewerStep);
  CHECK(ch->wait_drained(10000));
  StepResult r;
  CHECK(rx->collect(1, 0.02, nullptr, &r).ok());
  CHECK(r.reason == EndReason::kDeadline);
  CHECK(r.workers[0].chunks_received == 0 && r.workers[0].end_markers == 0 && r.workers[0].chunks_sent == -1);
}

// ------------------------------------------------------------ END spacing ----

TEST_CASE("END: copies go out after all data, one per call, at least end_spacing apart") {
  auto rec = std::make_shared<Recorder>();
  SenderConfig sc = sender_config(4);
  sc.end_copies = 3;
  sc.end_spacing_s = 0.002;
  auto tx = make_sender(sc, rec);
  std::vector<float> g(352 * 9 + 5, 1.0f);
  SendStats ss;
  CHECK(tx->send(1, g.data(), g.size(), DType::kFloat32, &ss).ok());
  CHECK(ss.end_sent == 3 && ss.chunks_sent == 10 && ss.abandoned == Abandon::kNone);
  std::vector<std::size_t> end_calls;
  std::size_t last_data_call = 0;
  for (std::size_t i = 0; i < rec->calls.size(); ++i) {
    const Call& c = rec->calls[i];
    if (kind_of(c.datagrams[0]) == Kind::kEnd) {
      CHECK(c.datagrams.size() == 1);
      end_calls.push_back(i);
    } else {
      last_data_call = i;
    }
  }
  CHECK(end_calls.size() == 3);
  CHECK(!end_calls.empty() && end_calls[0] > last_data_call);
  for (std::size_t k = 1; k < end_calls.size(); ++k) {
    const auto gap = rec->calls[end_calls[k]].t - rec->calls[end_calls[k - 1]].t;
    CHECK(gap >= std::chrono::microseconds(2000));  // a lower bound: the wait never ends early
  }
  // identical bytes (same nonce), so the receiver counts the extra copies as replays
  CHECK(rec->calls[end_calls[0]].datagrams[0] == rec->calls[end_calls[2]].datagrams[0]);
}

namespace {
// Every datagram one send of rank 1 puts on the wire (d floats of `value`), in order.
std::vector<std::vector<uint8_t>> sent_datagrams(const SenderConfig& sc, uint64_t step, std::size_t d, float value) {
  auto rec = std::make_shared<Recorder>();
  auto tx = make_sender(sc, rec);
  std::vector<float> g(d, value);
  CHECK(tx->send(step, g.data(), d, DType::kFloat32, nullptr).ok());
  std::vector<std::vector<uint8_t>> flat;
  for (const Call& c : rec->calls)
    for (const auto& x : c.datagrams) flat.push_back(x);
  return flat;
}

// A reassembler for rank 1's d floats with the given grace bound.
std::unique_ptr<Reassembler> receiver_of_rank1(std::size_t d, double grace_s) {
  ReceiverConfig rc;
  rc.job_id = 9;
  rc.ranks = {1};
  rc.mac = best();
  rc.keys = key_of(1);
  rc.d = d;
  rc.grace_s = grace_s;
  std::unique_ptr<Reassembler> re;
  CHECK(Reassembler::create(rc, &re).ok());
  return re;
}
}  // namespace

TEST_CASE("END: when a tail drop takes the data's tail and the first END copy, a later copy ends the step") {
  // A tail drop: the last 3 DATA datagrams and the first END copy are lost
  // (the queue was full for that moment); the spaced copies arrive later.
  SenderConfig sc = sender_config(1);
  sc.end_spacing_s = 0.0005;
  const std::size_t d = 352 * 12;
  const auto flat = sent_datagrams(sc, 1, d, 4.0f);
  CHECK(flat.size() == 12 + 3);
  auto re = receiver_of_rank1(d, 0.004);
  const Clock::time_point t0 = Clock::now();
  CHECK(re->open(1, t0).ok());
  const Clock::time_point deadline = t0 + std::chrono::seconds(1);
  for (std::size_t i = 0; i < flat.size(); ++i) {
    if (i >= 9 && i <= 12) continue;  // the tail drop
    re->ingest(flat[i].data(), flat[i].size(), false, kOriginAny, nullptr, 0, t0 + std::chrono::microseconds(10 * i));
  }
  EndReason why;
  Clock::time_point wake;
  const Clock::time_point t_last = t0 + std::chrono::microseconds(10 * 14);
  CHECK(!re->check_end(deadline, t_last, &why, &wake));
  CHECK(wake == t0 + std::chrono::microseconds(10 * 13) + std::chrono::microseconds(4000));  // first copy seen + grace
  CHECK(re->check_end(deadline, wake, &why, &wake) && why == EndReason::kMarkers);
  StepResult r;
  CHECK(re->close(1, nullptr, why, t_last, &r).ok());
  CHECK(r.workers[0].chunks_received == 9 && r.workers[0].end_markers == 2 && r.workers[0].end_replays == 1);
}

TEST_CASE("END: a sender's final chunk is an end signal: with every END copy lost, the step ends at it + grace") {
  // Random loss took a middle chunk and all END copies; the final chunk
  // arrived. Before, the row waited for an END that never came (here: the
  // deadline); a single lost END copy cost the spacing to the next one.
  const std::size_t d = 352 * 8;
  const auto flat = sent_datagrams(sender_config(1), 1, d, 2.0f);
  CHECK(flat.size() == 8 + 3);
  auto re = receiver_of_rank1(d, 0.004);
  const Clock::time_point t0 = Clock::now();
  CHECK(re->open(1, t0).ok());
  const Clock::time_point deadline = t0 + std::chrono::seconds(1);
  EndReason why;
  Clock::time_point wake;
  for (std::size_t i = 0; i < 8; ++i) {
    if (i == 3) continue;  // lost
    const bool wake_now =
        re->ingest(flat[i].data(), flat[i].size(), false, kOriginAny, nullptr, 0, t0 + std::chrono::microseconds(10 * i));
    CHECK(wake_now == (i == 7));  // the final chunk asks the collector to re-check the end
    if (i < 7) {
      CHECK(!re->check_end(deadline, t0 + std::chrono::microseconds(10 * i), &why, &wake));
      CHECK(wake == deadline);  // not marked yet: only the deadline
    }
  }
  const Clock::time_point t_tail = t0 + std::chrono::microseconds(70);
  CHECK(!re->check_end(deadline, t_tail, &why, &wake));
  CHECK(wake == t_tail + std::chrono::microseconds(4000));  // final chunk + grace
  CHECK(re->check_end(deadline, wake, &why, &wake) && why == EndReason::kMarkers);
  StepResult r;
  CHECK(re->close(1, nullptr, why, wake, &r).ok());
  CHECK(r.workers[0].chunks_received == 7 && r.workers[0].end_markers == 0);

  // The first signal counts: END first, then the final chunk 300 us later
  // (reordered) measures a spread of 300 us, as DATA after END always did.
  const auto f2 = sent_datagrams(sender_config(1), 2, d, 2.0f);
  const Clock::time_point t1 = t0 + std::chrono::milliseconds(100);
  CHECK(re->open(2, t1).ok());
  for (std::size_t i = 0; i < 7; ++i)
    if (i != 3) re->ingest(f2[i].data(), f2[i].size(), false, kOriginAny, nullptr, 0, t1);
  re->ingest(f2[8].data(), f2[8].size(), false, kOriginAny, nullptr, 0, t1 + std::chrono::microseconds(100));  // END
  re->ingest(f2[7].data(), f2[7].size(), false, kOriginAny, nullptr, 0, t1 + std::chrono::microseconds(400));
  CHECK(!re->check_end(deadline + std::chrono::seconds(1), t1 + std::chrono::microseconds(400), &why, &wake));
  // step 1 measured no spread: the adaptive grace fell to grace_min (0.5 ms)
  CHECK(std::abs(re->grace() - ReceiverConfig().grace_min_s) < 1e-12);
  CHECK(wake == t1 + std::chrono::microseconds(100) + std::chrono::microseconds(500));  // from the END, the first
  CHECK(re->close(2, nullptr, EndReason::kMarkers, t1 + std::chrono::microseconds(600), &r).ok());
  CHECK(std::abs(r.spread_s - 300e-6) < 1e-7);
}

// ---------------------------------------------------------------- pacing ----

namespace {
// Drives a pacer like the sender does: batches of `batch` bytes, each waited
// for as the pacer says, and every wait overslept by `over(k)` seconds (a
// coarse timer or a descheduled thread). Returns the time the last batch left.
// Checks the burst bound at every send: bytes sent <= rate * t + burst + credit.
template <typename Over>
double drive(Pacer& p, std::size_t batches, std::size_t batch, Over over, double* worst_ahead) {
  double t = 0.0, sent = 0.0;
  p.start(t);
  *worst_ahead = -1e300;
  for (std::size_t k = 0; k < batches; ++k) {
    const double w = p.take(t, batch);
    if (w > 0.0) t += w + over(k);
    sent += double(batch);
    *worst_ahead = std::max(*worst_ahead, sent - p.rate() * t);
  }
  return t;
}
}  // namespace

TEST_CASE("pacing: with credit, time lost to oversleeping is caught up (achieved/target ~ 1); without, lost") {
  const double rate = 10e6, burst = 2944, credit = 32 * 1472;
  const std::size_t batch = 1472, batches = 2000;  // 2.9 MB: 0.29 s at the rate
  const double ideal = double(batch) * batches / rate;
  auto over = [](std::size_t k) { return 500e-6 + 1e-6 * double(k % 1000); };  // 0.5 to 1.5 ms each
  double ahead = 0.0;
  Pacer with;
  with.configure(rate, burst, credit);
  const double t_with = drive(with, batches, batch, over, &ahead);
  CHECK_MSG(with.forgiven_s() == 0.0, std::to_string(with.forgiven_s()));
  // behind by at most one oversleep at the end; never ahead by more than burst + credit
  CHECK_MSG(t_with <= ideal + 1.5e-3 + 1e-9, std::to_string(t_with) + " vs " + std::to_string(ideal));
  CHECK_MSG(ahead <= burst + credit + double(batch), std::to_string(ahead));
  const double ratio_with = (double(batch) * (batches - 1)) / t_with / rate;
  CHECK_MSG(ratio_with > 0.99, std::to_string(ratio_with));

  Pacer plain;  // a plain token bucket of the same depth: oversleeping beyond the bucket is forgiven
  plain.configure(rate, burst, burst);
  const double t_plain = drive(plain, batches, batch, over, &ahead);
  CHECK(plain.forgiven_s() > 0.1);
  const double ratio_plain = (double(batch) * (batches - 1)) / t_plain / rate;
  CHECK_MSG(ratio_plain < 0.9, std::to_string(ratio_plain));
  CHECK_MSG(ahead <= burst + double(batch), std::to_string(ahead));
}

TEST_CASE("pacing: a stall longer than the credit is forgiven beyond it; the catch-up burst stays bounded") {
  const double rate = 10e6, burst = 2944, credit = 16 * 1472;
  Pacer p;
  p.configure(rate, burst, credit);
  std::mt19937_64 rng(3);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  double t = 0.0, sent = 0.0, worst_ahead = -1e300, worst_behind = -1e300;
  p.start(t);
  for (int k = 0; k < 5000; ++k) {
    const double w = p.take(t, 1472);
    if (w > 0.0) t += w;
    // send, then sometimes a stall: 1% of the time up to 20 ms (beyond the 2.4 ms credit)
    sent += 1472;
    worst_ahead = std::max(worst_ahead, sent - rate * t);
    if (u(rng) < 0.01) t += 0.02 * u(rng);
    worst_behind = std::max(worst_behind, rate * t - sent);
  }
  CHECK(p.forgiven_s() > 0.0);
  CHECK_MSG(worst_ahead <= burst + 1472 + 1e-6, std::to_string(worst_ahead));
  // idle time between sends earns no credit: a new send starts with at most a full bucket
  p.start(t + 10.0);
  double w0 = p.take(t + 10.0, std::size_t(burst));
  CHECK(w0 == 0.0);
  double w1 = p.take(t + 10.0, 1472);
  CHECK_MSG(std::abs(w1 - 1472 / rate) < 1e-9, std::to_string(w1));
}

TEST_CASE("pacing: forgiven_s counts DATA lag only, never the END copies' spacing waits") {
  // One chunk leaves on schedule (the first batch never waits), then 2 END
  // copies each after a 0.3 s spacing wait, beyond the 0.1 s credit: the old
  // accounting charged ~0.4 s of that idle time as forgiven schedule. Nothing
  // is forgiven unless the sending thread stalls 100 ms between the start of
  // the send and its first batch.
  auto rec = std::make_shared<Recorder>();
  SenderConfig sc = sender_config(6);
  sc.rate = 1e6;
  sc.burst = 2 * 1472;
  sc.credit = 100000;  // 100 ms of the rate
  sc.end_copies = 3;
  sc.end_spacing_s = 0.3;
  auto tx = make_sender(sc, rec);
  std::vector<float> g(100, 2.0f);
  SendStats ss;
  CHECK(tx->send(1, g.data(), g.size(), DType::kFloat32, &ss).ok());
  CHECK(ss.chunks_sent == 1 && ss.end_sent == 3 && ss.abandoned == Abandon::kNone);
  CHECK(ss.paced_s >= 0.6);  // the two spacing waits happened (a lower bound)
  CHECK_MSG(ss.forgiven_s == 0.0, std::to_string(ss.forgiven_s));
  // A DATA stall beyond the credit is still counted: the sink stalls 0.3 s in
  // the first of two batches (one chunk per batch), 0.2 s beyond the credit.
  auto rec2 = std::make_shared<Recorder>();
  rec2->stall_at = 0;
  rec2->stall = std::chrono::milliseconds(300);
  SenderConfig sc2 = sc;
  sc2.batch = 1;
  sc2.end_spacing_s = 0.3;
  auto tx2 = make_sender(sc2, rec2);
  std::vector<float> g2(352 * 2, 2.0f);
  SendStats s2;
  CHECK(tx2->send(1, g2.data(), g2.size(), DType::kFloat32, &s2).ok());
  CHECK(s2.chunks_sent == 2 && s2.end_sent == 3);
  // lag at the 2nd batch >= 0.3 s minus the credit (0.1 s) minus one datagram's share (~1.5 ms)
  CHECK_MSG(s2.forgiven_s >= 0.19, std::to_string(s2.forgiven_s));
}

TEST_CASE("pacing: the sender reports its target and achieved rate; config errors at the door") {
  auto rec = std::make_shared<Recorder>();
  SenderConfig sc = sender_config(5);
  sc.rate = 50e6;
  auto tx = make_sender(sc, rec);
  std::vector<float> g(352 * 100, 1.0f);
  SendStats ss;
  CHECK(tx->send(1, g.data(), g.size(), DType::kFloat32, &ss).ok());
  CHECK(ss.target_rate == 50e6);
  CHECK(ss.chunks == 100 && ss.chunks_sent == 100 && ss.achieved_rate > 0.0 && ss.data_s > 0.0);
  std::unique_ptr<GradientSender> bad;
  SenderConfig b = sender_config(5);
  b.end_copies = 0;
  CHECK(GradientSender::create(b, std::unique_ptr<DatagramSink>(new RecordingSink(rec)), &bad).code() ==
        StatusCode::kInvalidArgument);
  b = sender_config(5);
  b.end_spacing_s = -1;
  CHECK(GradientSender::create(b, std::unique_ptr<DatagramSink>(new RecordingSink(rec)), &bad).code() ==
        StatusCode::kInvalidArgument);
  b = sender_config(5);
  b.rate = 1e6;
  b.burst = 5000;
  b.credit = 4000;
  CHECK(GradientSender::create(b, std::unique_ptr<DatagramSink>(new RecordingSink(rec)), &bad).code() ==
        StatusCode::kInvalidArgument);
}

// ------------------------------------------------------- adaptive grace ----

namespace {
std::vector<std::vector<uint8_t>> datagrams_of(uint32_t rank, uint64_t step, std::size_t d) {
  auto rec = std::make_shared<Recorder>();
  SenderConfig sc = sender_config(rank);
  sc.end_copies = 1;
  auto tx = make_sender(sc, rec);
  std::vector<float> g(d, float(step));
  CHECK(tx->send(step, g.data(), d, DType::kFloat32, nullptr).ok());
  std::vector<std::vector<uint8_t>> out;
  for (const Call& c : rec->calls)
    for (const auto& x : c.datagrams) out.push_back(x);
  return out;
}

Clock::time_point us(Clock::time_point t0, double micro) {
  return t0 + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double, std::micro>(micro));
}

// The grace check_end applies right now: the step with one chunk missing and
// END seen at `t_end` wakes at t_end + grace.
double grace_seen(Reassembler& re, Clock::time_point t_end) {
  EndReason why;
  Clock::time_point wake;
  re.check_end(t_end + std::chrono::hours(1), t_end, &why, &wake);
  return std::chrono::duration<double>(wake - t_end).count();
}
}  // namespace

TEST_CASE("grace: chosen from the measured arrival spread (data after END, late data), bounded by grace_s") {
  const std::size_t d = 352 * 6;
  ReceiverConfig rc;
  rc.job_id = 9;
  rc.ranks = {1};
  rc.mac = best();
  rc.keys = key_of(1);
  rc.d = d;
  rc.grace_s = 0.005;
  rc.grace_min_s = 0.0005;
  std::unique_ptr<Reassembler> re;
  CHECK(Reassembler::create(rc, &re).ok());
  CHECK(re->grace() == 0.005);  // nothing measured yet: the bound
  const Clock::time_point t0 = Clock::now();

  // step 1: chunk 5 arrives 300 us after the END marker (reordered)
  auto s1 = datagrams_of(1, 1, d);
  CHECK(s1.size() == 7);
  CHECK(re->open(1, t0).ok());
  for (int i = 0; i < 5; ++i) re->ingest(s1[i].data(), s1[i].size(), false, kOriginAny, nullptr, 0, us(t0, 10 * i));
  re->ingest(s1[6].data(), s1[6].size(), false, kOriginAny, nullptr, 0, us(t0, 100));  // END
  CHECK(std::abs(grace_seen(*re, us(t0, 100)) - 0.005) < 1e-6);
  re->ingest(s1[5].data(), s1[5].size(), false, kOriginAny, nullptr, 0, us(t0, 400));  // 300 us after END
  StepResult r;
  CHECK(re->close(1, nullptr, EndReason::kComplete, us(t0, 400), &r).ok());
  CHECK(r.grace_s == 0.005 && std::abs(r.spread_s - 300e-6) < 1e-7);
  CHECK_MSG(std::abs(re->grace() - (2 * 300e-6 + 0.0005)) < 1e-7, std::to_string(re->grace()));

  // step 2: chunk 4 lost, chunk 5 arrives only after the step closed (late, 2 ms after END)
  auto s2 = datagrams_of(1, 2, d);
  const Clock::time_point t1 = us(t0, 10000);
  CHECK(re->open(2, t1).ok());
  for (int i = 0; i < 4; ++i) re->ingest(s2[i].data(), s2[i].size(), false, kOriginAny, nullptr, 0, us(t1, 10 * i));
  re->ingest(s2[6].data(), s2[6].size(), false, kOriginAny, nullptr, 0, us(t1, 100));
  CHECK(std::abs(grace_seen(*re, us(t1, 100)) - 0.0011) < 1e-7);
  CHECK(re->close(2, nullptr, EndReason::kMarkers, us(t1, 1200), &r).ok());
  CHECK(r.workers[0].chunks_received == 4 && r.spread_s == 0.0);
  CHECK(std::abs(re->grace() - 0.0011) < 1e-7);  // the 300 us of step 1 is still in the window

  auto s3 = datagrams_of(1, 3, d);
  const Clock::time_point t2 = us(t1, 5000);
  CHECK(re->open(3, t2).ok());
  re->ingest(s2[5].data(), s2[5].size(), false, kOriginAny, nullptr, 0, us(t1, 2100));  // late: 2 ms after END
  for (auto& x : s3) re->ingest(x.data(), x.size(), false, kOriginAny, nullptr, 0, us(t2, 50));
  CHECK(re->close(3, nullptr, EndReason::kComplete, us(t2, 60), &r).ok());
  CHECK(r.workers[0].late == 1 && std::abs(r.spread_s - 0.002) < 1e-7);
  CHECK_MSG(std::abs(re->grace() - 0.0045) < 1e-7, std::to_string(re->grace()));  // 2 * 2 ms + 0.5 ms
  // a spread beyond the bound: grace_s caps it
  auto s4 = datagrams_of(1, 4, d);
  const Clock::time_point t3 = us(t2, 5000);
  CHECK(re->open(4, t3).ok());
  for (int i = 0; i < 5; ++i) re->ingest(s4[i].data(), s4[i].size(), false, kOriginAny, nullptr, 0, us(t3, 10));
  re->ingest(s4[6].data(), s4[6].size(), false, kOriginAny, nullptr, 0, us(t3, 20));
  re->ingest(s4[5].data(), s4[5].size(), false, kOriginAny, nullptr, 0, us(t3, 3020));  // 3 ms after END
  CHECK(re->close(4, nullptr, EndReason::kComplete, us(t3, 3030), &r).ok());
  CHECK_MSG(std::abs(re->grace() - 0.005) < 1e-7, std::to_string(re->grace()));

  // off: the constant
  rc.adaptive_grace = false;
  std::unique_ptr<Reassembler> fixed;
  CHECK(Reassembler::create(rc, &fixed).ok());
  CHECK(fixed->open(1, t0).ok());
  for (auto& x : s1) fixed->ingest(x.data(), x.size(), false, kOriginAny, nullptr, 0, us(t0, 10));
  CHECK(fixed->close(1, nullptr, EndReason::kComplete, us(t0, 20), &r).ok());
  CHECK(fixed->grace() == 0.005);
  // grace_min outside [0, grace] is refused
  rc.grace_min_s = 0.01;
  CHECK(Reassembler::create(rc, &fixed).code() == StatusCode::kInvalidArgument);
}

TEST_CASE("grace: spread stays small when END follows the data in order, so the grace falls to grace_min") {
  const std::size_t d = 352 * 4;
  ReceiverConfig rc;
  rc.job_id = 9;
  rc.ranks = {1, 2};
  rc.mac = best();
  auto k1 = key_of(1), k2 = key_of(2);
  rc.keys = k1;
  rc.keys.insert(rc.keys.end(), k2.begin(), k2.end());
  rc.d = d;
  std::unique_ptr<Reassembler> re;
  CHECK(Reassembler::create(rc, &re).ok());
  const Clock::time_point t0 = Clock::now();
  auto a = datagrams_of(1, 1, d), b = datagrams_of(2, 1, d);
  CHECK(re->open(1, t0).ok());
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (i == 2) continue;  // rank 1 lost a chunk (never arrives)
    re->ingest(a[i].data(), a[i].size(), false, kOriginAny, nullptr, 0, us(t0, 10 * i));
    re->ingest(b[i].data(), b[i].size(), false, kOriginAny, nullptr, 0, us(t0, 10 * i + 5));
  }
  StepResult r;
  CHECK(re->close(1, nullptr, EndReason::kMarkers, us(t0, 6000), &r).ok());
  CHECK(r.spread_s == 0.0 && r.grace_s == rc.grace_s);
  CHECK(re->grace() == rc.grace_min_s);
}

int main() { return check::run_all(); }
