"""Importing this module makes `import socket` give qnet.socket from then on (what `qnet run`
does for the program it starts). Modules that imported socket before keep the kernel's."""
import sys

from qnet import socket as _qsocket

sys.modules["socket"] = _qsocket
