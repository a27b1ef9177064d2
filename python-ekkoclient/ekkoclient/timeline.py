"""An instance's backups over time as a terminal chart.

Mirrors ``ekko timeline`` (src/timeline.rs): one row per backup, oldest
first, a bar for the bytes it added (``█``, with what they took in the store
after compression) against the rest of the disk, unchanged since earlier
backups or empty (``░``), all on one scale, so growth and unusual backups
stand out at a glance.
"""

import datetime
import math

from ekkoclient.common import human

NEW = "\u2588"        # █
UNCHANGED = "\u2591"  # ░


class TimelineRow(object):
    __slots__ = ("created_at", "kind", "size", "new_bytes", "stored_bytes")

    def __init__(self, created_at, kind, size, new_bytes, stored_bytes):
        self.created_at = created_at
        self.kind = kind
        self.size = size
        self.new_bytes = new_bytes
        self.stored_bytes = stored_bytes

    @classmethod
    def from_backup(cls, b):
        """A row from an API backup (``size``/``new_bytes``/...)."""
        return cls(
            created_at=_timestamp(b.get("created_at")),
            kind=b.get("kind") or "",
            size=max(0, int(b.get("size") or 0)),
            new_bytes=max(0, int(b.get("new_bytes") or 0)),
            stored_bytes=max(0, int(b.get("stored_bytes") or 0)),
        )


def _timestamp(value):
    """``YYYY-MM-DDTHH:MM:SSZ`` in UTC, as the Rust chart shows it."""
    if not value:
        return ""
    try:
        t = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return value
    if t.tzinfo is not None:
        t = t.astimezone(datetime.timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def _round(x):
    # Rust's f64::round: halves away from zero (x >= 0 here).
    return int(math.floor(x + 0.5))


def render(rows, width=40):
    """The chart of ``rows`` (oldest first), bars ``width`` cells wide."""
    width = max(int(width), 10)
    biggest = max([r.size for r in rows] + [0])
    biggest = max(biggest, 1)
    out = ["%-20s %-11s %10s %10s  %s new  %s unchanged or empty (of %s)" % (
        "created", "kind", "new", "stored", NEW, UNCHANGED, human(biggest))]
    for r in rows:
        def cells(b):
            return _round(float(b) / biggest * width)
        # A backup that added anything shows at least one cell of it.
        new = max(cells(r.new_bytes), 1 if r.new_bytes > 0 else 0)
        new = min(new, width)
        reused = min(cells(max(r.size - r.new_bytes, 0)), width - new)
        out.append("%-20s %-11s %10s %10s  %s%s" % (
            r.created_at, r.kind, human(r.new_bytes), human(r.stored_bytes),
            NEW * new, UNCHANGED * reused))
    return "\n".join(out) + "\n"
