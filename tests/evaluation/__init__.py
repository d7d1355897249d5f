"""Tests of basel_app.evaluation: generation and math scoring."""
