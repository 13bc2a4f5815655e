// pyagg engine — LossyMPI UDP channels: a non-blocking receive socket with
// batched receive (recvmmsg) and UDP GRO, and a send socket with batched send
// (UDP GSO: one sendmsg per <= 64 equal segments, the kernel cuts them into
// datagrams; sendmmsg when GSO is refused). Socket errors are Status::Io; no
// exit(), no exception.
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <string>
#include <vector>

#include "pyagg/transport.h"

#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif
#ifndef UDP_GRO
#define UDP_GRO 104
#endif
#ifndef SOL_UDP
#define SOL_UDP 17
#endif
#ifndef SO_MEMINFO
#define SO_MEMINFO 55
#endif

namespace pyagg {
namespace transport {

namespace {

std::string errno_text(int e) {
  char buf[128];
  return std::string(strerror_r(e, buf, sizeof(buf)));
}

Status io_error(const std::string& what, int e) { return Status::Io(what + ": " + errno_text(e)); }

// Resolves host:port (numeric or name) to one socket address.
Status resolve(const std::string& host, int port, sockaddr_storage* ss, socklen_t* len, bool passive) {
  if (port < 0 || port > 65535) return Status::Invalid("port must be in [0, 65535], got " + std::to_string(port));
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_DGRAM;
  hints.ai_protocol = IPPROTO_UDP;
  hints.ai_flags = passive ? AI_PASSIVE : 0;
  addrinfo* res = nullptr;
  const std::string svc = std::to_string(port);
  const int rc = getaddrinfo(host.empty() ? nullptr : host.c_str(), svc.c_str(), &hints, &res);
  if (rc != 0 || res == nullptr) {
    return Status::Io("cannot resolve host '" + host + "': " + std::string(gai_strerror(rc)));
  }
  std::memcpy(ss, res->ai_addr, res->ai_addrlen);
  *len = static_cast<socklen_t>(res->ai_addrlen);
  freeaddrinfo(res);
  return Status::Ok();
}

std::string addr_text(const sockaddr_storage& ss, int* port) {
  char buf[INET6_ADDRSTRLEN] = {0};
  if (ss.ss_family == AF_INET) {
    auto* a = reinterpret_cast<const sockaddr_in*>(&ss);
    inet_ntop(AF_INET, &a->sin_addr, buf, sizeof(buf));
    *port = ntohs(a->sin_port);
  } else if (ss.ss_family == AF_INET6) {
    auto* a = reinterpret_cast<const sockaddr_in6*>(&ss);
    inet_ntop(AF_INET6, &a->sin6_addr, buf, sizeof(buf));
    *port = ntohs(a->sin6_port);
  } else {
    *port = 0;
  }
  return buf;
}

class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }
  int release() {
    int f = fd_;
    fd_ = -1;
    return f;
  }

 private:
  int fd_ = -1;
};

// Resets a wake-up eventfd after poll() reported it readable.
void clear_wake(int fd) {
  uint64_t v;
  ssize_t r = ::read(fd, &v, sizeof(v));
  (void)r;
}

// Sets a source's wake-up eventfd (makes a blocked poll() return).
void signal_wake(int fd) {
  uint64_t one = 1;
  ssize_t r = ::write(fd, &one, sizeof(one));
  (void)r;
}

// ------------------------------------------------------------ source -------
constexpr std::size_t kRecvBufSize = 65536;  // any UDP datagram or GRO run fits

// One socket's batched receive state (recvmmsg into `batch` slots of `slot` bytes).
struct Ring {
  int fd = -1;
  int batch = 0;
  std::size_t slot = 0;
  std::vector<uint8_t> storage;
  std::vector<mmsghdr> msgs;
  std::vector<iovec> iov;
  std::vector<uint8_t> ctrl;
  std::vector<sockaddr_storage> names;
  static constexpr std::size_t kCtrl = CMSG_SPACE(sizeof(int)) + CMSG_SPACE(sizeof(uint32_t)) + 64;

