"""Tests of fedarches.bench: metrics, splits and report rendering on shipped data (no training)."""
