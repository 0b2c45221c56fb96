"""The study driver: the Ray job that runs one study (``python -m service.runner STUDY_ID``)."""
