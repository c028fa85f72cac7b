"""``python tuning/search.py`` whose trials take at least PACE seconds an epoch (for tests).

    python tests/paced_search.py SEARCH-ARGUMENTS...

A tiny trial's epoch takes a few hundredths of a second, so a test that interrupts a search
"in a trial" would race the trial's end; here each report waits first, and the moment a
signal lands in is the test's to choose. Installed as ``stalled_search.py`` installs its
fault, by replacing the loop function the trials run.
"""

import sys
import time

import tuning.trials
from tuning.search import main

PACE = 0.5


def paced_in_trial(loop_config: dict) -> None:
    import ray.tune

    from tuning import workers

    report = ray.tune.report
    if not getattr(report, "paced", False):  # a reused trial process is paced once
        def paced(*args, **kwargs):
            time.sleep(PACE)
            report(*args, **kwargs)

        paced.paced = True
        ray.tune.report = paced
    workers.train_in_trial(loop_config)


if __name__ == "__main__":
    # Pickled by value with the trials, so the trial processes run this function.
    tuning.trials.train_in_trial = paced_in_trial
    sys.exit(main(sys.argv[1:]))
