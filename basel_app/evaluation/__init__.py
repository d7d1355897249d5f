"""Evaluation: batched greedy generation and answer scoring."""
