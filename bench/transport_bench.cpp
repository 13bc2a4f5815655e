// LossyMPI native benchmark: goodput of one worker -> server on loopback, the
// engine's UDP path (chunking, MAC, GSO/sendmmsg, GRO/recvmmsg, validation,
// reassembly) against a plain TCP socket, sender and receiver in separate
// processes (fork). Verifies every received gradient bit for bit and warms up
// first. Goodput = bytes delivered intact / (last byte received - first byte
// sent), CLOCK_MONOTONIC on both sides.
//
//   transport_bench [MB=100] [reps=5] [mac=auto|aes256gcm|chacha20poly1305|none] [gso=1] [rate B/s=0]
//   transport_bench stages [MB per worker=1] [workers=8] [reps=20] [mac=auto]
//     CPU per byte of the datagram path's stages, one thread each, no sockets:
//     MAC sign and verify of full datagrams, memcpy of a gradient, and the
//     receiver's capacity (datagrams captured in memory, fed in batches of 256
//     to a GradientReceiver: validation, MAC, reassembly) with 1 and 2
//     verifying threads.
//
// Build: add to bench/CMakeLists.txt
//   add_executable(transport_bench transport_bench.cpp)
//   target_link_libraries(transport_bench PRIVATE pyagg_engine)
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <thread>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "pyagg/transport.h"

using namespace pyagg;
using namespace pyagg::transport;

namespace {

double now_s() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

double cpu_self() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_utime.tv_sec + u.ru_stime.tv_sec + 1e-6 * (u.ru_utime.tv_usec + u.ru_stime.tv_usec);
}

std::vector<float> make_grad(std::size_t d) {
  std::vector<float> g(d);
  for (std::size_t i = 0; i < d; ++i) g[i] = float(i % 1000) + 0.25f;
  return g;
}

// Parent <-> child: the parent writes a step number, the child sends and answers
// {t0 (monotonic), cpu seconds}.
struct Reply {
  double t0;
  double cpu;
};

bool write_all(int fd, const void* p, std::size_t n) {
  const char* c = static_cast<const char*>(p);
  while (n) {
    ssize_t r = ::write(fd, c, n);
    if (r <= 0) return false;
    c += r;
    n -= std::size_t(r);
  }
  return true;
}
bool read_all(int fd, void* p, std::size_t n) {
  char* c = static_cast<char*>(p);
  while (n) {
    ssize_t r = ::read(fd, c, n);
    if (r <= 0) return false;
    c += r;
    n -= std::size_t(r);
  }
  return true;
}

struct Result {
  std::vector<double> gbps;
  std::vector<double> cpu_tx, cpu_rx;
  bool ok = true;
  int complete = 0;
};

void print(const char* name, Result& r, std::size_t bytes) {
  auto med = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v.empty() ? 0.0 : v[v.size() / 2];
  };
  const double tx = med(r.cpu_tx), rx = med(r.cpu_rx);
  std::printf("%-26s goodput %6.2f GB/s (best %5.2f)  cpu tx %.3f s rx %.3f s -> cpu-bound %5.2f GB/s  "
              "complete %d/%zu  %s\n",
              name, med(r.gbps), r.gbps.empty() ? 0.0 : *std::max_element(r.gbps.begin(), r.gbps.end()), tx, rx,
              std::max(tx, rx) > 0 ? bytes / 1e9 / std::max(tx, rx) : 0.0, r.complete, r.gbps.size(),
              r.ok ? "verified" : "MISMATCH");
}

