// libFuzzer target for the LossyMPI receiver's datagram path: drives the
// thread-free state machine pyagg::transport::Reassembler (reassembler.h) with
// datagrams, step openings and closings taken from the fuzz input, and checks
// it against an independent model after every operation.
//
// ORACLE (abort on violation):
//  * A worker's row changes only through a datagram that is authentic for it:
//    the harness decides that on its own (own header parsing, MAC checked with
//    libsodium directly, never through the engine's Mac): the datagram claims
//    the row's rank, carries a tag that verifies under that rank's key, is a
//    DATA datagram of the open step whose every header field matches the
//    configuration, chunk index in range, payload length exact for that chunk,
//    and (isolation on) arrived on that rank's own socket. The buffer is
//    compared with the model after EVERY ingest() (the buffer is small).
//  * After close(): every chunk holds the first authentic payload for it;
//    chunks without one hold the fill (nan: every element NaN; zero: every
//    element 0; last: unchanged since open(); random: finite values);
//    chunks_received = distinct authentic chunks, duplicates = the other
//    authentic ones, chunks_filled/complete/expected consistent; datagrams =
//    every datagram of the statistics window.
//  * No rejection is charged to a rank (WorkerStats.rejected) for a datagram
//    that did not verify under that rank's key: rejected.total() of a rank is
//    at most the number of datagrams of the window that claim the rank and
//    verify under its key.
//  * check_end() says kComplete exactly when every waited row is complete.
//  * Between close() and the next open() the buffer does not change.
//
// INPUT: byte 0 = mac (%3: none / AES-256-GCM / ChaCha20-Poly1305), dtype (bit
// 2), fill (bits 3-4: nan/random/zero/last), isolation (bit 5); byte 1 = ranks
// (1 + %3 of {5, 0, 9}: row order differs from rank order); byte 2 = d (1 +
// %64); byte 3 = max_datagram (128 + 8 * (%4): several chunks of 56..88
// bytes). Step 1 is open at the start. Then records, op byte first:
//   op>>5 = 0..2  raw datagram: u16 BE length (<= 512) + bytes;
//                 origin = op&7 (7: -1 catch-all, 6: -2 any, else row index),
//                 source address = (op>>3)&3 (0: none, else a fake sockaddr_in)
//   op>>5 = 3     the same, flagged truncated
//   op>>5 = 4     open: step += 1 + (op&7); bit 4 set: retry the open step
//                 (must fail and change nothing)
//   op>>5 = 5     close the open step (wait mask op&7, 0 = nullptr = all);
//                 when none is open, close must fail and change nothing
//   op>>5 = 6     raw header+payload sealed by the harness: u8 key selector
//                 (row = %rows, 0xFF = no tag), u16 BE body length (<= 512),
//                 body; the tag is the AEAD over the body under that row's key
//                 and the nonce its header bytes give (libsodium directly)
//   op>>5 = 7     an honest DATA datagram via transport::seal_datagram: row =
//                 (op&3) % rows, u8 chunk (% count), step = open step
//                 (bit 2: the step before), payload bytes from the input
//                 (zero-padded); origin = the row's own (isolation) or -2.
//
// Seed corpus: run with PYAGG_FUZZ_WRITE_CORPUS=<dir> to write inputs made by
// the project's own sender (GradientSender over a LoopbackChannel, and
// send_register) for every configuration, then exit.
#include <sodium.h>

#include <arpa/inet.h>
#include <netinet/in.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "pyagg/transport.h"
#include "transport/reassembler.h"

using namespace pyagg;
using namespace pyagg::transport;

