"""Evaluating adapters: metrics, batched generation with per-row adapters, benchmark runners, reports."""
