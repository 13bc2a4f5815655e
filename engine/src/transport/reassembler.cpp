// pyagg engine — LossyMPI reassembler: the receiver's state machine (see
// reassembler.h). Every datagram is validated completely before any write;
// rejections are charged to a rank only after its MAC verified.
#include "transport/reassembler.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <unordered_map>

#include "common/splitmix.h"
#include "transport/mac.h"

namespace pyagg {
namespace transport {

namespace {


double seconds(Reassembler::Clock::duration d) { return std::chrono::duration<double>(d).count(); }

// "host:port" of a sockaddr given as bytes; "" when it is not one.
std::string sockaddr_text(const std::vector<uint8_t>& a) {
  char buf[INET6_ADDRSTRLEN] = {0};
  if (a.size() >= sizeof(sockaddr_in)) {
    sockaddr_in v4;
    std::memcpy(&v4, a.data(), sizeof(v4));
    if (v4.sin_family == AF_INET) {
      inet_ntop(AF_INET, &v4.sin_addr, buf, sizeof(buf));
      return std::string(buf) + ":" + std::to_string(ntohs(v4.sin_port));
    }
  }
  if (a.size() >= sizeof(sockaddr_in6)) {
    sockaddr_in6 v6;
    std::memcpy(&v6, a.data(), sizeof(v6));
    if (v6.sin6_family == AF_INET6) {
      inet_ntop(AF_INET6, &v6.sin6_addr, buf, sizeof(buf));
      return "[" + std::string(buf) + "]:" + std::to_string(ntohs(v6.sin6_port));
    }
  }
  return std::string();
}

}  // namespace

struct Reassembler::Row {
  uint32_t rank = 0;
  Mac mac;
  std::vector<uint64_t> bitmap;  // bit c = chunk c received (little-endian words: byte c/8, bit c%8)
  uint64_t received = 0;
  bool end_seen = false;
  Clock::time_point end_time{};
  // The sender's final DATA chunk (index chunk_count - 1; a sender sends its
  // chunks in index order, then END): it ends the row's sending as an END
  // marker does, so a row whose END copies were lost but whose final chunk
  // arrived does not wait for a later copy.
  bool tail_seen = false;
  Clock::time_point tail_time{};
  bool signaled() const { return end_seen || tail_seen; }
  // The first end signal of the row (final chunk or END), when signaled().
  Clock::time_point signal_time() const {
    if (end_seen && tail_seen) return end_time < tail_time ? end_time : tail_time;
    return end_seen ? end_time : tail_time;
  }
  bool prev_end_seen = false;        // the previous (closed) step's END or final chunk arrived
  Clock::time_point prev_end_time{};
  bool waited = true;
  uint64_t rng = 0;
  WorkerStats st;
  uint64_t kdrops = 0;       // cumulative kernel drops of this row's socket, as last reported
  uint64_t kdrops_mark = 0;  // at the start of the window
  bool registered = false;
  std::vector<uint8_t> addr;  // registered source address bytes
  uint64_t reg_seq = 0;       // freshest registration sequence number seen from it
};

Reassembler::Reassembler(const ReceiverConfig& cfg, const Geometry& g) : cfg_(cfg), geo_(g) {}

Reassembler::~Reassembler() { std::free(buf_); }

Status Reassembler::create(const ReceiverConfig& cfg, std::unique_ptr<Reassembler>* out) {
  if (out == nullptr) return Status::Invalid("reassembler output pointer is null");
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
  if (!(cfg.grace_min_s >= 0.0) || !std::isfinite(cfg.grace_min_s) || cfg.grace_min_s > cfg.grace_s) {
    return Status::Invalid("grace_min must be a finite number of seconds in [0, grace=" + std::to_string(cfg.grace_s) +
                           "], got " + std::to_string(cfg.grace_min_s));
  }
  if (cfg.verify_threads < 0 || cfg.verify_threads > 16) {
    return Status::Invalid("verify_threads must be in [0, 16] (0 = auto), got " + std::to_string(cfg.verify_threads));
  }
  if (!(cfg.drop_rate >= 0.0 && cfg.drop_rate <= 1.0)) {
    return Status::Invalid("drop_rate must be in [0, 1], got " + std::to_string(cfg.drop_rate));
  }
  if (int(cfg.fill) < 0 || int(cfg.fill) > 3) return Status::Invalid("unknown fill policy code");
  Geometry g;
  PYAGG_RETURN_IF_ERROR(make_geometry(cfg.d, cfg.dtype, cfg.max_datagram, &g));
  std::unique_ptr<Reassembler> r(new Reassembler(cfg, g));
  PYAGG_RETURN_IF_ERROR(r->init());
  *out = std::move(r);
  return Status::Ok();
}

Status Reassembler::init() {
  const std::size_t n = cfg_.ranks.size();
  if (geo_.total_bytes != 0 && n > std::numeric_limits<std::size_t>::max() / geo_.total_bytes) {
    return Status::Invalid("n*d overflows");
  }
  buf_ = static_cast<uint8_t*>(std::calloc(n * geo_.total_bytes, 1));
  if (buf_ == nullptr) {
    return Status::OutOfMemory("cannot allocate the receive buffer of " + std::to_string(n) + " x " +
                               std::to_string(geo_.total_bytes) + " bytes");
  }
  grace_cur_s_ = cfg_.grace_s;
  rows_.reset(new Row[n]);
  const std::size_t words = (geo_.chunk_count + 63) / 64;
  std::vector<std::pair<uint32_t, uint32_t>> order;
  for (std::size_t i = 0; i < n; ++i) {
    Row& r = rows_[i];
    r.rank = cfg_.ranks[i];
    r.st.rank = r.rank;
    r.bitmap.assign(words, 0);
    PYAGG_RETURN_IF_ERROR(
        r.mac.init(cfg_.mac, cfg_.mac == MacAlgo::kNone ? nullptr : cfg_.keys.data() + i * kKeySize));
    order.emplace_back(r.rank, uint32_t(i));
  }
  std::sort(order.begin(), order.end());
  for (auto& p : order) {
    sorted_ranks_.push_back(p.first);
    sorted_rows_.push_back(p.second);
  }
  return Status::Ok();
}

Status Reassembler::open(uint64_t step) { return open(step, Clock::now()); }

Status Reassembler::open(uint64_t step, Clock::time_point now) {
  if (step > kMaxStep) return Status::Invalid("step must be < 2^48, got " + std::to_string(step));
  if (have_step_ && step <= step_) {
    return Status::Invalid("expect(step=" + std::to_string(step) + "): steps must increase (last opened: " +
                           std::to_string(step_) + "); an old step would accept replayed datagrams");
  }
  if (open_) reset_window();  // the previous step was never collected: abandon it
  prev_step_ = step_;
  have_prev_ = have_step_;
  step_ = step;
  have_step_ = true;
  open_ = true;
  t_open_ = now;
  for (std::size_t i = 0; i < rows(); ++i) {
    rows_[i].rng = cfg_.seed ^ (uint64_t(rows_[i].rank) * 0xD1B54A32D192ED03ull) ^ (step * 0x8CB92BA72F3D8DD7ull);
  }
  return Status::Ok();
}

void Reassembler::abandon() {
  open_ = false;
  reset_window();
}

void Reassembler::reset_window() {
  for (std::size_t i = 0; i < rows(); ++i) {
    Row& r = rows_[i];
    std::fill(r.bitmap.begin(), r.bitmap.end(), 0);
    r.received = 0;
    r.end_seen = false;
    r.tail_seen = false;
    r.st = WorkerStats();
    r.st.rank = r.rank;
    r.kdrops_mark = r.kdrops;
  }
  unattributed_ = RejectCounts();
  datagrams_ = 0;
  unattr_drops_mark_ = unattr_drops_;
  spread_win_s_ = 0.0;
  spread_measured_ = false;
}

void Reassembler::set_kernel_drops(int origin, uint64_t cumulative) {
  if (origin >= 0 && std::size_t(origin) < rows()) {
    rows_[origin].kdrops = cumulative;
  } else {
    unattr_drops_ = cumulative;
  }
}

void Reassembler::set_wait(const uint8_t* wait) {
  for (std::size_t i = 0; i < rows(); ++i) rows_[i].waited = wait == nullptr || wait[i] != 0;
}

bool Reassembler::check_end(Clock::time_point deadline, Clock::time_point now, EndReason* reason,
                            Clock::time_point* wake_at) const {
  const auto grace = std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(grace_cur_s_));
  std::size_t n_wait = 0, n_done = 0, n_marked = 0;
  Clock::time_point latest_end{};
  for (std::size_t i = 0; i < rows(); ++i) {
    const Row& r = rows_[i];
    if (!r.waited) continue;
    ++n_wait;
    if (r.received == geo_.chunk_count) {
      ++n_done;
      ++n_marked;
    } else if (r.signaled()) {
      ++n_marked;
      const Clock::time_point t = r.signal_time();
      if (t > latest_end) latest_end = t;
    }
  }
  *wake_at = deadline;
  if (n_wait == 0) {
    *reason = EndReason::kNobody;
    return true;
  }
  if (n_done == n_wait) {
    *reason = EndReason::kComplete;
    return true;
  }
  if (n_marked == n_wait) {
    const Clock::time_point t_grace = latest_end + grace;
    const Clock::time_point t_end = t_grace < deadline ? t_grace : deadline;
    if (now >= t_end) {
      *reason = t_grace <= deadline ? EndReason::kMarkers : EndReason::kDeadline;
      return true;
    }
    *wake_at = t_end;
    return false;
  }
  if (now >= deadline) {
    *reason = EndReason::kDeadline;
    return true;
  }
  return false;
}

Status Reassembler::close(uint64_t step, const uint8_t* wait, EndReason reason, Clock::time_point now,
                          StepResult* out) {
  if (!open_ || step != step_) {
    return Status::Invalid("collect(step=" + std::to_string(step) + ") but " +
                           (open_ ? "the open step is " + std::to_string(step_) : std::string("no step is open")) +
                           "; call expect(step) first");
  }
  if (out == nullptr) return Status::Invalid("collect: result pointer is null");
  set_wait(wait);
  open_ = false;
  const std::size_t n = rows();
  StepResult res;
  res.step = step;
  res.reason = reason;
  res.elapsed_s = seconds(now - t_open_);
  res.grace_s = grace_cur_s_;
  res.spread_s = spread_win_s_;
  res.unattributed = unattributed_;
  res.datagrams = datagrams_;
  res.unattributed_kernel_dropped = unattr_drops_ - unattr_drops_mark_;
  res.kernel_dropped = res.unattributed_kernel_dropped;
  res.workers.resize(n);
  for (std::size_t i = 0; i < n; ++i) {
    Row& r = rows_[i];
    if (r.received != geo_.chunk_count) {
      Status st = fill_chunks(buf_ + i * geo_.total_bytes, geo_, cfg_.dtype, cfg_.fill,
                              reinterpret_cast<const uint8_t*>(r.bitmap.data()), cfg_.seed, step, r.rank);
      if (!st.ok()) return Status::Internal("fill failed: " + st.message());
    }
    WorkerStats& w = res.workers[i];
    w = r.st;
    w.rank = r.rank;
    w.chunks_expected = geo_.chunk_count;
    w.chunks_received = r.received;
    w.chunks_filled = geo_.chunk_count - r.received;
    w.complete = r.received == geo_.chunk_count;
    w.waited = r.waited;
    w.kernel_dropped = r.kdrops - r.kdrops_mark;
    res.kernel_dropped += w.kernel_dropped;
  }
  if (cfg_.adaptive_grace && spread_measured_) {
    spread_hist_[spread_i_] = spread_win_s_;
    spread_i_ = (spread_i_ + 1) % 16;
    if (spread_n_ < 16) ++spread_n_;
    double worst = 0.0;
    for (std::size_t k = 0; k < spread_n_; ++k) worst = std::max(worst, spread_hist_[k]);
    grace_cur_s_ = std::clamp(2.0 * worst + cfg_.grace_min_s, cfg_.grace_min_s, cfg_.grace_s);
  }
  // The END times of this step stay known for the next window: DATA of this
  // step arriving after it closed (late) measures how far the grace fell short.
  for (std::size_t i = 0; i < n; ++i) {
    rows_[i].prev_end_seen = rows_[i].signaled();
    rows_[i].prev_end_time = rows_[i].signal_time();
  }
  reset_window();
  *out = std::move(res);
  return Status::Ok();
}

long Reassembler::locate(const uint8_t* data, std::size_t len, bool truncated, int origin, Header* h, int* o,
                         PreReject* why) const {
  if (data == nullptr || truncated || len < kOverhead || len > cfg_.max_datagram) {
    *why = PreReject::kBadLength;
    return -1;
  }
  if (!decode_header(data, h)) {
    *why = PreReject::kBadHeader;
    return -1;
  }
  *o = origin;
  if (!cfg_.isolate) {
    *o = kOriginAny;
  } else if (*o == kOriginAny || *o < kOriginAny || (*o >= 0 && std::size_t(*o) >= rows())) {
    *o = kOriginUnregistered;
  }
  if (*o == kOriginUnregistered && h->kind != Kind::kRegister) {
    *why = PreReject::kUnknownSource;  // no MAC work for a source nobody registered
    return -1;
  }
  const auto it = std::lower_bound(sorted_ranks_.begin(), sorted_ranks_.end(), h->rank);
  if (it == sorted_ranks_.end() || *it != h->rank) {
    *why = PreReject::kUnknownSender;
    return -1;
  }
  const std::size_t row = sorted_rows_[std::size_t(it - sorted_ranks_.begin())];
  if (*o >= 0 && std::size_t(*o) != row) {
    *why = PreReject::kSourceMismatch;
    return -1;
  }
  *why = PreReject::kNone;
  return long(row);
}

uint8_t Reassembler::preverify(const uint8_t* data, std::size_t len, bool truncated, int origin) const {
  Header h;
  int o = origin;
  PreReject why;
  const long row = locate(data, len, truncated, origin, &h, &o, &why);
  if (row < 0) return kMacUnchecked;
  const std::size_t signed_len = len - kTagSize;
  uint8_t nonce[12];
  make_nonce(h, nonce);
  return rows_[std::size_t(row)].mac.verify(data, signed_len, nonce, data + signed_len) ? kMacOk : kMacBad;
}

bool Reassembler::ingest(const uint8_t* data, std::size_t len, bool truncated, int origin, const void* src,
                         std::size_t src_len, Clock::time_point now) {
  return ingest(data, len, truncated, origin, src, src_len, now, kMacUnchecked);
}

bool Reassembler::ingest(const uint8_t* data, std::size_t len, bool truncated, int origin, const void* src,
                         std::size_t src_len, Clock::time_point now, uint8_t mac_verdict) {
  ++datagrams_;
  // 1. Unauthenticated checks: everything rejected here is unattributed.
  Header h;
  int o = origin;
  PreReject why;
  const long found = locate(data, len, truncated, origin, &h, &o, &why);
  if (found < 0) {
    switch (why) {
      case PreReject::kBadLength: ++unattributed_.bad_length; break;
      case PreReject::kBadHeader: ++unattributed_.bad_header; break;
      case PreReject::kUnknownSource: ++unattributed_.unknown_source; break;
      case PreReject::kUnknownSender: ++unattributed_.unknown_sender; break;
      case PreReject::kSourceMismatch: ++unattributed_.source_mismatch; break;
      case PreReject::kNone: break;
    }
    return false;
  }
  const std::size_t row = std::size_t(found);
  Row& r = rows_[row];
  const std::size_t signed_len = len - kTagSize;
  bool authentic;
  if (mac_verdict == kMacOk || mac_verdict == kMacBad) {
    authentic = mac_verdict == kMacOk;
  } else {
    uint8_t nonce[12];
    make_nonce(h, nonce);
    authentic = r.mac.verify(data, signed_len, nonce, data + signed_len);
  }
  if (!authentic) {
    ++unattributed_.bad_mac;
    return false;
  }
  // 2. Authentic: from here on a rejection is this rank's own doing.
  RejectCounts& rej = r.st.rejected;
  if (h.payload_len != len - kOverhead) {
    ++rej.bad_length;
    return false;
  }
  if (h.mac != cfg_.mac || h.header_len != kHeaderSize || h.job_id != cfg_.job_id ||
      h.tensor_id != cfg_.tensor_id || h.step > kMaxStep) {
    ++rej.bad_header;
    return false;
  }
  if (h.kind == Kind::kRegister) {
    if (h.chunk_index != kRegisterChunkIndex || h.dtype != 0 || h.chunk_count != 0 || h.total_elems != 0 ||
        h.payload_len != 0 || h.step == 0) {
      ++rej.bad_header;
      return false;
    }
    return ingest_register(r, row, h, o, src, src_len, now);
  }
  if ((h.kind != Kind::kData && h.kind != Kind::kEnd) || h.dtype != static_cast<uint8_t>(cfg_.dtype) ||
      h.total_elems != geo_.d || h.chunk_count != geo_.chunk_count) {
    ++rej.bad_header;
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
  // 3. The step: only the open one is written.
  if (!(open_ && h.step == step_)) {
    if (h.kind == Kind::kEnd) {
      if (have_step_ && h.step <= step_) {
        ++r.st.end_replays;  // END of a closed or older step
      } else {
        ++rej.wrong_step;
      }
      return false;
    }
    const bool late = (open_ && have_prev_ && h.step == prev_step_) || (!open_ && have_step_ && h.step == step_);
    if (late) {
      ++r.st.late;
      if (r.prev_end_seen && h.kind == Kind::kData) {  // the grace was too short by at least this much
        spread_win_s_ = std::max(spread_win_s_, seconds(now - r.prev_end_time));
        spread_measured_ = true;
      }
    } else {
      ++rej.wrong_step;
    }
    return false;
  }
  // 4. Test-only loss injection, after verification: forged traffic never draws
  // from a rank's generator, so it cannot steer which honest chunks drop.
  if (cfg_.drop_rate > 0.0 && uniform01(&r.rng) < cfg_.drop_rate) {
    ++r.st.dropped;
    return false;
  }
  const double t = seconds(now - t_open_);
  if (h.kind == Kind::kEnd) {
    ++r.st.end_markers;
    if (r.end_seen) {
      ++r.st.end_replays;
      return false;
    }
    r.end_seen = true;
    r.end_time = now;
    spread_measured_ = true;
    r.st.end_s = t;
    uint32_t sent;
    std::memcpy(&sent, data + kHeaderSize, 4);
    r.st.chunks_sent = int64_t(__builtin_bswap32(sent));
    return r.waited;
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
  std::memcpy(buf_ + row * geo_.total_bytes + off, data + kHeaderSize, h.payload_len);
  word |= bit;
  ++r.received;
  r.st.bytes_received += h.payload_len;
  if (r.st.first_s < 0) r.st.first_s = t;
  r.st.last_s = t;
  bool signal = false;
  if (h.chunk_index + uint64_t{1} == geo_.chunk_count && !r.tail_seen) {
    r.tail_seen = true;
    r.tail_time = now;
    spread_measured_ = true;
    signal = true;
  }
  // DATA after the row's first end signal: how far the arrivals spread.
  if (r.signaled()) spread_win_s_ = std::max(spread_win_s_, seconds(now - r.signal_time()));
  return (r.received == geo_.chunk_count || signal) && r.waited;
}

bool Reassembler::ingest_register(Row& r, std::size_t row, const Header& h, int origin, const void* src,
                                  std::size_t src_len, Clock::time_point now) {
  if (origin >= 0) {
    // On its own connected socket: a repeat from the registered address.
    ++r.st.registers;
    if (h.step > r.reg_seq) r.reg_seq = h.step;
    return false;
  }
  std::vector<uint8_t> addr;
  if (src != nullptr && src_len > 0 && src_len <= 512) {
    const uint8_t* b = static_cast<const uint8_t*>(src);
    addr.assign(b, b + src_len);
  }
  if (r.registered && r.addr == addr) {  // a repeat
    ++r.st.registers;
    if (h.step > r.reg_seq) r.reg_seq = h.step;
    return false;
  }
  if (!addr.empty()) {
    for (std::size_t j = 0; j < rows(); ++j) {
      if (j != row && rows_[j].registered && rows_[j].addr == addr) {
        ++r.st.register_refused;  // another rank holds this address
        return false;
      }
    }
  }
  if (r.registered && h.step <= r.reg_seq) {
    ++r.st.register_refused;  // a stale (replayed) registration from a new address
    return false;
  }
  r.registered = true;
  r.addr = std::move(addr);
  r.reg_seq = h.step;
  ++r.st.registers;
  ++reg_epoch_;
  return false;
}

void Reassembler::registrations(std::vector<Registration>* out) const {
  out->clear();
  for (std::size_t i = 0; i < rows(); ++i) {
    const Row& r = rows_[i];
    if (!r.registered) continue;
    Registration g;
    g.rank = r.rank;
    g.row = i;
    g.address = sockaddr_text(r.addr);
    g.seq = r.reg_seq;
    g.ready = true;
    out->push_back(std::move(g));
  }
}

bool Reassembler::registered_address(std::size_t row, std::vector<uint8_t>* addr) const {
  if (row >= rows() || !rows_[row].registered) return false;
  *addr = rows_[row].addr;
  return true;
}

}  // namespace transport
}  // namespace pyagg
