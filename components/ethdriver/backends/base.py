"""The device contract every ethdriver backend fulfils, and the wrapper base for decorators.

A backend drives one already-open OS handle (a TAP fd, a QEMU stream or datagram socket) and moves
Ethernet frames in batches. It never opens or re-creates the kernel object it was given: the
launcher opens handles (see ``open_tap``, ``listen_stream``, ``open_dgram``) and hands the fds to
every incarnation of the driver, so a driver restart is invisible to QEMU (DESIGN.md principle 5).

Poll contract, the same for every backend:

* register ``fileno()`` for POLLIN (zmq.Poller or select); the number never changes for the
  life of the backend object;
* when it is readable call ``read_batch()``; it also completes pending work (accepting a peer,
  flushing a partial write), so a driver that only ever calls ``read_batch`` on readiness
  cannot spin or stall;
* ``write_batch()`` never blocks: what the kernel will not take now is either kept in a bounded
  pending buffer (stream backends, ``want_write()`` is then true and ``flush()`` retries) or
  dropped and counted in ``tx_dropped``;
* a backend with timed work (a wrapper's delay line) says when through ``next_deadline()``;
  the driver calls ``poll(now)`` then, and ``read_batch()`` after it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable

# QEMU's NET_BUFSIZE (net/net.h: 4096 + 65536): the largest frame any QEMU netdev hands over.
MAX_FRAME_LEN = 4096 + 65536
DEFAULT_MAX_FRAMES = 256
DEFAULT_MAX_BYTES = 1 << 20

COUNTER_NAMES = (
    "rx_frames", "rx_bytes", "rx_errors", "rx_dropped",
    "tx_frames", "tx_bytes", "tx_errors", "tx_dropped",
)


def new_counters(*extra: str) -> dict[str, int]:
    """The standard counters plus backend-specific ones, all zero."""
    return dict.fromkeys(COUNTER_NAMES + extra, 0)


class Backend(ABC):
    """One port's frame I/O. Subclasses set ``self._counters = new_counters(...)``."""

    _counters: dict[str, int]

    @abstractmethod
    def fileno(self) -> int:
        """A stable fd to poll for POLLIN; readable whenever ``read_batch`` has work."""

    @abstractmethod
    def read_batch(self, max_frames: int = DEFAULT_MAX_FRAMES,
                   max_bytes: int = DEFAULT_MAX_BYTES) -> list[bytes]:
        """Frames received, until the backend is empty or a bound is reached. Never blocks.

        The byte bound is checked before each frame is taken, so one batch may exceed it by
        at most one frame.
        """

    @abstractmethod
    def write_batch(self, frames: Iterable[bytes]) -> int:
        """Hand frames to the backend; returns how many were accepted (sent or queued).

        Frames that were not accepted were dropped and counted. Never blocks.
        """

    @abstractmethod
    def link_up(self) -> bool:
        """Whether frames can flow now (peer connected, interface up)."""

    @property
    def mtu(self) -> int:
        return 1500

    @property
    def mac(self) -> bytes | None:
        """The MAC of the far side of the backend if known (a TAP's kernel interface), else None."""
        return None

    def handles(self) -> tuple[int | None, ...]:
        """The kernel objects this backend drives, as fds: what the launcher must hold so a
        successor can take over (it may change, e.g. when a stream peer reconnects)."""
        raise NotImplementedError

    def want_write(self) -> bool:
        """True while a pending buffer waits for the kernel (only stream backends have one)."""
        return False

    def flush(self) -> int:
        """Retry pending writes; returns frames completed. No-op for backends without a buffer."""
        return 0

    def counters(self) -> dict[str, int]:
        return dict(self._counters)

    def tables(self) -> dict[str, dict]:
        """Bounded queues the backend keeps, as ipc.accounting.table rows (``qnet status --tables``)."""
        return {}

    # Timed work. A backend that holds frames for a time (a delay line) cannot announce their
    # release through its fd: the driver asks ``next_deadline()`` after every wake-up, calls
    # ``poll(now)`` when it has come, then ``read_batch()`` for received frames that came due.
    def next_deadline(self) -> float | None:
        """The time.monotonic() at which ``poll`` has work, or None. A time already past means
        frames wait for ``read_batch`` now."""
        return None

    def poll(self, now: float) -> None:
        """Do the timed work due by ``now`` (write out frames whose delay has run). Never blocks."""

    # Offloads (core/offload.py OFFLOAD_NAMES) the backend takes on write and may hand over on
    # read; with any, every frame in a batch carries a virtio-net header of this many bytes.
    frame_prefix_len = 0

    def offloads(self) -> tuple[str, ...]:
        return ()

    @abstractmethod
    def close(self) -> None:
        """Release this process's handles. Idempotent."""

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class BackendWrapper(Backend):
    """Delegates everything to an inner backend; decorators (fault, capture) override parts."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner

    def fileno(self) -> int:
        return self.inner.fileno()

    def read_batch(self, max_frames: int = DEFAULT_MAX_FRAMES,
                   max_bytes: int = DEFAULT_MAX_BYTES) -> list[bytes]:
        return self.inner.read_batch(max_frames, max_bytes)

    def write_batch(self, frames: Iterable[bytes]) -> int:
        return self.inner.write_batch(frames)

    def link_up(self) -> bool:
        return self.inner.link_up()

    @property
    def mtu(self) -> int:
        return self.inner.mtu

    @property
    def mac(self) -> bytes | None:
        return self.inner.mac

    def handles(self) -> tuple[int | None, ...]:
        return self.inner.handles()

    def want_write(self) -> bool:
        return self.inner.want_write()

    def flush(self) -> int:
        return self.inner.flush()

    def counters(self) -> dict[str, int]:
        return self.inner.counters()

    def tables(self) -> dict[str, dict]:
        return self.inner.tables()

    def next_deadline(self) -> float | None:
        return self.inner.next_deadline()

    def poll(self, now: float) -> None:
        self.inner.poll(now)

    @property
    def frame_prefix_len(self) -> int:
        return self.inner.frame_prefix_len

    def offloads(self) -> tuple[str, ...]:
        return self.inner.offloads()

    def close(self) -> None:
        self.inner.close()
