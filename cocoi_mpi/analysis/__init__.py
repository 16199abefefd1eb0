"""What is read out of traces: reports, scheme comparisons, plots, the timeline."""
