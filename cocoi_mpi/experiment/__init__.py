"""What a run is asked to do: options and config files (declared once), scenarios, sweeps,
resuming, progress and the closing summary.
"""
