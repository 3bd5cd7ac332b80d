"""docs/outputs.md and the metric registry agree, and every output carries exactly the registry's
figures: the summary's scalars, each aggregate's fields, each op record's fields, the sweep columns.
`python tests/test_outputs_doc.py --update` rewrites the doc's tables from the registry."""

import json
import sys
from pathlib import Path

from conftest import DATA, load
from sim.pipeline import run
from sim.report import summarize, to_csv, to_json
from sim.report.metrics import AGGREGATE, OP, RUN, SECTIONS, render_doc, sweep_columns

DOC = Path(__file__).resolve().parent.parent / "docs" / "outputs.md"


def test_docs_outputs_tables_are_the_registrys():
    text = DOC.read_text()
    assert render_doc(text) == text, "docs/outputs.md is out of date: python tests/test_outputs_doc.py --update"
    for m in RUN + AGGREGATE + OP:
        assert f"| `{m.name}` |" in text


def test_the_sweep_guide_lists_every_sweep_column():
    text = (DOC.parent / "sweeps.md").read_text()
    assert all(f"`{m.name}`" in text for m in RUN if m.sweep)


def test_every_output_carries_the_registrys_figures():
    wl, hw = load(DATA / "toy-gpt.yaml", parallelism__microbatches=2)
    result = run(wl, hw)
    s = summarize(result)
    sections = {m.name.split(".")[0] for m in SECTIONS}
    assert set(s) == {"workload", "hardware"} | {m.name for m in RUN} | sections
    for agg in [*s["classes"].values(), *s["phases"].values(), *s["top_ops"]]:
        extra = {"phase", "kind", "op_class"}
        assert set(agg) - extra <= {m.name for m in AGGREGATE}
        assert {m.name for m in AGGREGATE} - {"share_of_total"} <= set(agg)
    op = json.loads(to_json(result))["ops"][0]
    assert set(op) == {f.name for f in OP}
    header = to_csv(result).splitlines()[0].split(",")
    singles = [f.name for f in OP if f.csv == "one"]
    assert [h for h in header if h in singles] == singles  # in the registry's order
    assert all(h in singles or h.startswith(("bytes", "hit_rate_", "stall_")) for h in header)


def test_sweep_columns_are_the_registrys():
    from sim.sweep.run import OUTPUTS

    assert sweep_columns() == OUTPUTS
    assert {m.name for m in RUN if m.sweep} <= set(OUTPUTS)


if __name__ == "__main__":
    if sys.argv[1:] != ["--update"]:
        sys.exit("usage: python tests/test_outputs_doc.py --update")
    DOC.write_text(render_doc(DOC.read_text()))
    print(f"wrote {DOC}")
