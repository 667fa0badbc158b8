"""Preemption: SIGTERM -> every worker saves at the same step and exits.

`tf.distribute.experimental.PreemptionCheckpointHandler` restores and saves
through its own `CheckpointManager` when it is created, which would bypass
the verified, atomic checkpoints of `checkpointing.py`; its own notes also
limit it to MultiWorkerMirroredStrategy / TPUStrategy. This is the same
protocol for the custom loop and any strategy:

1. `PreemptionWatcher` turns SIGTERM into a flag (the signal is handled
   between two TensorFlow calls, so at the latest when the running loop
   call returns; keep `--steps_per_loop` x step time below the platform's
   grace period);
2. after every loop call the trainer asks `stop_requested()`: under
   MultiWorkerMirroredStrategy the workers all-reduce their flags, so a
   SIGTERM to any one worker stops all of them after the same step;
3. the trainer saves a checkpoint of that step (collectively) and returns;
   the binary exits with `PREEMPTED_EXIT_CODE` (42, TensorFlow's restart
   code), and rerunning the same command resumes from that step.
"""

import signal
import threading

import tensorflow as tf

PREEMPTED_EXIT_CODE = 42


class PreemptionWatcher:
    """Records SIGTERM; `stop_requested()` agrees on it across workers.

    Args:
        strategy: the run's `tf.distribute.Strategy`.
        signals: signals that mean "save and exit" (default SIGTERM).

    Example:
    ```python
    with PreemptionWatcher(strategy) as watcher:
        while training:
            loop(iterator, steps)
            if watcher.stop_requested():
                save(); break
    ```
    """

    def __init__(self, strategy, signals=(signal.SIGTERM,)):
        self.strategy = strategy
        self.signals = tuple(signals)
        self.received = None  # The signal number, once one arrived here.
        self._previous = {}
        self._agree = None
        self._multi_worker = isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for number in self.signals:
                self._previous[number] = signal.signal(number, self._on_signal)
        return self

    def __exit__(self, *exc_info):
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous = {}
        return False

    def _on_signal(self, number, frame):
        del frame
        self.received = number

    def stop_requested(self):
        """Whether this or (multi-worker) any other worker was signalled.

        Collective under MultiWorkerMirroredStrategy: every worker must call
        it at the same point of the loop.
        """
        local = self.received is not None
        if not self._multi_worker:
            return local
        if self._agree is None:
            strategy = self.strategy

            @tf.function
            def agree(flag):
                def replica_fn():
                    context = tf.distribute.get_replica_context()
                    # identity: created here, the value gets the replica's device
                    # (an input tensor has none: "destinations can not be empty").
                    return context.all_reduce(tf.distribute.ReduceOp.SUM, tf.identity(flag))

                return strategy.experimental_local_results(strategy.run(replica_fn))[0]

            self._agree = agree
        return float(self._agree(tf.constant(1.0 if local else 0.0))) > 0
