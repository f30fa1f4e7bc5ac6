"""The report's SVG charts, checked against hand-computed bar heights and point positions.

Every chart has a plot area of 520 - 44 - 12 = 464 px wide and 260 - 44 - 44 = 172 px high,
its bottom at y = 44 + 172 = 216; a value v on an axis to `top` sits at y = 44 + 172 (1 - v/top).
"""

import base64
import xml.etree.ElementTree as ET

from flywheel.stages.charts import bars_svg, bin_counts, data_uri, histogram_svg, lines_svg

NS = {"s": "http://www.w3.org/2000/svg"}


def _marks(svg: str, cls: str) -> list[ET.Element]:
    root = ET.fromstring(svg)  # also: the document is well-formed XML
    return [e for e in root.iter() if e.get("class") == cls]


def test_bin_counts_put_edges_and_outliers_in_the_end_bins():
    """Bins of width 0.1 over [0, 1]: 0.0, 0.05 and -0.1 (clipped) in bin 0; 0.1 in bin 1;
    0.55 in bin 5; 1.0 (the upper edge) and 1.2 (clipped) in bin 9."""
    values = [0.0, 0.05, 0.1, 0.55, 1.0, 1.2, -0.1]
    assert bin_counts(values, 0.0, 1.0, 10) == [3, 1, 0, 0, 0, 1, 0, 0, 0, 2]


def test_histogram_bar_heights_are_counts_over_the_largest():
    """Two bins over [0, 1]: "before" [0.1, 0.2, 0.9] counts [2, 1], "after" [0.8] counts
    [0, 1]. The largest count, 2, is the full 172 px; a count of 1 is 86 px; a count of 0
    draws a bar of height 0."""
    svg = histogram_svg("rewards", {"before": [0.1, 0.2, 0.9], "after": [0.8]}, bins=2)
    bars = _marks(svg, "bar")
    heights = [float(b.get("height")) for b in bars]
    assert heights == [172.0, 86.0, 0.0, 86.0]  # before bin 0, 1; after bin 0, 1
    assert [b.find("s:title", NS).text for b in bars] == [
        "before, 0: 2", "before, 0.5: 1", "after, 0: 0", "after, 0.5: 1"]
    # each of the 2 bins is 232 px wide, its 2 bars 0.8 * 232 / 2 = 92.8 px each, from 10 %
    assert [float(b.get("x")) for b in bars] == [44 + 23.2, 44 + 232 + 23.2,
                                                 44 + 23.2 + 92.8, 44 + 232 + 23.2 + 92.8]


def test_bars_skip_missing_values_and_scale_to_one():
    """Accuracy 0.75 is 0.75 * 172 = 129 px high, from y = 216 - 129 = 87; a bucket with no
    pairs (None) draws no bar."""
    svg = bars_svg("accuracy", ["significantly", "better"], {"helpfulness": [0.75, None]})
    (bar,) = _marks(svg, "bar")
    assert (float(bar.get("height")), float(bar.get("y"))) == (129.0, 87.0)
    # the missing one is marked n/a, centred on its slot: 44 + 232 + 23.2 + 185.6 / 2 = 392.0
    (missing,) = _marks(svg, "missing")
    assert (missing.text, float(missing.get("x"))) == ("n/a", 392.0)
    assert bar.find("s:title", NS).text == "helpfulness, significantly: 0.750"


def test_lines_place_points_by_iteration_and_leave_gaps():
    """Three iterations span the 464 px: x = 44, 276, 508. Win rates 0.5, None, 1.0 give
    points at y = 44 + 172 * 0.5 = 130 and y = 44; the missing one is left out."""
    svg = lines_svg("rates", [1, 2, 3], {"win rate": [0.5, None, 1.0]})
    points = _marks(svg, "point")
    assert [(float(p.get("cx")), float(p.get("cy"))) for p in points] == [(44.0, 130.0),
                                                                         (508.0, 44.0)]
    assert ET.fromstring(svg).find("s:polyline", NS).get("points") == "44.0,130.0 508.0,44.0"


def test_a_single_iteration_is_one_centred_point():
    (point,) = _marks(lines_svg("rates", [4], {"harmful answered": [0.25]}), "point")
    assert (float(point.get("cx")), float(point.get("cy"))) == (44 + 232, 44 + 172 * 0.75)


def test_data_uri_carries_the_svg():
    svg = bars_svg("a <b> & c", ["x"], {"s": [0.5]})
    uri = data_uri(svg)
    assert uri.startswith("data:image/svg+xml;base64,")
    assert base64.b64decode(uri.split(",", 1)[1]).decode() == svg
    assert ET.fromstring(svg).get("aria-label") == "a <b> & c"  # escaped, so it parses
