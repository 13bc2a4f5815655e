// LossyMPI datagram protocol (engine/include/pyagg/transport.h): wire layout,
// chunking, loopback and UDP round trips, fill policies and exact statistics,
// and rejection of every malformed or forged datagram without a write outside
// the buffers.
#include <cstdio>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "check.h"
#include "transport_keys.h"
#include "pyagg/transport.h"
#include "transport/reassembler.h"

using namespace pyagg;
using namespace pyagg::transport;
using namespace pyagg::transport::testing;

namespace {

template <typename T>
std::vector<T> ramp(std::size_t d, double base) {
  std::vector<T> v(d);
  for (std::size_t i = 0; i < d; ++i) v[i] = T(base + 0.5 * double(i % 1000) - double(i / 1000));
  return v;
}

struct Setup {
  std::shared_ptr<LoopbackChannel> ch;
  std::unique_ptr<GradientReceiver> rx;
  std::vector<std::unique_ptr<GradientSender>> tx;
  ReceiverConfig rc;
};

// A receiver configuration for `ranks`, each with its test key (key_of), under `mac`.
ReceiverConfig keyed_config(uint32_t job, const std::vector<uint32_t>& ranks, MacAlgo mac, std::size_t d) {
  ReceiverConfig rc;
  rc.job_id = job;
  rc.ranks = ranks;
  rc.mac = mac;
  for (uint32_t r : ranks) {
    auto k = key_of(int(r));
    rc.keys.insert(rc.keys.end(), k.begin(), k.end());
  }
  rc.d = d;
  return rc;
}

Setup make(std::vector<uint32_t> ranks, std::size_t d, DType dt, FillPolicy fill, double drop = 0.0,
           MacAlgo mac = best(), std::size_t capacity = 1 << 20) {
  Setup s;
  s.ch = LoopbackChannel::create(capacity);
  s.rc = keyed_config(77, ranks, mac, d);
  s.rc.dtype = dt;
  s.rc.fill = fill;
  s.rc.drop_rate = drop;
  s.rc.seed = 5;
  s.rc.grace_s = 0.002;
  Status st = GradientReceiver::create(s.rc, s.ch->make_source(), &s.rx);
  CHECK_MSG(st.ok(), st.message());
  for (uint32_t r : ranks) {
    SenderConfig sc;
    sc.job_id = 77;
    sc.rank = r;
    sc.mac = mac;
    sc.key = key_of(int(r));
    sc.end_copies = 2;  // the accounting below counts two back-to-back END copies
    sc.end_spacing_s = 0.0;  // (spacing and copies: test_transport_tail.cpp)
    std::unique_ptr<GradientSender> t;
    st = GradientSender::create(sc, s.ch->make_sink(), &t);
    CHECK_MSG(st.ok(), st.message());
    s.tx.push_back(std::move(t));
  }
  return s;
}

// Every genuine datagram a sender would emit for (step, data).
std::vector<std::vector<uint8_t>> capture(uint32_t rank, uint64_t step, const void* data, std::size_t d, DType dt,
                                          uint32_t job = 77, MacAlgo mac = best()) {
  auto ch = LoopbackChannel::create(1 << 20);
  auto src = ch->make_source();
  SenderConfig sc;
  sc.job_id = job;
  sc.rank = rank;
  sc.mac = mac;
  sc.key = key_of(int(rank));
  sc.end_copies = 2;
  sc.end_spacing_s = 0.0;
  std::unique_ptr<GradientSender> t;
  CHECK(GradientSender::create(sc, ch->make_sink(), &t).ok());
  CHECK(t->send(step, data, d, dt, nullptr).ok());
  std::vector<std::vector<uint8_t>> out;
  std::vector<DatagramView> v;
  while (true) {
    CHECK(src->recv_batch(0, &v).ok());
    if (v.empty()) break;
    for (auto& x : v) out.emplace_back(x.data, x.data + x.len);
  }
  return out;
}

bool same_bits(const void* a, const void* b, std::size_t n) { return std::memcmp(a, b, n) == 0; }

}  // namespace

TEST_CASE("wire: header layout is the documented big-endian layout") {
  Header h;
  h.kind = Kind::kData;
  h.mac = MacAlgo::kAes256Gcm;
  h.dtype = 1;
  h.job_id = 0x01020304;
  h.rank = 0x0A0B0C0D;
  h.step = 0x0000112233445566ull;
  h.tensor_id = 0x7788;
  h.chunk_index = 0x99AABBCC;
  h.chunk_count = 0xDDEEFF00;
  h.payload_len = 1408;
  h.total_elems = 0x0102030405060708ull;
  uint8_t b[kHeaderSize];
  encode_header(h, b);
  const uint8_t expect[kHeaderSize] = {'L', 'M', 'P', 'I', 1, 1, 1, 1,  1, 2, 3, 4, 0x0A, 0x0B, 0x0C, 0x0D,
                                       0, 0, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0, 48,
                                       0x99, 0xAA, 0xBB, 0xCC, 0xDD, 0xEE, 0xFF, 0, 0, 0, 0x05, 0x80,
                                       1, 2, 3, 4, 5, 6, 7, 8};
  CHECK(std::memcmp(b, expect, kHeaderSize) == 0);
  Header g;
  CHECK(decode_header(b, &g));
  CHECK(g.step == h.step && g.rank == h.rank && g.chunk_index == h.chunk_index && g.total_elems == h.total_elems);
  uint8_t n[12];
  make_nonce(h, n);
  const uint8_t nexp[12] = {0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xAA, 0xBB, 0xCC};
  CHECK(std::memcmp(n, nexp, 12) == 0);
  b[4] = 2;
  CHECK(!decode_header(b, &g));
}

TEST_CASE("geometry: chunks fit one Ethernet frame") {
  Geometry g;
  CHECK(make_geometry(1, DType::kFloat32, 1472, &g).ok());
  CHECK(g.chunk_count == 1 && g.chunk_len(0) == 4);
  CHECK(make_geometry(1000, DType::kFloat32, 1472, &g).ok());
  CHECK(g.chunk_bytes == 1408 && g.chunk_elems == 352 && g.chunk_count == 3 && g.chunk_len(2) == (1000 - 704) * 4);
  CHECK(kOverhead + g.chunk_bytes <= 1472);
  CHECK(make_geometry(1000, DType::kFloat64, 1472, &g).ok());
  CHECK(g.chunk_elems == 176 && g.chunk_count == 6);
  CHECK(!make_geometry(0, DType::kFloat32, 1472, &g).ok());
  CHECK(!make_geometry(10, DType::kFloat32, 64, &g).ok());
  CHECK(make_geometry(10, DType::kFloat32, 9000, &g).ok());  // jumbo frames
}

TEST_CASE("loopback round trip: sizes and dtypes, bit-exact, exact stats") {
  for (DType dt : {DType::kFloat32, DType::kFloat64}) {
    for (std::size_t d : {std::size_t(1), std::size_t(352), std::size_t(353), std::size_t(1000), std::size_t(100003)}) {
      Setup s = make({1, 2, 3}, d, dt, FillPolicy::kNan);
      const std::size_t es = dtype_size(dt);
      std::vector<std::vector<uint8_t>> data;
      for (int w = 0; w < 3; ++w) {
        data.emplace_back(d * es);
        if (dt == DType::kFloat32) {
          auto v = ramp<float>(d, w + 1);
          std::memcpy(data.back().data(), v.data(), d * es);
        } else {
          auto v = ramp<double>(d, w + 1);
          std::memcpy(data.back().data(), v.data(), d * es);
        }
      }
      for (uint64_t step = 1; step <= 2; ++step) {
        CHECK(s.rx->expect(step).ok());
        for (int w = 0; w < 3; ++w) {
          SendStats ss;
          CHECK(s.tx[w]->send(step, data[w].data(), d, dt, &ss).ok());
          CHECK(ss.chunks == s.rx->geometry().chunk_count && ss.datagrams == ss.chunks + 2);
        }
        StepResult r;
        Status st = s.rx->collect(step, 5.0, nullptr, &r);
        CHECK_MSG(st.ok(), st.message());
        CHECK(r.reason == EndReason::kComplete);
        const uint8_t* buf = static_cast<const uint8_t*>(s.rx->buffer());
        for (int w = 0; w < 3; ++w) {
          CHECK(same_bits(buf + w * d * es, data[w].data(), d * es));
          const WorkerStats& ws = r.workers[w];
          CHECK(ws.complete && ws.chunks_received == ws.chunks_expected && ws.chunks_filled == 0);
          CHECK(ws.bytes_received == d * es && ws.duplicates == 0 && ws.rejected.total() == 0);
        }
      }
    }
  }
}

