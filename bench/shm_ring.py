"""A minimal shared-memory ring with eventfd doorbells, for the IPC benchmark only.

This is the alternative to SOCK_SEQPACKET socketpairs that issue 8 names for the
same-host data plane, in its simplest form, so that ``bench.ipc`` can measure it
beside the socketpair with the same batches. It is not part of ``ipc/``.

One ring carries messages one way, from a single producer to a single consumer:

    memfd, mmap'd MAP_SHARED by both processes
      [0:8]    head: messages published (u64, written by the producer only)
      [64:72]  tail: messages consumed  (u64, written by the consumer only)
      [128:]   ``slots`` slots of ``slot_size`` bytes: u32 length, then the message
    eventfd "data":  the producer writes 1 after publishing a message
    eventfd "space": the consumer writes 1 after freeing slots (every ``ack_every``)

A message is written into its slot with one copy, the head is stored after the
bytes, then the doorbell rings. The consumer reads the doorbell (which resets its
counter, so doorbells coalesce), then takes every message up to the head. It reads
each message in place through a memoryview, without copying, and frees the slot by
storing the tail.

Ordering relies on x86's total store order, on the indexes being single aligned
8-byte stores and loads, and on each store being a separate C call; a real
implementation would use atomics with release/acquire semantics. There is no validation, no restart story and no bound on a slow
consumer other than the ring's size: this is the transport's floor, the same role
the raw socketpair plays.
"""
from __future__ import annotations

import mmap
import os
import select
import struct
from typing import Any

# Native format on purpose: "<Q" packs and unpacks byte by byte, so a reader could see a
# torn index (one byte new, the next old) and take a slot that is not written yet; native
# "Q" is one aligned 8-byte load or store on x86 (both indexes sit at 8-aligned offsets).
_U64 = struct.Struct("Q")
_U32 = struct.Struct("<I")
HEAD_AT, TAIL_AT, SLOTS_AT = 0, 64, 128


class PassFd:
    """An fd given to a ``multiprocessing`` "spawn" child as an argument (duplicated for it)."""

    def __init__(self, fd: int):
        self.fd = fd

    def __reduce__(self):
        from multiprocessing import reduction
        return (_rebuild_fd, (reduction.DupFd(self.fd),))


def _rebuild_fd(dup: Any) -> int:
    return dup.detach()


class ShmRing:
    """One direction of a ring. Build it in the parent with ``create``; give the child ``spec()``."""

    def __init__(self, mem_fd: int, data_fd: int, space_fd: int, slots: int, slot_size: int):
        self.mem_fd, self.data_fd, self.space_fd = mem_fd, data_fd, space_fd
        self.slots, self.slot_size = slots, slot_size
        self.size = SLOTS_AT + slots * slot_size
        self.map = mmap.mmap(mem_fd, self.size)
        self.view = memoryview(self.map)
        self.head = _U64.unpack_from(self.view, HEAD_AT)[0]  # the producer's copy
        self.tail = _U64.unpack_from(self.view, TAIL_AT)[0]  # the consumer's copy
        self._data_poll = select.poll()
        self._data_poll.register(data_fd, select.POLLIN)
        self._space_poll = select.poll()
        self._space_poll.register(space_fd, select.POLLIN)

    @classmethod
    def create(cls, slots: int, slot_size: int) -> "ShmRing":
        fd = os.memfd_create("qnet-bench-ring")
        os.ftruncate(fd, SLOTS_AT + slots * slot_size)
        return cls(fd, os.eventfd(0, os.EFD_NONBLOCK), os.eventfd(0, os.EFD_NONBLOCK), slots, slot_size)

    def spec(self) -> tuple:
        """What a spawned child passes to ``ShmRing(*spec)`` to open the same ring."""
        return (PassFd(self.mem_fd), PassFd(self.data_fd), PassFd(self.space_fd), self.slots, self.slot_size)

    @property
    def max_message(self) -> int:
        return self.slot_size - 4

    # -- producer ------------------------------------------------------------------------
    def free_slots(self) -> int:
        return self.slots - (self.head - _U64.unpack_from(self.view, TAIL_AT)[0])

    def put(self, data: bytes | memoryview) -> bool:
        """Publish one message and ring the doorbell; False when the ring is full."""
        head = self.head
        if head - _U64.unpack_from(self.view, TAIL_AT)[0] >= self.slots:
            return False
        n = len(data)
        if n > self.slot_size - 4:
            raise ValueError(f"message of {n} bytes exceeds the slot ({self.slot_size - 4})")
        at = SLOTS_AT + (head % self.slots) * self.slot_size
        _U32.pack_into(self.view, at, n)
        self.view[at + 4:at + 4 + n] = data
        self.head = head + 1
        _U64.pack_into(self.view, HEAD_AT, head + 1)
        os.eventfd_write(self.data_fd, 1)
        return True

    def wait_space(self, timeout_ms: float) -> bool:
        """Block until the consumer rings "space" (or the timeout); True if it did."""
        if not self._space_poll.poll(timeout_ms):
            return False
        try:
            os.eventfd_read(self.space_fd)
        except BlockingIOError:
            pass
        return True

    def consumed(self) -> int:
        return _U64.unpack_from(self.view, TAIL_AT)[0]

    # -- consumer ------------------------------------------------------------------------
    def wait_data(self, timeout_ms: float) -> bool:
        """Block until the producer rings "data" (or the timeout); True if it did."""
        if not self._data_poll.poll(timeout_ms):
            return False
        try:
            os.eventfd_read(self.data_fd)
        except BlockingIOError:
            pass
        return True

    def peek(self) -> memoryview | None:
        """The oldest unconsumed message, in place (valid until ``release``), or None."""
        tail = self.tail
        if tail >= _U64.unpack_from(self.view, HEAD_AT)[0]:
            return None
        at = SLOTS_AT + (tail % self.slots) * self.slot_size
        n = _U32.unpack_from(self.view, at)[0]
        return self.view[at + 4:at + 4 + n]

    def release(self, ring_space: bool = True) -> None:
        """Free the slot ``peek`` returned; ring "space" if asked."""
        self.tail += 1
        _U64.pack_into(self.view, TAIL_AT, self.tail)
        if ring_space:
            os.eventfd_write(self.space_fd, 1)

    def close(self, fds: bool = True) -> None:
        try:
            self.view.release()
            self.map.close()
        except BufferError:
            pass  # a view of a slot is still held; the mapping goes with the process
        if fds:
            for fd in (self.mem_fd, self.data_fd, self.space_fd):
                try:
                    os.close(fd)
                except OSError:
                    pass
