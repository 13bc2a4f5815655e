// LossyMPI native benchmark: goodput of one worker -> server on loopback, the
// engine's UDP path (chunking, MAC, GSO/sendmmsg, GRO/recvmmsg, validation,
// reassembly) against a plain TCP socket, sender and receiver in separate
// processes (fork). Verifies every received gradient bit for bit and warms up
// first. Goodput = bytes delivered intact / (last byte received - first byte
// sent), CLOCK_MONOTONIC on both sides.
//
//   transport_bench [MB=100] [reps=5] [mac=auto|aes256gcm|chacha20poly1305|none] [gso=1] [rate B/s=0]
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

int main(int argc, char** argv) {
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
