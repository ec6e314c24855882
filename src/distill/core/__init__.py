"""Core types: model outputs, taps, the method base and registry, composition, teacher sources."""
