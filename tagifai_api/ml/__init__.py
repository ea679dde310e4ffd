"""Model code: data, training, evaluation, artifacts and inference. Never imports the web stack."""
