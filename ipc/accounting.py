"""What counts as a loss: one list of counter-name patterns for every component's status.

Every component's ``status()`` returns, beside its own fields:

    "drops":           the sum of every counter whose name means something was lost
                       (``drops_of``, over all its counters, nested groups included),
    "internal_errors": handler bugs, loop callback failures (a nonzero count shows in the
                       NOTE column of ``qnet status``),
    "tables":          {name: {"size": n, "limit": n, "drops": n}} for every bounded table.

``qnet status`` shows DROPS from "drops"; ``qnet status --tables`` lists "tables".
"""
from __future__ import annotations

import re
from typing import Any, Mapping

# A counter means a loss when a word of its name (split at "_", ":", "-", ".") is one of
# these: a frame, message, lease or entry that was dropped, evicted, timed out, refused for a
# full table or queue, rate-limited, malformed, or failed internally.
LOSS_WORDS = frozenset({
    "drop", "drops", "dropped", "evicted", "evictions", "timeout", "timeouts",
    "full", "overflow", "overflows", "limited", "refused", "exhausted", "too", "bad", "malformed",
    "errors", "undeliverable", "discarded", "truncated", "shed", "internal", "failed",
    "short",   # a frame too short to be one, or a batch the backend wrote only part of
})
# Names that carry a loss word but are not losses (a probe that timed out found a free address).
# "resolution_failed" counts lookups whose queued frames queue_dropped_failed already counts;
# "internal_error_TYPE" breaks internal_errors down by exception type.
NOT_LOSSES = frozenset({"probe_timeouts", "resolution_failed"})
_SPLIT = re.compile(r"[_:.\-]+")


def is_loss(name: str) -> bool:
    if name in NOT_LOSSES or name.endswith("limit") or name.startswith("internal_error_"):
        return False
    return any(w in LOSS_WORDS for w in _SPLIT.split(name.lower()))


def drops_of(counters: Mapping[str, Any]) -> int:
    """The sum of every loss counter in ``counters`` and in the groups nested in it."""
    total = 0
    for k, v in counters.items():
        if isinstance(v, Mapping):
            total += drops_of(v)
        elif isinstance(v, int) and not isinstance(v, bool) and is_loss(str(k)):
            total += v
    return total


def table(size: int, limit: int | None, drops: int) -> dict[str, int | None]:
    return {"size": int(size), "limit": None if limit is None else int(limit), "drops": int(drops)}
