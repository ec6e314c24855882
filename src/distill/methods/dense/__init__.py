"""Dense-prediction methods (family ``dense``): super-resolution and segmentation losses, one module per method;
``affinity.py`` holds the spatial-affinity maths they share."""
