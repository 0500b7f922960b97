"""Tests that run flowclas_node on a real ROS 2 graph (a package, so its conftest does not shadow test/conftest.py)."""
