"""Stage two: the fast quantum simulator, CDL/DQC heads, multi-seed training, sweeps and benchmarks."""
