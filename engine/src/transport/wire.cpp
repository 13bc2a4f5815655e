// pyagg engine — LossyMPI wire format: header coding, nonces, chunk geometry,
// MACs (libsodium), datagram sealing. See pyagg/transport.h for the layout.
#include <cstring>
#include <mutex>
#include <string>

#include "transport/mac.h"
#include "pyagg/transport.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "LossyMPI payloads are little-endian IEEE-754; add byte swapping for this host"
#endif

namespace pyagg {
namespace transport {

namespace {

inline void put16(uint8_t* p, uint16_t v) {
  p[0] = uint8_t(v >> 8);
  p[1] = uint8_t(v);
}
inline void put32(uint8_t* p, uint32_t v) {
  v = __builtin_bswap32(v);
  std::memcpy(p, &v, 4);
}
inline void put64(uint8_t* p, uint64_t v) {
  v = __builtin_bswap64(v);
  std::memcpy(p, &v, 8);
}
inline uint16_t get16(const uint8_t* p) { return uint16_t((uint16_t(p[0]) << 8) | p[1]); }
inline uint32_t get32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return __builtin_bswap32(v);
}
inline uint64_t get64(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return __builtin_bswap64(v);
}

}  // namespace

const char* mac_name(MacAlgo m) {
  switch (m) {
    case MacAlgo::kNone: return "none";
    case MacAlgo::kAes256Gcm: return "aes256gcm";
    case MacAlgo::kChaCha20Poly1305: return "chacha20poly1305";
  }
  return "?";
}

const char* fill_name(FillPolicy f) {
  switch (f) {
    case FillPolicy::kNan: return "nan";
    case FillPolicy::kRandom: return "random";
    case FillPolicy::kZero: return "zero";
    case FillPolicy::kLast: return "last";
  }
  return "?";
}

const char* end_reason_name(EndReason r) {
  switch (r) {
    case EndReason::kComplete: return "complete";
    case EndReason::kMarkers: return "markers";
    case EndReason::kDeadline: return "deadline";
    case EndReason::kNobody: return "nobody";
  }
  return "?";
}

bool crypto_ready() {
#ifdef PYAGG_WITH_SODIUM
  static const bool ok = sodium_init() >= 0;
  return ok;
#else
  return false;
#endif
}

bool mac_available(MacAlgo m) {
  switch (m) {
    case MacAlgo::kNone: return true;
#ifdef PYAGG_WITH_SODIUM
    case MacAlgo::kAes256Gcm: return crypto_ready() && crypto_aead_aes256gcm_is_available() != 0;
    case MacAlgo::kChaCha20Poly1305: return crypto_ready();
#else
    default: return false;
#endif
  }
  return false;
}

Status parse_mac(const std::string& name, MacAlgo* out) {
  if (name == "none") {
    *out = MacAlgo::kNone;
  } else if (name == "aes256gcm") {
    *out = MacAlgo::kAes256Gcm;
  } else if (name == "chacha20poly1305") {
    *out = MacAlgo::kChaCha20Poly1305;
  } else if (name == "auto") {
    if (mac_available(MacAlgo::kAes256Gcm)) {
      *out = MacAlgo::kAes256Gcm;
    } else if (mac_available(MacAlgo::kChaCha20Poly1305)) {
      *out = MacAlgo::kChaCha20Poly1305;
    } else {
      return Status::Unsupported(
          "no MAC available: pyagg was built without libsodium (PYAGG_WITH_SODIUM); install libsodium-dev and "
          "rebuild, or switch authentication off explicitly (mac='none' / auth=False)");
    }
    return Status::Ok();
  } else {
    return Status::Invalid("unknown mac '" + name + "'; known: auto, aes256gcm, chacha20poly1305, none");
  }
  if (!mac_available(*out)) {
    return Status::Unsupported(std::string("mac ") + name +
                               (crypto_ready() ? " is not available on this CPU (AES-256-GCM needs AES-NI and PCLMUL)"
                                               : " needs libsodium, which this build does not have"));
  }
  return Status::Ok();
}

Status parse_fill(const std::string& name, FillPolicy* out) {
  if (name == "nan") {
    *out = FillPolicy::kNan;
  } else if (name == "random") {
    *out = FillPolicy::kRandom;
  } else if (name == "zero") {
    *out = FillPolicy::kZero;
  } else if (name == "last") {
    *out = FillPolicy::kLast;
  } else {
    return Status::Invalid("unknown fill policy '" + name + "'; known: nan, random, zero, last");
  }
  return Status::Ok();
}

void encode_header(const Header& h, uint8_t* o) {
  put32(o + 0, kMagic);
  o[4] = kVersion;
  o[5] = static_cast<uint8_t>(h.kind);
  o[6] = static_cast<uint8_t>(h.mac);
  o[7] = h.dtype;
  put32(o + 8, h.job_id);
  put32(o + 12, h.rank);
  put64(o + 16, h.step);
  put16(o + 24, h.tensor_id);
  put16(o + 26, h.header_len);
  put32(o + 28, h.chunk_index);
  put32(o + 32, h.chunk_count);
  put32(o + 36, h.payload_len);
  put64(o + 40, h.total_elems);
}

bool decode_header(const uint8_t* p, Header* h) {
  if (get32(p) != kMagic || p[4] != kVersion) return false;
  h->kind = static_cast<Kind>(p[5]);
  h->mac = static_cast<MacAlgo>(p[6]);
  h->dtype = p[7];
  h->job_id = get32(p + 8);
  h->rank = get32(p + 12);
  h->step = get64(p + 16);
  h->tensor_id = get16(p + 24);
  h->header_len = get16(p + 26);
  h->chunk_index = get32(p + 28);
  h->chunk_count = get32(p + 32);
  h->payload_len = get32(p + 36);
  h->total_elems = get64(p + 40);
  return true;
}

void make_nonce(const Header& h, uint8_t* n) {
  const uint64_t s = h.step & kMaxStep;
  for (int i = 0; i < 6; ++i) n[i] = uint8_t(s >> (8 * (5 - i)));
  put16(n + 6, h.tensor_id);
  put32(n + 8, h.chunk_index);
}

Status make_geometry(std::size_t d, DType dtype, std::size_t max_datagram, Geometry* g) {
  if (dtype != DType::kFloat32 && dtype != DType::kFloat64) {
    return Status::Invalid("dtype must be float32 or float64, got code " + std::to_string(int(dtype)));
  }
  if (d == 0) return Status::Invalid("d must be >= 1, got d=0");
  if (max_datagram < kMinMaxDatagram || max_datagram > kMaxMaxDatagram) {
    return Status::Invalid("max_datagram must be in [" + std::to_string(kMinMaxDatagram) + ", " +
                           std::to_string(kMaxMaxDatagram) + "], got " + std::to_string(max_datagram));
  }
  Geometry r;
  r.d = d;
  r.elem_size = dtype_size(dtype);
  r.chunk_elems = (max_datagram - kOverhead) / r.elem_size;
  r.chunk_bytes = r.chunk_elems * r.elem_size;
  if (d > SIZE_MAX / r.elem_size) return Status::Invalid("d=" + std::to_string(d) + " overflows the byte size");
  r.total_bytes = d * r.elem_size;
  r.chunk_count = (d + r.chunk_elems - 1) / r.chunk_elems;
  if (r.chunk_count > std::size_t{kEndChunkIndex} - 1) {
    return Status::Invalid("d=" + std::to_string(d) + " needs " + std::to_string(r.chunk_count) +
                           " chunks, more than the 2^32-2 a header can number; raise max_datagram");
  }
  *g = r;
  return Status::Ok();
}

// ---------------------------------------------------------------- MAC ------
Mac::~Mac() {
#ifdef PYAGG_WITH_SODIUM
  sodium_memzero(&aes_, sizeof(aes_));
  sodium_memzero(key_, sizeof(key_));
#endif
}

Status Mac::init(MacAlgo algo, const uint8_t* key) {
  algo_ = algo;
  if (algo == MacAlgo::kNone) return Status::Ok();
  if (algo != MacAlgo::kAes256Gcm && algo != MacAlgo::kChaCha20Poly1305) {
    return Status::Invalid("unknown mac algorithm code " + std::to_string(int(algo)));
  }
  if (!mac_available(algo)) {
    return Status::Unsupported(std::string("mac ") + mac_name(algo) + " is not available in this build/CPU");
  }
  if (key == nullptr) return Status::Invalid("a 32-byte key is required for mac " + std::string(mac_name(algo)));
#ifdef PYAGG_WITH_SODIUM
  std::memcpy(key_, key, sizeof(key_));
  if (algo == MacAlgo::kAes256Gcm) crypto_aead_aes256gcm_beforenm(&aes_, key);
  return Status::Ok();
#else
  return Status::Unsupported("built without libsodium");
#endif
}

void Mac::sign(const uint8_t* ad, std::size_t len, const uint8_t* nonce, uint8_t* tag) const {
#ifdef PYAGG_WITH_SODIUM
  unsigned long long taglen = 0;
  static const uint8_t kEmpty[1] = {0};
  uint8_t none[1];  // the (empty) ciphertext
  switch (algo_) {
    case MacAlgo::kAes256Gcm:
      crypto_aead_aes256gcm_encrypt_detached_afternm(none, tag, &taglen, kEmpty, 0, ad, len, nullptr, nonce, &aes_);
      return;
    case MacAlgo::kChaCha20Poly1305:
      crypto_aead_chacha20poly1305_ietf_encrypt_detached(none, tag, &taglen, kEmpty, 0, ad, len, nullptr, nonce,
                                                         key_);
      return;
    default:
      break;
  }
#endif
  std::memset(tag, 0, kTagSize);
}

bool Mac::verify(const uint8_t* ad, std::size_t len, const uint8_t* nonce, const uint8_t* tag) const {
#ifdef PYAGG_WITH_SODIUM
  static const uint8_t kEmpty[1] = {0};
  uint8_t dummy[1];
  switch (algo_) {
    case MacAlgo::kAes256Gcm:
      return crypto_aead_aes256gcm_decrypt_detached_afternm(dummy, nullptr, kEmpty, 0, tag, ad, len, nonce, &aes_) ==
             0;
    case MacAlgo::kChaCha20Poly1305:
      return crypto_aead_chacha20poly1305_ietf_decrypt_detached(dummy, nullptr, kEmpty, 0, tag, ad, len, nonce,
                                                                key_) == 0;
    default:
      break;
  }
#endif
  if (algo_ != MacAlgo::kNone) return false;
  // No authentication (explicitly configured): the tag field must be zero.
  uint8_t acc = 0;
  for (std::size_t i = 0; i < kTagSize; ++i) acc |= tag[i];
  return acc == 0;
}

Status seal_datagram(const Header& h, const void* payload, std::size_t payload_len, const uint8_t* key,
                     std::vector<uint8_t>* out) {
  if (payload_len > kMaxMaxDatagram) return Status::Invalid("payload_len too large: " + std::to_string(payload_len));
  Mac mac;
  PYAGG_RETURN_IF_ERROR(mac.init(h.mac, key));
  Header hh = h;
  hh.payload_len = static_cast<uint32_t>(payload_len);
  out->assign(kHeaderSize + payload_len + kTagSize, 0);
  encode_header(hh, out->data());
  if (payload_len) std::memcpy(out->data() + kHeaderSize, payload, payload_len);
  uint8_t nonce[12];
  make_nonce(hh, nonce);
  mac.sign(out->data(), kHeaderSize + payload_len, nonce, out->data() + kHeaderSize + payload_len);
  return Status::Ok();
}

}  // namespace transport
}  // namespace pyagg
