import pytest

from sim.config.units import Dim, parse_quantity


@pytest.mark.parametrize("text,dim,si", [
    ("3.35 TB/s", Dim.BANDWIDTH, 3.35e12),
    ("40 MiB", Dim.BYTES, 40 * 2**20),
    ("80 GB", Dim.BYTES, 80e9),
    ("312 TFLOP/s", Dim.COMPUTE, 312e12),
    ("624 TOP/s", Dim.COMPUTE, 624e12),
    ("700 ns", Dim.TIME, 700e-9),
    ("2 us", Dim.TIME, 2e-6),
    ("1.41 GHz", Dim.FREQUENCY, 1.41e9),
    ("1e3", Dim.BYTES, 1000.0),
    (5, Dim.TIME, 5.0),
])
def test_parses_to_si(text, dim, si):
    assert parse_quantity(text, dim) == pytest.approx(si, rel=1e-12)


@pytest.mark.parametrize("text,dim,needle", [
    ("3.35 GHz", Dim.BANDWIDTH, "expected bytes/s"),
    ("40 MiB/s", Dim.BYTES, "expected bytes"),
    ("12 parsecs", Dim.TIME, "unknown unit"),
    ("fast", Dim.TIME, "cannot read"),
    (True, Dim.TIME, "boolean"),
])
def test_rejects_wrong_dimension_or_garbage(text, dim, needle):
    with pytest.raises(ValueError, match=needle):
        parse_quantity(text, dim)
