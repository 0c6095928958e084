"""A test component that uses test.counter: it calls it every 50 ms and counts outcomes."""
from components.runtime import Component, run_component
from ipc import errors
from ipc.rpc import RpcClient
from tests.components.decls import COUNTER, PEER


class Peer(Component):
    def __init__(self, rt):
        super().__init__(rt)
        self.ok = 0
        self.failed = 0
        self.last_error = ""
        self.last_value = None
        ep = rt.spec.peers["test.counter"]["rpc"]
        self.client = RpcClient(ep, COUNTER, timeout=0.5, retries=2)

    def implementations(self):
        return {PEER: self}

    def activate(self, state):
        self.rt.loop.call_every(0.05, self.tick)

    def tick(self):
        try:
            self.last_value = self.client.call("get")
            self.ok += 1
        except errors.IpcError as exc:
            self.failed += 1
            self.last_error = str(exc)

    def stats(self):
        return {"ok": self.ok, "failed": self.failed, "last_error": self.last_error, "last_value": self.last_value}


if __name__ == "__main__":
    run_component(Peer)
