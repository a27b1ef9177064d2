"""Helpers shared by the commands: formatting, progress and waiting."""

import json
import sys
import time

from cliff import columns
from osc_lib.cli import format_columns
from osc_lib import utils


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
    """A structure osc-lib has no column for (a list of numbers, a mixed
    list): compact JSON in tables, the structure otherwise."""

    def human_readable(self):
        if self._value in (None, {}, []):
            return ""
        return json.dumps(self._value, sort_keys=True)

    def machine_readable(self):
        return self._value


def column_for(value):
    """osc-lib's column class for a dict or list value (``None`` for a
    scalar): ``DictColumn``, ``ListColumn`` (strings) or
    ``ListDictColumn`` (dicts)."""
    if isinstance(value, dict):
        return format_columns.DictColumn
    if isinstance(value, list):
        if all(isinstance(v, str) for v in value):
            return format_columns.ListColumn
        if all(isinstance(v, dict) for v in value):
            return format_columns.ListDictColumn
        return JsonColumn
    return None


def show_dict(resource, formatters=None, drop=("links",)):
    """(columns, values) of a resource for a ShowOne, keys sorted; dicts
    and lists without a formatter get osc-lib's columns."""
    formatters = dict(formatters or {})
    keys = tuple(sorted(k for k in resource if k not in drop))
    for k in keys:
        if k not in formatters:
            cls = column_for(resource[k])
            if cls is not None:
                formatters[k] = cls
    return keys, utils.get_dict_properties(resource, keys,
                                           formatters=formatters)


def list_rows(items, cols, formatters=None):
    """The rows of a Lister: ``cols`` of each item, formatted."""
    return [utils.get_dict_properties(i, cols, formatters=formatters)
            for i in items]


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
