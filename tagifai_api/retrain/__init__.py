"""Retraining: a candidate trained on the dataset plus the users' feedback, judged against the default
on feedback it never saw, and promoted, shadowed or kept by a gate whose every decision is recorded
(``retrain``, ``promote --if-better``, ``POST /models/retrain``, ``GET /jobs/<id>``,
``POST /models/default/promote-shadow``)."""
