"""Calibration of this machine and validation of predictions against measurements."""
