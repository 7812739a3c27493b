"""float64 NumPy oracles: the test reference and the CPU path of every op."""