  void init(int f, int b, std::size_t s) {
    fd = f;
    batch = b;
    slot = s;
    storage.assign(std::size_t(b) * s, 0);
    msgs.resize(b);
    iov.resize(b);
    ctrl.assign(std::size_t(b) * kCtrl, 0);
    names.resize(b);
  }
  void close() {
    if (fd >= 0) ::close(fd);
    fd = -1;
  }
  // One recvmmsg (non-blocking): the number of messages, or -1 with errno.
  int receive() {
    for (int i = 0; i < batch; ++i) {
      iov[i].iov_base = storage.data() + std::size_t(i) * slot;
      iov[i].iov_len = slot;
      msghdr& h = msgs[i].msg_hdr;
      std::memset(&h, 0, sizeof(h));
      h.msg_iov = &iov[i];
      h.msg_iovlen = 1;
      h.msg_control = ctrl.data() + std::size_t(i) * kCtrl;
      h.msg_controllen = kCtrl;
      h.msg_name = &names[i];
      h.msg_namelen = sizeof(sockaddr_storage);
      msgs[i].msg_len = 0;
    }
    return ::recvmmsg(fd, msgs.data(), static_cast<unsigned>(batch), MSG_DONTWAIT, nullptr);
  }
  // Appends message i as datagram views (a UDP GRO run split into its datagrams), tagged
  // with `origin`; folds the SO_RXQ_OVFL drop counter into *drops when given.
  void emit(int i, int origin, std::vector<DatagramView>* out, std::atomic<uint64_t>* drops = nullptr) const {
    const uint8_t* base = storage.data() + std::size_t(i) * slot;
    const std::size_t len = msgs[i].msg_len;
    const bool trunc = (msgs[i].msg_hdr.msg_flags & MSG_TRUNC) != 0;
    const void* name = &names[i];
    const std::size_t name_len = msgs[i].msg_hdr.msg_namelen;
    int seg = 0;
    msghdr* h = const_cast<msghdr*>(&msgs[i].msg_hdr);
    for (cmsghdr* c = CMSG_FIRSTHDR(h); c != nullptr; c = CMSG_NXTHDR(h, c)) {
      if (c->cmsg_level == SOL_UDP && c->cmsg_type == UDP_GRO) {
        std::memcpy(&seg, CMSG_DATA(c), sizeof(int));
      } else if (drops != nullptr && c->cmsg_level == SOL_SOCKET && c->cmsg_type == SO_RXQ_OVFL) {
        uint32_t total = 0;  // cumulative, wraps at 2^32
        std::memcpy(&total, CMSG_DATA(c), sizeof(total));
        const uint32_t prev = static_cast<uint32_t>(drops->load(std::memory_order_relaxed));
        drops->fetch_add(uint32_t(total - prev), std::memory_order_relaxed);
      }
    }
    if (seg > 0 && std::size_t(seg) < len && !trunc) {
      // A GRO run: datagrams of `seg` bytes back to back, the last possibly shorter.
      for (std::size_t off = 0; off < len; off += std::size_t(seg)) {
        out->push_back({base + off, std::min<std::size_t>(std::size_t(seg), len - off), false, origin, name, name_len});
      }
    } else {
      out->push_back({base, len, trunc, origin, name, name_len});
    }
  }
};


class UdpSource final : public DatagramSource {
 public:
  UdpSource(int fd, int wake_fd, int batch, std::string desc) : fd_(fd), wake_fd_(wake_fd), desc_(std::move(desc)) {
    ring_.init(fd, batch, kRecvBufSize);
  }
  ~UdpSource() override {
    ring_.close();
    ::close(wake_fd_);
  }

  Status recv_batch(int timeout_ms, std::vector<DatagramView>* out) override {
    out->clear();
    int n = ring_.receive();
    if (n < 0) {
      const int e = errno;
      if (e != EAGAIN && e != EWOULDBLOCK && e != EINTR) return io_error("recvmmsg on " + desc_, e);
      pollfd p[2] = {{fd_, POLLIN, 0}, {wake_fd_, POLLIN, 0}};
      const int rc = ::poll(p, 2, timeout_ms);
      if (rc < 0) {
        if (errno == EINTR) return Status::Ok();
        return io_error("poll on " + desc_, errno);
      }
      if (p[1].revents & POLLIN) clear_wake(wake_fd_);
      if (p[0].revents & (POLLERR | POLLNVAL)) {
        int err = 0;
        socklen_t l = sizeof(err);
        getsockopt(fd_, SOL_SOCKET, SO_ERROR, &err, &l);
        if (p[0].revents & POLLNVAL) return Status::Io("socket of " + desc_ + " is not open");
        (void)err;  // ICMP errors on an unconnected UDP socket: nothing to do
      }
      if (!(p[0].revents & POLLIN)) return Status::Ok();
      n = ring_.receive();
      if (n < 0) {
        const int e2 = errno;
        if (e2 == EAGAIN || e2 == EWOULDBLOCK || e2 == EINTR) return Status::Ok();
        return io_error("recvmmsg on " + desc_, e2);
      }
    }
    for (int i = 0; i < n; ++i) ring_.emit(i, -2, out, &drops_);
    return Status::Ok();
  }

