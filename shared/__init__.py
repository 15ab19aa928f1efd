"""Code shared by the API and the workers: settings, data model, schemas, errors, Celery.

Nothing here imports Flask or torch, and importing any module starts nothing.
"""
