"""How a conv layer or a conv block is cut along the width into pieces, and the coding-unit
protocol both answer (pure torch).
"""
