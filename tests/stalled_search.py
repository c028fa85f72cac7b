"""``python tuning/search.py`` whose trials start and then never report (for tests only).

    python tests/stalled_search.py SEARCH-ARGUMENTS...

Stands for trials that cannot make progress (a hung worker, a lost node); the fault is
installed here, by replacing the loop function the trials run.
"""

import sys
import time

import tuning.trials
from tuning.search import main


def never_reporting(loop_config: dict) -> None:
    time.sleep(3600)


if __name__ == "__main__":
    # Pickled by value with the trials, so the trial processes run this function.
    tuning.trials.train_in_trial = never_reporting
    sys.exit(main(sys.argv[1:]))
