"""Solver: budgets, cost model, the integer program that picks each layer's bit
width, the Pareto sweep and the quality-drop bisection. Imports nothing of ours."""