namespace {

constexpr uint32_t kJob = 77;
constexpr uint16_t kTensor = 0;
constexpr uint32_t kRankTable[3] = {5, 0, 9};
constexpr std::size_t kMaxRecord = 512;
bool g_verbose = false;  // PYAGG_FUZZ_VERBOSE=1: one line per close (reproducing a crash)

[[noreturn]] void fail(const char* what, long a = 0, long b = 0, long c = 0) {
  std::fprintf(stderr, "ORACLE VIOLATION: %s (%ld, %ld, %ld)\n", what, a, b, c);
  std::fflush(stderr);
  std::abort();
}
#define ORACLE(cond, ...) \
  do {                    \
    if (!(cond)) fail(__VA_ARGS__); \
  } while (0)

std::vector<uint8_t> key_of(uint32_t rank) {
  std::vector<uint8_t> k(kKeySize);
  for (std::size_t i = 0; i < k.size(); ++i) k[i] = uint8_t(rank * 37 + i * 11 + 3);
  return k;
}

// Independent big-endian readers (not the engine's decode_header).
uint16_t be16(const uint8_t* p) { return uint16_t((p[0] << 8) | p[1]); }
uint32_t be32(const uint8_t* p) { return (uint32_t(p[0]) << 24) | (uint32_t(p[1]) << 16) | (uint32_t(p[2]) << 8) | p[3]; }
uint64_t be64(const uint8_t* p) { return (uint64_t(be32(p)) << 32) | be32(p + 4); }

// The AEAD nonce from raw header bytes: step low 48 bits || tensor id || chunk index.
void nonce_of(const uint8_t* hdr, uint8_t* n12) {
  std::memcpy(n12, hdr + 18, 6);
  std::memcpy(n12 + 6, hdr + 24, 2);
  std::memcpy(n12 + 8, hdr + 28, 4);
}

// tag <- AEAD(empty plaintext, ad = body) under key (libsodium directly).
void tag_of(MacAlgo mac, const uint8_t* key, const uint8_t* body, std::size_t len, uint8_t* tag) {
  uint8_t nonce[12];
  nonce_of(body, nonce);
  unsigned long long tl = 0;
  static const uint8_t kEmpty[1] = {0};
  uint8_t none[1];
  switch (mac) {
    case MacAlgo::kAes256Gcm:
      crypto_aead_aes256gcm_encrypt_detached(none, tag, &tl, kEmpty, 0, body, len, nullptr, nonce, key);
      return;
    case MacAlgo::kChaCha20Poly1305:
      crypto_aead_chacha20poly1305_ietf_encrypt_detached(none, tag, &tl, kEmpty, 0, body, len, nullptr, nonce, key);
      return;
    case MacAlgo::kNone:
      std::memset(tag, 0, kTagSize);
      return;
  }
}

// Whether the last 16 bytes of d[0, len) are the tag of d[0, len-16) under key.
bool verifies(MacAlgo mac, const uint8_t* key, const uint8_t* d, std::size_t len) {
  if (len < kOverhead) return false;
  const std::size_t body = len - kTagSize;
  uint8_t nonce[12];
  nonce_of(d, nonce);
  static const uint8_t kEmpty[1] = {0};
  uint8_t none[1];
  switch (mac) {
    case MacAlgo::kAes256Gcm:
      return crypto_aead_aes256gcm_decrypt_detached(none, nullptr, kEmpty, 0, d + body, d, body, nonce, key) == 0;
    case MacAlgo::kChaCha20Poly1305:
      return crypto_aead_chacha20poly1305_ietf_decrypt_detached(none, nullptr, kEmpty, 0, d + body, d, body, nonce,
                                                                key) == 0;
    case MacAlgo::kNone: {
      uint8_t acc = 0;
      for (std::size_t i = 0; i < kTagSize; ++i) acc |= d[body + i];
      return acc == 0;
    }
  }
  return false;
}

struct Config {
  MacAlgo mac = MacAlgo::kNone;
  DType dtype = DType::kFloat32;
  FillPolicy fill = FillPolicy::kNan;
  bool isolate = false;
  std::size_t n = 1;
  std::size_t d = 1;
  std::size_t max_datagram = 128;
};

Config decode_config(const uint8_t* b) {
  static const MacAlgo macs[3] = {MacAlgo::kNone, MacAlgo::kAes256Gcm, MacAlgo::kChaCha20Poly1305};
  Config c;
  c.mac = macs[b[0] % 3];
  c.dtype = (b[0] & 4) ? DType::kFloat64 : DType::kFloat32;
  c.fill = static_cast<FillPolicy>((b[0] >> 3) & 3);
  c.isolate = (b[0] & 0x20) != 0;
  c.n = 1 + b[1] % 3;
  c.d = 1 + b[2] % 64;
  c.max_datagram = 128 + 8 * (b[3] % 4);
  return c;
}

// Fake sender addresses (sockaddr_in bytes) for the source-address argument.
std::vector<uint8_t> fake_addr(int which) {
  if (which == 0) return {};
  sockaddr_in a;
  std::memset(&a, 0, sizeof(a));
  a.sin_family = AF_INET;
  a.sin_port = htons(uint16_t(40000 + which));
  a.sin_addr.s_addr = htonl(0x0A000000u + uint32_t(which));
  std::vector<uint8_t> v(sizeof(a));
  std::memcpy(v.data(), &a, sizeof(a));
  return v;
}

class Harness {
 public:
  explicit Harness(const Config& c) : c_(c) {}

