"""The one error type of the core."""

from __future__ import annotations


class StackError(Exception):
    """A request to the stack was refused.

    `code` is a short machine-readable reason: no_route, no_device, no_address,
    address_in_use, address_not_available, message_too_long, bad_argument, not_found, exists,
    limit, permission_denied, destination_required, link_down.
    """

    def __init__(self, code: str, message: str = "") -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message or code
