"""Confirmatory runs: training outcomes, evaluation, geometry and steadiness against SI."""
