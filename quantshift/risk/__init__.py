"""The RiskGate: every limit of the current phase lives here and nowhere else."""
