"""The study driver: the Ray job that runs one study (``python -m service.runner STUDY_ID``).

Its modules import Ray Tune when they run, never at import: the API may read the scheduler
registry (:mod:`service.runner.schedulers`) without loading Ray.
"""
