"""The study's operational definitions (SPEC §5), in one place: every analysis, the regime map,
the best PLR and the threshold search take their defaults from here."""

# A pre-training run has converged when its train loss falls below this (regime 1).
CONVERGENCE_LOSS = 1e-2
# The loss the convergence analysis also times (the study's "< 1e-4 with several seeds").
FINAL_LOSS = 1e-4
# Epochs at the end of pre-training averaged into its reported accuracy (mean ± std, SPEC §5).
WINDOW = 20.0
# Accuracy above chance, as a fraction, that a run needs to be out of regime 3.
CHANCE_MARGIN = 0.02
# Difference from an ideal, in units of its noise: within it up to Z_SAME, beyond it from
# Z_DIFFER, of its order between (the regime tests; the best PLR's ties use Z_SAME).
Z_SAME = 2.0
Z_DIFFER = 3.0