  bool init() {
    if (!mac_available(c_.mac)) return false;  // e.g. no AES-NI: nothing to test for this input
    ReceiverConfig rc;
    rc.job_id = kJob;
    rc.tensor_id = kTensor;
    for (std::size_t i = 0; i < c_.n; ++i) {
      rc.ranks.push_back(kRankTable[i]);
      auto k = key_of(kRankTable[i]);
      rc.keys.insert(rc.keys.end(), k.begin(), k.end());
      keys_.push_back(k);
    }
    rc.mac = c_.mac;
    rc.d = c_.d;
    rc.dtype = c_.dtype;
    rc.max_datagram = c_.max_datagram;
    rc.fill = c_.fill;
    rc.grace_s = 0.001;
    rc.drop_rate = 0.0;
    rc.seed = 1234;
    rc.isolate = c_.isolate;
    Status st = Reassembler::create(rc, &re_);
    if (!st.ok()) {
      std::fprintf(stderr, "create: %s\n", st.message().c_str());
      fail("Reassembler::create refused a valid configuration");
    }
    Status gs = make_geometry(c_.d, c_.dtype, c_.max_datagram, &g_);
    ORACLE(gs.ok(), "make_geometry");
    const Geometry& rg = re_->geometry();
    ORACLE(rg.chunk_count == g_.chunk_count && rg.chunk_bytes == g_.chunk_bytes && rg.total_bytes == g_.total_bytes,
           "geometry differs from make_geometry");
    ORACLE(re_->rows() == c_.n, "rows", long(re_->rows()), long(c_.n));
    model_.assign(c_.n * g_.total_bytes, 0);  // the buffer starts zeroed
    check_buffer("create");
    rows_.assign(c_.n, RowModel());
    reset_window();
    return true;
  }

  // ---------------------------------------------------------------- ops ----
  void open(uint64_t step) {
    check_buffer("before open");
    const bool expect_ok = !have_step_ || step > step_;
    Status st = re_->open(step, tick());
    ORACLE(st.ok() == expect_ok, "open(step) accepted/refused wrongly", long(step), long(step_), st.ok());
    if (!st.ok()) {
      check_buffer("after a refused open");
      return;
    }
    if (open_) reset_window();  // an abandoned step: its window is discarded
    open_ = true;
    have_step_ = true;
    step_ = step;
    for (RowModel& r : rows_) {
      r.have.assign(g_.chunk_count, 0);
      r.distinct = 0;
      r.accepted = 0;
    }
    snapshot_ = model_;  // "last": what the rows held before the step
    ORACLE(re_->is_open() && re_->open_step() == step, "open state");
  }

