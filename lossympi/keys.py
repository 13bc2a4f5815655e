"""Per-job key agreement: no secret key ever crosses the network.

- The trusted launcher (``pyagg train``, or whoever starts the job) makes the
  server's X25519 key pair for this job (:func:`generate_server_keys`). The
  PUBLIC key reaches every rank through the launcher (environment variable
  :data:`ENV_PUBLIC`, hex); the SECRET key reaches rank 0 only, in a file of
  mode 0600 named by :data:`ENV_SECRET_FILE` in rank 0's own section of the
  mpiexec command line, which rank 0 reads and deletes at start-up.
- Each worker makes its own key pair and sends only its public key (HELLO).
- Both sides derive the worker's datagram key from libsodium's crypto_kx
  session keys and a keyed BLAKE2b over (job id, rank, both public keys), in
  the engine. A worker that presents another rank's public key gets a key it
  cannot compute (it lacks that rank's secret key), bound to its own rank.

What this does not cover: the MPI control plane itself is authenticated by the
launcher (MPI identifies each rank), not encrypted; processes of the same user
on the same host can read each other's memory and files.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass, field

from . import _wire
from .errors import InvalidArgumentError, TransportError

__all__ = [
    "ENV_PUBLIC",
    "ENV_SECRET_FILE",
    "KeyPair",
    "fingerprint",
    "generate_keys",
    "launch_args",
    "server_datagram_key",
    "server_keys_from_env",
    "server_public_key_from_env",
    "worker_datagram_key",
    "write_secret_file",
]

ENV_PUBLIC = "LOSSYMPI_SERVER_PUBLIC_KEY"
ENV_SECRET_FILE = "LOSSYMPI_SERVER_KEY_FILE"
KEY_BYTES = 32


@dataclass(frozen=True)
class KeyPair:
    """An X25519 key pair (the secret key is left out of repr)."""

    public: bytes
    secret: bytes = field(repr=False)


def generate_keys() -> KeyPair:
    """A fresh X25519 key pair (libsodium crypto_kx_keypair, in the engine)."""
    pk, sk = _wire.kx_keypair()
    return KeyPair(pk, sk)


def fingerprint(public_key: bytes) -> bytes:
    """8 bytes identifying a public key (lets a worker say which server key it was handed)."""
    return hashlib.blake2b(bytes(public_key), digest_size=8, person=b"lossympi-srv-pk").digest()


def _check(key: bytes, what: str) -> bytes:
    key = bytes(key)
    if len(key) != KEY_BYTES:
        raise InvalidArgumentError(f"{what} must be {KEY_BYTES} bytes, got {len(key)}")
    return key


def server_datagram_key(server: KeyPair, worker_public: bytes, job_id: int, rank: int) -> bytes:
    """The server's copy of worker `rank`'s datagram key."""
    return _wire.kx_server_key(_check(server.public, "server public key"), _check(server.secret, "server secret key"),
                               _check(worker_public, "worker public key"), int(job_id), int(rank))


def worker_datagram_key(worker: KeyPair, server_public: bytes, job_id: int, rank: int) -> bytes:
    """Worker `rank`'s datagram key, from its own key pair and the server's public key."""
    return _wire.kx_worker_key(_check(worker.public, "worker public key"), _check(worker.secret, "worker secret key"),
                               _check(server_public, "server public key"), int(job_id), int(rank))


# ---------------------------------------------------------- launcher side ---
def write_secret_file(keys: KeyPair, directory: str | None = None) -> str:
    """Writes the key pair (public || secret, 64 bytes) to a new file of mode 0600; returns its path."""
    fd, path = tempfile.mkstemp(prefix="lossympi-server-", suffix=".key", dir=directory)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, keys.public + keys.secret)
    finally:
        os.close(fd)
    return path


def launch_args(directory: str | None = None) -> tuple[list[str], list[str], KeyPair]:
    """mpiexec (MPICH hydra) arguments handing a fresh job key pair to the ranks.

    Returns (global_args, server_args, keys): put ``global_args`` right after
    ``mpiexec`` (every rank gets the public key) and ``server_args`` inside
    rank 0's own section (``-n 1 <server_args> cmd : -n N cmd``), so that only
    rank 0 learns where the secret key is. Rank 0 deletes the file when it reads it.
    """
    keys = generate_keys()
    path = write_secret_file(keys, directory)
    return ["-genv", ENV_PUBLIC, keys.public.hex()], ["-env", ENV_SECRET_FILE, path], keys


# ------------------------------------------------------------- rank side ---
def server_public_key_from_env() -> bytes | None:
    """The server public key the launcher handed this rank, or None."""
    raw = os.environ.get(ENV_PUBLIC)
    if not raw:
        return None
    try:
        key = bytes.fromhex(raw.strip())
    except ValueError as e:
        raise InvalidArgumentError(f"{ENV_PUBLIC} is not hex: {e}") from e
    return _check(key, ENV_PUBLIC)


def server_keys_from_env(consume: bool = True) -> KeyPair | None:
    """Rank 0: the key pair from the file named by the launcher (deleted after reading unless consume=False)."""
    path = os.environ.get(ENV_SECRET_FILE)
    if not path:
        return None
    try:
        with open(path, "rb") as fh:
            raw = fh.read(2 * KEY_BYTES + 1)
    except OSError as e:
        raise TransportError(f"cannot read the server key file {path} ({ENV_SECRET_FILE}): {e}") from e
    if consume:
        try:
            os.unlink(path)
        except OSError:
            pass
    if len(raw) != 2 * KEY_BYTES:
        raise TransportError(f"the server key file {path} must hold 64 bytes, got {len(raw)}")
    keys = KeyPair(raw[:KEY_BYTES], raw[KEY_BYTES:])
    expected = os.environ.get(ENV_PUBLIC)
    if expected and bytes.fromhex(expected.strip()) != keys.public:
        raise TransportError(f"{ENV_SECRET_FILE} does not belong to the public key in {ENV_PUBLIC}")
    return keys