  void wake() override { signal_wake(wake_fd_); }

  std::string describe() const override { return desc_; }
  uint64_t kernel_drops() const override {
    // SO_MEMINFO gives the socket's drop counter now; the SO_RXQ_OVFL value only comes
    // with the next datagram received (drops after the last one would stay unseen).
    uint32_t mem[16] = {0};
    socklen_t len = sizeof(mem);
    if (getsockopt(fd_, SOL_SOCKET, SO_MEMINFO, mem, &len) == 0 && len > 8 * sizeof(uint32_t)) {
      return mem[8];  // SK_MEMINFO_DROPS
    }
    return drops_.load(std::memory_order_relaxed);
  }

 private:
  int fd_;
  int wake_fd_;
  std::string desc_;
  Ring ring_;
  std::atomic<uint64_t> drops_{0};
};

// -------------------------------------------------------------- sink -------
constexpr std::size_t kMaxGsoSegments = 64;
constexpr std::size_t kMaxGsoBytes = 65000;  // < 65535 - IP and UDP headers

class UdpSink final : public DatagramSink {
 public:
  UdpSink(int fd, bool gso, std::string desc) : fd_(fd), gso_(gso), desc_(std::move(desc)) {
    c_.gso = gso;
  }
  ~UdpSink() override { ::close(fd_); }

  Status send(const uint8_t* buf, std::size_t seg, std::size_t total) override {
    if (seg == 0 || total == 0) return Status::Ok();
    if (gso_ && total > seg) {
      std::size_t max_segs = std::min(kMaxGsoSegments, std::max<std::size_t>(1, kMaxGsoBytes / seg));
      std::size_t off = 0;
      while (off < total) {
        const std::size_t len = std::min(total - off, max_segs * seg);
        bool fallback = false;
        PYAGG_RETURN_IF_ERROR(send_gso(buf + off, seg, len, &fallback));
        if (fallback) {  // kernel or device refused GSO: send the rest one datagram at a time
          gso_ = false;
          c_.gso = false;
          return send_mmsg(buf + off, seg, total - off);
        }
        off += len;
      }
      return Status::Ok();
    }
    return send_mmsg(buf, seg, total);
  }

  SinkCounters counters() const override { return c_; }
  std::string describe() const override { return desc_; }

 private:
  static void backoff() {
    timespec ts{0, 50 * 1000};
    nanosleep(&ts, nullptr);
  }

  Status send_gso(const uint8_t* buf, std::size_t seg, std::size_t len, bool* fallback) {
    iovec iov{const_cast<uint8_t*>(buf), len};
    alignas(cmsghdr) char ctrl[CMSG_SPACE(sizeof(uint16_t))] = {};
    msghdr h{};
    h.msg_iov = &iov;
    h.msg_iovlen = 1;
    const bool multi = len > seg;
    if (multi) {
      h.msg_control = ctrl;
      h.msg_controllen = sizeof(ctrl);
      cmsghdr* c = CMSG_FIRSTHDR(&h);
      c->cmsg_level = SOL_UDP;
      c->cmsg_type = UDP_SEGMENT;
      c->cmsg_len = CMSG_LEN(sizeof(uint16_t));
      const uint16_t s = static_cast<uint16_t>(seg);
      std::memcpy(CMSG_DATA(c), &s, sizeof(s));
    }
    const uint64_t nseg = (len + seg - 1) / seg;
    for (int attempt = 0;; ++attempt) {
      const ssize_t r = ::sendmsg(fd_, &h, 0);
      ++c_.syscalls;
      if (r >= 0) {
        c_.datagrams += nseg;
        c_.bytes += len;
        return Status::Ok();
      }
      const int e = errno;
      if (multi && (e == EIO || e == EINVAL || e == ENOPROTOOPT || e == EOPNOTSUPP) && c_.datagrams == 0) {
        *fallback = true;
        return Status::Ok();
      }
      if (e == ECONNREFUSED) {  // reported for an earlier datagram; this one was not sent: retry once
        ++c_.refused;
        if (attempt < 2) continue;
        c_.dropped += nseg;
        return Status::Ok();
      }
      if (e == EPERM) {  // a local firewall (netfilter) dropped it: that is loss, not a failure
        c_.dropped += nseg;
        return Status::Ok();
      }
      if (e == EINTR || e == ENOBUFS || e == EAGAIN || e == EWOULDBLOCK) {
        ++c_.retries;
        if (attempt < 20000) {
          if (e != EINTR) backoff();
          continue;
        }
        c_.dropped += nseg;
        return Status::Ok();
      }
      return io_error("sendmsg (GSO, " + std::to_string(nseg) + " x " + std::to_string(seg) + " B) to " + desc_, e);
    }
  }