  void close(uint8_t mask_bits) {
    std::vector<uint8_t> mask(c_.n);
    for (std::size_t i = 0; i < c_.n; ++i) mask[i] = (mask_bits >> i) & 1;
    const uint8_t* wait = mask_bits == 0 ? nullptr : mask.data();
    StepResult res;
    if (!open_) {
      Status st = re_->close(step_, wait, EndReason::kDeadline, tick(), &res);
      ORACLE(!st.ok(), "close() of a step that is not open succeeded");
      check_buffer("after a refused close");
      return;
    }
    // check_end at the deadline: kComplete exactly when every waited row is complete.
    re_->set_wait(wait);
    {
      const auto now = tick();
      EndReason reason;
      Reassembler::Clock::time_point wake;
      const bool end = re_->check_end(now, now, &reason, &wake);
      std::size_t n_wait = 0, n_done = 0;
      for (std::size_t i = 0; i < c_.n; ++i) {
        if (wait != nullptr && !wait[i]) continue;
        ++n_wait;
        n_done += rows_[i].distinct == g_.chunk_count;
      }
      ORACLE(end, "check_end at the deadline did not end the step");
      if (n_wait == 0) {
        ORACLE(reason == EndReason::kNobody, "check_end: nobody waited but reason", int(reason));
      } else {
        ORACLE((reason == EndReason::kComplete) == (n_done == n_wait), "check_end kComplete vs model", int(reason),
               long(n_done), long(n_wait));
      }
    }
    Status st = re_->close(step_, wait, EndReason::kDeadline, tick(), &res);
    ORACLE(st.ok(), "close() of the open step failed");
    open_ = false;
    ORACLE(!re_->is_open(), "still open after close");
    ORACLE(res.step == step_, "StepResult.step", long(res.step), long(step_));
    ORACLE(res.workers.size() == c_.n, "StepResult.workers size");
    ORACLE(res.datagrams == window_datagrams_, "StepResult.datagrams != datagrams of the window",
           long(res.datagrams), long(window_datagrams_));
    const uint8_t* buf = re_->buffer();
    for (std::size_t i = 0; i < c_.n; ++i) {
      const RowModel& m = rows_[i];
      const WorkerStats& w = res.workers[i];
      ORACLE(w.rank == kRankTable[i], "WorkerStats.rank", long(i), long(w.rank));
      ORACLE(w.chunks_expected == g_.chunk_count, "chunks_expected", long(i));
      ORACLE(w.chunks_received == m.distinct, "chunks_received != distinct authentic chunks", long(i),
             long(w.chunks_received), long(m.distinct));
      ORACLE(w.chunks_filled == g_.chunk_count - m.distinct, "chunks_filled", long(i), long(w.chunks_filled));
      ORACLE(w.complete == (m.distinct == g_.chunk_count), "complete", long(i));
      ORACLE(w.duplicates == m.accepted - m.distinct, "duplicates != authentic repeats", long(i), long(w.duplicates),
             long(m.accepted - m.distinct));
      ORACLE(w.rejected.total() <= m.verified, "a rejection was charged to a rank for a datagram that did not verify "
             "under its key", long(i), long(w.rejected.total()), long(m.verified));
      ORACLE(w.rejected.unknown_sender == 0 && w.rejected.unknown_source == 0 && w.rejected.source_mismatch == 0,
             "unattributed-only reasons charged to a rank", long(i));
      ORACLE(w.waited == (wait == nullptr || wait[i] != 0), "waited flag", long(i));
      // Chunk by chunk.
      const uint8_t* row = buf + i * g_.total_bytes;
      const uint8_t* mrow = model_.data() + i * g_.total_bytes;
      for (std::size_t c = 0; c < g_.chunk_count; ++c) {
        const std::size_t off = c * g_.chunk_bytes, len = g_.chunk_len(c);
        if (m.have[c]) {
          ORACLE(std::memcmp(row + off, mrow + off, len) == 0, "received chunk != first authentic payload", long(i),
                 long(c));
          continue;
        }
        check_fill(row + off, snapshot_.data() + i * g_.total_bytes + off, len, i, c);
      }
    }
    if (g_verbose) {
      std::fprintf(stderr, "close step %llu: datagrams %llu;", (unsigned long long)step_,
                   (unsigned long long)res.datagrams);
      for (const WorkerStats& w : res.workers) {
        std::fprintf(stderr, " rank %u: %llu/%llu chunks, %llu dup, %llu late, %llu end, %llu rejected;", w.rank,
                     (unsigned long long)w.chunks_received, (unsigned long long)w.chunks_expected,
                     (unsigned long long)w.duplicates, (unsigned long long)w.late, (unsigned long long)w.end_markers,
                     (unsigned long long)w.rejected.total());
      }
      std::fprintf(stderr, " unattributed %llu\n", (unsigned long long)res.unattributed.total());
    }
    // The filled buffer becomes the model (random/nan bits as written).
    std::memcpy(model_.data(), buf, model_.size());
    reset_window();
  }

