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

// ------------------------------------------------------------ source -------
constexpr std::size_t kRecvBufSize = 65536;  // any UDP datagram or GRO run fits

class UdpSource final : public DatagramSource {
 public:
  UdpSource(int fd, int wake_fd, bool gro, int batch, std::string desc)
      : fd_(fd), wake_fd_(wake_fd), gro_(gro), batch_(batch), desc_(std::move(desc)) {
    storage_.resize(std::size_t(batch_) * kRecvBufSize);
    msgs_.resize(batch_);
    iov_.resize(batch_);
    ctrl_.resize(std::size_t(batch_) * kCtrlSize);
  }
  ~UdpSource() override {
    ::close(fd_);
    ::close(wake_fd_);
  }

  Status recv_batch(int timeout_ms, std::vector<DatagramView>* out) override {
    out->clear();
    int n = receive();
    if (n < 0) {
      const int e = errno;
      if (e != EAGAIN && e != EWOULDBLOCK && e != EINTR) return io_error("recvmmsg on " + desc_, e);
      pollfd p[2] = {{fd_, POLLIN, 0}, {wake_fd_, POLLIN, 0}};
      const int rc = ::poll(p, 2, timeout_ms);
      if (rc < 0) {
        if (errno == EINTR) return Status::Ok();
        return io_error("poll on " + desc_, errno);
      }
      if (p[1].revents & POLLIN) {
        uint64_t v;
        ssize_t r = ::read(wake_fd_, &v, sizeof(v));
        (void)r;
      }
      if (p[0].revents & (POLLERR | POLLNVAL)) {
        int err = 0;
        socklen_t l = sizeof(err);
        getsockopt(fd_, SOL_SOCKET, SO_ERROR, &err, &l);
        if (p[0].revents & POLLNVAL) return Status::Io("socket of " + desc_ + " is not open");
        (void)err;  // ICMP errors on an unconnected UDP socket: nothing to do
      }
      if (!(p[0].revents & POLLIN)) return Status::Ok();
      n = receive();
      if (n < 0) {
        const int e2 = errno;
        if (e2 == EAGAIN || e2 == EWOULDBLOCK || e2 == EINTR) return Status::Ok();
        return io_error("recvmmsg on " + desc_, e2);
      }
    }
    for (int i = 0; i < n; ++i) {
      const uint8_t* base = storage_.data() + std::size_t(i) * kRecvBufSize;
      const std::size_t len = msgs_[i].msg_len;
      const bool trunc = (msgs_[i].msg_hdr.msg_flags & MSG_TRUNC) != 0;
      int seg = 0;
      for (cmsghdr* c = CMSG_FIRSTHDR(&msgs_[i].msg_hdr); c != nullptr; c = CMSG_NXTHDR(&msgs_[i].msg_hdr, c)) {
        if (c->cmsg_level == SOL_UDP && c->cmsg_type == UDP_GRO) {
          std::memcpy(&seg, CMSG_DATA(c), sizeof(int));
        } else if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SO_RXQ_OVFL) {
          uint32_t drops = 0;  // cumulative, wraps at 2^32
          std::memcpy(&drops, CMSG_DATA(c), sizeof(drops));
          const uint32_t prev = static_cast<uint32_t>(drops_.load(std::memory_order_relaxed));
          drops_.fetch_add(uint32_t(drops - prev), std::memory_order_relaxed);
        }
      }
      if (seg > 0 && std::size_t(seg) < len && !trunc) {
        // A GRO run: datagrams of `seg` bytes back to back, the last possibly shorter.
        for (std::size_t off = 0; off < len; off += std::size_t(seg)) {
          out->push_back({base + off, std::min<std::size_t>(std::size_t(seg), len - off), false});
        }
      } else {
        out->push_back({base, len, trunc});
      }
    }
    return Status::Ok();
  }

  void wake() override {
    uint64_t one = 1;
    ssize_t r = ::write(wake_fd_, &one, sizeof(one));
    (void)r;
  }

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
  static constexpr std::size_t kCtrlSize = CMSG_SPACE(sizeof(int)) + CMSG_SPACE(sizeof(uint32_t)) + 64;

  int receive() {
    for (int i = 0; i < batch_; ++i) {
      iov_[i].iov_base = storage_.data() + std::size_t(i) * kRecvBufSize;
      iov_[i].iov_len = kRecvBufSize;
      msghdr& h = msgs_[i].msg_hdr;
      std::memset(&h, 0, sizeof(h));
      h.msg_iov = &iov_[i];
      h.msg_iovlen = 1;
      h.msg_control = ctrl_.data() + std::size_t(i) * kCtrlSize;
      h.msg_controllen = kCtrlSize;
      msgs_[i].msg_len = 0;
    }
    return ::recvmmsg(fd_, msgs_.data(), static_cast<unsigned>(batch_), MSG_DONTWAIT, nullptr);
  }

  int fd_;
  int wake_fd_;
  bool gro_;
  int batch_;
  std::string desc_;
  std::vector<uint8_t> storage_;
  std::vector<mmsghdr> msgs_;
  std::vector<iovec> iov_;
  std::vector<uint8_t> ctrl_;
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
  out->reset(new UdpSource(fd.release(), wfd, inf.gro, o.batch, desc));
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

}  // namespace transport
}  // namespace pyagg
