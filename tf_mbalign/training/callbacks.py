"""Hooks into an alignment run, for the pieces a binary plugs in.

The trainer knows nothing of evaluation or exports: the training binary
passes callbacks (in-training retrieval from `evaluation/`, the end-of-run
export from `export/`) and the run calls them. Every stop, finished or not,
ends with `on_run_stop` (the run summary writes its files there). A callback
that needs the run to pause at fixed steps (to evaluate there) says so with
`loop_boundary_every`: compiled loop calls then end on its multiples, on every
worker alike (MultiWorkerMirroredStrategy workers step in lockstep).

Example:
```python
class PrintLoss(TrainingCallback):
    def on_loop_end(self, step, logs):
        print(step, logs["loss"])

AlignmentRun(config, callbacks=[PrintLoss()]).run()
```
"""


class TrainingCallback:
    """Base class: every hook does nothing."""

    # Loop calls end on multiples of this many steps (0: no constraint).
    loop_boundary_every = 0

    def on_run_start(self, run, start_step):
        """After the restore, before the first step (`start_step` = restored step)."""

    def on_loop_end(self, step, logs):
        """After each compiled loop call; entries added to `logs` reach
        metrics.jsonl, TensorBoard and the run's history."""

    def on_run_end(self, run):
        """After the last step of a run that finished (not preempted, not failed)."""

    def on_run_stop(self, run, outcome, error=None):
        """At every stop, last: `outcome` is "finished" (after every
        `on_run_end`), "preempted" (a checkpoint was saved) or "failed"
        (`error` is the exception, e.g. a `NonFiniteError`; it is raised
        again after the hooks). Also called when the run failed before
        `on_run_start` (e.g. no restorable checkpoint)."""
