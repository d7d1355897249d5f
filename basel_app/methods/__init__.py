"""The compression methods beyond Basel's magnitude rule: BSI's Taylor importance, the one-shot
baselines' calibration and truncation, and the size budget every method is held to."""
