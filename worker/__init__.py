"""GPU workers: thin Celery tasks over the batch service, the launcher, the model backends."""
