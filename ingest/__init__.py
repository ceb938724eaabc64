"""Extraction (HTML, PDF, OCR), filters and dedup, the registry and the drop folder: documents
in, token ids appended to the token store (``crystalline.tokens``)."""