Result bench_udp(std::size_t d, int reps, MacAlgo mac, bool gso, double rate) {
  Result res;
  std::vector<uint8_t> key(kKeySize);
  for (std::size_t i = 0; i < key.size(); ++i) key[i] = uint8_t(i * 13 + 5);
  ReceiverConfig rc;
  rc.ranks = {1};
  rc.mac = mac;
  if (mac != MacAlgo::kNone) rc.keys = key;
  rc.d = d;
  std::unique_ptr<GradientReceiver> rx;
  UdpSourceInfo info;
  Status st = make_udp_receiver(rc, UdpSourceOptions(), &rx, &info);
  if (!st.ok()) {
    std::fprintf(stderr, "receiver: %s\n", st.message().c_str());
    std::exit(1);
  }
  int to_child[2], to_parent[2];
  if (pipe(to_child) != 0 || pipe(to_parent) != 0) std::exit(1);
  const pid_t pid = fork();
  if (pid == 0) {
    close(to_child[1]);
    close(to_parent[0]);
    SenderConfig sc;
    sc.rank = 1;
    sc.mac = mac;
    sc.key = key;
    sc.rate = rate;
    UdpSinkOptions so;
    so.port = info.port;
    so.gso = gso;
    std::unique_ptr<GradientSender> tx;
    if (!make_udp_sender(sc, so, &tx).ok()) _exit(2);
    const std::vector<float> g = make_grad(d);
    uint64_t step;
    while (read_all(to_child[0], &step, sizeof(step))) {
      const double c0 = cpu_self();
      Reply r{now_s(), 0};
      SendStats ss;
      if (!tx->send(step, g.data(), d, DType::kFloat32, &ss).ok()) _exit(3);
      r.cpu = cpu_self() - c0;
      if (!write_all(to_parent[1], &r, sizeof(r))) break;
    }
    _exit(0);
  }
  close(to_child[0]);
  close(to_parent[1]);
  const std::vector<float> expect = make_grad(d);
  for (int rep = 0; rep <= reps; ++rep) {
    const uint64_t step = uint64_t(rep) + 1;
    rx->expect(step);
    const double t_open = now_s();
    const double c0 = cpu_self();
    write_all(to_child[1], &step, sizeof(step));
    StepResult sr;
    st = rx->collect(step, 30.0, nullptr, &sr);
    const double c_rx = cpu_self() - c0;
    Reply r{};
    read_all(to_parent[0], &r, sizeof(r));
    if (!st.ok()) {
      std::fprintf(stderr, "collect: %s\n", st.message().c_str());
      std::exit(1);
    }
    const WorkerStats& w = sr.workers[0];
    if (w.complete && std::memcmp(rx->buffer(), expect.data(), d * 4) != 0) res.ok = false;
    if (rep == 0) continue;  // warm-up
    res.complete += w.complete;
    res.gbps.push_back(double(w.bytes_received) / (t_open + w.last_s - r.t0) / 1e9);
    res.cpu_tx.push_back(r.cpu);
    res.cpu_rx.push_back(c_rx);
  }
  close(to_child[1]);
  int status = 0;
  waitpid(pid, &status, 0);
  close(to_parent[0]);
  return res;
}

Result bench_tcp(std::size_t d, int reps) {
  Result res;
  int ls = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t al = sizeof(a);
  if (bind(ls, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 || listen(ls, 1) != 0) std::exit(1);
  getsockname(ls, reinterpret_cast<sockaddr*>(&a), &al);
  int to_child[2], to_parent[2];
  if (pipe(to_child) != 0 || pipe(to_parent) != 0) std::exit(1);
  const pid_t pid = fork();
  if (pid == 0) {
    close(to_child[1]);
    close(to_parent[0]);
    int s = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(s, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) _exit(2);
    const std::vector<float> g = make_grad(d);
    uint64_t step;
    while (read_all(to_child[0], &step, sizeof(step))) {
      const double c0 = cpu_self();
      Reply r{now_s(), 0};
      if (!write_all(s, g.data(), d * 4)) _exit(3);
      r.cpu = cpu_self() - c0;
      if (!write_all(to_parent[1], &r, sizeof(r))) break;
    }
    close(s);
    _exit(0);
  }
  close(to_child[0]);
  close(to_parent[1]);
  int c = accept(ls, nullptr, nullptr);
  std::vector<float> buf(d);
  const std::vector<float> expect = make_grad(d);
  for (int rep = 0; rep <= reps; ++rep) {
    const uint64_t step = uint64_t(rep) + 1;
    std::memset(buf.data(), 0, d * 4);
    const double c0 = cpu_self();
    write_all(to_child[1], &step, sizeof(step));
    read_all(c, buf.data(), d * 4);
    const double t_last = now_s();
    const double c_rx = cpu_self() - c0;
    Reply r{};
    read_all(to_parent[0], &r, sizeof(r));
    if (std::memcmp(buf.data(), expect.data(), d * 4) != 0) res.ok = false;
    if (rep == 0) continue;
    res.complete += 1;
    res.gbps.push_back(d * 4.0 / (t_last - r.t0) / 1e9);
    res.cpu_tx.push_back(r.cpu);
    res.cpu_rx.push_back(c_rx);
  }
  close(to_child[1]);
  int status = 0;
  waitpid(pid, &status, 0);
  close(c);
  close(ls);
  close(to_parent[0]);
  return res;
}

}  // namespace

