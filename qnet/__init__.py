"""qnet for applications: `qnet.socket` is Python's socket module with AF_INET sockets on qnet."""