TEST_CASE("fill policies: injected loss, missing chunks filled, received chunks intact, stats exact") {
  const std::size_t d = 20000;
  for (FillPolicy fill : {FillPolicy::kNan, FillPolicy::kZero, FillPolicy::kRandom, FillPolicy::kLast}) {
    Setup s = make({4, 9}, d, DType::kFloat32, fill, 0.2);
    auto g1 = ramp<float>(d, 100);
    auto g2 = ramp<float>(d, -50);
    std::vector<float> prev(2 * d, 0.0f);
    for (uint64_t step = 10; step < 13; ++step) {
      CHECK(s.rx->expect(step).ok());
      CHECK(s.tx[0]->send(step, g1.data(), d, DType::kFloat32, nullptr).ok());
      CHECK(s.tx[1]->send(step, g2.data(), d, DType::kFloat32, nullptr).ok());
      StepResult r;
      CHECK(s.rx->collect(step, 2.0, nullptr, &r).ok());
      const Geometry& geo = s.rx->geometry();
      const float* buf = static_cast<const float*>(s.rx->buffer());
      for (int w = 0; w < 2; ++w) {
        const float* src = w == 0 ? g1.data() : g2.data();
        const WorkerStats& ws = r.workers[w];
        // every datagram (data + 2 END copies) was either dropped or accepted
        CHECK(ws.dropped + ws.chunks_received + ws.end_markers == geo.chunk_count + 2);
        CHECK(ws.chunks_received + ws.chunks_filled == geo.chunk_count);
        CHECK(ws.chunks_filled > 0 && ws.chunks_received > 0);
        std::size_t filled = 0;
        for (std::size_t c = 0; c < geo.chunk_count; ++c) {
          const std::size_t b = c * geo.chunk_elems, e = std::min(d, b + geo.chunk_elems);
          const float* row = buf + w * d;
          const bool intact = same_bits(row + b, src + b, (e - b) * 4);
          if (intact) continue;
          ++filled;
          for (std::size_t i = b; i < e; ++i) {
            if (fill == FillPolicy::kNan) CHECK(std::isnan(row[i]));
            if (fill == FillPolicy::kZero) CHECK(row[i] == 0.0f);
            if (fill == FillPolicy::kRandom) CHECK(std::isfinite(row[i]) && std::fabs(row[i]) < 10.0f);
            if (fill == FillPolicy::kLast) CHECK(row[i] == prev[w * d + i]);
          }
        }
        // `last` may refill a chunk with an identical previous value, the others never
        if (fill != FillPolicy::kLast) CHECK(filled == ws.chunks_filled);
        if (fill == FillPolicy::kLast) CHECK(filled <= ws.chunks_filled);
      }
      std::memcpy(prev.data(), buf, 2 * d * 4);
    }
  }
}

TEST_CASE("loss injection is reproducible from the seed") {
  const std::size_t d = 5000;
  auto g = ramp<float>(d, 1);
  std::vector<uint64_t> got;
  for (int rep = 0; rep < 2; ++rep) {
    Setup s = make({1}, d, DType::kFloat32, FillPolicy::kNan, 0.3);
    CHECK(s.rx->expect(3).ok());
    CHECK(s.tx[0]->send(3, g.data(), d, DType::kFloat32, nullptr).ok());
    StepResult r;
    CHECK(s.rx->collect(3, 1.0, nullptr, &r).ok());
    got.push_back(r.workers[0].chunks_received);
  }
  CHECK(got[0] == got[1]);
}

// Accounting: a rejection is charged to rank 1 only when rank 1's MAC verified
// (authentic but malformed / wrong step); everything else is unattributed.
TEST_CASE("hostile datagrams: all rejected and counted, no write, honest data intact") {
  const std::size_t d = 1000;  // 3 chunks
  const MacAlgo mac = best();
  if (mac == MacAlgo::kNone) {
    std::printf("  (skipped: no MAC in this build)\n");
    return;
  }
  Setup s = make({1, 2}, d, DType::kFloat32, FillPolicy::kNan);
  auto g1 = ramp<float>(d, 1), g2 = ramp<float>(d, 2);
  std::vector<float> evil(d, 1e30f);
  // genuine datagrams of rank 1, step 1 (for replay) and step 2
  auto old = capture(1, 1, g1.data(), d, DType::kFloat32);
  auto cur = capture(1, 2, g1.data(), d, DType::kFloat32);

  CHECK(s.rx->expect(1).ok());
  CHECK(s.tx[0]->send(1, g1.data(), d, DType::kFloat32, nullptr).ok());
  CHECK(s.tx[1]->send(1, g2.data(), d, DType::kFloat32, nullptr).ok());
  StepResult r;
  CHECK(s.rx->collect(1, 1.0, nullptr, &r).ok());
  CHECK(r.workers[0].complete && r.workers[1].complete);

  CHECK(s.rx->expect(2).ok());
  int expect_header = 0, expect_len = 0, expect_range = 0, expect_step = 0;
  int expect_unknown = 0, expect_unattr_len = 0, expect_unattr_hdr = 0, expect_unattr_mac = 0;
  // 1. forged MAC: a genuine current datagram with one payload bit flipped
  {
    auto f = cur[0];
    f[kHeaderSize + 5] ^= 0x01;
    s.ch->inject(f.data(), f.size());
    ++expect_unattr_mac;
    auto t = cur[1];
    t[t.size() - 1] ^= 0x80;  // tag bit
    s.ch->inject(t.data(), t.size());
    ++expect_unattr_mac;
  }
  // 2. rank 2's identity with rank 1's key (a worker forging another's datagrams)
  {
    Header h;
    h.kind = Kind::kData;
    h.mac = mac;
    h.job_id = 77;
    h.rank = 2;
    h.step = 2;
    h.chunk_index = 0;
    h.chunk_count = 3;
    h.total_elems = d;
    std::vector<uint8_t> dg;
    CHECK(seal_datagram(h, evil.data(), 1408, key_of(1).data(), &dg).ok());
    s.ch->inject(dg.data(), dg.size());
    ++expect_unattr_mac;  // not charged to rank 2 (innocent) nor rank 1 (unprovable)
  }
  // 3. replay of step 1 (the step before the open one): counted late, not written
  for (auto& o : old) s.ch->inject(o.data(), o.size());
  // 4. authentic (right key) but out-of-range chunk index / wrong lengths / other fields
  {
    Header h;
    h.kind = Kind::kData;
    h.mac = mac;
    h.job_id = 77;
    h.rank = 1;
    h.step = 2;
    h.chunk_count = 3;
    h.total_elems = d;
    std::vector<uint8_t> dg;
    h.chunk_index = 3;  // == count
    CHECK(seal_datagram(h, evil.data(), 1408, key_of(1).data(), &dg).ok());
    s.ch->inject(dg.data(), dg.size());
    h.chunk_index = 0xFFFFFFF0u;
    CHECK(seal_datagram(h, evil.data(), 1408, key_of(1).data(), &dg).ok());
    s.ch->inject(dg.data(), dg.size());
    expect_range += 2;
    h.chunk_index = 2;  // last chunk holds (1000-704)*4 = 1184 bytes, not 1408
    CHECK(seal_datagram(h, evil.data(), 1408, key_of(1).data(), &dg).ok());
    s.ch->inject(dg.data(), dg.size());
    h.chunk_index = 0;
    CHECK(seal_datagram(h, evil.data(), 1000, key_of(1).data(), &dg).ok());
    s.ch->inject(dg.data(), dg.size());
    expect_len += 2;
    Header b = h;
    b.total_elems = 1u << 30;  // claims a bigger gradient
    b.chunk_count = 762601;
    b.chunk_index = 500000;
    CHECK(seal_datagram(b, evil.data(), 1408, key_of(1).data(), &dg).ok());
    s.ch->inject(dg.data(), dg.size());
    b = h;
    b.job_id = 78;
    CHECK(seal_datagram(b, evil.data(), 1408, key_of(1).data(), &dg).ok());
    s.ch->inject(dg.data(), dg.size());
    b = h;
    b.mac = MacAlgo::kNone;  // downgrade attempt: verified under the configured MAC, fails
    CHECK(seal_datagram(b, evil.data(), 1408, nullptr, &dg).ok());
    s.ch->inject(dg.data(), dg.size());
    ++expect_unattr_mac;
    b = h;
    b.dtype = 1;
    CHECK(seal_datagram(b, evil.data(), 1408, key_of(1).data(), &dg).ok());
    s.ch->inject(dg.data(), dg.size());
    b = h;
    b.header_len = 52;
    CHECK(seal_datagram(b, evil.data(), 1408, key_of(1).data(), &dg).ok());
    s.ch->inject(dg.data(), dg.size());
    expect_header += 4;
    // payload_len field lying about the datagram size (changed after sealing: the MAC fails)
    CHECK(seal_datagram(h, evil.data(), 1408, key_of(1).data(), &dg).ok());
    dg[36] = 0xFF;
    dg[37] = 0xFF;
    s.ch->inject(dg.data(), dg.size());
    ++expect_unattr_mac;
    // future step and a very old step: authentic, wrong step
    b = h;
    b.step = 3;
    CHECK(seal_datagram(b, evil.data(), 1408, key_of(1).data(), &dg).ok());
    s.ch->inject(dg.data(), dg.size());
    b.step = 0;
    CHECK(seal_datagram(b, evil.data(), 1408, key_of(1).data(), &dg).ok());
    s.ch->inject(dg.data(), dg.size());
    expect_step += 2;
    // oversized: more than max_datagram (rejected on its length, before any MAC work)
    std::vector<float> big(5000, 3.0f);
    CHECK(seal_datagram(h, big.data(), 5000 * 4, key_of(1).data(), &dg).ok());
    s.ch->inject(dg.data(), dg.size());
    ++expect_unattr_len;
    // truncated genuine datagram: the tag is not where it was, the MAC fails
    auto tr = cur[0];
    tr.resize(tr.size() - 100);
    s.ch->inject(tr.data(), tr.size());
    ++expect_unattr_mac;
  }
  // 5. garbage, too short, unknown sender
  {
    std::mt19937 rng(1);
    for (int i = 0; i < 50; ++i) {
      std::vector<uint8_t> junk(1 + rng() % 1472);
      for (auto& x : junk) x = uint8_t(rng());
      s.ch->inject(junk.data(), junk.size());
      if (junk.size() < kOverhead) {
        ++expect_unattr_len;
      } else {
        ++expect_unattr_hdr;
      }
    }
    auto u = cur[0];
    u[12] = 0;
    u[13] = 0;
    u[14] = 0x10;
    u[15] = 0;  // rank 4096
    s.ch->inject(u.data(), u.size());
    ++expect_unknown;
  }
  // honest traffic of the step
  CHECK(s.tx[0]->send(2, g1.data(), d, DType::kFloat32, nullptr).ok());
  CHECK(s.tx[1]->send(2, g2.data(), d, DType::kFloat32, nullptr).ok());
  // and a replay of the current step's genuine datagram: a harmless duplicate
  s.ch->inject(cur[0].data(), cur[0].size());
  // collect() returns as soon as both rows are complete; let the receive thread drain the queue
  // first, so that the END copies and the replay queued behind the last chunks land in this step's
  // counters (a fixed sleep was not enough on a loaded CI machine)
  CHECK(s.ch->wait_drained(10000));
  CHECK(s.rx->collect(2, 1.0, nullptr, &r).ok());
  CHECK(r.reason == EndReason::kComplete);
  const float* buf = static_cast<const float*>(s.rx->buffer());
  CHECK(same_bits(buf, g1.data(), d * 4));
  CHECK(same_bits(buf + d, g2.data(), d * 4));
  const WorkerStats& w1 = r.workers[0];
  const WorkerStats& w2 = r.workers[1];
  CHECK_MSG(w1.rejected.bad_mac == 0, std::to_string(w1.rejected.bad_mac));
  CHECK_MSG(w2.rejected.total() == 0, std::to_string(w2.rejected.total()));  // rank 2 was impersonated: no blame
  CHECK_MSG(r.unattributed.bad_mac == uint64_t(expect_unattr_mac), std::to_string(r.unattributed.bad_mac));
  CHECK_MSG(w1.rejected.out_of_range == uint64_t(expect_range), std::to_string(w1.rejected.out_of_range));
  CHECK_MSG(w1.rejected.bad_length == uint64_t(expect_len), std::to_string(w1.rejected.bad_length));
  CHECK_MSG(w1.rejected.bad_header == uint64_t(expect_header), std::to_string(w1.rejected.bad_header));
  CHECK_MSG(w1.rejected.wrong_step == uint64_t(expect_step), std::to_string(w1.rejected.wrong_step));
  CHECK_MSG(w1.late == old.size() - 2, std::to_string(w1.late));  // DATA of the previous step
  // END replays: the 2 END copies of step 1 + the honest second END copy of step 2
  CHECK_MSG(w1.end_replays == 3 && w2.end_replays == 1, std::to_string(w1.end_replays));
  CHECK(w1.end_markers == 2);
  CHECK(w1.duplicates >= 1);
  CHECK(w1.chunks_received == 3 && w2.chunks_received == 3);
  CHECK_MSG(r.unattributed.unknown_sender == uint64_t(expect_unknown), std::to_string(r.unattributed.unknown_sender));
  CHECK_MSG(r.unattributed.bad_length == uint64_t(expect_unattr_len), std::to_string(r.unattributed.bad_length));
  CHECK_MSG(r.unattributed.bad_header == uint64_t(expect_unattr_hdr), std::to_string(r.unattributed.bad_header));
}

