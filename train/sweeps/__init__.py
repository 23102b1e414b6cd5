"""The sweep tool behind `python -m train.sweep`, one concept a module, each importing only
those above it:

- `grid`: the `--grid`/`--set` grammar, named sweeps (lists of override dicts), `Point`,
  point names, `SweepError`.
- `plan`: config x points -> `Plan` (configs built and checked in-process, teacher jobs,
  commands, summaries); runs nothing, writes nothing.
- `state`: `DIR/sweep.json`, and whether a job is finished.
- `plot`: `tradeoff.png`. `report`: `sweep.csv`, `sweep.md` and the plot.
- `runner`: `run_plan` / `run_sweep`, the jobs as subprocesses.
"""
