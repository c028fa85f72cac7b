"""``python tuning/search.py`` whose Train workers fail once, at epoch 2 (for tests only).

    python tests/fail_once_search.py MARKER SEARCH-ARGUMENTS...

The first trial (or Train worker) to reach epoch 2 while MARKER does not exist creates it
and raises, after epoch 1's checkpoint was reported. The fault is installed here, by wrapping
the loop functions the trials run; the shipped loop has no test path.
"""

import sys
from pathlib import Path

import tuning.trials
import tuning.workers
from tuning.search import main

MARKER = Path(sys.argv[1])


def failing_once(train):
    """``train`` (a trial's loop function) with ``fit`` failing once, at epoch 2."""

    def train_failing_once(loop_config: dict) -> None:
        real_fit = tuning.workers.fit

        def fit_failing_once(*args, on_epoch, **kwargs):
            def hook(result, checkpoint):
                if result.epoch == 2 and not MARKER.exists():
                    MARKER.touch()
                    raise RuntimeError("injected worker failure (test)")
                on_epoch(result, checkpoint)

            return real_fit(*args, on_epoch=hook, **kwargs)

        tuning.workers.fit = fit_failing_once
        train(loop_config)

    return train_failing_once


if __name__ == "__main__":
    # Pickled by value with the trials, so the trial processes run these wrappers.
    tuning.trials.train_in_trial = failing_once(tuning.workers.train_in_trial)
    tuning.trials.train_worker = failing_once(tuning.workers.train_worker)
    sys.exit(main(sys.argv[2:]))
