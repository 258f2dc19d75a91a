"""Offline evaluation of routers: metrics, operating-point sweeps, the harness and plots.

``metrics`` defines every number once (../shared/DESIGN.md section 8), ``sweep`` turns one router's
predictions into operating points over its knob, ``harness.evaluate`` runs split -> fit ->
sweep -> score for one router on one dataset, and ``plots`` draws the Pareto figures.
Nothing is imported here, so ``import thalamus.eval`` stays cheap.
"""