  // One datagram handed to ingest(); updates the model first.
  void ingest(const uint8_t* d, std::size_t len, bool truncated, int origin, int addr) {
    ++window_datagrams_;
    const std::vector<uint8_t> src = fake_addr(addr);
    int row_auth = -1;
    if (!truncated && len >= kOverhead && be32(d) == kMagic && d[4] == kVersion) {
      const uint32_t rank = be32(d + 12);
      for (std::size_t i = 0; i < c_.n; ++i) {
        if (kRankTable[i] != rank) continue;
        if (verifies(c_.mac, keys_[i].data(), d, len)) {
          ++rows_[i].verified;
          row_auth = int(i);
        }
      }
    }
    if (row_auth >= 0 && open_ && authentic_data(d, len, std::size_t(row_auth), origin)) {
      RowModel& m = rows_[std::size_t(row_auth)];
      const std::size_t c = be32(d + 28);
      ++m.accepted;
      if (!m.have[c]) {
        m.have[c] = 1;
        ++m.distinct;
        std::memcpy(model_.data() + std::size_t(row_auth) * g_.total_bytes + c * g_.chunk_bytes, d + kHeaderSize,
                    len - kOverhead);
      }
    }
    // Every other datagram goes through preverify() (what the receiver's verifying
    // threads do) and ingest() with its verdict; the rest through plain ingest().
    if (window_datagrams_ & 1) {
      const uint8_t v = re_->preverify(d, len, truncated, origin);
      ORACLE(v == Reassembler::kMacUnchecked || v == Reassembler::kMacOk || v == Reassembler::kMacBad,
             "preverify verdict", int(v));
      ORACLE(v != Reassembler::kMacOk || row_auth >= 0, "preverify said authentic, the reference MAC did not");
      ORACLE(v != Reassembler::kMacBad || row_auth < 0, "preverify said forged, the reference MAC verified");
      re_->ingest(d, len, truncated, origin, src.empty() ? nullptr : src.data(), src.size(), tick(), v);
    } else {
      re_->ingest(d, len, truncated, origin, src.empty() ? nullptr : src.data(), src.size(), tick());
    }
    check_buffer("after ingest");
  }

  void finish() { check_buffer("at the end"); }

  const Config& config() const { return c_; }
  const Geometry& geometry() const { return g_; }
  bool is_open() const { return open_; }
  uint64_t step() const { return step_; }
  const std::vector<uint8_t>& key(std::size_t row) const { return keys_[row]; }

 private:
  struct RowModel {
    std::vector<uint8_t> have;  // chunk received (authentic) in this step
    uint64_t distinct = 0;
    uint64_t accepted = 0;      // authentic DATA datagrams of the open step, repeats included
    uint64_t verified = 0;      // datagrams of the window claiming this rank that verify under its key
  };

