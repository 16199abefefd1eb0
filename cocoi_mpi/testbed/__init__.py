"""Emulated devices on one machine (cgroups) and the isolation check."""
