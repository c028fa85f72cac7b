"""Ray layers on top of ``ucrn``: the search (Tune + Optuna), its Train workers, the evaluator.

Ray reads some settings when it is imported, so they are set here, before any module of
this package imports Ray (see ``tuning.ray_start``).
"""

from tuning.ray_start import prepare_environment

prepare_environment()
