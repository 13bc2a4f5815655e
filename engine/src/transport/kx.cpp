// pyagg engine — LossyMPI key agreement: per-rank datagram keys from X25519
// (libsodium crypto_kx) bound to (job id, rank, both public keys) with a keyed
// BLAKE2b. See pyagg/transport.h. Nothing here is hand-written crypto.
#include <cstring>

#include "transport/mac.h"
#include "pyagg/transport.h"

namespace pyagg {
namespace transport {

#ifdef PYAGG_WITH_SODIUM
namespace {

constexpr char kDomain[] = "pyagg.lossympi.v1.datagram-key";

static_assert(crypto_kx_PUBLICKEYBYTES == kKxPublicKeySize, "crypto_kx public key size");
static_assert(crypto_kx_SECRETKEYBYTES == kKxSecretKeySize, "crypto_kx secret key size");
static_assert(crypto_kx_SESSIONKEYBYTES == kKeySize, "crypto_kx session key size");

// out32 <- BLAKE2b-256_session(domain || job || rank || worker_pk || server_pk).
Status derive(const uint8_t* session, const uint8_t* worker_pk, const uint8_t* server_pk, uint32_t job_id,
              uint32_t rank, uint8_t* out32) {
  crypto_generichash_state st;
  uint8_t ids[8];
  for (int i = 0; i < 4; ++i) {
    ids[i] = uint8_t(job_id >> (24 - 8 * i));
    ids[4 + i] = uint8_t(rank >> (24 - 8 * i));
  }
  if (crypto_generichash_init(&st, session, crypto_kx_SESSIONKEYBYTES, kKeySize) != 0 ||
      crypto_generichash_update(&st, reinterpret_cast<const uint8_t*>(kDomain), sizeof(kDomain) - 1) != 0 ||
      crypto_generichash_update(&st, ids, sizeof(ids)) != 0 ||
      crypto_generichash_update(&st, worker_pk, kKxPublicKeySize) != 0 ||
      crypto_generichash_update(&st, server_pk, kKxPublicKeySize) != 0 ||
      crypto_generichash_final(&st, out32, kKeySize) != 0) {
    sodium_memzero(&st, sizeof(st));
    return Status::Internal("BLAKE2b key derivation failed");
  }
  sodium_memzero(&st, sizeof(st));
  return Status::Ok();
}

Status check_args(const void* a, const void* b, const void* c, const void* out) {
  if (a == nullptr || b == nullptr || c == nullptr || out == nullptr) {
    return Status::Invalid("key agreement: null key or output pointer");
  }
  if (!crypto_ready()) return Status::Internal("libsodium could not be initialised");
  return Status::Ok();
}

}  // namespace

Status kx_keypair(uint8_t* pk32, uint8_t* sk32) {
  PYAGG_RETURN_IF_ERROR(check_args(pk32, sk32, pk32, sk32));
  if (crypto_kx_keypair(pk32, sk32) != 0) return Status::Internal("crypto_kx_keypair failed");
  return Status::Ok();
}

Status kx_server_key(const uint8_t* server_pk, const uint8_t* server_sk, const uint8_t* worker_pk, uint32_t job_id,
                     uint32_t rank, uint8_t* out32) {
  PYAGG_RETURN_IF_ERROR(check_args(server_pk, server_sk, worker_pk, out32));
  uint8_t rx[crypto_kx_SESSIONKEYBYTES], tx[crypto_kx_SESSIONKEYBYTES];
  if (crypto_kx_server_session_keys(rx, tx, server_pk, server_sk, worker_pk) != 0) {
    sodium_memzero(rx, sizeof(rx));
    sodium_memzero(tx, sizeof(tx));
    return Status::Invalid("key agreement refused the public key of rank " + std::to_string(rank) +
                           " (a low-order point)");
  }
  Status st = derive(rx, worker_pk, server_pk, job_id, rank, out32);
  sodium_memzero(rx, sizeof(rx));
  sodium_memzero(tx, sizeof(tx));
  if (!st.ok()) sodium_memzero(out32, kKeySize);
  return st;
}

Status kx_worker_key(const uint8_t* worker_pk, const uint8_t* worker_sk, const uint8_t* server_pk, uint32_t job_id,
                     uint32_t rank, uint8_t* out32) {
  PYAGG_RETURN_IF_ERROR(check_args(worker_pk, worker_sk, server_pk, out32));
  uint8_t rx[crypto_kx_SESSIONKEYBYTES], tx[crypto_kx_SESSIONKEYBYTES];
  if (crypto_kx_client_session_keys(rx, tx, worker_pk, worker_sk, server_pk) != 0) {
    sodium_memzero(rx, sizeof(rx));
    sodium_memzero(tx, sizeof(tx));
    return Status::Invalid("key agreement refused the server's public key (a low-order point)");
  }
  Status st = derive(tx, worker_pk, server_pk, job_id, rank, out32);
  sodium_memzero(rx, sizeof(rx));
  sodium_memzero(tx, sizeof(tx));
  if (!st.ok()) sodium_memzero(out32, kKeySize);
  return st;
}

#else  // !PYAGG_WITH_SODIUM

namespace {
Status no_sodium() {
  return Status::Unsupported(
      "key agreement needs libsodium, which this build does not have (install libsodium-dev and rebuild)");
}
}  // namespace
Status kx_keypair(uint8_t*, uint8_t*) { return no_sodium(); }
Status kx_server_key(const uint8_t*, const uint8_t*, const uint8_t*, uint32_t, uint32_t, uint8_t*) {
  return no_sodium();
}
Status kx_worker_key(const uint8_t*, const uint8_t*, const uint8_t*, uint32_t, uint32_t, uint8_t*) {
  return no_sodium();
}

#endif

}  // namespace transport
}  // namespace pyagg