class NullSink final : public DatagramSink {
 public:
  Status send(const uint8_t*, std::size_t seg, std::size_t total) override {
    c_.datagrams += (total + seg - 1) / seg;
    c_.bytes += total;
    ++c_.syscalls;
    return Status::Ok();
  }
  SinkCounters counters() const override { return c_; }
  std::string describe() const override { return "null"; }

 private:
  SinkCounters c_;
};

// A source handing out prepared datagrams in batches of 256 once armed; it
// counts the batches it gave so the bench knows when everything was taken.
class ReplaySource final : public DatagramSource {
 public:
  Status recv_batch(int timeout_ms, std::vector<DatagramView>* out) override {
    out->clear();
    const std::vector<std::vector<uint8_t>>* dgs = dgs_.load(std::memory_order_acquire);
    if (dgs != nullptr && pos_ < dgs->size()) {
      const std::size_t stop = std::min<std::size_t>(dgs->size(), pos_ + 256);
      for (; pos_ < stop; ++pos_) out->push_back({(*dgs)[pos_].data(), (*dgs)[pos_].size(), false, -2, nullptr, 0});
      return Status::Ok();
    }
    std::this_thread::yield();
    (void)timeout_ms;
    return Status::Ok();
  }
  // Called while the receive thread has nothing to read (the previous list is used up).
  void arm(const std::vector<std::vector<uint8_t>>* dgs) {
    pos_ = 0;
    dgs_.store(dgs, std::memory_order_release);
  }
  void wake() override {}
  std::string describe() const override { return "replay"; }

 private:
  std::size_t pos_ = 0;
  std::atomic<const std::vector<std::vector<uint8_t>>*> dgs_{nullptr};
};

