"""Prompt-aware structured block pruning of the LinearDiT (paper Sec. 3.4, App. A.7, Algorithm 2).

budget.py (parse "0.35B"), blocks.py (parameter accounting, block removal), saliency.py (Eq. 22-24),
select.py (Eq. 11 greedy + baseline strategies), macs.py (FlopCounterMode), calibrate.py (the K-step loop),
report.py (prune_report.json + table), prune.py (the staged orchestrator behind `sanasr prune`).
"""