TEST_CASE("random bytes at any position never write outside and never crash") {
  if (best() == MacAlgo::kNone) {
    // Without a MAC a mutated payload byte is indistinguishable from data.
    std::printf("  SKIP: built without libsodium (PYAGG_WITH_SODIUM off): no MAC to reject mutated payloads\n");
    return;
  }
  const std::size_t d = 700;
  Setup s = make({1}, d, DType::kFloat32, FillPolicy::kZero);
  auto g = ramp<float>(d, 7);
  auto cur = capture(1, 1, g.data(), d, DType::kFloat32);
  std::mt19937 rng(3);
  CHECK(s.rx->expect(1).ok());
  for (int i = 0; i < 3000; ++i) {  // mutate genuine datagrams at random: each one must be rejected
    auto m = cur[rng() % cur.size()];
    const int flips = 1 + rng() % 4;
    for (int k = 0; k < flips; ++k) m[rng() % m.size()] ^= uint8_t(1 + rng() % 255);
    if (rng() % 4 == 0) m.resize(rng() % (m.size() + 1));
    s.ch->inject(m.data(), m.size());
  }
  StepResult r;
  CHECK(s.rx->collect(1, 0.3, nullptr, &r).ok());
  CHECK(r.workers[0].chunks_received == 0);  // nothing forged got in
  const float* buf = static_cast<const float*>(s.rx->buffer());
  for (std::size_t i = 0; i < d; ++i) CHECK(buf[i] == 0.0f);
  CHECK(r.workers[0].rejected.total() + r.unattributed.total() == 3000);
}

TEST_CASE("a sender that never sends costs one deadline, not a hang") {
  Setup s = make({1, 2}, 1000, DType::kFloat32, FillPolicy::kNan);
  auto g = ramp<float>(1000, 1);
  CHECK(s.rx->expect(1).ok());
  CHECK(s.tx[0]->send(1, g.data(), 1000, DType::kFloat32, nullptr).ok());
  StepResult r;
  auto t0 = std::chrono::steady_clock::now();
  CHECK(s.rx->collect(1, 0.25, nullptr, &r).ok());
  double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  CHECK_MSG(el >= 0.24 && el < 2.0, std::to_string(el));  // the deadline, not a hang (loose: loaded CI)
  CHECK(r.reason == EndReason::kDeadline);
  CHECK(r.workers[0].complete && !r.workers[1].complete && r.workers[1].chunks_filled == 3);
  // excluded from the wait (declared dead): the step ends as soon as the others are done
  const uint8_t wait[2] = {1, 0};
  CHECK(s.rx->expect(2).ok());
  CHECK(s.tx[0]->send(2, g.data(), 1000, DType::kFloat32, nullptr).ok());
  t0 = std::chrono::steady_clock::now();
  CHECK(s.rx->collect(2, 5.0, wait, &r).ok());
  el = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  CHECK_MSG(el < 2.5, std::to_string(el));  // well before the 5 s deadline
  CHECK(r.reason == EndReason::kComplete);
}

TEST_CASE("with loss the step ends at the END markers + grace, not at the deadline") {
  const std::size_t d = 50000;
  Setup s = make({1, 2, 3}, d, DType::kFloat32, FillPolicy::kNan, 0.05);
  auto g = ramp<float>(d, 1);
  for (uint64_t step = 1; step <= 3; ++step) {
    CHECK(s.rx->expect(step).ok());
    for (auto& t : s.tx) CHECK(t->send(step, g.data(), d, DType::kFloat32, nullptr).ok());
    StepResult r;
    auto t0 = std::chrono::steady_clock::now();
    CHECK(s.rx->collect(step, 10.0, nullptr, &r).ok());
    double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    // 0.05^2 chance per worker that both END copies drop: the seed makes this run deterministic
    CHECK_MSG(r.reason == EndReason::kMarkers, end_reason_name(r.reason));
    CHECK_MSG(el < 5.0, std::to_string(el));  // well before the 10 s deadline
    for (auto& w : r.workers) CHECK(w.chunks_sent == int64_t(w.chunks_expected));
  }
}