  // Every field of an (already MAC-verified) datagram against the configuration.
  bool authentic_data(const uint8_t* d, std::size_t len, std::size_t row, int origin) const {
    if (len > c_.max_datagram) return false;
    if (c_.isolate && origin != int(row)) return false;
    const uint32_t idx = be32(d + 28);
    return d[5] == uint8_t(Kind::kData) && d[6] == uint8_t(c_.mac) && d[7] == uint8_t(c_.dtype) &&
           be32(d + 8) == kJob && be64(d + 16) == step_ && be16(d + 24) == kTensor && be16(d + 26) == kHeaderSize &&
           be32(d + 32) == g_.chunk_count && be64(d + 40) == g_.d && idx < g_.chunk_count &&
           be32(d + 36) == len - kOverhead && len - kOverhead == g_.chunk_len(idx);
  }

  void check_fill(const uint8_t* p, const uint8_t* before, std::size_t len, std::size_t row, std::size_t c) const {
    const bool f32 = c_.dtype == DType::kFloat32;
    const std::size_t es = f32 ? 4 : 8;
    for (std::size_t k = 0; k < len / es; ++k) {
      double v;
      if (f32) {
        float f;
        std::memcpy(&f, p + k * es, 4);
        v = f;
      } else {
        std::memcpy(&v, p + k * es, 8);
      }
      switch (c_.fill) {
        case FillPolicy::kNan:
          ORACLE(std::isnan(v), "nan fill: element not NaN", long(row), long(c), long(k));
          break;
        case FillPolicy::kZero:
          ORACLE(v == 0.0, "zero fill: element not 0", long(row), long(c), long(k));
          break;
        case FillPolicy::kRandom:
          ORACLE(std::isfinite(v), "random fill: element not finite", long(row), long(c), long(k));
          break;
        case FillPolicy::kLast:
          break;
      }
    }
    if (c_.fill == FillPolicy::kLast) {
      ORACLE(std::memcmp(p, before, len) == 0, "last fill: chunk changed during the step", long(row), long(c));
    }
  }

  void check_buffer(const char* when) const {
    if (std::memcmp(re_->buffer(), model_.data(), model_.size()) == 0) return;
    for (std::size_t i = 0; i < model_.size(); ++i) {
      if (re_->buffer()[i] != model_[i]) {
        std::fprintf(stderr, "buffer byte %zu (row %zu, chunk %zu) differs %s\n", i, i / g_.total_bytes,
                     (i % g_.total_bytes) / g_.chunk_bytes, when);
        break;
      }
    }
    fail("a row changed without an authentic datagram for it (buffer != model)");
  }

  void reset_window() {
    window_datagrams_ = 0;
    for (RowModel& r : rows_) r.verified = 0;
  }

  Reassembler::Clock::time_point tick() {
    t_ += std::chrono::microseconds(100);
    return Reassembler::Clock::time_point(t_);
  }