  Status send_mmsg(const uint8_t* buf, std::size_t seg, std::size_t total) {
    const std::size_t n = (total + seg - 1) / seg;
    if (msgs_.size() < n) {
      msgs_.resize(n);
      iov_.resize(n);
    }
    for (std::size_t i = 0; i < n; ++i) {
      const std::size_t off = i * seg;
      iov_[i].iov_base = const_cast<uint8_t*>(buf + off);
      iov_[i].iov_len = std::min(seg, total - off);
      std::memset(&msgs_[i], 0, sizeof(mmsghdr));
      msgs_[i].msg_hdr.msg_iov = &iov_[i];
      msgs_[i].msg_hdr.msg_iovlen = 1;
    }
    std::size_t done = 0;
    int attempts = 0;
    while (done < n) {
      const unsigned chunk = static_cast<unsigned>(std::min<std::size_t>(n - done, 1024));
      const int r = ::sendmmsg(fd_, msgs_.data() + done, chunk, 0);
      ++c_.syscalls;
      if (r > 0) {
        for (int i = 0; i < r; ++i) c_.bytes += iov_[done + i].iov_len;
        c_.datagrams += static_cast<uint64_t>(r);
        done += static_cast<std::size_t>(r);
        attempts = 0;
        if (static_cast<unsigned>(r) < chunk) {
          // sendmmsg stops at a datagram that failed and drops its error (e.g. EPERM: a
          // netfilter rule dropped it). Sending it again would retransmit a lost datagram:
          // count it lost instead.
          ++c_.dropped;
          ++done;
        }
        continue;
      }
      const int e = r < 0 ? errno : EAGAIN;
      ++attempts;
      if (e == ECONNREFUSED) {
        ++c_.refused;
        if (attempts <= 2) continue;
        ++c_.dropped;  // give this one datagram up, go on with the next
        ++done;
        attempts = 0;
        continue;
      }
      if (e == EPERM) {  // dropped by a local firewall rule: loss; go on with the next datagram
        ++c_.dropped;
        ++done;
        attempts = 0;
        continue;
      }
      if (e == EINTR || e == ENOBUFS || e == EAGAIN || e == EWOULDBLOCK) {
        ++c_.retries;
        if (attempts < 20000) {
          if (e != EINTR) backoff();
          continue;
        }
        c_.dropped += n - done;
        return Status::Ok();
      }
      return io_error("sendmmsg to " + desc_, e);
    }
    return Status::Ok();
  }

  int fd_;
  bool gso_;
  std::string desc_;
  SinkCounters c_;
  std::vector<mmsghdr> msgs_;
  std::vector<iovec> iov_;
};

}  // namespace

