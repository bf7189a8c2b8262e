"""The training loop and what a run writes: one run on a split (trainer), its epochs (engine), k-fold
cross-validation, the fitted temperature (calibration), the run's plots and TensorBoard events."""
