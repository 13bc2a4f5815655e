// LossyMPI datagram protocol (engine/include/pyagg/transport.h): wire layout,
// chunking, loopback and UDP round trips, fill policies and exact statistics,
// and rejection of every malformed or forged datagram without a write outside
// the buffers.
#include <cstdio>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "check.h"
#include "pyagg/transport.h"

using namespace pyagg;
using namespace pyagg::transport;

namespace {

std::vector<uint8_t> key_of(int seed) {
  std::vector<uint8_t> k(kKeySize);
  for (std::size_t i = 0; i < k.size(); ++i) k[i] = uint8_t(seed * 31 + i * 7 + 1);
  return k;
}

MacAlgo best() {
  MacAlgo m = MacAlgo::kNone;
  Status st = parse_mac("auto", &m);
  return st.ok() ? m : MacAlgo::kNone;
}

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

Setup make(std::vector<uint32_t> ranks, std::size_t d, DType dt, FillPolicy fill, double drop = 0.0,
           MacAlgo mac = best(), std::size_t capacity = 1 << 20) {
  Setup s;
  s.ch = LoopbackChannel::create(capacity);
  s.rc.job_id = 77;
  s.rc.ranks = ranks;
  s.rc.mac = mac;
  for (uint32_t r : ranks) {
    auto k = key_of(int(r));
    s.rc.keys.insert(s.rc.keys.end(), k.begin(), k.end());
  }
  s.rc.d = d;
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
  int expect_bad_mac = 0, expect_header = 0, expect_len = 0, expect_range = 0, expect_step = 0;
  int expect_unknown = 0, expect_unattr_len = 0, expect_unattr_hdr = 0;
  // 1. forged MAC: a genuine current datagram with one payload bit flipped
  {
    auto f = cur[0];
    f[kHeaderSize + 5] ^= 0x01;
    s.ch->inject(f.data(), f.size());
    ++expect_bad_mac;
    auto t = cur[1];
    t[t.size() - 1] ^= 0x80;  // tag bit
    s.ch->inject(t.data(), t.size());
    ++expect_bad_mac;
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
    b.mac = MacAlgo::kNone;  // downgrade attempt
    CHECK(seal_datagram(b, evil.data(), 1408, nullptr, &dg).ok());
    s.ch->inject(dg.data(), dg.size());
    b = h;
    b.dtype = 1;
    CHECK(seal_datagram(b, evil.data(), 1408, key_of(1).data(), &dg).ok());
    s.ch->inject(dg.data(), dg.size());
    b = h;
    b.header_len = 52;
    CHECK(seal_datagram(b, evil.data(), 1408, key_of(1).data(), &dg).ok());
    s.ch->inject(dg.data(), dg.size());
    expect_header += 5;
    // payload_len field lying about the datagram size
    CHECK(seal_datagram(h, evil.data(), 1408, key_of(1).data(), &dg).ok());
    dg[36] = 0xFF;
    dg[37] = 0xFF;
    s.ch->inject(dg.data(), dg.size());
    ++expect_len;
    // future step and a very old step: authentic, wrong step
    b = h;
    b.step = 3;
    CHECK(seal_datagram(b, evil.data(), 1408, key_of(1).data(), &dg).ok());
    s.ch->inject(dg.data(), dg.size());
    b.step = 0;
    CHECK(seal_datagram(b, evil.data(), 1408, key_of(1).data(), &dg).ok());
    s.ch->inject(dg.data(), dg.size());
    expect_step += 2;
    // oversized: more than max_datagram
    std::vector<float> big(5000, 3.0f);
    CHECK(seal_datagram(h, big.data(), 5000 * 4, key_of(1).data(), &dg).ok());
    s.ch->inject(dg.data(), dg.size());
    ++expect_len;
    // truncated genuine datagram
    auto tr = cur[0];
    tr.resize(tr.size() - 100);
    s.ch->inject(tr.data(), tr.size());
    ++expect_len;
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
  CHECK(s.rx->collect(2, 1.0, nullptr, &r).ok());
  CHECK(r.reason == EndReason::kComplete);
  const float* buf = static_cast<const float*>(s.rx->buffer());
  CHECK(same_bits(buf, g1.data(), d * 4));
  CHECK(same_bits(buf + d, g2.data(), d * 4));
  const WorkerStats& w1 = r.workers[0];
  const WorkerStats& w2 = r.workers[1];
  CHECK_MSG(w1.rejected.bad_mac == uint64_t(expect_bad_mac), std::to_string(w1.rejected.bad_mac));
  CHECK(w2.rejected.bad_mac == 1);
  CHECK_MSG(w1.rejected.out_of_range == uint64_t(expect_range), std::to_string(w1.rejected.out_of_range));
  CHECK_MSG(w1.rejected.bad_length == uint64_t(expect_len), std::to_string(w1.rejected.bad_length));
  CHECK_MSG(w1.rejected.bad_header == uint64_t(expect_header), std::to_string(w1.rejected.bad_header));
  CHECK_MSG(w1.rejected.wrong_step == uint64_t(expect_step), std::to_string(w1.rejected.wrong_step));
  CHECK_MSG(w1.late == old.size() - 2, std::to_string(w1.late));  // the 2 END copies of a closed step are ignored
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
  CHECK_MSG(el >= 0.24 && el < 1.0, std::to_string(el));
  CHECK(r.reason == EndReason::kDeadline);
  CHECK(r.workers[0].complete && !r.workers[1].complete && r.workers[1].chunks_filled == 3);
  // excluded from the wait (declared dead): the step ends as soon as the others are done
  const uint8_t wait[2] = {1, 0};
  CHECK(s.rx->expect(2).ok());
  CHECK(s.tx[0]->send(2, g.data(), 1000, DType::kFloat32, nullptr).ok());
  t0 = std::chrono::steady_clock::now();
  CHECK(s.rx->collect(2, 5.0, wait, &r).ok());
  el = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  CHECK_MSG(el < 0.5, std::to_string(el));
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
    CHECK_MSG(el < 1.0, std::to_string(el));
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
  ReceiverConfig rc;
  rc.job_id = 9;
  rc.ranks = {1, 2};
  rc.mac = best();
  for (int r : {1, 2}) {
    auto k = key_of(r);
    rc.keys.insert(rc.keys.end(), k.begin(), k.end());
  }
  rc.d = d;
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

CHECK_MAIN()
