"""LeaseStore: atomic replace, round trip, corrupt files moved aside and reported."""

from __future__ import annotations

import os
from unittest import mock

import pytest

from components.dhcpd.leases import LeaseStore, LeaseStoreError

DATA = {"version": 1, "leases": [{"mac": "020000000001", "address": "10.0.0.5",
                                  "remaining": 12.5, "client_id": None, "hostname": "a"}],
        "history": [["mac:020000000002", "10.0.0.6"]], "raw": b"\x00\xff"}


def test_missing_file_loads_as_empty(tmp_path):
    assert LeaseStore(tmp_path / "none.leases").load() == {}


def test_save_load_round_trip_leaves_no_temporary_files(tmp_path):
    store = LeaseStore(tmp_path / "p.leases")
    store.save(DATA)
    assert store.load() == DATA
    store.save({"version": 1, "leases": []})
    assert store.load() == {"version": 1, "leases": []}
    assert sorted(os.listdir(tmp_path)) == ["p.leases"]
    assert (os.stat(tmp_path / "p.leases").st_mode & 0o777) == 0o600


def test_save_fsyncs_file_and_directory_before_and_after_rename(tmp_path):
    store = LeaseStore(tmp_path / "p.leases")
    calls = []
    real_fsync, real_replace = os.fsync, os.replace
    with mock.patch("components.dhcpd.leases.os.fsync",
                    side_effect=lambda fd: (calls.append("fsync"), real_fsync(fd))), \
            mock.patch("components.dhcpd.leases.os.replace",
                       side_effect=lambda a, b: (calls.append("rename"), real_replace(a, b))):
        store.save(DATA)
    assert calls == ["fsync", "rename", "fsync"]


def test_crash_before_rename_keeps_the_old_contents(tmp_path):
    store = LeaseStore(tmp_path / "p.leases")
    store.save(DATA)
    with mock.patch("components.dhcpd.leases.os.replace", side_effect=OSError("crash")):
        with pytest.raises(LeaseStoreError, match="p.leases"):
            store.save({"version": 1, "leases": []})
    assert store.load() == DATA
    assert sorted(os.listdir(tmp_path)) == ["p.leases"]


@pytest.mark.parametrize("garbage", [b"", b"\x00\x01garbage", b"\x81\xa6format\xa3xyz"])
def test_corrupt_file_is_moved_aside_and_reported_by_name(tmp_path, garbage):
    path = tmp_path / "p.leases"
    path.write_bytes(garbage)
    store = LeaseStore(path)
    with pytest.raises(LeaseStoreError) as info:
        store.load()
    assert str(path) in str(info.value) and "corrupt" in str(info.value)
    assert info.value.moved_to == tmp_path / "p.leases.corrupt"
    assert info.value.moved_to.read_bytes() == garbage
    assert store.load() == {}  # the next incarnation starts clean


def test_flipped_byte_is_caught_by_checksum_and_old_corrupt_files_are_kept(tmp_path):
    path = tmp_path / "p.leases"
    store = LeaseStore(path)
    (tmp_path / "p.leases.corrupt").write_bytes(b"older evidence")
    store.save(DATA)
    blob = bytearray(path.read_bytes())
    blob[-3] ^= 0x01
    path.write_bytes(bytes(blob))
    with pytest.raises(LeaseStoreError) as info:
        store.load()
    assert info.value.moved_to == tmp_path / "p.leases.corrupt.1"
    assert (tmp_path / "p.leases.corrupt").read_bytes() == b"older evidence"
