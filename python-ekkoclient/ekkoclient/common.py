"""Helpers shared by the commands: formatting, progress and waiting."""

import json
import sys
import time

from cliff import columns


def human(n):
    """Bytes in binary units, as Ekko's ``timeline`` prints them."""
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    if n is None:
        return ""
    v = float(n)
    u = 0
    while v >= 1024.0 and u < len(units) - 1:
        v /= 1024.0
        u += 1
    if u == 0:
        return "%d B" % n
    return "%.1f %s" % (v, units[u])


class SizeColumn(columns.FormattableColumn):
    """Bytes: human units in tables, the integer in json/yaml/value."""

    def human_readable(self):
        return human(self._value) if self._value is not None else ""

    def machine_readable(self):
        return self._value


class JsonColumn(columns.FormattableColumn):
    """A dict or list: compact JSON in tables, the structure otherwise."""

    def human_readable(self):
        if self._value in (None, {}, []):
            return ""
        return json.dumps(self._value, sort_keys=True)

    def machine_readable(self):
        return self._value


class ListColumn(columns.FormattableColumn):
    def human_readable(self):
        return ", ".join(str(v) for v in self._value or [])

    def machine_readable(self):
        return list(self._value or [])


def show_dict(resource, formatters=None, drop=("links",)):
    """(columns, values) of a resource for a ShowOne, keys sorted."""
    formatters = formatters or {}
    keys = sorted(k for k in resource if k not in drop)
    values = []
    for k in keys:
        v = resource[k]
        if k in formatters:
            v = formatters[k](v)
        elif isinstance(v, (dict, list)):
            v = JsonColumn(v)
        values.append(v)
    return tuple(keys), tuple(values)


def parse_properties(pairs):
    """``["k=v", ...]`` to a dict (the last value of a key wins)."""
    out = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ValueError("%r is not key=value" % pair)
        k, v = pair.split("=", 1)
        if not k:
            raise ValueError("%r has an empty key" % pair)
        out[k] = v
    return out


def progress_bar(progress, status, width=30):
    """``[#######.......]  45% running``."""
    p = max(0, min(100, int(progress or 0)))
    done = (p * width) // 100
    return "[%s%s] %3d%% %s" % ("#" * done, "." * (width - done), p, status)


class Progress(object):
    """A progress bar on a stream: redrawn in place on a terminal, one line
    per change otherwise (logs stay readable)."""

    def __init__(self, stream=None, label=""):
        self.stream = stream or sys.stderr
        self.label = label
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.last = None

    def update(self, progress, status):
        line = "%s%s" % (self.label, progress_bar(progress, status))
        if line == self.last:
            return
        if self.tty:
            self.stream.write("\r" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
        self.last = line

    def finish(self):
        if self.tty and self.last is not None:
            self.stream.write("\n")
            self.stream.flush()


def wait_for(get, done_states, stream=None, label="", interval=2.0,
             timeout=None, sleep=time.sleep, clock=time.monotonic):
    """Poll ``get()`` until its ``status`` is in ``done_states``; draw its
    ``progress``. Returns the last resource; raises ``TimeoutError``."""
    bar = Progress(stream, label)
    start = clock()
    try:
        while True:
            res = get()
            bar.update(res.get("progress", 0), res.get("status", "?"))
            if res.get("status") in done_states:
                return res
            if timeout is not None and clock() - start > timeout:
                raise TimeoutError(
                    "still %s after %ss" % (res.get("status"), timeout))
            sleep(interval)
    finally:
        bar.finish()
