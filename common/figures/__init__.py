"""Figures for reports and W&B, one module per stage (numpy in, PNG out, no torch):

    style           the shared look: panel size, saving, image and code-map panels, figure texts
    reconstruction  stage 1: reconstructions beside their inputs, code maps, codebook usage
    generation      stage 2: generated brains, nearest training slices, code and structure histograms
    training        the loss curves of a run
    anomaly         anomaly maps: a map in colour, over its scan, and the scan / healed / map / overlay figure

The backend is chosen here, before any submodule imports pyplot: files only, training nodes have no display.
"""

import matplotlib

matplotlib.use("Agg")
