"""Methods of dense prediction (anomaly maps, segmentation): family ``dense``."""
