"""The first solve of the Getting started page: writes docs/figures/first_solve.png and .txt.

Run it from the repository root after changing the example or the plots, and commit both files:

    .venv/bin/python docs/scripts/first_solve.py

The page shows the code of the section named "example" below (between its start and end
markers), the output it prints (first_solve.txt), the figure, and a caption with the machine and
the date (first_solve_caption.txt).
"""

import contextlib
import datetime
import io
import os
import pathlib
import platform
import sys
import time

import jax

FIGURES = pathlib.Path(__file__).resolve().parent.parent / "figures"


class _Tee(io.StringIO):
    """Keep what the example prints, and still print it."""

    def write(self, text):
        sys.__stdout__.write(text)
        return super().write(text)


def _cpu() -> str:
    with contextlib.suppress(OSError):
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


start = time.perf_counter()
printed = _Tee()
redirect = contextlib.redirect_stdout(printed)
redirect.__enter__()

# --8<-- [start:example]
import jax  # noqa: F811 (the example is shown on its own)

jax.config.update("jax_enable_x64", True)  # sst's ODEs need float64
import jax.numpy as jnp

import sst

problem = sst.Problem(
    target=sst.Hermite([0.5, 1.0, 1.0, 1.0]),  # phi = h0/2 + h1 + h2 + h3
    activation=sst.Hermite([1.0, 1.0, 1.0, 1.0]),  # sigma = h0 + h1 + h2 + h3
    eps=1e-3,
)
y0 = sst.quadrature_particles(32, law="normal")  # a(0) ~ N(0, 1), s(0) = 0
ts = jnp.concatenate([jnp.zeros(1), jnp.logspace(-6, 2, 400)])
model = sst.MeanFieldODE(problem)
# stiff, adaptive, float64; dense=True keeps the solver's dense output, on which the learning
# times below are located to the solver's tolerance (not interpolated between saves)
traj = sst.solve(model, y0, ts, dense=True)

print(f"{int(traj.stats['num_steps'])} steps, final risk {float(traj.risk[-1]):.3e}")
t_half = sst.learning_times(traj, 0.5)
for k, t in enumerate(t_half):
    print(f"degree {k} half learned at t = {t:.4g}")
fig = sst.plot_risk(traj, model=model)
# --8<-- [end:example]

redirect.__exit__(None, None, None)
elapsed = time.perf_counter() - start
fig.savefig(FIGURES / "first_solve.png", dpi=120)
machine = (
    f"{platform.system()}, {_cpu()}, {os.cpu_count()} cores, JAX {jax.__version__} on "
    f"{jax.devices()[0].platform.upper()}"
)
(FIGURES / "first_solve.txt").write_text(printed.getvalue())
(FIGURES / "first_solve_caption.txt").write_text(
    f"Run on {datetime.date.today().isoformat()} on {machine}: {elapsed:.1f} s including "
    f"imports and compilation (load average {os.getloadavg()[0]:.1f})."
)
print(f"wrote {FIGURES / 'first_solve.png'} in {elapsed:.1f} s")
