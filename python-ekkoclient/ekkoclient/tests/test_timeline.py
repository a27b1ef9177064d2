import unittest

from ekkoclient import timeline
from ekkoclient.timeline import TimelineRow

MIB = 1 << 20


def row(created, kind, size, new, stored):
    return TimelineRow(created, kind, size, new, stored)


class TestTimeline(unittest.TestCase):

    def test_bars_share_one_scale(self):
        # The same case as src/timeline.rs bars_share_one_scale.
        rows = [
            row("2026-11-24T02:00:00Z", "full", 100 * MIB, 100 * MIB,
                40 * MIB),
            row("2026-11-25T02:00:00Z", "incremental", 100 * MIB, 1 * MIB,
                MIB // 2),
        ]
        lines = timeline.render(rows, 20).splitlines()
        self.assertEqual(3, len(lines))
        self.assertTrue(lines[1].endswith("\u2588" * 20), lines[1])
        # The incremental: one cell new (rounded up), the rest reused.
        self.assertTrue(lines[2].endswith("\u2588" + "\u2591" * 19),
                        lines[2])
        self.assertIn("100.0 MiB", lines[1])
        self.assertIn("40.0 MiB", lines[1])
        self.assertEqual(1, len(timeline.render([], 20).splitlines()))

    def test_layout_matches_the_rust_chart(self):
        text = timeline.render(
            [row("2026-11-24T02:00:00Z", "full", 64 * MIB, 512 * 1024, 1331)],
            40)
        header, line = text.splitlines()
        self.assertEqual(
            "created              kind               new     stored  "
            "\u2588 new  \u2591 unchanged or empty (of 64.0 MiB)", header)
        self.assertEqual(
            "2026-11-24T02:00:00Z full         512.0 KiB    1.3 KiB  "
            "\u2588" + "\u2591" * 39, line)
        self.assertTrue(text.endswith("\n"))

    def test_nothing_new_shows_no_new_cell(self):
        text = timeline.render(
            [row("t", "incremental", 64 * MIB, 0, 0)], 10)
        self.assertTrue(text.splitlines()[1].endswith(
            "0 B  " + "\u2591" * 10))

    def test_width_has_a_floor_and_bars_never_overflow(self):
        rows = [row("t", "full", 10, 10, 5), row("t", "full", 5, 9, 1)]
        bars = [line.split("  ")[-1]
                for line in timeline.render(rows, 3).splitlines()[1:]]
        self.assertEqual("\u2588" * 10, bars[0])
        # More new bytes than the disk holds (odd, but never past width).
        self.assertEqual("\u2588" * 9, bars[1])

    def test_rounding_is_half_away_from_zero(self):
        # 1/8 of 20 cells = 2.5 cells: Rust rounds to 3, Python's round() 2.
        rows = [row("t", "full", 8, 8, 8), row("t", "incremental", 8, 1, 1)]
        line = timeline.render(rows, 20).splitlines()[2]
        self.assertTrue(line.endswith("\u2588" * 3 + "\u2591" * 17), line)

    def test_row_from_api_backup(self):
        r = TimelineRow.from_backup({
            "created_at": "2026-11-24T03:00:00+01:00", "kind": None,
            "size": 10, "new_bytes": -1, "stored_bytes": None})
        self.assertEqual("2026-11-24T02:00:00Z", r.created_at)
        self.assertEqual("", r.kind)
        self.assertEqual((10, 0, 0), (r.size, r.new_bytes, r.stored_bytes))


if __name__ == "__main__":
    unittest.main()
