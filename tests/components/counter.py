"""A test component: a counter whose value survives restarts by hand-over and checkpoint."""
import os
import sys
import time

from components.runtime import Component, run_component
from ipc import errors
from tests.components.decls import COUNTER


class Counter(Component):
    STATE_SCHEMA = 1

    def __init__(self, rt):
        super().__init__(rt)
        self.value = 0
        if rt.args.get("crash_on_start"):
            sys.exit(5)
        # Crash on start while a file exists: a test turns a healthy component into one whose
        # every respawn fails, and back.
        poison = rt.args.get("crash_while_exists")
        if poison and os.path.exists(poison):
            sys.exit(5)

    def implementations(self):
        return {COUNTER: self}

    def activate(self, state):
        if state:
            self.value = state["value"]

    def freeze(self):
        return {"value": self.value}

    def status(self):
        return {"value": self.value, "drops": 0}

    # -- test.counter ---
    def add(self, n):
        self.value += n
        self.rt.checkpoint({"value": self.value}, min_interval=0)
        return self.value

    def get(self):
        return self.value

    def pid(self):
        return os.getpid()

    def echo(self, data):
        return data

    def fail(self, code):
        if code == "bug":
            raise RuntimeError("a deliberate bug")
        raise errors.RemoteError(f"nothing called {code}", code="not_found")

    def handle_inode(self, name):
        fd = self.rt.handles.get(name)
        if fd is None:
            raise errors.RemoteError(f"no handle {name}", code="not_found")
        return os.fstat(fd).st_ino

    def crash(self):
        self.rt.loop.call_later(0.01, lambda: os._exit(3))
        return True

    def hang(self):
        self.rt.loop.call_later(0.01, lambda: time.sleep(3600))
        return True

    def record(self, items):
        return {"count": len(items)}


if __name__ == "__main__":
    run_component(Counter)
