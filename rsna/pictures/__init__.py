"""Pictures for checking data and results by eye: MIPs of volumes and PNG curves.

:mod:`rsna.pictures.mip` draws maximum intensity projections of one preprocessed volume,
:mod:`rsna.pictures.qc` picks a sample of series and writes their MIPs, and
:mod:`rsna.pictures.curves` draws training curves, ROC curves and cross-validation scores.
Every figure is drawn with matplotlib's Agg backend and written as PNG, so the pages that
``dvc plots show`` writes display them without internet access.
"""