Status make_udp_source(const UdpSourceOptions& o, std::unique_ptr<DatagramSource>* out, UdpSourceInfo* info) {
  if (o.batch < 1 || o.batch > 1024) return Status::Invalid("batch must be in [1, 1024], got " + std::to_string(o.batch));
  sockaddr_storage ss{};
  socklen_t sl = 0;
  PYAGG_RETURN_IF_ERROR(resolve(o.host, o.port, &ss, &sl, true));
  Fd fd(::socket(ss.ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, IPPROTO_UDP));
  if (fd.get() < 0) return io_error("socket(UDP)", errno);
  UdpSourceInfo inf;
  inf.family = ss.ss_family;
  inf.rcvbuf_requested = o.rcvbuf;
  if (o.rcvbuf > 0) {
    const int want = static_cast<int>(std::min<std::size_t>(o.rcvbuf, std::size_t(INT32_MAX) / 2));
    // SO_RCVBUFFORCE (CAP_NET_ADMIN) ignores net.core.rmem_max; SO_RCVBUF is capped by it.
    if (setsockopt(fd.get(), SOL_SOCKET, SO_RCVBUFFORCE, &want, sizeof(want)) != 0) {
      setsockopt(fd.get(), SOL_SOCKET, SO_RCVBUF, &want, sizeof(want));
    }
  }
  int granted = 0;
  socklen_t gl = sizeof(granted);
  if (getsockopt(fd.get(), SOL_SOCKET, SO_RCVBUF, &granted, &gl) == 0) inf.rcvbuf_granted = std::size_t(granted);
  const int one = 1;
  if (o.gro) inf.gro = setsockopt(fd.get(), SOL_UDP, UDP_GRO, &one, sizeof(one)) == 0;
  setsockopt(fd.get(), SOL_SOCKET, SO_RXQ_OVFL, &one, sizeof(one));  // drop counter in every message
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&ss), sl) != 0) {
    return io_error("bind UDP " + o.host + ":" + std::to_string(o.port), errno);
  }
  sockaddr_storage bound{};
  socklen_t bl = sizeof(bound);
  if (getsockname(fd.get(), reinterpret_cast<sockaddr*>(&bound), &bl) != 0) return io_error("getsockname", errno);
  inf.host = addr_text(bound, &inf.port);
  const int wfd = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (wfd < 0) return io_error("eventfd", errno);
  const std::string desc = "udp://" + (inf.family == AF_INET6 ? "[" + inf.host + "]" : inf.host) + ":" +
                           std::to_string(inf.port);
  out->reset(new UdpSource(fd.release(), wfd, o.batch, desc));
  if (info) *info = inf;
  return Status::Ok();
}

Status make_udp_sink(const UdpSinkOptions& o, std::unique_ptr<DatagramSink>* out) {
  if (o.port <= 0 || o.port > 65535) return Status::Invalid("destination port must be in [1, 65535], got " +
                                                            std::to_string(o.port));
  sockaddr_storage ss{};
  socklen_t sl = 0;
  PYAGG_RETURN_IF_ERROR(resolve(o.host, o.port, &ss, &sl, false));
  Fd fd(::socket(ss.ss_family, SOCK_DGRAM | SOCK_CLOEXEC, IPPROTO_UDP));
  if (fd.get() < 0) return io_error("socket(UDP)", errno);
  if (o.sndbuf > 0) {
    const int want = static_cast<int>(std::min<std::size_t>(o.sndbuf, std::size_t(INT32_MAX) / 2));
    if (setsockopt(fd.get(), SOL_SOCKET, SO_SNDBUFFORCE, &want, sizeof(want)) != 0) {
      setsockopt(fd.get(), SOL_SOCKET, SO_SNDBUF, &want, sizeof(want));
    }
  }
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&ss), sl) != 0) {
    return io_error("connect UDP " + o.host + ":" + std::to_string(o.port), errno);
  }
  int port = 0;
  const std::string host = addr_text(ss, &port);
  const std::string desc = "udp://" + (ss.ss_family == AF_INET6 ? "[" + host + "]" : host) + ":" + std::to_string(port);
  out->reset(new UdpSink(fd.release(), o.gso, desc));
  return Status::Ok();
}

// ------------------------------------------------------ isolated source -----
namespace {

uint64_t meminfo_drops(int fd) {
  uint32_t mem[16] = {0};
  socklen_t len = sizeof(mem);
  if (fd >= 0 && getsockopt(fd, SOL_SOCKET, SO_MEMINFO, mem, &len) == 0 && len > 8 * sizeof(uint32_t)) {
    return mem[8];  // SK_MEMINFO_DROPS
  }
  return 0;
}

void set_rcvbuf(int fd, std::size_t bytes) {
  if (bytes == 0) return;
  const int want = static_cast<int>(std::min<std::size_t>(bytes, std::size_t(INT32_MAX) / 2));
  if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &want, sizeof(want)) != 0) {
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &want, sizeof(want));
  }
}

