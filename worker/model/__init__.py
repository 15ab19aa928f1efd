"""Model backends behind one small interface (see :mod:`worker.model.base`).

Importing this package loads nothing: ``worker.model.hf`` pulls in torch and transformers
only when a worker imports it.
"""
