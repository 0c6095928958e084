"""tcp:// with CURVE: only clients whose public key the server lists get an answer."""
import threading

import pytest

from ipc import errors
from ipc.curve import ClientCurve, CurveKeys, ServerCurve
from ipc.rpc import RpcClient, RpcServer
from tests.components.decls import COUNTER


class _Impl:
    def get(self):
        return 42


@pytest.fixture
def curve_server():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server_keys, client_keys = CurveKeys.generate(), CurveKeys.generate()
    srv = RpcServer(f"tcp://127.0.0.1:{port}", {COUNTER: _Impl()},
                    curve=ServerCurve(server_keys, allowed=[client_keys.public]))
    stop = threading.Event()

    def loop():
        while not stop.is_set():
            if srv.socket.poll(50):
                srv.process()

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    try:
        yield f"tcp://127.0.0.1:{port}", server_keys, client_keys
    finally:
        stop.set()
        t.join(2)
        srv.close()


def test_client_with_listed_key_is_answered(curve_server):
    ep, server_keys, client_keys = curve_server
    with RpcClient(ep, COUNTER, curve=ClientCurve(client_keys, server_keys.public), timeout=3) as c:
        assert c.call("get") == 42


def test_client_with_unlisted_key_gets_no_answer(curve_server):
    ep, server_keys, _ = curve_server
    stranger = CurveKeys.generate()
    with RpcClient(ep, COUNTER, curve=ClientCurve(stranger, server_keys.public), timeout=1, retries=0) as c:
        with pytest.raises((errors.Timeout, errors.Unavailable)):
            c.call("get")


def test_client_without_curve_gets_no_answer(curve_server):
    ep, _, _ = curve_server
    with RpcClient(ep, COUNTER, timeout=1, retries=0) as c:
        with pytest.raises((errors.Timeout, errors.Unavailable)):
            c.call("get")


def test_keys_round_trip_through_certificate_files(tmp_path):
    keys = CurveKeys.generate()
    _, secret_file = keys.save(str(tmp_path), "netstack")
    loaded = CurveKeys.load(secret_file)
    assert len(loaded.public) == 40 and len(loaded.secret) == 40
