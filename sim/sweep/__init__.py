"""Stage 6: design-space sweeps — many points through the pipeline, results as tables and plots."""

from sim.sweep.run import run_sweep
from sim.sweep.spec import load_sweep

__all__ = ["load_sweep", "run_sweep"]
