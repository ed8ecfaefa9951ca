"""Tests of the public gateway."""
