// pyagg engine — LossyMPI message authentication (internal).
//
// Authenticate-only AEAD from libsodium: the whole datagram (header + payload)
// is the associated data, the plaintext is empty, the 16-byte tag is the MAC.
// AES-256-GCM (GMAC) when the CPU has AES-NI + PCLMUL, else
// ChaCha20-Poly1305-IETF. Both need a nonce unique per key: see make_nonce().
#pragma once

#include <cstddef>
#include <cstdint>

#include "pyagg/config.h"
#include "pyagg/status.h"
#include "pyagg/transport.h"

#ifdef PYAGG_WITH_SODIUM
#include <sodium.h>
#endif

namespace pyagg {
namespace transport {

// Initialises libsodium once (thread-safe); false if it cannot be.
bool crypto_ready();

class Mac {
 public:
  Mac() = default;
  ~Mac();
  Mac(const Mac&) = delete;
  Mac& operator=(const Mac&) = delete;

  // key: 32 bytes (ignored for kNone).
  Status init(MacAlgo algo, const uint8_t* key);
  MacAlgo algo() const { return algo_; }
  // tag <- MAC(ad[0, len)) under nonce.
  void sign(const uint8_t* ad, std::size_t len, const uint8_t* nonce, uint8_t* tag) const;
  // Constant-time check of tag against MAC(ad[0, len)).
  bool verify(const uint8_t* ad, std::size_t len, const uint8_t* nonce, const uint8_t* tag) const;

 private:
  MacAlgo algo_ = MacAlgo::kNone;
#ifdef PYAGG_WITH_SODIUM
  crypto_aead_aes256gcm_state aes_;  // CRYPTO_ALIGN(16): expanded AES key + GHASH table
  uint8_t key_[crypto_aead_chacha20poly1305_ietf_KEYBYTES] = {};
#endif
};

}  // namespace transport
}  // namespace pyagg