  Config c_;
  Geometry g_;
  std::unique_ptr<Reassembler> re_;
  std::vector<std::vector<uint8_t>> keys_;
  std::vector<RowModel> rows_;
  std::vector<uint8_t> model_;     // what the buffer must hold now
  std::vector<uint8_t> snapshot_;  // the buffer when the open step was opened
  bool open_ = false;
  bool have_step_ = false;
  uint64_t step_ = 0;
  uint64_t window_datagrams_ = 0;
  std::chrono::microseconds t_{1000000};
};

struct Reader {
  const uint8_t* p;
  std::size_t left;
  bool u8(uint8_t* v) {
    if (left < 1) return false;
    *v = *p++;
    --left;
    return true;
  }
  std::size_t take(std::size_t want, const uint8_t** out) {
    const std::size_t n = want < left ? want : left;
    *out = p;
    p += n;
    left -= n;
    return n;
  }
  std::size_t len16() {
    uint8_t a = 0, b = 0;
    if (!u8(&a) || !u8(&b)) return 0;
    return std::size_t((a << 8) | b) % (kMaxRecord + 1);
  }
};

int origin_of(uint8_t sel) { return sel == 7 ? kOriginUnregistered : sel == 6 ? kOriginAny : int(sel); }

// ------------------------------------------------------------ seed corpus ---
void put_record(std::vector<uint8_t>* in, uint8_t op, const std::vector<uint8_t>& dg) {
  in->push_back(op);
  in->push_back(uint8_t(dg.size() >> 8));
  in->push_back(uint8_t(dg.size()));
  in->insert(in->end(), dg.begin(), dg.end());
}

// Every datagram the project's sender emits for (rank, step, data) / a REGISTER.
std::vector<std::vector<uint8_t>> sender_datagrams(const Config& c, uint32_t rank, uint64_t step, const void* data,
                                                   bool reg) {
  auto ch = LoopbackChannel::create(1 << 16);
  auto src = ch->make_source();
  SenderConfig sc;
  sc.job_id = kJob;
  sc.rank = rank;
  sc.tensor_id = kTensor;
  sc.mac = c.mac;
  if (c.mac != MacAlgo::kNone) sc.key = key_of(rank);
  sc.max_datagram = c.max_datagram;
  std::unique_ptr<GradientSender> tx;
  Status st = GradientSender::create(sc, ch->make_sink(), &tx);
  if (!st.ok()) {
    std::fprintf(stderr, "GradientSender::create: %s\n", st.message().c_str());
    std::exit(1);
  }
  st = reg ? tx->send_register() : tx->send(step, data, c.d, c.dtype, nullptr);
  if (!st.ok()) {
    std::fprintf(stderr, "send: %s\n", st.message().c_str());
    std::exit(1);
  }
  std::vector<std::vector<uint8_t>> out;
  std::vector<DatagramView> v;
  while (true) {
    if (!src->recv_batch(0, &v).ok() || v.empty()) break;
    for (auto& x : v) out.emplace_back(x.data, x.data + x.len);
  }
  return out;
}

int write_corpus(const char* dir) {
  if (sodium_init() < 0) return 1;
  int files = 0;
  for (int mac = 0; mac < 3; ++mac) {
    for (int dt = 0; dt < 2; ++dt) {
      for (int fill = 0; fill < 4; ++fill) {
        for (int iso = 0; iso < 2; ++iso) {
          for (int n = 1; n <= 3; n += 2) {
            const uint8_t cfg[4] = {uint8_t(mac | (dt << 2) | (fill << 3) | (iso << 5)), uint8_t(n - 1),
                                    uint8_t(dt ? 36 : 40) /* d = 37 / 41 */, uint8_t((mac + fill) % 4)};
            const Config c = decode_config(cfg);
            if (!mac_available(c.mac)) continue;
            std::vector<uint8_t> in(cfg, cfg + 4);
            std::vector<double> g64(c.d);
            std::vector<float> g32(c.d);
            for (uint64_t step = 1; step <= 2; ++step) {
              if (step == 2) in.push_back(0x80);  // open step 2
              for (std::size_t i = 0; i < c.n; ++i) {
                for (std::size_t k = 0; k < c.d; ++k) {
                  g64[k] = double(step) * 100 + double(i) * 10 + 0.25 * double(k);
                  g32[k] = float(g64[k]);
                }
                const uint8_t origin = c.isolate ? uint8_t(i) : 6;
                if (c.isolate && step == 1) {  // a REGISTER on the catch-all, from fake address i+1
                  for (auto& dg : sender_datagrams(c, kRankTable[i], 0, nullptr, true)) {
                    put_record(&in, uint8_t(7 | ((i + 1) << 3)), dg);
                  }
                }
                auto dgs = sender_datagrams(c, kRankTable[i], step, dt ? (const void*)g64.data() : g32.data(), false);
                for (std::size_t j = 0; j < dgs.size(); ++j) {
                  if (step == 2 && i == 0 && j == 1) continue;  // a lost chunk: filled
                  put_record(&in, origin, dgs[j]);
                }
                if (step == 2 && i + 1 == c.n && !dgs.empty()) put_record(&in, origin, dgs[0]);  // a duplicate
              }
              in.push_back(0xA0);  // close (all)
            }
            char name[64];
            std::snprintf(name, sizeof(name), "%s/seed_m%d_t%d_f%d_i%d_n%d", dir, mac, dt, fill, iso, n);
            FILE* f = std::fopen(name, "wb");
            if (f == nullptr || std::fwrite(in.data(), 1, in.size(), f) != in.size()) {
              std::fprintf(stderr, "cannot write %s\n", name);
              return 1;
            }
            std::fclose(f);
            ++files;
          }
        }
      }
    }
  }
  std::fprintf(stderr, "wrote %d seed inputs to %s\n", files, dir);
  return 0;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int* argc, char*** argv) {
  if (sodium_init() < 0) {
    std::fprintf(stderr, "sodium_init failed\n");
    std::abort();
  }
  if (const char* dir = std::getenv("PYAGG_FUZZ_WRITE_CORPUS")) std::exit(write_corpus(dir));
  const char* v = std::getenv("PYAGG_FUZZ_VERBOSE");
  g_verbose = v != nullptr && v[0] != '\0' && v[0] != '0';
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  if (size < 4) return 0;
  Harness h(decode_config(data));
  if (!h.init()) return 0;
  h.open(1);
  Reader in{data + 4, size - 4};
  const Config& c = h.config();
  const Geometry& g = h.geometry();
  std::vector<uint8_t> dg;
  uint8_t op;
  while (in.u8(&op)) {
    const int kind = op >> 5;
    switch (kind) {
      case 0:
      case 1:
      case 2:
      case 3: {
        const std::size_t n = in.len16();
        const uint8_t* p;
        const std::size_t got = in.take(n, &p);
        dg.assign(p, p + got);  // own copy: ASan sees reads past the datagram
        h.ingest(dg.data(), dg.size(), kind == 3, origin_of(op & 7), (op >> 3) & 3);
        break;
      }
      case 4:
        if ((op & 0x10) && h.is_open()) {
          h.open(h.step());  // must be refused
        } else {
          h.open(h.step() + 1 + (op & 7));
        }
        break;
      case 5:
        h.close(op & 7);
        break;
      case 6: {
        uint8_t ksel = 0;
        if (!in.u8(&ksel)) break;
        const std::size_t n = in.len16();
        const uint8_t* p;
        const std::size_t got = in.take(n, &p);
        dg.assign(p, p + got);
        dg.resize(got + kTagSize, 0);
        if (ksel != 0xFF && got >= kHeaderSize) {
          tag_of(c.mac, h.key(ksel % c.n).data(), dg.data(), got, dg.data() + got);
        }
        h.ingest(dg.data(), dg.size(), false, origin_of(op & 7), (op >> 3) & 3);
        break;
      }
      case 7: {
        const std::size_t row = (op & 3) % c.n;
        uint8_t cs = 0;
        if (!in.u8(&cs)) break;
        const uint32_t chunk = uint32_t(cs % g.chunk_count);
        const std::size_t plen = g.chunk_len(chunk);
        const uint8_t* p;
        const std::size_t got = in.take(plen, &p);
        std::vector<uint8_t> payload(p, p + got);
        payload.resize(plen, 0);
        Header hd;
        hd.kind = Kind::kData;
        hd.mac = c.mac;
        hd.dtype = static_cast<uint8_t>(c.dtype);
        hd.job_id = kJob;
        hd.rank = kRankTable[row];
        hd.step = (op & 4) && h.step() > 0 ? h.step() - 1 : h.step();
        hd.tensor_id = kTensor;
        hd.chunk_index = chunk;
        hd.chunk_count = uint32_t(g.chunk_count);
        hd.total_elems = g.d;
        Status st = seal_datagram(hd, payload.data(), plen, c.mac == MacAlgo::kNone ? nullptr : h.key(row).data(), &dg);
        ORACLE(st.ok(), "seal_datagram failed");
        h.ingest(dg.data(), dg.size(), false, c.isolate ? int(row) : kOriginAny, 0);
        break;
      }
    }
  }
  h.finish();
  return 0;
}
