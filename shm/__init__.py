"""Shared-memory segments: batch ring, parameter and gradient blocks."""
