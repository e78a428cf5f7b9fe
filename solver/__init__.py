"""Bit allocation as an integer program: budgets, overrides, Pareto sweep, quality bisection.

Imports nothing else from bitalloc; PuLP (CBC) is required, highspy optional.
"""

from solver.allocation import Allocation, Blocker, BudgetReach, Infeasible
from solver.bisection import BisectResult, Trial, bisect_quality
from solver.ilp import DEFAULT_MIP_GAP, solve
from solver.pareto import ParetoPoint, pareto
from solver.problem import BUDGET_KINDS, Budget, Choice, Layer, Option, PairTerm, Problem

__all__ = [
    "BUDGET_KINDS",
    "DEFAULT_MIP_GAP",
    "Allocation",
    "BisectResult",
    "Blocker",
    "Budget",
    "BudgetReach",
    "Choice",
    "Infeasible",
    "Layer",
    "Option",
    "PairTerm",
    "ParetoPoint",
    "Problem",
    "Trial",
    "bisect_quality",
    "pareto",
    "solve",
]
