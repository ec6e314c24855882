"""Anomaly detection (task: anomaly_detection): a family folder."""
