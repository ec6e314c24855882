"""Dense-prediction methods (family ``dense``): super-resolution, segmentation and anomaly-map losses, one module
per method; ``affinity.py`` holds the spatial-affinity maths they share."""