TEST_CASE("steps must increase on both ends; bad configs are refused with a message") {
  Setup s = make({1}, 10, DType::kFloat32, FillPolicy::kNan);
  std::vector<float> g(10, 1.0f);
  CHECK(s.tx[0]->send(5, g.data(), 10, DType::kFloat32, nullptr).ok());
  Status st = s.tx[0]->send(5, g.data(), 10, DType::kFloat32, nullptr);
  CHECK(!st.ok() && st.code() == StatusCode::kInvalidArgument);
  CHECK(s.rx->expect(5).ok());
  CHECK(!s.rx->expect(4).ok());
  StepResult r;
  CHECK(!s.rx->collect(6, 1.0, nullptr, &r).ok());
  CHECK(!s.rx->collect(5, -1.0, nullptr, &r).ok());

  ReceiverConfig rc;
  rc.d = 10;
  std::unique_ptr<GradientReceiver> rx;
  auto ch = LoopbackChannel::create(16);
  CHECK(!GradientReceiver::create(rc, ch->make_source(), &rx).ok());  // no ranks
  rc.ranks = {1, 1};
  CHECK(!GradientReceiver::create(rc, ch->make_source(), &rx).ok());  // duplicate
  rc.ranks = {1};
  rc.mac = best();
  if (rc.mac != MacAlgo::kNone) {
    rc.keys.assign(31, 0);
    st = GradientReceiver::create(rc, ch->make_source(), &rx);
    CHECK_MSG(!st.ok() && st.message().find("32 bytes") != std::string::npos, st.message());
  }
  MacAlgo m;
  CHECK(!parse_mac("md5", &m).ok());
  FillPolicy f;
  CHECK(!parse_fill("mean", &f).ok());
}

TEST_CASE("UDP on 127.0.0.1: 250k floats, two senders, authenticated, complete") {
  const std::size_t d = 250003;  // 1 MB each: fits the socket buffer even without root (rmem_max)
  ReceiverConfig rc = keyed_config(9, {1, 2}, best(), d);
  UdpSourceOptions uo;
  UdpSourceInfo info;
  std::unique_ptr<GradientReceiver> rx;
  Status st = make_udp_receiver(rc, uo, &rx, &info);
  CHECK_MSG(st.ok(), st.message());
  if (!st.ok()) return;
  CHECK(info.port > 0 && info.rcvbuf_granted > 0);
  std::vector<std::unique_ptr<GradientSender>> tx;
  for (int r : {1, 2}) {
    SenderConfig sc;
    sc.job_id = 9;
    sc.rank = uint32_t(r);
    sc.mac = rc.mac;
    sc.key = key_of(r);
    sc.rate = 200e6;  // paced: two senders share the loopback without overflowing the socket buffer
    UdpSinkOptions so;
    so.port = info.port;
    std::unique_ptr<GradientSender> t;
    st = make_udp_sender(sc, so, &t);
    CHECK_MSG(st.ok(), st.message());
    tx.push_back(std::move(t));
  }
  auto g1 = ramp<float>(d, 1), g2 = ramp<float>(d, 2);
  for (uint64_t step = 1; step <= 2; ++step) {
    CHECK(rx->expect(step).ok());
    std::thread th([&] { CHECK(tx[1]->send(step, g2.data(), d, DType::kFloat32, nullptr).ok()); });
    SendStats ss;
    CHECK(tx[0]->send(step, g1.data(), d, DType::kFloat32, &ss).ok());
    th.join();
    StepResult r;
    CHECK(rx->collect(step, 5.0, nullptr, &r).ok());
    CHECK_MSG(r.reason == EndReason::kComplete, std::string(end_reason_name(r.reason)) + " received " +
                                                    std::to_string(r.workers[0].chunks_received) + "," +
                                                    std::to_string(r.workers[1].chunks_received));
    const float* buf = static_cast<const float*>(rx->buffer());
    CHECK(same_bits(buf, g1.data(), d * 4));
    CHECK(same_bits(buf + d, g2.data(), d * 4));
  }
}

