"""Loaded at start-up by every Python that `qnet run` starts (PYTHONPATH names this directory):
the program's `import socket` gets qnet.socket."""
import qnet.install  # noqa: F401
