"""A test.counter server in its own process, for the RPC tests: python -m tests.unit.ipc._serve EP [--safe].

It runs the real Counter handlers on a bare RpcServer (no launcher, no
lifecycle): what is under test is the IPC layer. With --safe, crash and hang
answer but do nothing, so a fuzzer that stumbles on them cannot take the
server down. Prints "ready" once bound.
"""
import sys

from components.runtime import Loop, set_parent_death_signal
from ipc.rpc import Limits, RpcServer
from tests.components.counter import Counter
from tests.components.decls import COUNTER


class _Rt:
    """What Counter needs of a Runtime."""

    def __init__(self):
        self.name = "counter"
        self.args = {}
        self.handles = {}
        self.loop = Loop()

    def checkpoint(self, state, min_interval=0.2):
        pass


class SafeCounter(Counter):
    def crash(self):
        return True

    def hang(self):
        return True


def main(argv):
    set_parent_death_signal()  # never outlive the test run
    endpoint = argv[0]
    rt = _Rt()
    counter = (SafeCounter if "--safe" in argv else Counter)(rt)
    server = RpcServer(endpoint, {COUNTER: counter}, limits=Limits())
    rt.loop.add_reader(server.socket, server.process)
    print("ready", flush=True)
    rt.loop.run()


if __name__ == "__main__":
    main(sys.argv[1:])