TEST_CASE("UDP: garbage from a raw socket is counted, not fatal") {
  ReceiverConfig rc;
  rc.ranks = {1};
  rc.mac = best();
  auto k = key_of(1);
  rc.keys = k;
  rc.d = 100;
  std::unique_ptr<GradientReceiver> rx;
  UdpSourceInfo info;
  CHECK(make_udp_receiver(rc, UdpSourceOptions(), &rx, &info).ok());
  if (!rx) return;
  CHECK(rx->expect(1).ok());
  int fd = ::socket(AF_INET, SOCK_DGRAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(uint16_t(info.port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::vector<uint8_t> junk(60000, 0xAB);
  for (std::size_t len : {std::size_t(0), std::size_t(1), std::size_t(63), std::size_t(64), std::size_t(1500),
                          std::size_t(60000)}) {
    ::sendto(fd, junk.data(), len, 0, reinterpret_cast<sockaddr*>(&a), sizeof(a));
  }
  ::close(fd);
  StepResult r;
  CHECK(rx->collect(1, 0.2, nullptr, &r).ok());
  CHECK_MSG(r.unattributed.total() == 6, std::to_string(r.unattributed.total()));
  CHECK(r.workers[0].chunks_received == 0);
}

// ---------------------------------------------------------------------------
// Accounting, isolation, registration, key agreement, shutdown, fill export.

TEST_CASE("accounting: forged datagrams claiming rank 1 never touch rank 1's counters") {
  const MacAlgo mac = best();
  if (mac == MacAlgo::kNone) {
    std::printf("  (skipped: no MAC in this build)\n");
    return;
  }
  const std::size_t d = 1000;
  Setup s = make({1, 2}, d, DType::kFloat32, FillPolicy::kNan);
  auto g1 = ramp<float>(d, 1), g2 = ramp<float>(d, 2);
  auto cur = capture(1, 1, g1.data(), d, DType::kFloat32);
  CHECK(s.rx->expect(1).ok());
  std::vector<float> evil(d, 9.0f);
  Header h;
  h.kind = Kind::kData;
  h.mac = mac;
  h.job_id = 77;
  h.rank = 1;
  h.step = 1;
  h.chunk_count = 3;
  h.total_elems = d;
  std::vector<uint8_t> dg;
  uint64_t forged_mac = 0, forged_len = 0;
  for (int i = 0; i < 20; ++i) {  // claims rank 1, sealed under another key
    h.chunk_index = uint32_t(i % 3);
    CHECK(seal_datagram(h, evil.data(), h.chunk_index == 2 ? 1184 : 1408, key_of(9).data(), &dg).ok());
    s.ch->inject(dg.data(), dg.size());
    ++forged_mac;
  }
  h.chunk_index = 7;  // out of range, forged: not rank 1's fault
  CHECK(seal_datagram(h, evil.data(), 1408, key_of(9).data(), &dg).ok());
  s.ch->inject(dg.data(), dg.size());
  ++forged_mac;
  h.job_id = 78;  // wrong job, forged
  CHECK(seal_datagram(h, evil.data(), 1408, key_of(9).data(), &dg).ok());
  s.ch->inject(dg.data(), dg.size());
  ++forged_mac;
  auto sh = cur[0];
  sh.resize(kOverhead - 1);  // too short
  s.ch->inject(sh.data(), sh.size());
  ++forged_len;
  CHECK(s.tx[0]->send(1, g1.data(), d, DType::kFloat32, nullptr).ok());
  CHECK(s.tx[1]->send(1, g2.data(), d, DType::kFloat32, nullptr).ok());
  StepResult r;
  CHECK(s.rx->collect(1, 1.0, nullptr, &r).ok());
  CHECK(r.reason == EndReason::kComplete);
  const WorkerStats& w1 = r.workers[0];
  CHECK_MSG(w1.rejected.total() == 0, std::to_string(w1.rejected.total()));
  CHECK(w1.chunks_received == 3 && w1.duplicates == 0 && w1.dropped == 0 && w1.late == 0);
  CHECK_MSG(r.unattributed.bad_mac == forged_mac, std::to_string(r.unattributed.bad_mac));
  CHECK_MSG(r.unattributed.bad_length == forged_len, std::to_string(r.unattributed.bad_length));
  CHECK(r.unattributed.out_of_range == 0 && r.unattributed.bad_header == 0);
  CHECK(same_bits(s.rx->buffer(), g1.data(), d * 4));
}

TEST_CASE("END replays: authentic END copies after the first and ENDs of older steps are counted") {
  const std::size_t d = 500;
  Setup s = make({1}, d, DType::kFloat32, FillPolicy::kNan);
  auto g = ramp<float>(d, 1);
  auto s1 = capture(1, 1, g.data(), d, DType::kFloat32);
  auto s2 = capture(1, 2, g.data(), d, DType::kFloat32);
  const auto& end1 = s1.back();
  const auto& end2 = s2.back();
  CHECK(s.rx->expect(2).ok());
  for (int i = 0; i < 3; ++i) s.ch->inject(end1.data(), end1.size());  // older step
  for (int i = 0; i < 4; ++i) s.ch->inject(end2.data(), end2.size());  // 1 genuine + 3 replays
  // the data last (FIFO): the step completes only after every END above was counted
  for (std::size_t i = 0; i + 2 < s2.size(); ++i) s.ch->inject(s2[i].data(), s2[i].size());
  StepResult r;
  CHECK(s.rx->collect(2, 1.0, nullptr, &r).ok());
  CHECK(r.workers[0].complete);
  CHECK_MSG(r.workers[0].end_replays == 6, std::to_string(r.workers[0].end_replays));
  CHECK(r.workers[0].end_markers == 4 && r.workers[0].rejected.total() == 0);
  // an END of the closed step arriving before the next expect(): a replay too
  s.ch->inject(end2.data(), end2.size());
  CHECK(s.ch->wait_drained(10000));
  CHECK(s.rx->expect(3).ok());
  CHECK(s.rx->collect(3, 0.05, nullptr, &r).ok());
  CHECK_MSG(r.workers[0].end_replays == 1, std::to_string(r.workers[0].end_replays));
}

TEST_CASE("loss injection runs after verification: forged traffic cannot steer which chunks drop") {
  const MacAlgo mac = best();
  if (mac == MacAlgo::kNone) {
    std::printf("  (skipped: no MAC in this build)\n");
    return;
  }
  const std::size_t d = 20000;
  auto g = ramp<float>(d, 3);
  std::vector<std::vector<uint8_t>> rows;
  std::vector<StepResult> results;
  for (int variant = 0; variant < 2; ++variant) {
    Setup s = make({1}, d, DType::kFloat32, FillPolicy::kNan, 0.3);
    CHECK(s.rx->expect(1).ok());
    if (variant == 1) {
      Header h;
      h.kind = Kind::kData;
      h.mac = mac;
      h.job_id = 77;
      h.rank = 1;
      h.step = 1;
      h.chunk_count = uint32_t(s.rx->geometry().chunk_count);
      h.total_elems = d;
      std::vector<float> evil(352, 5.0f);
      std::vector<uint8_t> dg;
      for (int i = 0; i < 500; ++i) {
        h.chunk_index = uint32_t(i % 50);
        CHECK(seal_datagram(h, evil.data(), 1408, key_of(4).data(), &dg).ok());
        s.ch->inject(dg.data(), dg.size());
      }
    }
    CHECK(s.tx[0]->send(1, g.data(), d, DType::kFloat32, nullptr).ok());
    StepResult r;
    CHECK(s.rx->collect(1, 2.0, nullptr, &r).ok());
    const uint8_t* b = static_cast<const uint8_t*>(s.rx->buffer());
    rows.emplace_back(b, b + d * 4);
    results.push_back(r);
  }
  CHECK(results[0].workers[0].dropped > 0);
  CHECK(results[0].workers[0].dropped == results[1].workers[0].dropped);
  CHECK(results[0].workers[0].chunks_received == results[1].workers[0].chunks_received);
  CHECK(rows[0] == rows[1]);  // the same chunks arrived (NaN elsewhere, bit-identical)
  CHECK(results[1].unattributed.bad_mac == 500 && results[1].workers[0].rejected.total() == 0);
}

namespace {
std::vector<uint8_t> v4addr(uint16_t port) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::vector<uint8_t> v(sizeof(a));
  std::memcpy(v.data(), &a, sizeof(a));
  return v;
}
std::vector<uint8_t> register_dg(uint32_t rank, uint64_t seq, MacAlgo mac, uint32_t job = 77) {
  Header h;
  h.kind = Kind::kRegister;
  h.mac = mac;
  h.job_id = job;
  h.rank = rank;
  h.step = seq;
  h.chunk_index = kRegisterChunkIndex;
  std::vector<uint8_t> dg;
  CHECK(seal_datagram(h, nullptr, 0, mac == MacAlgo::kNone ? nullptr : key_of(int(rank)).data(), &dg).ok());
  return dg;
}
}  // namespace

TEST_CASE("reassembler: isolation, registration, unknown source, source mismatch, stolen addresses") {
  const MacAlgo mac = best();
  if (mac == MacAlgo::kNone) {
    std::printf("  (skipped: no MAC in this build)\n");
    return;
  }
  const std::size_t d = 1000;
  ReceiverConfig rc = keyed_config(77, {1, 2}, mac, d);
  rc.isolate = true;
  std::unique_ptr<Reassembler> re;
  CHECK(Reassembler::create(rc, &re).ok());
  using C = Reassembler::Clock;
  const auto now = C::now();
  auto g = ramp<float>(d, 1);
  auto dat1 = capture(1, 1, g.data(), d, DType::kFloat32);
  auto dat2 = capture(2, 1, g.data(), d, DType::kFloat32);
  const auto a1 = v4addr(4001), a2 = v4addr(4002), evil = v4addr(6666);
  CHECK(re->open(1, now).ok());
  // DATA from an unregistered source: unknown_source, no MAC work
  for (auto& x : dat1) re->ingest(x.data(), x.size(), false, kOriginUnregistered, evil.data(), evil.size(), now);
  // registration of rank 1 from a1 (twice: a repeat) and rank 2 from a2
  auto reg1 = register_dg(1, 10, mac), reg2 = register_dg(2, 10, mac);
  re->ingest(reg1.data(), reg1.size(), false, kOriginUnregistered, a1.data(), a1.size(), now);
  re->ingest(reg1.data(), reg1.size(), false, kOriginUnregistered, a1.data(), a1.size(), now);
  CHECK(re->registration_epoch() == 1);
  // rank 2 tries to register rank 1's address: refused
  re->ingest(reg2.data(), reg2.size(), false, kOriginUnregistered, a1.data(), a1.size(), now);
  CHECK(re->registration_epoch() == 1);
  re->ingest(reg2.data(), reg2.size(), false, kOriginUnregistered, a2.data(), a2.size(), now);
  CHECK(re->registration_epoch() == 2);
  // forged REGISTER for rank 1 (wrong key) from the attacker: bad MAC, nothing changes
  {
    Header h;
    h.kind = Kind::kRegister;
    h.mac = mac;
    h.job_id = 77;
    h.rank = 1;
    h.step = 99;
    h.chunk_index = kRegisterChunkIndex;
    std::vector<uint8_t> f;
    CHECK(seal_datagram(h, nullptr, 0, key_of(2).data(), &f).ok());
    re->ingest(f.data(), f.size(), false, kOriginUnregistered, evil.data(), evil.size(), now);
  }
  // replay of rank 1's (stale) REGISTER from the attacker's address: refused
  re->ingest(reg1.data(), reg1.size(), false, kOriginUnregistered, evil.data(), evil.size(), now);
  std::vector<uint8_t> got;
  CHECK(re->registered_address(0, &got) && got == a1);
  CHECK(re->registered_address(1, &got) && got == a2);
  std::vector<Registration> regs;
  re->registrations(&regs);
  CHECK(regs.size() == 2 && regs[0].rank == 1 && regs[0].address == "127.0.0.1:4001" && regs[0].seq == 10);
  // rank 2's datagrams arriving on rank 1's socket: source mismatch; rank 1's on its own: accepted
  for (auto& x : dat2) re->ingest(x.data(), x.size(), false, 0, a1.data(), a1.size(), now);
  for (auto& x : dat1) re->ingest(x.data(), x.size(), false, 0, a1.data(), a1.size(), now);
  // with isolation, kOriginAny counts as unregistered
  re->ingest(dat2[0].data(), dat2[0].size(), false, kOriginAny, nullptr, 0, now);
  StepResult r;
  CHECK(re->close(1, nullptr, EndReason::kDeadline, now, &r).ok());
  CHECK_MSG(r.unattributed.unknown_source == dat1.size() + 1, std::to_string(r.unattributed.unknown_source));
  CHECK_MSG(r.unattributed.source_mismatch == dat2.size(), std::to_string(r.unattributed.source_mismatch));
  CHECK(r.unattributed.bad_mac == 1);
  CHECK(r.workers[0].complete && r.workers[0].rejected.total() == 0 && r.workers[1].rejected.total() == 0);
  CHECK(r.workers[0].registers == 2 && r.workers[0].register_refused == 1);
  CHECK(r.workers[1].registers == 1 && r.workers[1].register_refused == 1);
  // a fresh registration (higher sequence number) from a new address moves rank 1
  const auto a1b = v4addr(4003);
  auto reg1b = register_dg(1, 11, mac);
  re->ingest(reg1b.data(), reg1b.size(), false, kOriginUnregistered, a1b.data(), a1b.size(), now);
  CHECK(re->registration_epoch() == 3 && re->registered_address(0, &got) && got == a1b);
  // random bytes with random origins never crash (what the fuzzer does at scale)
  std::mt19937 rng(11);
  CHECK(re->open(2, now).ok());
  for (int i = 0; i < 5000; ++i) {
    auto m = dat1[rng() % dat1.size()];
    m[rng() % m.size()] ^= uint8_t(1 + rng() % 255);
    if (rng() % 3 == 0) m[5] = uint8_t(rng() % 5);
    re->ingest(m.data(), m.size(), rng() % 7 == 0, int(rng() % 6) - 3, a1.data(), a1.size(), now);
  }
  CHECK(re->close(2, nullptr, EndReason::kDeadline, now, &r).ok());
  CHECK(r.workers[0].chunks_received == 0);
  // (a mutation that restores the original byte leaves a genuine step-1 datagram: late / END replay)
  CHECK_MSG(r.unattributed.total() + r.workers[0].rejected.total() + r.workers[0].late + r.workers[0].end_replays ==
                5000,
            std::to_string(r.unattributed.total()) + " " + std::to_string(r.workers[0].rejected.total()));
}

TEST_CASE("shutdown wakes a blocked collect promptly with an I/O error") {
  Setup s = make({1}, 100, DType::kFloat32, FillPolicy::kNan);
  CHECK(s.rx->expect(1).ok());
  Status st;
  double el = 0;
  std::thread th([&] {
    StepResult r;
    auto t0 = std::chrono::steady_clock::now();
    st = s.rx->collect(1, 5.0, nullptr, &r);
    el = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  auto t1 = std::chrono::steady_clock::now();
  s.rx->shutdown();
  th.join();
  const double after = std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count();
  CHECK_MSG(st.code() == StatusCode::kIoError, st.message());
  // Woken by shutdown, long before its 5 s deadline (generous bounds: no timing claim, a loaded
  // machine must not fail it).
  CHECK_MSG(el < 4.0 && after < 3.0, std::to_string(el) + " " + std::to_string(after));
  CHECK(s.rx->expect(2).code() == StatusCode::kIoError);
  s.rx->shutdown();  // idempotent
  CHECK(s.rx->describe().find("closed") != std::string::npos);
}

TEST_CASE("key agreement: both sides derive the same per-rank key, bound to job and rank") {
  uint8_t spk[32], ssk[32], apk[32], ask[32], bpk[32], bsk[32];
  Status st = kx_keypair(spk, ssk);
  if (st.code() == StatusCode::kUnsupported) {
    std::printf("  (skipped: built without libsodium)\n");
    return;
  }
  CHECK(st.ok());
  CHECK(kx_keypair(apk, ask).ok() && kx_keypair(bpk, bsk).ok());
  uint8_t ks[32], kw[32], x[32], y[32];
  CHECK(kx_server_key(spk, ssk, apk, 7, 1, ks).ok());
  CHECK(kx_worker_key(apk, ask, spk, 7, 1, kw).ok());
  CHECK(std::memcmp(ks, kw, 32) == 0);
  CHECK(kx_server_key(spk, ssk, apk, 7, 2, x).ok());
  CHECK(std::memcmp(ks, x, 32) != 0);  // other rank
  CHECK(kx_server_key(spk, ssk, apk, 8, 1, x).ok());
  CHECK(std::memcmp(ks, x, 32) != 0);  // other job
  CHECK(kx_server_key(spk, ssk, bpk, 7, 2, x).ok());
  CHECK(kx_worker_key(bpk, bsk, spk, 7, 2, y).ok());
  CHECK(std::memcmp(x, y, 32) == 0 && std::memcmp(x, ks, 32) != 0);
  // worker b presents a's public key as rank 2: the server's key for it is not
  // anything b can compute with its own secret key
  uint8_t stolen[32];
  CHECK(kx_server_key(spk, ssk, apk, 7, 2, stolen).ok());
  CHECK(kx_worker_key(apk, bsk, spk, 7, 2, y).ok());  // a's pk with b's sk
  CHECK(std::memcmp(stolen, y, 32) != 0);
  CHECK(kx_worker_key(bpk, bsk, spk, 7, 2, y).ok());
  CHECK(std::memcmp(stolen, y, 32) != 0);
  // low-order public keys are refused
  uint8_t zero[32] = {0};
  CHECK(kx_server_key(spk, ssk, zero, 7, 1, x).code() == StatusCode::kInvalidArgument);
  CHECK(kx_worker_key(apk, ask, zero, 7, 1, x).code() == StatusCode::kInvalidArgument);
  CHECK(!kx_server_key(spk, ssk, nullptr, 7, 1, x).ok());
}

TEST_CASE("fill_chunks fills exactly what the receiver fills (nan, zero, random, last; f32, f64)") {
  const std::size_t d = 9000;
  for (DType dt : {DType::kFloat32, DType::kFloat64}) {
    for (FillPolicy fill : {FillPolicy::kNan, FillPolicy::kZero, FillPolicy::kRandom, FillPolicy::kLast}) {
      Setup s = make({3, 5}, d, dt, fill, 0.3);
      const Geometry& geo = s.rx->geometry();
      const std::size_t es = geo.elem_size;
      std::vector<uint8_t> prev(2 * d * es);
      for (uint64_t step = 1; step <= 2; ++step) {
        std::vector<std::vector<uint8_t>> data(2);
        CHECK(s.rx->expect(step).ok());
        for (int w = 0; w < 2; ++w) {
          if (dt == DType::kFloat32) {
            auto v = ramp<float>(d, 10.0 * step + w + 1);
            data[w].assign(reinterpret_cast<uint8_t*>(v.data()), reinterpret_cast<uint8_t*>(v.data()) + d * es);
          } else {
            auto v = ramp<double>(d, 10.0 * step + w + 1);
            data[w].assign(reinterpret_cast<uint8_t*>(v.data()), reinterpret_cast<uint8_t*>(v.data()) + d * es);
          }
          CHECK(s.tx[w]->send(step, data[w].data(), d, dt, nullptr).ok());
        }
        StepResult r;
        CHECK(s.rx->collect(step, 2.0, nullptr, &r).ok());
        const uint8_t* buf = static_cast<const uint8_t*>(s.rx->buffer());
        for (int w = 0; w < 2; ++w) {
          // received chunks are the ones equal to what was sent (the data differ per step)
          std::vector<uint8_t> mask((geo.chunk_count + 7) / 8, 0);
          std::vector<uint8_t> expect = prev;
          expect.resize(2 * d * es);
          std::vector<uint8_t> row(expect.begin() + w * d * es, expect.begin() + (w + 1) * d * es);
          std::size_t got = 0;
          for (std::size_t c = 0; c < geo.chunk_count; ++c) {
            const std::size_t off = c * geo.chunk_bytes, len = geo.chunk_len(c);
            if (std::memcmp(buf + w * d * es + off, data[w].data() + off, len) == 0) {
              mask[c / 8] |= uint8_t(1u << (c % 8));
              std::memcpy(row.data() + off, data[w].data() + off, len);
              ++got;
            }
          }
          CHECK(got == r.workers[w].chunks_received && got < geo.chunk_count);
          CHECK(fill_chunks(row.data(), geo, dt, fill, mask.data(), s.rc.seed, step, s.rc.ranks[w]).ok());
          CHECK_MSG(same_bits(row.data(), buf + w * d * es, d * es),
                    std::string(fill_name(fill)) + " " + dtype_name(dt));
        }
        std::memcpy(prev.data(), buf, 2 * d * es);
      }
    }
  }
  // argument checks
  Geometry g;
  CHECK(make_geometry(10, DType::kFloat32, 1472, &g).ok());
  std::vector<float> row(10, 1.0f);
  CHECK(fill_chunks(row.data(), g, DType::kFloat32, FillPolicy::kZero, nullptr, 0, 0, 0).ok() && row[9] == 0.0f);
  CHECK(!fill_chunks(row.data(), g, DType::kFloat64, FillPolicy::kZero, nullptr, 0, 0, 0).ok());
  Geometry bad = g;
  bad.chunk_count = 1000;
  CHECK(!fill_chunks(row.data(), bad, DType::kFloat32, FillPolicy::kZero, nullptr, 0, 0, 0).ok());
  CHECK(!fill_chunks(nullptr, g, DType::kFloat32, FillPolicy::kZero, nullptr, 0, 0, 0).ok());
}

namespace {
// Registers every sender with an isolating receiver (REGISTER until ready).
bool register_all(GradientReceiver* rx, std::vector<std::unique_ptr<GradientSender>>& tx) {
  for (int i = 0; i < 200; ++i) {
    for (auto& t : tx) CHECK(t->send_register().ok());
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    std::vector<Registration> regs;
    CHECK(rx->registrations(&regs).ok());
    std::size_t ready = 0;
    for (auto& g : regs) ready += g.ready;
    if (ready == tx.size()) return true;
  }
  return false;
}
}  // namespace

TEST_CASE("UDP isolation: a flood of forged datagrams from an unregistered source costs honest senders nothing") {
  const MacAlgo mac = best();
  if (mac == MacAlgo::kNone) {
    std::printf("  (skipped: no MAC in this build)\n");
    return;
  }
  const std::size_t d = 250003;
  ReceiverConfig rc = keyed_config(9, {1, 2}, mac, d);
  UdpSourceOptions uo;
  uo.isolate = true;
  UdpSourceInfo info;
  std::unique_ptr<GradientReceiver> rx;
  Status st = make_udp_receiver(rc, uo, &rx, &info);
  CHECK_MSG(st.ok(), st.message());
  if (!st.ok()) return;
  std::vector<std::unique_ptr<GradientSender>> tx;
  for (int r : {1, 2}) {
    SenderConfig sc;
    sc.job_id = 9;
    sc.rank = uint32_t(r);
    sc.mac = mac;
    sc.key = key_of(r);
    sc.rate = 200e6;
    UdpSinkOptions so;
    so.port = info.port;
    std::unique_ptr<GradientSender> t;
    CHECK(make_udp_sender(sc, so, &t).ok());
    tx.push_back(std::move(t));
  }
  CHECK(register_all(rx.get(), tx));
  std::vector<Registration> regs;
  CHECK(rx->registrations(&regs).ok() && regs.size() == 2);
  CHECK(regs[0].address.rfind("127.0.0.1:", 0) == 0);
  CHECK(rx->describe().find("2/2 workers attached") != std::string::npos);

  // The attacker: its own socket (unregistered address), forged DATA claiming rank 1.
  const int n_forged = 100000;
  std::atomic<bool> flood_done{false};
  std::atomic<uint64_t> cur_step{1};
  std::thread attacker([&] {
    int fd = ::socket(AF_INET, SOCK_DGRAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(uint16_t(info.port));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    Header h;
    h.kind = Kind::kData;
    h.mac = mac;
    h.job_id = 9;
    h.rank = 1;
    h.chunk_count = 711;
    h.total_elems = d;
    std::vector<float> evil(352, 1e30f);
    std::vector<uint8_t> dg;
    for (int i = 0; i < n_forged; ++i) {
      h.step = cur_step.load();
      h.chunk_index = uint32_t(i % 711);
      CHECK(seal_datagram(h, evil.data(), 1408, key_of(3).data(), &dg).ok());
      while (::sendto(fd, dg.data(), dg.size(), 0, reinterpret_cast<sockaddr*>(&a), sizeof(a)) < 0) {
        std::this_thread::yield();  // ENOBUFS: retry (the datagram must leave to be counted)
      }
    }
    ::close(fd);
    flood_done.store(true);
  });
  auto g1 = ramp<float>(d, 1), g2 = ramp<float>(d, 2);
  uint64_t unknown_source = 0, catch_drops = 0, other_unattr = 0, steps = 0;
  bool all_complete = true;
  for (uint64_t step = 1; step <= 200; ++step) {
    const bool last = flood_done.load();
    cur_step.store(step);
    CHECK(rx->expect(step).ok());
    std::thread th([&] { CHECK(tx[1]->send(step, g2.data(), d, DType::kFloat32, nullptr).ok()); });
    CHECK(tx[0]->send(step, g1.data(), d, DType::kFloat32, nullptr).ok());
    th.join();
    StepResult r;
    CHECK(rx->collect(step, 5.0, nullptr, &r).ok());
    ++steps;
    const bool ok = r.reason == EndReason::kComplete && r.workers[0].complete && r.workers[1].complete;
    all_complete = all_complete && ok;
    CHECK_MSG(ok, std::string(end_reason_name(r.reason)) + " " + std::to_string(r.workers[0].chunks_received) +
                      "," + std::to_string(r.workers[1].chunks_received) + " kdrop " +
                      std::to_string(r.workers[0].kernel_dropped) + "," + std::to_string(r.workers[1].kernel_dropped));
    const float* buf = static_cast<const float*>(rx->buffer());
    CHECK(same_bits(buf, g1.data(), d * 4));
    CHECK(same_bits(buf + d, g2.data(), d * 4));
    for (auto& w : r.workers) CHECK(w.rejected.total() == 0 && w.kernel_dropped == 0);
    unknown_source += r.unattributed.unknown_source;
    catch_drops += r.unattributed_kernel_dropped;
    other_unattr += r.unattributed.total() - r.unattributed.unknown_source;
    if (last && step >= 3) break;
  }
  attacker.join();
  // sweep what is still queued: empty steps until every forged datagram is accounted for (a loaded
  // machine may still hold some in the socket buffers; at most 5 s)
  for (uint64_t sweep = 1000; sweep < 1050 && unknown_source + catch_drops < uint64_t(n_forged); ++sweep) {
    StepResult r;
    CHECK(rx->expect(sweep).ok());
    CHECK(rx->collect(sweep, 0.1, nullptr, &r).ok());
    unknown_source += r.unattributed.unknown_source;
    catch_drops += r.unattributed_kernel_dropped;
  }
  std::printf("  %llu steps under flood; forged: %llu unknown_source + %llu catch-all kernel drops\n",
              (unsigned long long)steps, (unsigned long long)unknown_source, (unsigned long long)catch_drops);
  CHECK(all_complete);
  CHECK(other_unattr == 0);
  CHECK_MSG(unknown_source + catch_drops == uint64_t(n_forged),
            std::to_string(unknown_source) + " + " + std::to_string(catch_drops));
}

TEST_CASE("UDP isolation: refused unless the source isolates; unregistered senders' data is not accepted") {
  ReceiverConfig rc;
  rc.ranks = {1};
  rc.d = 100;
  rc.isolate = true;
  auto ch = LoopbackChannel::create(16);
  std::unique_ptr<GradientReceiver> rx;
  CHECK(GradientReceiver::create(rc, ch->make_source(), &rx).code() == StatusCode::kInvalidArgument);
  rc.mac = best();
  if (rc.mac != MacAlgo::kNone) rc.keys = key_of(1);
  UdpSourceOptions uo;
  UdpSourceInfo info;
  CHECK(make_udp_receiver(rc, uo, &rx, &info).ok());
  if (!rx) return;
  SenderConfig sc;
  sc.rank = 1;
  sc.mac = rc.mac;
  sc.key = key_of(1);
  UdpSinkOptions so;
  so.port = info.port;
  std::unique_ptr<GradientSender> t;
  CHECK(make_udp_sender(sc, so, &t).ok());
  std::vector<float> g(100, 2.0f);
  CHECK(rx->expect(1).ok());
  CHECK(t->send(1, g.data(), 100, DType::kFloat32, nullptr).ok());  // not registered yet
  StepResult r;
  CHECK(rx->collect(1, 0.1, nullptr, &r).ok());
  CHECK(r.workers[0].chunks_received == 0 && r.unattributed.unknown_source == 1 + uint64_t(sc.end_copies));  // 1 chunk + the END copies
  std::vector<std::unique_ptr<GradientSender>> tx;
  tx.push_back(std::move(t));
  CHECK(register_all(rx.get(), tx));
  CHECK(rx->expect(2).ok());
  CHECK(tx[0]->send(2, g.data(), 100, DType::kFloat32, nullptr).ok());
  CHECK(rx->collect(2, 1.0, nullptr, &r).ok());
  CHECK(r.reason == EndReason::kComplete && r.workers[0].registers >= 1);
}

CHECK_MAIN()

// ------------------------------------------- MAC verification on several threads ----
namespace {

// A hostile mix for step 5 of ranks {1, 2}: every genuine datagram of both,
// duplicates, step-4 replays, payload and tag bit flips, a datagram claiming
// an unknown rank, truncated and oversized ones, shuffled by a fixed seed.
std::vector<std::vector<uint8_t>> hostile_mix(std::size_t d, uint32_t seed) {
  auto g1 = ramp<float>(d, 1), g2 = ramp<float>(d, 2);
  auto a = capture(1, 5, g1.data(), d, DType::kFloat32);
  auto b = capture(2, 5, g2.data(), d, DType::kFloat32);
  auto old = capture(1, 4, g2.data(), d, DType::kFloat32);
  std::vector<std::vector<uint8_t>> mix;
  std::mt19937 rng(seed);
  for (auto* v : {&a, &b}) {
    for (std::size_t i = 0; i < v->size(); ++i) {
      auto x = (*v)[i];
      mix.push_back(x);
      if (i % 5 == 0) mix.push_back(x);  // duplicate
      if (i % 3 == 0) {                  // payload bit flip
        x[kHeaderSize + (rng() % 8)] ^= uint8_t(1u << (rng() % 8));
        mix.push_back(x);
      }
      if (i % 4 == 1) {  // tag bit flip
        auto t = (*v)[i];
        t[t.size() - 1 - (rng() % kTagSize)] ^= 0x10;
        mix.push_back(t);
      }
    }
  }
  for (std::size_t i = 0; i < old.size(); i += 2) mix.push_back(old[i]);  // replays of step 4
  {
    auto u = a[0];  // unknown rank (rank field 9): rejected before any MAC work
    u[12] = 0;
    u[13] = 0;
    u[14] = 0;
    u[15] = 9;
    mix.push_back(u);
    mix.push_back(std::vector<uint8_t>(a[1].begin(), a[1].begin() + 30));  // shorter than a header
    auto big = a[2];
    big.resize(1600, 0xAB);  // longer than max_datagram
    mix.push_back(big);
  }
  std::shuffle(mix.begin(), mix.end(), rng);
  return mix;
}

void same_counts(const RejectCounts& x, const RejectCounts& y) {
  CHECK(x.bad_length == y.bad_length && x.bad_header == y.bad_header && x.out_of_range == y.out_of_range &&
        x.bad_mac == y.bad_mac && x.wrong_step == y.wrong_step && x.unknown_sender == y.unknown_sender &&
        x.unknown_source == y.unknown_source && x.source_mismatch == y.source_mismatch);
}

void same_result(const StepResult& x, const StepResult& y) {
  CHECK(x.reason == y.reason && x.datagrams == y.datagrams && x.workers.size() == y.workers.size());
  same_counts(x.unattributed, y.unattributed);
  for (std::size_t i = 0; i < x.workers.size() && i < y.workers.size(); ++i) {
    const WorkerStats &a = x.workers[i], &b = y.workers[i];
    CHECK(a.chunks_received == b.chunks_received && a.chunks_filled == b.chunks_filled &&
          a.duplicates == b.duplicates && a.late == b.late && a.end_markers == b.end_markers &&
          a.end_replays == b.end_replays && a.bytes_received == b.bytes_received && a.complete == b.complete);
    same_counts(a.rejected, b.rejected);
  }
}

// A source that hands out a prepared list of datagrams in one batch, then nothing.
class ListSource final : public DatagramSource {
 public:
  explicit ListSource(std::vector<std::vector<uint8_t>> dgs) : dgs_(std::move(dgs)) {}
  Status recv_batch(int timeout_ms, std::vector<DatagramView>* out) override {
    out->clear();
    if (go_.load() && !given_) {
      given_ = true;
      for (auto& x : dgs_) out->push_back({x.data(), x.size(), false, -2, nullptr, 0});
      return Status::Ok();
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(std::min(timeout_ms, 1)));
    return Status::Ok();
  }
  void wake() override {}
  std::string describe() const override { return "list"; }
  std::atomic<bool> go_{false};

 private:
  std::vector<std::vector<uint8_t>> dgs_;
  bool given_ = false;
};

}  // namespace

TEST_CASE("preverify: verdicts of a hostile mix; ingest with them = ingest alone (bits and every counter)") {
  const MacAlgo mac = best();
  if (mac == MacAlgo::kNone) {
    std::printf("  (skipped: no MAC in this build)\n");
    return;
  }
  const std::size_t d = 352 * 20 + 17;  // 21 chunks
  for (uint32_t seed : {1u, 2u, 3u}) {
    auto mix = hostile_mix(d, seed);
    ReceiverConfig rc = keyed_config(77, {1, 2}, mac, d);
    std::unique_ptr<Reassembler> plain, pre;
    CHECK(Reassembler::create(rc, &plain).ok());
    CHECK(Reassembler::create(rc, &pre).ok());
    const auto t0 = Reassembler::Clock::now();
    CHECK(plain->open(5, t0).ok());
    CHECK(pre->open(5, t0).ok());
    std::size_t ok = 0, bad = 0, unchecked = 0;
    std::vector<uint8_t> verdicts;
    for (auto& x : mix) verdicts.push_back(pre->preverify(x.data(), x.size(), false, kOriginAny));
    for (std::size_t i = 0; i < mix.size(); ++i) {
      auto& x = mix[i];
      ok += verdicts[i] == Reassembler::kMacOk;
      bad += verdicts[i] == Reassembler::kMacBad;
      unchecked += verdicts[i] == Reassembler::kMacUnchecked;
      plain->ingest(x.data(), x.size(), false, kOriginAny, nullptr, 0, t0);
      pre->ingest(x.data(), x.size(), false, kOriginAny, nullptr, 0, t0, verdicts[i]);
    }
    CHECK(unchecked == 3);  // unknown rank, too short, too long
    StepResult ra, rb;
    CHECK(plain->close(5, nullptr, EndReason::kComplete, t0, &ra).ok());
    CHECK(pre->close(5, nullptr, EndReason::kComplete, t0, &rb).ok());
    same_result(ra, rb);
    CHECK(rb.unattributed.bad_mac == bad && bad > 0);
    CHECK(rb.workers[0].complete && rb.workers[1].complete);
    CHECK(same_bits(plain->buffer(), pre->buffer(), 2 * d * sizeof(float)));
    auto g1 = ramp<float>(d, 1), g2 = ramp<float>(d, 2);
    CHECK(same_bits(pre->buffer(), g1.data(), d * sizeof(float)));
    CHECK(same_bits(static_cast<const uint8_t*>(pre->buffer()) + d * sizeof(float), g2.data(), d * sizeof(float)));
    CHECK(ok > 0);
  }
  // The verdict is what decides: an authentic datagram handed in as kMacBad is
  // rejected unattributed and writes nothing; preverify itself counts nothing.
  ReceiverConfig rc = keyed_config(77, {1, 2}, mac, d);
  std::unique_ptr<Reassembler> re;
  CHECK(Reassembler::create(rc, &re).ok());
  const auto t0 = Reassembler::Clock::now();
  CHECK(re->open(5, t0).ok());
  auto g1 = ramp<float>(d, 1);
  auto a = capture(1, 5, g1.data(), d, DType::kFloat32);
  CHECK(re->preverify(a[0].data(), a[0].size(), false, kOriginAny) == Reassembler::kMacOk);
  re->ingest(a[0].data(), a[0].size(), false, kOriginAny, nullptr, 0, t0, Reassembler::kMacBad);
  StepResult r;
  CHECK(re->close(5, nullptr, EndReason::kDeadline, t0, &r).ok());
  CHECK(r.unattributed.bad_mac == 1 && r.workers[0].chunks_received == 0 && r.datagrams == 1);
}

TEST_CASE("receiver: 1, 2 and 4 verifying threads give the same bits and counters; bad counts refused") {
  const MacAlgo mac = best();
  if (mac == MacAlgo::kNone) {
    std::printf("  (skipped: no MAC in this build)\n");
    return;
  }
  const std::size_t d = 352 * 30 + 3;
  auto mix = hostile_mix(d, 11);
  std::vector<StepResult> res;
  std::vector<std::vector<uint8_t>> bufs;
  for (int vt : {1, 2, 4}) {
    ReceiverConfig rc = keyed_config(77, {1, 2}, mac, d);
    rc.verify_threads = vt;
    auto* src = new ListSource(mix);
    std::unique_ptr<GradientReceiver> rx;
    Status st = GradientReceiver::create(rc, std::unique_ptr<DatagramSource>(src), &rx);
    CHECK_MSG(st.ok(), st.message());
    CHECK(rx->expect(5).ok());
    src->go_.store(true);
    StepResult r;
    CHECK(rx->collect(5, 5.0, nullptr, &r).ok());
    CHECK(r.reason == EndReason::kComplete);
    const uint8_t* b = static_cast<const uint8_t*>(rx->buffer());
    bufs.emplace_back(b, b + 2 * d * sizeof(float));
    res.push_back(r);
    rx->shutdown();
  }
  for (std::size_t i = 1; i < res.size(); ++i) {
    CHECK(bufs[i] == bufs[0]);
    CHECK(res[i].unattributed.bad_mac == res[0].unattributed.bad_mac && res[0].unattributed.bad_mac > 0);
    CHECK(res[i].workers[0].chunks_received == res[0].workers[0].chunks_received);
    CHECK(res[i].workers[1].duplicates == res[0].workers[1].duplicates);
  }
  auto g2 = ramp<float>(d, 2);
  CHECK(same_bits(bufs[2].data() + d * sizeof(float), g2.data(), d * sizeof(float)));
  for (int vt : {-1, 17}) {
    ReceiverConfig rc = keyed_config(77, {1, 2}, mac, d);
    rc.verify_threads = vt;
    std::unique_ptr<GradientReceiver> rx;
    Status st = GradientReceiver::create(rc, std::unique_ptr<DatagramSource>(new ListSource({})), &rx);
    CHECK(st.code() == StatusCode::kInvalidArgument);
    CHECK(st.message().find("verify_threads") != std::string::npos);
  }
}