bool same_peer(const sockaddr_storage& a, std::size_t alen, const void* b, std::size_t blen) {
  sockaddr_storage x{};
  std::memcpy(&x, b, std::min(blen, sizeof(x)));
  if (a.ss_family != x.ss_family) return false;
  if (a.ss_family == AF_INET) {
    if (alen < sizeof(sockaddr_in) || blen < sizeof(sockaddr_in)) return false;
    auto* p = reinterpret_cast<const sockaddr_in*>(&a);
    auto* q = reinterpret_cast<const sockaddr_in*>(&x);
    return p->sin_port == q->sin_port && p->sin_addr.s_addr == q->sin_addr.s_addr;
  }
  if (a.ss_family == AF_INET6) {
    if (alen < sizeof(sockaddr_in6) || blen < sizeof(sockaddr_in6)) return false;
    auto* p = reinterpret_cast<const sockaddr_in6*>(&a);
    auto* q = reinterpret_cast<const sockaddr_in6*>(&x);
    return p->sin6_port == q->sin6_port && std::memcmp(&p->sin6_addr, &q->sin6_addr, sizeof(in6_addr)) == 0;
  }
  return false;
}

// Errors a UDP socket reports for ICMP messages or transient conditions: not fatal.
bool transient(int e) {
  return e == EAGAIN || e == EWOULDBLOCK || e == EINTR || e == ECONNREFUSED || e == EHOSTUNREACH ||
         e == ENETUNREACH || e == EHOSTDOWN || e == ENETDOWN || e == ENOMEM || e == ENOBUFS;
}

class IsolatedUdpSource final : public DatagramSource {
 public:
  IsolatedUdpSource(int catch_fd, int wake_fd, const sockaddr_storage& local, socklen_t local_len, std::size_t rows,
                    const UdpSourceOptions& o, std::size_t worker_rcvbuf, std::size_t worker_slot, std::string desc)
      : wake_fd_(wake_fd), local_(local), local_len_(local_len), o_(o), worker_rcvbuf_(worker_rcvbuf),
        worker_slot_(worker_slot), desc_(std::move(desc)) {
    catch_.init(catch_fd, std::min(o.batch, 16), 2048);  // only REGISTER (64 bytes) is accepted there
    rows_.resize(rows);
    // 64 KiB GRO slots: fewer of them per worker (each can hold a run of ~44 datagrams).
    worker_batch_ = worker_slot_ >= kRecvBufSize ? std::min(o.batch, 8) : o.batch;
  }
  ~IsolatedUdpSource() override {
    catch_.close();
    for (auto& r : rows_) r.ring.close();
    ::close(wake_fd_);
  }

  bool isolating() const override { return true; }

  Status recv_batch(int timeout_ms, std::vector<DatagramView>* out) override {
    out->clear();
    PYAGG_RETURN_IF_ERROR(round(out));
    if (!out->empty()) return Status::Ok();
    pfds_.clear();
    pfds_.push_back({wake_fd_, POLLIN, 0});
    pfds_.push_back({catch_.fd, POLLIN, 0});
    for (auto& r : rows_) {
      if (r.ring.fd >= 0) pfds_.push_back({r.ring.fd, POLLIN, 0});
    }
    const int rc = ::poll(pfds_.data(), pfds_.size(), timeout_ms);
    if (rc < 0) {
      if (errno == EINTR) return Status::Ok();
      return io_error("poll on " + desc_, errno);
    }
    if (pfds_[0].revents & POLLIN) clear_wake(wake_fd_);
    for (std::size_t i = 1; i < pfds_.size(); ++i) {
      if (pfds_[i].revents & POLLNVAL) return Status::Io("a socket of " + desc_ + " is not open");
    }
    if (rc == 0 || (rc == 1 && (pfds_[0].revents & POLLIN))) return Status::Ok();
    return round(out);
  }

  void wake() override { signal_wake(wake_fd_); }

