"""The API process: the FastAPI app (``create_app``), its routes, dependencies, problem details,
request limits, read cache, the study use cases the routes call, and the dispatcher that hands
studies to Ray through :mod:`service.jobs`. Nothing here imports PyTorch or Ray Tune."""
