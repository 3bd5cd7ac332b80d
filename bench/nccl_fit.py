"""The collective library's in-switch (NVLS) figures, fitted to a published nccl-tests curve.
`python bench/nccl_fit.py [CURVE]` prints the fitted figures (what runtimes/compiled.yaml ships under
`collectives.in_switch`; a test holds them equal) and the curve as memwall then predicts it.

The curves are in sim/data/nccl-fit.yaml, each with its source; validate predicts other machines' curves
(Azure's ND H100 / H200 v5) with the figures fitted here, not these."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sim.config.units import fmt_bytes, fmt_time  # noqa: E402
from sim.validate.nccl import fit_in_switch, fitted_errors  # noqa: E402


def main(curve: str = "h200-nvls-stas00") -> None:
    fit = fit_in_switch(curve)
    clamped = f" (they run {fmt_time(-fit.overhead_residual)} faster than the ring predicts: none added)" \
        if fit.overhead_residual < 0 else ""
    print(f"{curve}: {fit.rows} in-switch rows fitted; the per-call overhead from its ring rows: "
          f"{fmt_time(fit.overhead)}{clamped}")
    print(f"  in_switch.step           {fit.step * 1e6:.1f} us")
    print(f"  in_switch.bandwidth      {fit.bandwidth:.3f}")
    print(f"  in_switch.chunk_overhead {fit.chunk_overhead * 1e9:.1f} ns")
    print(f"\n{'size':>10} {'measured':>10} {'predicted':>10} {'error':>7}")
    for size, measured, predicted in fitted_errors(fit):
        print(f"{fmt_bytes(size):>10} {fmt_time(measured):>10} {fmt_time(predicted):>10} "
              f"{100 * (predicted / measured - 1):+6.1f}%")


if __name__ == "__main__":
    try:
        main(*sys.argv[1:2])
    except ValueError as e:
        sys.exit(f"error: {e}")
