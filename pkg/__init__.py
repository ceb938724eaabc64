"""crystalline: a continuous-learning daemon that trains a numpy transformer.

The subpackages live in the repository's root folders (see pyproject.toml):
``daemon``, ``workers``, ``crawler``, ``ingest``, ``tokens`` and ``shm``.
"""

__version__ = "0.1.0"