  std::string describe() const override {
    std::size_t n = 0;
    for (auto& r : rows_) n += r.ring.fd >= 0;
    return desc_ + " (isolated: " + std::to_string(n) + "/" + std::to_string(rows_.size()) + " workers attached)";
  }

  uint64_t kernel_drops() const override { return meminfo_drops(catch_.fd); }
  uint64_t row_kernel_drops(std::size_t row) const override {
    if (row >= rows_.size()) return 0;
    return rows_[row].drops_base + meminfo_drops(rows_[row].ring.fd);
  }

  Status attach(std::size_t row, const void* addr, std::size_t len) override {
    if (row >= rows_.size()) return Status::Invalid("attach: row " + std::to_string(row) + " out of range");
    if (addr == nullptr || len > sizeof(sockaddr_storage) || len < sizeof(sa_family_t)) {
      return Status::Invalid("attach: not a socket address");
    }
    sockaddr_storage peer{};
    std::memcpy(&peer, addr, len);
    const std::size_t need = peer.ss_family == AF_INET ? sizeof(sockaddr_in)
                             : peer.ss_family == AF_INET6 ? sizeof(sockaddr_in6)
                                                          : 0;
    if (need == 0 || len < need || peer.ss_family != local_.ss_family) {
      return Status::Invalid("attach: source address family does not match the receive socket");
    }
    Fd fd(::socket(peer.ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, IPPROTO_UDP));
    if (fd.get() < 0) return io_error("socket(UDP) for a worker", errno);
    const int one = 1;
    if (setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0) {
      return io_error("SO_REUSEADDR", errno);
    }
    set_rcvbuf(fd.get(), worker_rcvbuf_);
    if (o_.gro) setsockopt(fd.get(), SOL_UDP, UDP_GRO, &one, sizeof(one));
    if (::bind(fd.get(), reinterpret_cast<const sockaddr*>(&local_), local_len_) != 0) {
      return io_error("bind a worker socket to " + desc_, errno);
    }
    // From now on the kernel prefers this socket (it matches the remote
    // address and port too) for datagrams from `peer`; anything that slipped
    // in before connect() is recognised by its source address in recv_batch.
    if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&peer), socklen_t(need)) != 0) {
      return io_error("connect a worker socket", errno);
    }
    RowSock& r = rows_[row];
    if (r.ring.fd >= 0) {
      r.drops_base += meminfo_drops(r.ring.fd);
      r.ring.close();
    }
    r.peer = peer;
    r.peer_len = need;
    r.ring.init(fd.release(), worker_batch_, worker_slot_);
    return Status::Ok();
  }

 private:
  struct RowSock {
    Ring ring;
    sockaddr_storage peer{};
    std::size_t peer_len = 0;
    uint64_t drops_base = 0;  // drops of sockets this row had before
  };

  // Every socket once, round-robin over the workers (a different one first each
  // round), one recvmmsg each, the catch-all last.
  Status round(std::vector<DatagramView>* out) {
    const std::size_t n = rows_.size();
    for (std::size_t k = 0; k < n; ++k) {
      const std::size_t row = (rr_ + k) % n;
      RowSock& r = rows_[row];
      if (r.ring.fd < 0) continue;
      PYAGG_RETURN_IF_ERROR(drain(r.ring, int(row), &r, out));
    }
    if (n) rr_ = (rr_ + 1) % n;
    return drain(catch_, -1, nullptr, out);
  }

  Status drain(Ring& ring, int origin, const RowSock* rs, std::vector<DatagramView>* out) {
    const int n = ring.receive();
    if (n < 0) {
      const int e = errno;
      if (transient(e)) return Status::Ok();
      return io_error("recvmmsg on " + desc_, e);
    }
    for (int i = 0; i < n; ++i) {
      int o = origin;
      if (rs != nullptr && !same_peer(rs->peer, rs->peer_len, &ring.names[i], ring.msgs[i].msg_hdr.msg_namelen)) {
        o = -1;  // arrived before connect()
      }
      ring.emit(i, o, out);
    }
    return Status::Ok();
  }

  Ring catch_;
  int wake_fd_;
  sockaddr_storage local_;
  socklen_t local_len_;
  UdpSourceOptions o_;
  std::size_t worker_rcvbuf_;
  std::size_t worker_slot_;
  int worker_batch_ = 8;
  std::string desc_;
  std::vector<RowSock> rows_;
  std::vector<pollfd> pfds_;
  std::size_t rr_ = 0;
};