int stages(double mb, int workers, int reps, MacAlgo mac) {
  const std::size_t d = std::size_t(mb * 1e6 / 4);
  std::vector<float> g = make_grad(d);
  std::printf("# stages: %d workers x %zu bytes, mac %s, %d reps; one thread per stage\n", workers, d * 4,
              mac_name(mac), reps);
  // Every worker's datagrams for one step (step numbers rewritten per rep below would change the MAC:
  // one capture per rep instead).
  ReceiverConfig rc;
  rc.mac = mac;
  rc.d = d;
  rc.grace_s = 0.0;
  rc.grace_min_s = 0.0;
  rc.adaptive_grace = false;
  std::vector<std::vector<uint8_t>> keys;
  for (int w = 1; w <= workers; ++w) {
    rc.ranks.push_back(uint32_t(w));
    std::vector<uint8_t> k(kKeySize);
    for (std::size_t i = 0; i < k.size(); ++i) k[i] = uint8_t(i * 13 + 5 + w);
    keys.push_back(k);
    if (mac != MacAlgo::kNone) rc.keys.insert(rc.keys.end(), k.begin(), k.end());
  }
  std::vector<std::vector<std::vector<uint8_t>>> steps(reps + 1);
  double sign_s = 0.0;
  std::size_t sign_bytes = 0;
  for (int r = 0; r <= reps; ++r) {
    for (int w = 1; w <= workers; ++w) {
      auto ch = LoopbackChannel::create(1 << 22);
      auto src = ch->make_source();
      SenderConfig sc;
      sc.rank = uint32_t(w);
      sc.mac = mac;
      sc.key = keys[w - 1];
      sc.end_copies = 1;
      std::unique_ptr<GradientSender> tx;
      if (!GradientSender::create(sc, ch->make_sink(), &tx).ok()) return 1;
      if (!tx->send(uint64_t(r + 1), g.data(), d, DType::kFloat32, nullptr).ok()) return 1;
      if (r > 0) {  // the sender's own work, into a sink that discards
        std::unique_ptr<GradientSender> nt;
        if (!GradientSender::create(sc, std::unique_ptr<DatagramSink>(new NullSink), &nt).ok()) return 1;
        SendStats ss;
        const double t0 = now_s();
        if (!nt->send(uint64_t(r + 1), g.data(), d, DType::kFloat32, &ss).ok()) return 1;
        sign_s += now_s() - t0;
        sign_bytes += ss.bytes;
      }
      std::vector<DatagramView> v;
      while (true) {
        if (!src->recv_batch(0, &v).ok()) return 1;
        if (v.empty()) break;
        for (auto& x : v) steps[r].emplace_back(x.data, x.data + x.len);
      }
    }
  }
  std::printf("%-44s %6.2f GB/s  %.3f ns/B\n", "sender: chunk + MAC + staging copy, no sink", sign_bytes / sign_s / 1e9,
              sign_s / sign_bytes * 1e9);
  // MAC verify alone and memcpy alone, over the same datagrams
  {
    std::vector<uint8_t> dst(d * 4);
    double t0 = now_s();
    for (int r = 0; r < reps; ++r) std::memcpy(dst.data(), g.data(), d * 4);
    double t = now_s() - t0;
    std::printf("%-44s %6.2f GB/s  %.3f ns/B\n", "memcpy of one gradient (cold)", double(d * 4) * reps / t / 1e9,
                t / (double(d * 4) * reps) * 1e9);
  }
  for (int threads : {1, 2}) {
    ReceiverConfig c = rc;
    c.verify_threads = threads;
    std::vector<double> rates;
    auto* src = new ReplaySource();
    std::unique_ptr<GradientReceiver> rx;
    Status st = GradientReceiver::create(c, std::unique_ptr<DatagramSource>(src), &rx);
    if (!st.ok()) {
      std::fprintf(stderr, "%s\n", st.message().c_str());
      return 1;
    }
    for (int r = 0; r <= reps; ++r) {  // rep 0 warms up (first touch of the rows)
      std::size_t bytes = 0;
      for (auto& x : steps[r]) bytes += x.size();
      if (!rx->expect(uint64_t(r + 1)).ok()) return 1;
      const double t0 = now_s();
      src->arm(&steps[r]);
      StepResult res;
      if (!rx->collect(uint64_t(r + 1), 10.0, nullptr, &res).ok()) return 1;
      const double t = now_s() - t0;
      bool complete = res.reason == EndReason::kComplete;
      for (auto& ws : res.workers) complete = complete && ws.complete;
      if (!complete || std::memcmp(rx->buffer(), g.data(), d * 4) != 0) {
        std::fprintf(stderr, "receiver capacity: step not complete or wrong bytes\n");
        return 1;
      }
      if (r > 0) rates.push_back(bytes / t / 1e9);
    }
    rx->shutdown();
    std::sort(rates.begin(), rates.end());
    const double med = rates[rates.size() / 2];
    std::printf("receiver capacity, %d verifying thread%s        %6.2f GB/s  %.3f ns/B  (median of %d steps)\n", threads,
                threads == 1 ? " " : "s", med, 1.0 / med, reps);
  }
  return 0;
}

int main(int argc, char** argv) {
  if (argc > 1 && std::string(argv[1]) == "stages") {
    MacAlgo m;
    Status ps = parse_mac(argc > 5 ? argv[5] : "auto", &m);
    if (!ps.ok()) {
      std::fprintf(stderr, "%s\n", ps.message().c_str());
      return 1;
    }
    return stages(argc > 2 ? std::atof(argv[2]) : 1.0, argc > 3 ? std::atoi(argv[3]) : 8,
                  argc > 4 ? std::atoi(argv[4]) : 20, m);
  }
  const double mb = argc > 1 ? std::atof(argv[1]) : 100.0;
  const int reps = argc > 2 ? std::atoi(argv[2]) : 5;
  const std::string macs = argc > 3 ? argv[3] : "auto";
  const bool gso = argc > 4 ? std::atoi(argv[4]) != 0 : true;
  const double rate = argc > 5 ? std::atof(argv[5]) : 0.0;
  const std::size_t d = std::size_t(mb * 1e6 / 4);
  MacAlgo mac;
  Status st = parse_mac(macs, &mac);
  if (!st.ok()) {
    std::fprintf(stderr, "%s\n", st.message().c_str());
    return 1;
  }
  std::printf("# %zu bytes, %d reps (+1 warm-up), mac %s, %s, rate %s\n", d * 4, reps, mac_name(mac),
              gso ? "GSO" : "sendmmsg", rate > 0 ? std::to_string(rate).c_str() : "unpaced");
  Result u = bench_udp(d, reps, mac, gso, rate);
  print("udp (LossyMPI)", u, d * 4);
  Result t = bench_tcp(d, reps);
  print("tcp socket", t, d * 4);
  return u.ok && t.ok ? 0 : 1;
}
