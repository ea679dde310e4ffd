"""The model registry over HTTP: list and inspect versions, switch and roll back the default, and
set the shadow. The state itself lives on disk (:mod:`tagifai_api.store.registry`); these routes are
a thin layer over it and over this worker's :class:`~tagifai_api.serving.service.ModelService`."""
