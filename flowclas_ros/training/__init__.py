"""Offline training and evaluation of FlowCLAS models (depends on flowclas_ros, never the reverse)."""