Status make_isolated_source(const UdpSourceOptions& o, std::size_t rows, std::size_t worker_rcvbuf,
                            std::size_t worker_slot, std::unique_ptr<DatagramSource>* out, UdpSourceInfo* info) {
  if (o.batch < 1 || o.batch > 1024) return Status::Invalid("batch must be in [1, 1024], got " + std::to_string(o.batch));
  sockaddr_storage ss{};
  socklen_t sl = 0;
  PYAGG_RETURN_IF_ERROR(resolve(o.host, o.port, &ss, &sl, true));
  Fd fd(::socket(ss.ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, IPPROTO_UDP));
  if (fd.get() < 0) return io_error("socket(UDP)", errno);
  const int one = 1;
  if (setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0) return io_error("SO_REUSEADDR", errno);
  UdpSourceInfo inf;
  inf.family = ss.ss_family;
  inf.rcvbuf_requested = o.catchall_rcvbuf;
  set_rcvbuf(fd.get(), o.catchall_rcvbuf);
  int granted = 0;
  socklen_t gl = sizeof(granted);
  if (getsockopt(fd.get(), SOL_SOCKET, SO_RCVBUF, &granted, &gl) == 0) inf.rcvbuf_granted = std::size_t(granted);
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&ss), sl) != 0) {
    return io_error("bind UDP " + o.host + ":" + std::to_string(o.port), errno);
  }
  sockaddr_storage bound{};
  socklen_t bl = sizeof(bound);
  if (getsockname(fd.get(), reinterpret_cast<sockaddr*>(&bound), &bl) != 0) return io_error("getsockname", errno);
  inf.host = addr_text(bound, &inf.port);
  inf.gro = o.gro;
  const int wfd = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (wfd < 0) return io_error("eventfd", errno);
  const std::string desc = "udp://" + (inf.family == AF_INET6 ? "[" + inf.host + "]" : inf.host) + ":" +
                           std::to_string(inf.port);
  out->reset(new IsolatedUdpSource(fd.release(), wfd, bound, bl, rows, o, worker_rcvbuf, worker_slot, desc));
  if (info) *info = inf;
  return Status::Ok();
}

}  // namespace

Status make_udp_receiver(const ReceiverConfig& cfg, const UdpSourceOptions& o, std::unique_ptr<GradientReceiver>* out,
                         UdpSourceInfo* info) {
  if (!(cfg.isolate || o.isolate)) {
    std::unique_ptr<DatagramSource> src;
    PYAGG_RETURN_IF_ERROR(make_udp_source(o, &src, info));
    return GradientReceiver::create(cfg, std::move(src), out);
  }
  ReceiverConfig c = cfg;
  c.isolate = true;
  Geometry g;
  PYAGG_RETURN_IF_ERROR(make_geometry(c.d, c.dtype, c.max_datagram, &g));
  if (c.ranks.empty()) return Status::Invalid("receiver needs at least one sender rank, got none");
  std::size_t wbuf = o.worker_rcvbuf;
  if (wbuf == 0) {
    // Two steps of this worker's datagrams (the kernel doubles the request for
    // its bookkeeping), at least 1 MiB, at most the configured rcvbuf.
    const double per_step = double(g.chunk_count) * double(kOverhead + g.chunk_bytes) + 4.0 * double(kOverhead + 8);
    const double want = std::max(2.0 * per_step, double(std::size_t{1} << 20));
    wbuf = std::size_t(std::min(want, double(std::max<std::size_t>(o.rcvbuf, std::size_t{1} << 20))));
  }
  // Without GRO a slot only needs one datagram (+1 byte to see oversize ones).
  const std::size_t slot = o.gro ? kRecvBufSize : c.max_datagram + 1;
  std::unique_ptr<DatagramSource> src;
  PYAGG_RETURN_IF_ERROR(make_isolated_source(o, c.ranks.size(), wbuf, slot, &src, info));
  if (info) info->rcvbuf_requested = o.catchall_rcvbuf;
  return GradientReceiver::create(c, std::move(src), out);
}

}  // namespace transport
}  // namespace pyagg
